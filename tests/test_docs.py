"""The docstring examples: every public function and class shows one, and every example runs and
prints what it says."""

from __future__ import annotations

import doctest
import os
import re
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


ROOT = Path(__file__).resolve().parents[1]
#: words of a lab notebook: references to files users do not have, to runs and to issues
DIARY = re.compile(r"SPEC\.md|\.\./shared|\bshared/|\brun [0-9]|\bissue[ -]?[0-9]|\bsession\b", re.IGNORECASE)


def test_user_facing_text_reads_as_a_library_not_a_diary():
    files = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("mpdagl_triton/**/*.py"),
             *ROOT.glob("bench/*.py"), *ROOT.glob("bench/*.sh")]
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in files
             for number, line in enumerate(path.read_text().splitlines(), 1) if DIARY.search(line)]
    assert not found, "\n".join(found)


def test_the_dispatch_table_in_the_docs_is_the_one_in_the_code():
    from mpdagl_triton import ops

    assert ops.dispatch_table() in (ROOT / "docs" / "design.md").read_text()


def test_readme_is_a_guide_of_at_most_250_lines_and_links_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for doc in ("docs/method.md", "docs/design.md", "docs/benchmarks.md", "docs/custom-models.md"):
        assert (ROOT / doc).is_file() and f"]({doc}" in readme, doc


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces to dashes."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in markdown.splitlines() if line.startswith("#")}


def test_every_link_into_the_docs_lands_on_a_heading():
    files = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("mpdagl_triton/**/*.py")]
    broken = []
    for path in files:
        for doc, anchor in re.findall(r"(?:docs/)?(\w+\.md)#([\w-]+)", path.read_text()):
            target = ROOT / "docs" / doc
            if not target.is_file() or anchor not in anchors(target.read_text()):
                broken.append(f"{path.relative_to(ROOT)}: {doc}#{anchor}")
    assert not broken, broken


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written(tmp_path):
    """Every command of the README's quick start, in a fresh folder, in order, except the two that
    need what a test machine lacks: the Hub (push) and CIFAR-10 (a download)."""
    import shlex
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start")[1].split("```bash")[1].split("```")[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    offline = [c for c in commands if not c.startswith(("mpdagl push", "mpdagl train --recipe cifar10"))]
    assert len(offline) == len(commands) - 2 and any("--compare" in c for c in offline)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for command in offline:
        argv = shlex.split(command)
        assert argv[0] == "mpdagl", command
        done = subprocess.run([sys.executable, "-m", "mpdagl_triton.cli", *argv[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (command, done.stderr[-2000:])
    assert (tmp_path / "runs" / "digits" / "analysis" / "compare.png").is_file()
