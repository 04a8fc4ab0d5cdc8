"""Channels alone: their table, credit, FIN both ways, resets that cross."""

from __future__ import annotations

import pytest

from roam.core import events as ev
from roam.core import frames as fr
from roam.core.channels import EARLY_DATAGRAMS, Channels
from roam.core.replay import ReplayBuffer
from roam.core.session import SessionConfig
from roam.core.states import ChannelState
from roam.errors import CloseCode, ProtocolError


def make(is_client: bool = True, **cfg: int) -> tuple[Channels, ReplayBuffer, list[ev.Event]]:
    replay, events = ReplayBuffer(), []  # type: ignore[var-annotated]
    chans = Channels(SessionConfig(**cfg), replay, events, is_client=is_client, compressor=None,
                     send_history=None, recv_history=None)
    return chans, replay, events


def queued(replay: ReplayBuffer) -> list[fr.Frame]:
    return [f for e in replay.pending or () for f in fr.decode_frames(e[2] + bytes(e[3]))]


def test_a_channel_walks_open_half_closed_closed() -> None:
    chans, replay, events = make()
    cid = chans.open("h", 1, fr.ChannelKind.STREAM)
    assert chans.state_of(cid) is ChannelState.OPENING
    chans.receive(fr.OpenOk(1, cid, 1000))
    assert chans.state_of(cid) is ChannelState.OPEN
    chans.send(cid, b"abc")
    chans.end(cid)
    chans.fill(4096, None)
    assert chans.state_of(cid) is ChannelState.HALF_CLOSED_LOCAL
    assert [type(f) for f in queued(replay)] == [fr.Open, fr.Data, fr.Fin]
    chans.receive(fr.Fin(2, cid))
    assert chans.state_of(cid) is ChannelState.CLOSED
    assert isinstance(events[-1], ev.ChannelClosed)


def test_numbers_never_used_are_idle_and_used_ones_closed() -> None:
    chans, _, _ = make()
    assert chans.state_of(1) is ChannelState.IDLE
    cid = chans.open("h", 1, fr.ChannelKind.STREAM)
    chans.reset(cid, CloseCode.RESET_BY_APPLICATION)
    assert chans.state_of(cid) is ChannelState.CLOSED
    chans.receive(fr.Data(1, cid, 0, b"crossed"))  # crossed our RESET: dropped
    with pytest.raises(ProtocolError, match="never opened"):
        chans.receive(fr.Data(2, 7, 0, b"x"))


@pytest.mark.parametrize(("frame", "match"), [
    (fr.Data(1, 1, 0, b"x"), "DATA on a channel not open for it"),
    (fr.Window(1, 1, 10), "WINDOW on a channel not open"),
    (fr.Fin(1, 1), "FIN on a channel not open for it"),
])
def test_frames_before_open_ok_are_protocol_errors(frame: fr.ReliableFrame, match: str) -> None:
    chans, _, _ = make()
    chans.open("h", 1, fr.ChannelKind.STREAM)
    with pytest.raises(ProtocolError, match=match) as caught:
        chans.receive(frame)
    assert caught.value.code is CloseCode.PROTOCOL_ERROR
    assert "channel 1 opening" in str(caught.value)


def test_data_after_the_peers_fin_is_a_protocol_error() -> None:
    chans, _, _ = make(is_client=False)
    chans.receive(fr.Open(1, 1, fr.ChannelKind.STREAM, 1000, "h", 1))
    chans.accept(1)
    chans.receive(fr.Fin(2, 1))
    with pytest.raises(ProtocolError, match="DATA on a channel not open for it"):
        chans.receive(fr.Data(3, 1, 0, b"late"))


def test_credit_is_granted_back_a_quarter_window_at_a_time() -> None:
    chans, replay, _ = make(is_client=False, channel_window=4000)
    chans.receive(fr.Open(1, 1, fr.ChannelKind.STREAM, 1000, "h", 1))
    chans.accept(1)
    chans.receive(fr.Data(2, 1, 0, b"x" * 999))
    chans.consumed(1, 999)
    assert not [f for f in queued(replay) if isinstance(f, fr.Window)]
    chans.receive(fr.Data(3, 1, 0, b"x"))
    chans.consumed(1, 1)
    assert [f.increment for f in queued(replay) if isinstance(f, fr.Window)] == [1000]


def test_datagrams_wait_for_open_ok_a_few_at_most() -> None:
    chans, _, _ = make()
    sent: list[bytes] = []
    chans.send_datagram = lambda cid, data: sent.append(data) is None
    cid = chans.open("h", 53, fr.ChannelKind.DATAGRAM)
    held = [chans.hold(cid, bytes([i])) for i in range(EARLY_DATAGRAMS + 2)]
    assert held.count(True) == EARLY_DATAGRAMS
    chans.receive(fr.OpenOk(1, cid, 1000))
    assert len(sent) == EARLY_DATAGRAMS


def test_refuse_answers_only_an_open_awaiting_an_answer() -> None:
    chans, replay, _ = make(is_client=False)
    chans.receive(fr.Open(1, 1, fr.ChannelKind.STREAM, 1000, "h", 1))
    chans.refuse(1, CloseCode.NOT_ALLOWED, "no")
    chans.refuse(1, CloseCode.NOT_ALLOWED, "again")  # forgotten: nothing more
    assert [type(f) for f in queued(replay)] == [fr.OpenFail]
    assert chans.state_of(1) is ChannelState.CLOSED
