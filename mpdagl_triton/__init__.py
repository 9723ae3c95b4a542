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

__version__ = "0.1.0"

from pathlib import Path as _Path

# A source checkout used without installing (e.g. `python -m bench.layer` on a bare GPU machine):
# kernels/ and models/ sit beside this package instead of inside it, as the install maps them.
_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "kernels").is_dir() and (_checkout / "kernels" / "tdbn_plif.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 (the package's own __path__)

from mpdagl_triton import reference  # noqa: E402
from mpdagl_triton.layers import PLIF, TdBN, TdBNPLIF  # noqa: E402
from mpdagl_triton.ops import compile_options, resolve_backend, tdbn_plif  # noqa: E402
from mpdagl_triton.surrogates import SURROGATES, WIDTH_RULES, kappas  # noqa: E402
from mpdagl_triton.hub import load  # noqa: E402

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
