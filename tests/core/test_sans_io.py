"""What decides is sans-IO: no module of roam.core imports a socket, an event
loop, a thread or a clock (ruff's banned-import rule says the same at lint
time; this says it in the suite, for whoever runs only the tests)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import roam.core

CORE = Path(roam.core.__file__).resolve().parent
BANNED = {"asyncio", "socket", "selectors", "threading", "time", "subprocess", "trio", "uvloop"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_imports_no_io(path: Path) -> None:
    assert _imports(path) & BANNED == set()


def test_the_check_sees_an_import() -> None:
    # The walk itself must be able to fail.
    probe = CORE.parent / "errors.py"
    assert "enum" in _imports(probe)
