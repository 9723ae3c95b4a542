"""Imports run one way: kernels <- ops <- layers <- models <- data/train <- hub <- cli."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mpdagl_triton"

#: each module's level; a module may import its own level and below, never above
LEVELS = {
    "errors": 0, "_version": 0, "surrogates": 0, "checkpoint": 0, "runtime": 0, "publish": 0,
    "kernels": 1,
    "reference": 2,
    "ops": 3,
    "layers": 4,
    "models": 5,
    "augment": 6, "events": 6, "data": 6, "export": 6,
    "analysis": 7, "train": 7,
    "hub": 8,
    "cli": 9,
}


def level(module: str) -> int:
    """The level of ``mpdagl_triton.<name>[.<sub>]``: its first component's."""
    return LEVELS[module.split(".")[1]]


def imported_modules(path: Path, name: str) -> set[str]:
    """Every ``mpdagl_triton`` module ``path`` imports, at the top or inside a function."""
    found = set()
    package = name.rsplit(".", 1)[0] if path.name != "__init__.py" else name
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("mpdagl_triton.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target == "mpdagl_triton":  # from mpdagl_triton import data, models
                found |= {f"mpdagl_triton.{alias.name}" for alias in node.names}
            elif target.startswith("mpdagl_triton."):
                found.add(target)
    return found


def test_no_module_imports_a_higher_one():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts[:-1] if path.name == "__init__.py" else relative.parts)
        if name == "mpdagl_triton":  # the public namespace resolves names lazily, from every level
            continue
        for target in imported_modules(path, name):
            if level(target) > level(name):
                upward.append(f"{name} imports {target}")
    assert not upward, "\n".join(upward)


def test_the_levels_name_every_module():
    modules = {p.stem if p.parent == PACKAGE else p.parent.name for p in PACKAGE.rglob("*.py")}
    assert modules - {"__init__"} <= set(LEVELS), modules - set(LEVELS)
