"""A client's relay route: --relay parsing, via names, and the headers of a chain."""

from __future__ import annotations

import pytest

from roam.crypto.keys import encode_key, generate_private_key, public_key
from roam.errors import ConfigError
from roam.relay.hop import Next, Proof, header_size, open_hop
from roam.relay.route import (
    MAX_HOPS,
    RelayHop,
    parse_relay,
    parse_relays,
    resolve_route,
    route_headers,
)

KEYS = [generate_private_key() for _ in range(4)]
CLIENT = generate_private_key()
SERVER = public_key(generate_private_key())


def test_a_relay_is_a_name_an_address_and_a_key() -> None:
    relay = parse_relay(f"dmz=198.18.1.1:4434,key={encode_key(public_key(KEYS[0]))}")
    assert relay == RelayHop("dmz", "198.18.1.1", 4434, public_key(KEYS[0]))
    v6 = parse_relay(f"v6=[2001:db8::1]:4434,key={encode_key(public_key(KEYS[0]))}")
    assert v6.address == "[2001:db8::1]:4434"


@pytest.mark.parametrize(("text", "error"), [
    ("dmz", "expected NAME=HOST:PORT,key=PUBLIC_KEY"),
    ("d m=1.2.3.4:5,key=x", "expected NAME=HOST:PORT"),
    ("dmz=1.2.3.4:5", "missing key=PUBLIC_KEY"),
    ("dmz=1.2.3.4:0,key=" + "A" * 43 + "=", "not a number from 1 to 65535"),
    ("dmz=1.2.3.4:5,key=nonsense", "--relay 'dmz=1.2.3.4:5,key=nonsense'"),
])
def test_a_wrong_relay_is_named(text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_relay(text)


def test_relay_names_are_unique_and_via_names_must_exist() -> None:
    text = f"a=127.0.0.1:1,key={encode_key(public_key(KEYS[0]))}"
    with pytest.raises(ConfigError, match="already given"):
        parse_relays([text, text])
    relays = parse_relays([text])
    assert resolve_route(("a",), relays, "wifi") == (relays["a"],)
    with pytest.raises(ConfigError, match=r"path 'wifi': no relay named 'b' \(known: a\)"):
        resolve_route(("a", "b"), relays, "wifi")
    with pytest.raises(ConfigError, match="at most"):
        resolve_route(("a",) * (MAX_HOPS + 1), relays, "wifi")


def test_a_chain_sends_one_header_per_relay_each_naming_the_next_hop() -> None:
    route = [RelayHop(f"r{i}", "127.0.0.1", 5000 + i, public_key(k)) for i, k in
             enumerate(KEYS)]
    data = route_headers(route, sender_private=CLIENT, target=SERVER, server="198.18.0.2:4433",
                         wall=1_800_000_000.0, stamp_ns=42,
                         proof_for=lambda relay, wall: (Proof.KEY, 0, b""))
    stamps = []
    for i, key in enumerate(KEYS):
        size = header_size(data)
        assert size is not None
        hop = open_hop(data[:size], key)  # each opens only with its own relay's key
        data = data[size:]
        assert hop.sender == public_key(CLIENT)
        assert hop.target == SERVER
        assert hop.next is Next.DIAL
        if i + 1 < len(KEYS):
            assert hop.address == f"127.0.0.1:{5001 + i}"
            assert hop.next_key == public_key(KEYS[i + 1])
        else:
            assert hop.address == "198.18.0.2:4433"
            assert hop.next_key == SERVER
        stamps.append(hop.stamp_ns)
    assert data == b""
    assert stamps == [42, 43, 44, 45]


def test_a_servers_uplink_is_an_address_and_a_key_named_by_its_flag() -> None:
    key = encode_key(public_key(KEYS[0]))
    assert parse_relay(f"198.18.1.1:4434,key={key}", flag="--uplink", name="uplink0") == \
        RelayHop("uplink0", "198.18.1.1", 4434, public_key(KEYS[0]))
    with pytest.raises(ConfigError, match=r"--uplink '127.0.0.1:1': missing key="):
        parse_relay("127.0.0.1:1", flag="--uplink", name="uplink0")
