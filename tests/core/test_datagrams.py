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
    FORGET_AFTER,
    KEEPALIVE_INTERVAL,
    MAX_PACKET,
    MAX_REDUNDANT_CHANNELS,
    MIN_PACKET,
    PACKET_DATA,
    PACKET_TWO_PATH,
    PROBE_FLOOR,
    PROBE_TRIES,
    RETRY_INTERVAL,
    DatagramPath,
    DatagramState,
    Leg,
    Redundancy,
    Where,
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
    for packet, _ in src.packets_to_send():
        out += dst.receive(packet, now)[0]
    return out


def one(packets: list[tuple[bytes, Where]]) -> bytes:
    """The packet of a datagram sent on one path."""
    assert len(packets) == 1, packets
    return packets[0][0]


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
    assert client.datagram(fr.encode(fr.Dgram(1, b"x")), 0.0) == []


def test_datagrams_go_both_ways() -> None:
    client, server = up_pair()
    packet = one(client.datagram(fr.encode(fr.Dgram(1, b"query")), 0.1))
    assert len(packet) == MIN_PACKET + len(fr.encode(fr.Dgram(1, b"query")))
    got, newest = server.receive(packet, 0.11)
    assert got == [fr.Dgram(1, b"query")]
    assert newest
    answer = one(server.datagram(fr.encode(fr.Dgram(1, b"answer")), 0.12))
    assert client.receive(answer, 0.13)[0] == [fr.Dgram(1, b"answer")]


def test_unanswered_probes_bring_udp_down_and_the_client_retries() -> None:
    client, server = up_pair()
    t = 0.03 + CHECK_INTERVAL
    packet = client.datagram(fr.encode(fr.Dgram(1, b"q")), t)  # a PING rides along
    assert packet  # ...and is lost with it
    # The PING is sent again, evenly within the probe timeout, before UDP
    # counts as down: PROBE_TRIES in all, every one lost.
    for n in range(1, PROBE_TRIES):
        deadline = client.get_timer()
        assert deadline == pytest.approx(t + n * PROBE_FLOOR / PROBE_TRIES)
        client.handle_timer(deadline)
        assert client.state is DatagramState.UP
        assert len(client.packets_to_send()) == 1
    deadline = client.get_timer()
    assert deadline == pytest.approx(t + PROBE_FLOOR)
    client.handle_timer(deadline)
    assert client.state is DatagramState.DOWN
    assert client.datagram(fr.encode(fr.Dgram(1, b"q")), deadline) == []
    assert client.get_timer() == pytest.approx(deadline + RETRY_INTERVAL)
    client.handle_timer(deadline + RETRY_INTERVAL)
    deliver(client, server, deadline + RETRY_INTERVAL)
    deliver(server, client, deadline + RETRY_INTERVAL + 0.01)
    assert client.state is DatagramState.UP


def test_one_lost_probe_does_not_bring_udp_down() -> None:
    client, server = up_pair()
    t = 0.03 + CHECK_INTERVAL
    assert client.datagram(fr.encode(fr.Dgram(1, b"q")), t)  # its PING is lost
    retry = client.get_timer()
    assert retry is not None
    client.handle_timer(retry)
    deliver(client, server, retry + 0.01)  # the second PING gets through
    deliver(server, client, retry + 0.02)
    assert client.state is DatagramState.UP
    assert client.get_timer() == pytest.approx(retry + KEEPALIVE_INTERVAL)


def test_the_server_finds_out_by_its_own_probe() -> None:
    _client, server = up_pair()
    t = 0.03 + CHECK_INTERVAL
    assert server.datagram(fr.encode(fr.Dgram(2, b"a")), t)
    server.packets_to_send()
    server.handle_timer(t + PROBE_FLOOR)
    assert server.state is DatagramState.DOWN
    assert server.get_timer() is None  # the server never probes on its own


