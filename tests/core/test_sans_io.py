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


# What roam.core imports from outside it runs inside it too (the crypto,
# the policy, the link states roam.core.paths reads): the same rule holds.
# The relay's decisions (hop headers, admission, arrivals, uplinks, routes) too.
RELAY = [CORE.parent / "relay" / f"{name}.py"
         for name in ("hop", "admission", "core", "uplinks", "route", "directory")]
REGISTRAR = [CORE.parent / "registrar" / f"{name}.py"
             for name in ("messages", "channel", "records", "sipsyntax", "sipuri",
                          "sipmessage", "sipdigest", "sipregister", "sipbindings")]
DECIDING = [*sorted(CORE.glob("*.py")), *sorted((CORE.parent / "crypto").glob("*.py")),
            *sorted((CORE.parent / "policy").glob("*.py")), CORE.parent / "links" / "state.py",
            *RELAY, *REGISTRAR]


def test_whatever_core_imports_from_roam_is_checked_too() -> None:
    checked = {p.relative_to(CORE.parent).with_suffix("").as_posix().replace("/", ".")
               for p in DECIDING}
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                    "roam.") and not node.module.startswith("roam.core"):
                module = node.module.removeprefix("roam.")
                assert module in checked or module == "errors", (path.name, node.module)


@pytest.mark.parametrize("path", DECIDING, ids=lambda p: p.relative_to(CORE.parent).as_posix())
def test_core_module_imports_no_io(path: Path) -> None:
    assert _imports(path) & BANNED == set()


def test_the_check_sees_an_import() -> None:
    # The walk itself must be able to fail.
    probe = CORE.parent / "errors.py"
    assert "enum" in _imports(probe)
