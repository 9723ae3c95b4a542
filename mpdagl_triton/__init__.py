"""mpdagl-triton: spiking neural networks trained with MPD-AGL, on fused Triton kernels.

Public API:
    tdbn_plif(x, gamma, beta, rho, ...)  fused tdBN -> PLIF with the adaptive surrogate gradient
    compile_options(mode)                torch.compile options: our kernels on inductor's fast launcher
    kappas(gamma, rho_or_tau, ...)       the surrogate widths of a layer
    TdBNPLIF, TdBN, PLIF                 modules
    reference                            the readable PyTorch reference (test oracle, CPU path)
    load(dir_or_repo)                    a trained model from a training output folder or a Hub repo
    models                               the model zoo (models.create, models.available)
"""

from mpdagl_triton import reference
from mpdagl_triton._version import __version__
from mpdagl_triton.hub import load
from mpdagl_triton.layers import PLIF, TdBN, TdBNPLIF
from mpdagl_triton.ops import compile_options, resolve_backend, tdbn_plif
from mpdagl_triton.surrogates import SURROGATES, WIDTH_RULES, kappas

__all__ = [
    "PLIF",
    "SURROGATES",
    "TdBN",
    "TdBNPLIF",
    "WIDTH_RULES",
    "compile_options",
    "kappas",
    "load",
    "reference",
    "resolve_backend",
    "tdbn_plif",
]
