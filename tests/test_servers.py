"""`--server`: one unnamed server with --server-key, or several named ones."""

from __future__ import annotations

import pytest

from roam.crypto.keys import encode_key, generate_private_key, public_key
from roam.errors import ConfigError
from roam.servers import DEFAULT_NAME, parse_server, parse_servers, server_for

KEY = encode_key(public_key(generate_private_key()))
OTHER = encode_key(public_key(generate_private_key()))


def test_one_unnamed_server_takes_its_key_from_server_key() -> None:
    (spec,) = parse_servers(["198.18.0.1:4433"], KEY)
    assert (spec.name, spec.host, spec.port, spec.address) == (
        DEFAULT_NAME, "198.18.0.1", 4433, "198.18.0.1:4433")


def test_named_servers_carry_their_own_keys_and_the_first_is_the_default() -> None:
    specs = parse_servers([f"office=198.18.0.1:4433,key={KEY}",
                           f"lab=[::1]:4434,key={OTHER}"], None)
    assert [(s.name, s.address) for s in specs] == [("office", "198.18.0.1:4433"),
                                                     ("lab", "[::1]:4434")]
    assert specs[0].key != specs[1].key
    assert server_for(specs, None, "--forward x").name == "office"
    assert server_for(specs, "lab", "--forward x").name == "lab"
    with pytest.raises(ConfigError, match="no server named 'home'; the servers are office, lab"):
        server_for(specs, "home", "--forward x")


@pytest.mark.parametrize(("texts", "key", "problem"), [
    ([], KEY, "--server is needed"),
    (["198.18.0.1:4433"], None, "no key: give key=PUBLIC_KEY"),
    (["198.18.0.1"], KEY, "expected HOST:PORT"),
    (["198.18.0.1:0"], KEY, "from 1 to 65535"),
    (["bad name=198.18.0.1:1"], KEY, "expected NAME=HOST:PORT,key=PUBLIC_KEY"),
    (["a=198.18.0.1:1,pin=x"], KEY, "unknown option 'pin=x'"),
    (["a=198.18.0.1:1,key=nonsense"], None, "key=: "),
    (["198.18.0.1:1"], "nonsense", "--server-key: "),
    ([f"a=198.18.0.1:1,key={KEY}", f"a=198.18.0.2:1,key={KEY}"], None,
     "a server named 'a' is already given"),
    (["198.18.0.1:1", "198.18.0.2:1"], KEY, "give each of several servers a name"),
])
def test_bad_server_flags_name_the_problem(texts: list[str], key: str | None,
                                           problem: str) -> None:
    with pytest.raises(ConfigError, match="--server") as info:
        parse_servers(texts, key)
    assert problem in str(info.value)


def test_an_unnamed_server_may_carry_its_key_whose_base64_holds_equals_signs() -> None:
    (spec,) = parse_servers([f"198.18.0.1:4433,key={KEY}"], None)
    assert KEY.endswith("=")
    assert (spec.name, encode_key(spec.key)) == (DEFAULT_NAME, KEY)


def test_an_explicit_key_wins_over_server_key() -> None:
    spec = parse_server(f"a=198.18.0.1:1,key={OTHER}", KEY)
    assert encode_key(spec.key) == OTHER
