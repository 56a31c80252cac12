"""The modules in this area stay free of the orchestrator (STYLE.md: `fl/` never imports prefect).

A static check over the source (a subprocess import costs seconds of torch start-up); the
transitive imports are covered by the package-wide check.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FL = Path(__file__).resolve().parents[3] / "fl"
SOURCES = sorted((FL / "strategies").glob("*.py")) + [
    FL / "privacy.py",
    FL / "screening.py",
    FL / "attacks.py",
]


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_prefect_import(path: Path) -> None:
    assert "prefect" not in imported_roots(path)
