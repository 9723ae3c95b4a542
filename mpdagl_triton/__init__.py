"""mpdagl-triton: spiking neural networks trained with MPD-AGL, on fused Triton kernels.

Public API:
    tdbn_plif(x, gamma, beta, rho, ...)  fused tdBN -> PLIF with the adaptive surrogate gradient
    compile_options(mode)                torch.compile options: our kernels on inductor's fast launcher
    kappas(gamma, rho_or_tau, ...)       the surrogate widths of a layer
    TdBNPLIF, TdBN, PLIF                 modules
    reference                            the readable PyTorch reference (test oracle, CPU path)
    load(dir_or_repo)                    a trained model from a training output folder or a Hub repo
    probe(model, images)                 the paper's per-layer quantities of one forward pass
    models                               the zoo, building blocks, and models.register for your own
    to_nir(model), from_nir(graph)       a trained model as a NIR graph, and back (docs/deploy.md)
    export                               NIR files, torch.export and AOTInductor packages

Names are imported on first use, so that ``mpdagl --help`` and ``mpdagl --version`` answer at
once and a Ctrl-C while torch loads ends the command quietly.
"""

from __future__ import annotations

import importlib

from mpdagl_triton._version import __version__  # noqa: F401 (public)

#: public name -> the module that defines it
_PUBLIC = {
    "PLIF": "mpdagl_triton.layers",
    "TdBN": "mpdagl_triton.layers",
    "TdBNPLIF": "mpdagl_triton.layers",
    "SURROGATES": "mpdagl_triton.surrogates",
    "WIDTH_RULES": "mpdagl_triton.surrogates",
    "kappas": "mpdagl_triton.surrogates",
    "compile_options": "mpdagl_triton.ops",
    "resolve_backend": "mpdagl_triton.ops",
    "tdbn_plif": "mpdagl_triton.ops",
    "load": "mpdagl_triton.hub",
    "probe": "mpdagl_triton.analysis",
    "to_nir": "mpdagl_triton.export",
    "from_nir": "mpdagl_triton.export",
}
_SUBMODULES = ("reference", "models", "data", "train", "analysis", "hub", "ops", "layers", "errors",
               "export")

__all__ = sorted([*_PUBLIC, "reference", "__version__"])


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"mpdagl_triton.{name}")
    else:
        raise AttributeError(f"module 'mpdagl_triton' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC, *_SUBMODULES})
