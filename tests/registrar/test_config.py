"""The registrar's lookup policy file."""

from __future__ import annotations

from pathlib import Path

import pytest

from roam.crypto.keys import encode_key, generate_private_key, public_key
from roam.errors import KeyFileError
from roam.registrar.config import load_lookup_policy
from roam.registrar.records import ANY

A, B = (public_key(generate_private_key()) for _ in range(2))


def test_the_policy_reads_keys_and_stars(tmp_path: Path) -> None:
    path = tmp_path / "policy"
    path.write_text(f"# who may see whom\n{encode_key(A)} {encode_key(B)}\n"
                    f"{encode_key(A)} *  # A sees everyone\n* {encode_key(B)}\n")
    assert load_lookup_policy(path) == {A: frozenset({B, None}), ANY: frozenset({B})}


@pytest.mark.parametrize(("line", "problem"), [
    ("onlyone", "expected ASKER TARGET"),
    ("x *", "line 1: asker"),
    (f"* {'y' * 10}", "line 1: target"),
])
def test_bad_lines_are_named(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "policy"
    path.write_text(line + "\n")
    with pytest.raises(KeyFileError, match=problem):
        load_lookup_policy(path)
