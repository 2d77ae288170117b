"""The one-way data flow of DESIGN.md: models and building blocks never import the trainer or the benches."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "commonspace"
# package -> packages it must not import
FORBIDDEN = {"models": ("commonspace.train", "commonspace.bench", "commonspace.cli"),
             "nn": ("commonspace.train", "commonspace.bench", "commonspace.models", "commonspace.cli"),
             "losses": ("commonspace.train", "commonspace.bench", "commonspace.models", "commonspace.cli"),
             "train": ("commonspace.bench", "commonspace.cli")}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_downstream_layers(package: str) -> None:
    bad = [(str(f.relative_to(SRC)), name) for f in sorted((SRC / package).rglob("*.py")) for name in _imports(f)
           if any(name == b or name.startswith(b + ".") for b in FORBIDDEN[package])]
    assert not bad, f"{package} imports downstream layers (including function-level imports): {bad}"
