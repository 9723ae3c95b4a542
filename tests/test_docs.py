"""The docstring examples: every public function and class shows one, and every example runs and
prints what it says."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import mpdagl_triton



def modules() -> list[str]:
    """The package's modules, its ``kernels`` and ``models`` subpackages included."""
    names = ["mpdagl_triton", "mpdagl_triton.kernels", "mpdagl_triton.models"]
    for package in names.copy():
        folder = Path(importlib.import_module(package).__file__).parent
        names += [f"{package}.{info.name}" for info in pkgutil.iter_modules([str(folder)])
                  if not info.ispkg]
    return sorted(set(names) - {"mpdagl_triton.cli"})  # the CLI's docstring is its --help text


MODULES = modules()


def test_every_public_name_has_an_example():
    missing = []
    for name in mpdagl_triton.__all__:
        value = getattr(mpdagl_triton, name)
        if inspect.isfunction(value) or inspect.isclass(value):
            if ">>>" not in (inspect.getdoc(value) or ""):
                missing.append(name)
    assert not missing, f"public names without an example: {missing}"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             raise_on_error=False, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (printed above)"
