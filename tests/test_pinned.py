"""`HOST:PORT,key=PUBLIC_KEY` and the names of relays and servers."""

from __future__ import annotations

import pytest

from roam.crypto.keys import encode_key, generate_private_key, public_key
from roam.errors import ConfigError
from roam.pinned import is_name, parse_pinned

KEY = public_key(generate_private_key())


def test_an_address_and_a_key() -> None:
    assert parse_pinned(f"[::1]:4434,key={encode_key(KEY)}", flag="--x", text="t",
                        whose="relay") == ("::1", 4434, KEY)


@pytest.mark.parametrize(("part", "problem"), [
    ("198.18.0.1:1", "--x 't': missing key=PUBLIC_KEY (the relay's identity"),
    ("198.18.0.1:1,pin=abc", "missing key=PUBLIC_KEY"),
    (f"198.18.0.1,key={encode_key(KEY)}", "expected HOST:PORT"),
    (f"198.18.0.1:0,key={encode_key(KEY)}", "port '0' is not a number from 1 to 65535"),
    ("198.18.0.1:1,key=abc", "--x 't': "),
])
def test_problems_are_named_with_the_flag(part: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pinned(part, flag="--x", text="t", whose="relay")
    assert problem in str(info.value)


def test_names() -> None:
    assert is_name("dmz-1.eu_west")
    for bad in ("", "-x", "a b", "a/b", "a=b", "é"):
        assert not is_name(bad)
