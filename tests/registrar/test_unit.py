"""A unit's --registrar flag."""

from __future__ import annotations

import pytest

from roam.crypto.keys import encode_key, generate_private_key, public_key
from roam.errors import ConfigError
from roam.registrar.unit import parse_registrar

KEY = encode_key(public_key(generate_private_key()))


def test_a_registrar_is_an_address_and_a_pinned_key() -> None:
    spec = parse_registrar(f"[::1]:4440,key={KEY}")
    assert (spec.host, spec.port, spec.address) == ("::1", 4440, "[::1]:4440")


@pytest.mark.parametrize(("text", "problem"), [
    ("198.18.0.1:4440", "missing key=PUBLIC_KEY (the registrar's identity"),
    (f"198.18.0.1,key={KEY}", "expected HOST:PORT"),
    ("198.18.0.1:4440,key=abc", "--registrar '198.18.0.1:4440,key=abc'"),
])
def test_bad_flags_are_named(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="--registrar") as info:
        parse_registrar(text)
    assert problem in str(info.value)
