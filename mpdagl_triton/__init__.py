"""mpdagl-triton: spiking neural networks trained with MPD-AGL, on fused Triton kernels.

Public API:
    tdbn_plif(x, gamma, beta, rho, ...)  fused tdBN -> PLIF with the adaptive surrogate gradient
    kappas(gamma, rho_or_tau, ...)       the surrogate widths of a layer
    TdBNPLIF, TdBN, PLIF                 modules
    reference                            the readable PyTorch reference (test oracle, CPU path)
    load(dir)                            a trained model from a training output folder
    models                               the model zoo (models.create, models.available)
"""

__version__ = "0.1.0"

from mpdagl_triton import reference  # noqa: E402
from mpdagl_triton.layers import PLIF, TdBN, TdBNPLIF  # noqa: E402
from mpdagl_triton.ops import resolve_backend, tdbn_plif  # noqa: E402
from mpdagl_triton.surrogates import SURROGATES, WIDTH_RULES, kappas  # noqa: E402
from mpdagl_triton.hub import load  # noqa: E402

__all__ = [
    "PLIF",
    "SURROGATES",
    "TdBN",
    "TdBNPLIF",
    "WIDTH_RULES",
    "kappas",
    "load",
    "reference",
    "resolve_backend",
    "tdbn_plif",
]
