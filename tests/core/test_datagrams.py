"""The datagram path in memory: probes, the up/down decision, packets, garbage."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.core import frames as fr
from roam.core.datagrams import (
    CHECK_INTERVAL,
    KEEPALIVE_INTERVAL,
    MIN_PACKET,
    PROBE_FLOOR,
    RETRY_INTERVAL,
    DatagramPath,
    DatagramState,
    parse_packet,
)
from roam.crypto.noise import CipherState
from roam.errors import CryptoError, FramingError, ProtocolError

TAG = b"\x11" * 8


def pair(now: float = 0.0) -> tuple[DatagramPath, DatagramPath]:
    k1, k2 = os.urandom(32), os.urandom(32)
    client = DatagramPath(TAG, CipherState("AESGCM", k1), CipherState("AESGCM", k2), now,
                          is_client=True)
    server = DatagramPath(TAG, CipherState("AESGCM", k2), CipherState("AESGCM", k1), now,
                          is_client=False)
    return client, server


def deliver(src: DatagramPath, dst: DatagramPath, now: float) -> list[fr.Dgram]:
    """Every packet `src` queued goes to `dst`; the DGRAMs that arrive."""
    out: list[fr.Dgram] = []
    for packet in src.packets_to_send():
        out += dst.receive(packet, now)[0]
    return out


def up_pair() -> tuple[DatagramPath, DatagramPath]:
    client, server = pair()
    client.restart(0.0)
    deliver(client, server, 0.01)  # PING; the server answers and probes back
    deliver(server, client, 0.02)  # PONG and the server's PING
    deliver(client, server, 0.03)  # PONG
    return client, server


def test_a_round_trip_brings_udp_up_on_both_sides() -> None:
    client, server = up_pair()
    assert client.state is DatagramState.UP
    assert server.state is DatagramState.UP
    assert client.rtt.srtt == pytest.approx(0.02)


def test_not_usable_before_the_first_answer() -> None:
    client, _server = pair()
    client.restart(0.0)
    assert client.state is DatagramState.PROBING
    assert client.datagram(fr.encode(fr.Dgram(1, b"x")), 0.0) is None


def test_datagrams_go_both_ways() -> None:
    client, server = up_pair()
    packet = client.datagram(fr.encode(fr.Dgram(1, b"query")), 0.1)
    assert packet is not None
    assert len(packet) == MIN_PACKET + len(fr.encode(fr.Dgram(1, b"query")))
    got, newest = server.receive(packet, 0.11)
    assert got == [fr.Dgram(1, b"query")]
    assert newest
    answer = server.datagram(fr.encode(fr.Dgram(1, b"answer")), 0.12)
    assert answer is not None
    assert client.receive(answer, 0.13)[0] == [fr.Dgram(1, b"answer")]


def test_an_unanswered_probe_brings_udp_down_and_the_client_retries() -> None:
    client, server = up_pair()
    t = 0.03 + CHECK_INTERVAL
    packet = client.datagram(fr.encode(fr.Dgram(1, b"q")), t)  # a PING rides along
    assert packet is not None  # ...and is lost with it
    deadline = client.get_timer()
    assert deadline == pytest.approx(t + PROBE_FLOOR)
    client.handle_timer(deadline)
    assert client.state is DatagramState.DOWN
    assert client.datagram(fr.encode(fr.Dgram(1, b"q")), deadline) is None
    assert client.get_timer() == pytest.approx(deadline + RETRY_INTERVAL)
    client.handle_timer(deadline + RETRY_INTERVAL)
    deliver(client, server, deadline + RETRY_INTERVAL)
    deliver(server, client, deadline + RETRY_INTERVAL + 0.01)
    assert client.state is DatagramState.UP


def test_the_server_finds_out_by_its_own_probe() -> None:
    _client, server = up_pair()
    t = 0.03 + CHECK_INTERVAL
    assert server.datagram(fr.encode(fr.Dgram(2, b"a")), t) is not None
    server.packets_to_send()
    server.handle_timer(t + PROBE_FLOOR)
    assert server.state is DatagramState.DOWN
    assert server.get_timer() is None  # the server never probes on its own


def test_no_ping_while_answers_are_fresh() -> None:
    client, server = up_pair()
    packet = client.datagram(fr.encode(fr.Dgram(1, b"q")), 0.5)
    assert packet is not None
    server.receive(packet, 0.5)
    assert server.packets_to_send() == []  # no PING inside, so no PONG


def test_the_client_keeps_the_nat_binding_warm() -> None:
    client, _server = up_pair()
    deadline = client.get_timer()
    assert deadline is not None
    assert deadline == pytest.approx(0.03 + KEEPALIVE_INTERVAL, abs=0.05)
    client.handle_timer(deadline)
    assert len(client.packets_to_send()) == 1


def test_restart_on_a_new_path_probes_before_trusting_it() -> None:
    client, _server = up_pair()
    client.restart(1.0)
    assert client.state is DatagramState.PROBING
    assert len(client.packets_to_send()) == 1


def test_replays_and_other_sessions_are_refused() -> None:
    client, server = up_pair()
    packet = client.datagram(fr.encode(fr.Dgram(1, b"q")), 0.1)
    assert packet is not None
    server.receive(packet, 0.1)
    with pytest.raises(CryptoError, match="replayed"):
        server.receive(packet, 0.2)
    with pytest.raises(FramingError, match="another session"):
        server.receive(packet[:1] + b"\x22" * 8 + packet[9:], 0.2)
    assert server.rejected == 1


def test_stream_frames_in_a_datagram_packet_break_the_rules() -> None:
    client, server = up_pair()
    packet = client.seal(fr.encode(fr.Ack(1)), 0.1)
    with pytest.raises(ProtocolError, match="ACK in a datagram packet"):
        server.receive(packet, 0.1)


def test_parse_packet_names_the_problem() -> None:
    with pytest.raises(FramingError, match="the least is"):
        parse_packet(b"\x01" * (MIN_PACKET - 1))
    with pytest.raises(FramingError, match="kind 0x07"):
        parse_packet(b"\x07" + bytes(MIN_PACKET))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_only_protocol_errors(data: bytes) -> None:
    client, server = up_pair()
    for packet in (data, b"\x01" + TAG + data):
        with contextlib.suppress(ProtocolError):
            server.receive(packet, 1.0)
    packet = client.datagram(fr.encode(fr.Dgram(1, b"fine")), 1.0)
    assert packet is not None
    assert server.receive(packet, 1.0)[0] == [fr.Dgram(1, b"fine")]