def test_no_ping_while_answers_are_fresh() -> None:
    client, server = up_pair()
    packet = one(client.datagram(fr.encode(fr.Dgram(1, b"q")), 0.5))
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
    packet = one(client.datagram(fr.encode(fr.Dgram(1, b"q")), 0.1))
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
    assert parse_packet(b"\x02" + TAG + bytes(MIN_PACKET))[:3] == (PACKET_TWO_PATH, TAG, 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_only_protocol_errors(data: bytes) -> None:
    client, server = up_pair()
    for packet in (data, b"\x01" + TAG + data, b"\x02" + TAG + data):
        with contextlib.suppress(ProtocolError):
            server.receive(packet, 1.0, ("192.0.2.9", 9))
    packet = one(client.datagram(fr.encode(fr.Dgram(1, b"fine")), 1.0))
    assert server.receive(packet, 1.0)[0] == [fr.Dgram(1, b"fine")]


# ---- redundant channels: two legs, two addresses ------------------------------

# Where the server sees the client's legs come from (opaque to the core).
WIFI: Where = ("198.18.1.2", 40000)
CELL: Where = ("198.19.0.1", 50000)  # the backup path, behind a carrier's NAT


class Net:
    """A client with a primary and a backup leg, and the server that sees each
    leg from an address of its own; a leg in `lost` loses what it carries."""

    def __init__(self) -> None:
        self.client, self.server = pair()
        self.address: dict[Leg, Where] = {Leg.PRIMARY: WIFI, Leg.SECOND: CELL}
        self.lost: set[Leg] = set()

    def leg(self, address: Where) -> Leg:
        return next(leg for leg, a in self.address.items() if a == address)

    def up(self, redundant: int | None = 1) -> None:
        """Both legs proven both ways, and channel `redundant` marked."""
        self.client.restart(0.0)
        self.client.second_bound(0.0)
        self.flush(0.01)
        self.flush(0.02)
        if redundant is not None:
            self.client.mark_redundant(redundant)
        assert self.client.state is DatagramState.UP
        assert self.client.second is not None
        assert self.client.second.state is DatagramState.UP
        assert self.server.state is DatagramState.UP

    def upstream(self, packets: list[tuple[bytes, Where]], now: float) -> list[fr.Dgram]:
        out: list[fr.Dgram] = []
        for packet, leg in packets:
            assert isinstance(leg, Leg)
            if leg not in self.lost:
                out += self.server.receive(packet, now, self.address[leg])[0]
        return out

    def downstream(self, packets: list[tuple[bytes, Where]], now: float) -> list[fr.Dgram]:
        out: list[fr.Dgram] = []
        for packet, address in packets:
            leg = self.leg(address)
            if leg not in self.lost:
                out += self.client.receive(packet, now, leg)[0]
        return out

    def flush(self, now: float) -> None:
        """One round of probes and answers each way."""
        self.upstream(self.client.packets_to_send(), now)
        self.downstream(self.server.packets_to_send(), now)


def dgram(channel: int, data: bytes = b"voice") -> bytes:
    return fr.encode(fr.Dgram(channel, data))


def test_a_redundant_datagram_is_one_packet_sent_on_both_legs() -> None:
    net = Net()
    net.up()
    sent = net.client.datagram(dgram(1), 0.5, 1)
    assert [leg for _, leg in sent] == [Leg.PRIMARY, Leg.SECOND]
    assert sent[0][0] == sent[1][0]  # sealed once: one counter
    assert sent[0][0][0] == PACKET_TWO_PATH
    assert net.client.copies_sent == 1
    assert net.client.datagrams_sent == 1
    got = net.upstream(sent, 0.51)
    assert got == [fr.Dgram(1, b"voice")]  # the later copy was dropped
    assert net.server.duplicates == 1
    assert net.server.rejected == 0
    assert net.server.datagrams_received == 1


def test_the_server_learns_the_channel_and_sends_its_datagrams_to_both_addresses() -> None:
    net = Net()
    net.up()
    net.upstream(net.client.datagram(dgram(1), 0.5, 1), 0.51)
    assert net.server.is_redundant(1)
    assert not net.server.is_redundant(3)
    answer = net.server.datagram(dgram(1, b"answer"), 0.52, 1)
    assert [where for _, where in answer] == [WIFI, CELL]
    assert answer[0][0] == answer[1][0]
    assert answer[0][0][0] == PACKET_TWO_PATH
    assert net.downstream(answer, 0.53) == [fr.Dgram(1, b"answer")]
    assert net.client.duplicates == 1
    # Another channel's datagrams go to the peer alone, as ever.
    other = net.server.datagram(dgram(3, b"dns"), 0.54, 3)
    assert [(p[0], where) for p, where in other] == [(PACKET_DATA, WIFI)]
    assert net.server.redundancy(0.55) is Redundancy.TWO_PATHS


def test_a_lost_copy_is_made_up_by_the_other_path() -> None:
    net = Net()
    net.up()
    net.lost = {Leg.PRIMARY}
    assert net.upstream(net.client.datagram(dgram(1, b"one"), 0.5, 1), 0.5) == [
        fr.Dgram(1, b"one")]
    net.lost = {Leg.SECOND}
    assert net.upstream(net.client.datagram(dgram(1, b"two"), 0.6, 1), 0.6) == [
        fr.Dgram(1, b"two")]
    assert net.server.duplicates == 0
    net.lost = {Leg.PRIMARY}
    assert net.downstream(net.server.datagram(dgram(1, b"back"), 0.7, 1), 0.7) == [
        fr.Dgram(1, b"back")]


def test_the_backup_legs_packets_never_move_the_peer() -> None:
    net = Net()
    net.up()
    assert net.server.peer == WIFI
    # The backup leg's PINGs and copies carry the newest counters; still the
    # peer stays where the primary leg is.
    for t in (16.0, 32.0):
        net.client.handle_timer(t)  # keepalives on both legs
        net.flush(t)
    _, newest = net.server.receive(one(net.client.datagram(dgram(1), 40.0, None)), 40.0, WIFI)
    assert newest
    copies = net.client.datagram(dgram(1), 40.1, 1)
    for packet, leg in reversed(copies):  # the backup's copy first
        assert net.server.receive(packet, 40.1, net.address[leg])[1] is False
    assert net.server.peer == WIFI
    # A primary packet from a new address (the NAT picked a new port) moves
    # it; an older primary packet from the old address cannot move it back.
    late = one(net.client.datagram(dgram(3), 41.0, 3))
    moved = one(net.client.datagram(dgram(3), 41.1, 3))
    assert net.server.receive(moved, 41.2, ("198.18.1.2", 40001)) == ([fr.Dgram(3, b"voice")],
                                                                      True)
    assert net.server.receive(late, 41.3, WIFI)[1] is False
    assert net.server.peer == ("198.18.1.2", 40001)


def test_the_server_forgets_an_address_it_has_not_heard_from() -> None:
    net = Net()
    net.up()
    net.upstream(net.client.datagram(dgram(1), 0.5, 1), 0.5)
    # From now on only the primary leg is heard (its own datagrams).
    t = 0.5 + FORGET_AFTER - 1
    net.upstream(net.client.datagram(dgram(3), t, 3), t)
    assert [w for _, w in net.server.datagram(dgram(1), t, 1)] == [WIFI, CELL]
    later = 0.5 + FORGET_AFTER + 0.1
    net.upstream(net.client.datagram(dgram(3), later, 3), later)
    assert [(p[0], w) for p, w in net.server.datagram(dgram(1), later, 1)] == [
        (PACKET_DATA, WIFI)]
    assert net.server.redundancy(later) is Redundancy.NO_BACKUP
    assert net.server.addresses(later) == [(WIFI, pytest.approx(0.0))]


def test_a_third_address_replaces_the_least_recently_heard_other() -> None:
    net = Net()
    net.up()
    moved: Where = ("198.19.0.1", 50001)  # the backup leg's NAT mapping changed
    net.address[Leg.SECOND] = moved
    net.client.handle_timer(16.0)  # keepalives: the backup's now from `moved`
    net.flush(16.0)
    assert [a for a, _ in net.server.addresses(16.0)] == [WIFI, moved]
    # The peer is never the one to go, however long ago it was heard: here
    # only the backup leg gets through, from yet another mapping.
    net.lost = {Leg.PRIMARY}
    third: Where = ("198.19.0.1", 50002)
    net.address[Leg.SECOND] = third
    net.upstream(net.client.datagram(dgram(1), 17.0, 1), 17.0)
    assert [a for a, _ in net.server.addresses(17.0)] == [WIFI, third]
    assert net.server.peer == WIFI


def test_forged_packet_kinds_are_refused_by_the_aead() -> None:
    net = Net()
    net.up()
    single = one(net.client.datagram(dgram(3, b"plain"), 0.5, 3))
    copies = net.client.datagram(dgram(1, b"copied"), 0.6, 1)
    heard = net.server.addresses(0.7)
    as_two_path = bytes([PACKET_TWO_PATH]) + single[1:]
    as_single = bytes([PACKET_DATA]) + copies[0][0][1:]
    for forged in (as_two_path, as_single):
        with pytest.raises(CryptoError):
            net.server.receive(forged, 0.7, CELL)
    assert net.server.rejected == 2
    assert not net.server.is_redundant(3)  # a forged kind marks nothing
    assert net.server.addresses(0.7) == heard  # nor refreshes an address
    # The real packets were not spent by the forgeries.
    assert net.server.receive(single, 0.8, WIFI)[0] == [fr.Dgram(3, b"plain")]
    assert net.upstream(copies, 0.8) == [fr.Dgram(1, b"copied")]


def test_a_copy_seen_again_is_a_duplicate_but_a_single_packet_a_replay() -> None:
    net = Net()
    net.up()
    copies = net.client.datagram(dgram(1), 0.5, 1)
    net.upstream(copies, 0.5)
    assert net.server.receive(copies[0][0], 0.6, ("203.0.113.5", 1)) == ([], False)
    assert net.server.duplicates == 2
    assert [a for a, _ in net.server.addresses(0.6)] == [WIFI, CELL]  # learnt nothing
    single = one(net.client.datagram(dgram(3), 0.7, 3))
    net.server.receive(single, 0.7, WIFI)
    with pytest.raises(CryptoError, match="replayed"):
        net.server.receive(single, 0.8, WIFI)
    assert (net.server.duplicates, net.server.rejected) == (2, 1)


def test_each_leg_is_proven_by_its_own_probes() -> None:
    net = Net()
    net.client.restart(0.0)
    net.flush(0.01)
    net.flush(0.02)
    net.client.mark_redundant(1)
    assert net.client.redundancy(0.02) is Redundancy.NO_BACKUP
    net.client.second_bound(0.1)
    assert net.client.redundancy(0.1) is Redundancy.PROBING
    ((probe, leg),) = net.client.packets_to_send()
    assert (leg, probe[0]) == (Leg.SECOND, PACKET_TWO_PATH)
    net.upstream([(probe, leg)], 0.11)
    ((pong, where),) = net.server.packets_to_send()
    assert where == CELL  # answered where the PING came from
    # The answer arriving on the other socket proves nothing about this one.
    net.client.receive(pong, 0.12, Leg.PRIMARY)
    assert net.client.second is not None
    assert net.client.second.state is DatagramState.PROBING
    net.client.handle_timer(0.1 + PROBE_FLOOR / PROBE_TRIES)  # PINGs again
    net.flush(0.5)
    assert net.client.second.state is DatagramState.UP
    assert net.client.redundancy(0.5) is Redundancy.TWO_PATHS
    assert net.client.state is DatagramState.UP


def test_the_backup_leg_is_kept_alive_and_found_dead() -> None:
    net = Net()
    net.up()
    second = net.client.second
    assert second is not None
    # The backup leg last sent its PING at 0, the primary its PONG at 0.01.
    assert net.client.get_timer() == pytest.approx(KEEPALIVE_INTERVAL)
    deadline = 0.01 + KEEPALIVE_INTERVAL
    net.client.handle_timer(deadline)
    keepalives = net.client.packets_to_send()
    legs = [(p[0], leg) for p, leg in keepalives]
    assert legs == [(PACKET_DATA, Leg.PRIMARY), (PACKET_TWO_PATH, Leg.SECOND)]
    net.upstream(keepalives, deadline)
    net.downstream(net.server.packets_to_send(), deadline)
    # The backup path stops carrying UDP: its checks go unanswered.
    net.lost = {Leg.SECOND}
    t = deadline + 1.0
    while second.state is DatagramState.UP:
        sent = net.client.datagram(dgram(1), t, 1)
        net.upstream(sent, t)
        net.downstream(net.server.packets_to_send(), t)
        net.flush(t)
        net.client.handle_timer(t)
        t += 0.05
    assert second.state is DatagramState.DOWN
    assert t < deadline + 1.0 + CHECK_INTERVAL + PROBE_FLOOR + 0.1
    assert net.client.redundancy(t) is Redundancy.BACKUP_DOWN
    alone = net.client.datagram(dgram(1), t, 1)
    assert [(p[0], leg) for p, leg in alone] == [(PACKET_DATA, Leg.PRIMARY)]
    # It is tried again every RETRY_INTERVAL, and comes back.
    net.lost = set()
    retry = net.client.get_timer()
    assert retry is not None
    net.client.handle_timer(retry)
    net.flush(retry + 0.01)
    assert second.state is DatagramState.UP


def test_no_two_path_packet_goes_out_before_the_backup_leg_answered() -> None:
    # A server that does not know kind 0x02 drops such packets unread: it
    # never answers the backup leg's probes, so it never gets a copy either.
    net = Net()
    net.client.restart(0.0)
    net.flush(0.01)
    net.flush(0.02)
    net.client.mark_redundant(1)
    net.client.second_bound(0.1)
    net.client.packets_to_send()  # the backup leg's PING, lost
    sent = net.client.datagram(dgram(1), 0.2, 1)
    assert [(p[0], leg) for p, leg in sent] == [(PACKET_DATA, Leg.PRIMARY)]
    assert net.upstream(sent, 0.21) == [fr.Dgram(1, b"voice")]
    assert not net.server.is_redundant(1)
    assert net.client.copies_sent == 0


def test_with_the_primary_down_a_redundant_channel_uses_the_backup_alone() -> None:
    net = Net()
    net.up()
    net.client.primary_unbound()
    # Still TWO_PATH: nothing of the backup leg's may move the server's peer.
    sent = net.client.datagram(dgram(1), 0.5, 1)
    assert [(p[0], leg) for p, leg in sent] == [(PACKET_TWO_PATH, Leg.SECOND)]
    assert net.client.datagram(dgram(3), 0.5, 3) == []  # others take the stream
    net.client.second_unbound()
    assert net.client.datagram(dgram(1), 0.6, 1) == []
    assert net.client.redundancy(0.6) is Redundancy.NO_BACKUP


def test_the_server_probes_back_to_the_backup_when_it_heard_nothing_else() -> None:
    net = Net()
    net.client.second_bound(0.0)
    net.flush(0.01)
    assert net.server.peer is None
    assert net.server.state is DatagramState.PROBING
    net.flush(0.02)  # the server's own PING went to CELL and was answered
    assert net.server.state is DatagramState.UP


def test_redundant_channels_are_bounded_and_closed_ones_forgotten() -> None:
    net = Net()
    net.up(redundant=None)
    for channel in range(1, 2 * (MAX_REDUNDANT_CHANNELS + 10), 2):
        net.upstream(net.client.datagram(dgram(channel), 1.0, None), 1.0)
        net.client.mark_redundant(channel)
        net.upstream(net.client.datagram(dgram(channel), 1.0, channel), 1.0)
    assert net.client.redundant_channels == MAX_REDUNDANT_CHANNELS
    assert net.server.redundant_channels == MAX_REDUNDANT_CHANNELS
    assert not net.client.is_redundant(1)
    assert not net.server.is_redundant(1)
    last = 2 * (MAX_REDUNDANT_CHANNELS + 10) - 1
    net.client.keep_channels({last})
    assert net.client.redundant_channels == 1
    assert net.client.is_redundant(last)


def test_statistics_show_copies_duplicates_and_the_backup_leg() -> None:
    net = Net()
    assert "redundant" not in net.client.statistics(0.0)
    net.up()
    net.upstream(net.client.datagram(dgram(1), 0.5, 1), 0.5)
    net.downstream(net.server.datagram(dgram(1), 0.5, 1), 0.5)
    client = net.client.statistics(0.6)
    assert client["duplicates"] == 1
    assert client["redundant"] == {"channels": 1, "mode": "two paths", "copies_sent": 1,
                                   "duplicates": 1, "second_state": "up",
                                   "second_rtt_ms": pytest.approx(10.0)}
    server = net.server.statistics(0.6)
    assert server["redundant"] == {"channels": 1, "mode": "two paths", "copies_sent": 1,
                                   "duplicates": 1}


def test_a_datagram_with_no_room_for_a_ping_still_fits_and_a_ping_goes_alone() -> None:
    client, _server = up_pair()
    t = 0.03 + CHECK_INTERVAL
    frame = b"x" * (MAX_PACKET - MIN_PACKET)
    sent = client.datagram(frame, t)
    assert [len(p) for p, _ in sent] == [MAX_PACKET]
    ((ping, where),) = client.packets_to_send()
    assert where is Leg.PRIMARY
    assert len(ping) < 64


def test_a_datagram_too_big_for_udp_takes_the_stream_without_a_ping() -> None:
    client, _server = up_pair()
    t = 0.03 + CHECK_INTERVAL
    assert client.datagram(b"x" * (MAX_PACKET - MIN_PACKET + 1), t) == []
    assert client.get_timer() == pytest.approx(0.03 + KEEPALIVE_INTERVAL, abs=0.05)
