"""The replay buffer: numbering, acknowledgement, resending after a loss."""

from __future__ import annotations

import pytest

from roam.core import frames as fr
from roam.core.replay import ReplayBuffer
from roam.errors import ProtocolError


def queued(n: int) -> ReplayBuffer:
    r = ReplayBuffer()
    for i in range(n):
        r.queue(fr.Window(r.seq(), 1, i + 1))
    return r


def sent(r: ReplayBuffer, n: int) -> None:
    """The first `n` pending frames went out in a record."""
    assert r.pending is not None
    if r.unacked is None:
        from collections import deque
        r.unacked = deque()
    for _ in range(n):
        r.unacked.append(r.pending.popleft())


def test_frames_are_numbered_in_the_order_they_are_queued() -> None:
    r = queued(3)
    assert [e[0] for e in r.pending or ()] == [1, 2, 3]
    assert r.bytes == sum(e[1] for e in r.pending or ())


def test_an_ack_frees_what_it_covers_and_no_more() -> None:
    r = queued(5)
    sent(r, 4)
    size = r.bytes
    assert r.acked(2)  # progress: a stall is not building
    assert [e[0] for e in r.unacked or ()] == [3, 4]
    assert r.bytes < size
    # An older ACK (it took the other transport) changes nothing.
    assert not r.acked(1)
    assert [e[0] for e in r.unacked or ()] == [3, 4]


def test_an_ack_beyond_what_was_sent_is_a_protocol_error() -> None:
    r = queued(2)
    with pytest.raises(ProtocolError, match="acknowledged 3, beyond 2 sent"):
        r.acked(3)


def test_resend_puts_unacknowledged_frames_first_in_their_order() -> None:
    r = queued(5)
    sent(r, 3)
    assert r.resend_all() == (3, sum(e[1] for e in list(r.pending or ())[:3]))
    assert [e[0] for e in r.pending or ()] == [1, 2, 3, 4, 5]
    assert not r.unacked


def test_an_ack_after_a_resume_frees_frames_queued_to_resend() -> None:
    r = queued(4)
    sent(r, 4)
    r.resend_all()
    # Frees frames, but none in flight: no progress of a path.
    assert not r.acked(3)
    assert [e[0] for e in r.pending or ()] == [4]


def test_an_idle_buffer_gives_its_deques_back() -> None:
    r = queued(1)
    sent(r, 1)
    r.acked(1)
    r.release_if_empty()
    assert r.pending is None
    assert r.unacked is None
    assert r.bytes == 0
