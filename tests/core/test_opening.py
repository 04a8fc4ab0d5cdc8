"""Client openings against server openings, in memory: the bytes handed across
whole, byte by byte and cut anywhere, with real Noise and real records."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.core.compress import AUTO, OFF, ZSTD_HISTORY, CompressionMode
from roam.core.opening import NeedMore, OpeningUsageError, SessionKeys, Steps
from roam.core.opening_client import ResumeAccepted, SessionOpened, StandbyParked
from roam.core.opening_server import NewSession, Park, Resume
from roam.core.preamble import MAX_HANDSHAKE_MESSAGE, PREAMBLE, REPLY, Suite
from roam.crypto.noise import CipherState
from roam.crypto.records import RecordFramer, RecordOpener, RecordSealer

from .openings import (
    RESUME_PAYLOAD,
    WALL_NS,
    Server,
    client_session,
    converse_new,
    drive,
    feed,
    new_opening,
    split,
)

# ---- the shared parts --------------------------------------------------------


def test_steps_hand_out_whole_steps_and_keep_the_rest() -> None:
    steps = Steps()
    steps.feed(b"abc")
    assert steps.take(4) is None
    assert len(steps) == 3  # nothing was taken
    steps.feed(b"de")
    assert steps.take(4) == b"abcd"
    assert steps.take(0) == b""
    assert steps.rest() == b"e"
    assert len(steps) == 0


def _same_key(a: CipherState, b: CipherState) -> bool:
    return b.decrypt_with_nonce(5, b"ad", a.encrypt_with_nonce(5, b"ad", b"x")) == b"x"


def _keys_pair(client: SessionKeys, server: SessionKeys) -> None:
    assert _same_key(client.send, server.receive)
    assert _same_key(server.send, client.receive)
    assert _same_key(client.datagram_send, server.datagram_receive)
    assert _same_key(server.datagram_send, client.datagram_receive)
    assert _same_key(client.standby, server.standby)


# ---- NEW ---------------------------------------------------------------------


@pytest.mark.parametrize(("client", "server", "chosen", "payload"), [
    (AUTO, AUTO, ZSTD_HISTORY, 2),  # both compress: zstd with history
    (OFF, AUTO, 0, 1),  # the 8-byte HELLO: a 1-byte ACCEPTED
    (AUTO, OFF, 0, 2),  # offered, and answered with none
    (CompressionMode(True, 3), CompressionMode(True, 7), ZSTD_HISTORY, 2),
])
def test_new_session_agrees_on_id_keys_and_compression(
        client: CompressionMode, server: CompressionMode, chosen: int, payload: int) -> None:
    side = Server(compression=server)
    opening = new_opening(compression=client)
    opened, new = converse_new(side, opening)
    assert opened.session_id == new.session_id
    assert len(new.session_id) == 16
    assert opened.compression == new.compression == chosen
    assert new.client_name == "laptop"
    assert side.last_hello[new.client_key] == WALL_NS
    # Message 2 is 48 bytes of keys and tags around the ACCEPTED payload.
    assert len(new.reply) == REPLY.size + 48 + payload
    _keys_pair(opened.keys, new.keys)
    assert opened.rest == new.rest == b""


def test_records_flow_both_ways_with_the_new_keys() -> None:
    opened, new = converse_new(Server())
    sealer = RecordSealer(opened.keys.send, 0.0)
    framer = RecordFramer()
    ((counter, body),) = framer.feed(sealer.seal(b"hello server", 0.0))
    assert RecordOpener(new.keys.receive).open(counter, body) == b"hello server"


def test_a_new_session_fed_byte_by_byte() -> None:
    server = Server()
    client = new_opening()
    hello = client.start(WALL_NS)
    opening = server.opening()
    new = feed(opening, hello, range(1, len(hello)))
    assert isinstance(new, NewSession)
    assert opening.needed == 0
    opened = client.receive_data(b"")
    assert opened == NeedMore(REPLY.size)
    for i, byte in enumerate(new.reply):
        opened = client.receive_data(bytes([byte]))
        if i < len(new.reply) - 1:
            assert opened == NeedMore(client.needed)
    assert isinstance(opened, SessionOpened)
    assert opened.session_id == new.session_id


def test_what_follows_an_opening_comes_back_as_rest() -> None:
    server = Server()
    client = new_opening()
    new = server.opening().receive_data(client.start(WALL_NS) + b"early records")
    assert isinstance(new, NewSession)
    assert new.rest == b"early records"
    opened = client.receive_data(new.reply + b"the server's first record")
    assert isinstance(opened, SessionOpened)
    assert opened.rest == b"the server's first record"


def test_an_opening_that_ended_takes_no_more() -> None:
    server = Server()
    client = new_opening()
    opening = server.opening()
    new = opening.receive_data(client.start(WALL_NS))
    assert isinstance(new, NewSession)
    with pytest.raises(OpeningUsageError):
        opening.receive_data(b"x")
    client.receive_data(new.reply)
    with pytest.raises(OpeningUsageError):
        client.receive_data(b"x")
    with pytest.raises(OpeningUsageError):
        client.start(WALL_NS + 1)


def test_a_client_opening_reads_only_after_it_started() -> None:
    with pytest.raises(OpeningUsageError):
        new_opening().receive_data(b"\x00")


@pytest.mark.parametrize("suite", list(Suite))
def test_both_suites(suite: Suite) -> None:
    opened, new = converse_new(Server(), new_opening(suite=suite))
    _keys_pair(opened.keys, new.keys)


# ---- RESUME and STANDBY ------------------------------------------------------


def test_resume_moves_the_session_and_hands_over_its_first_record() -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    client = ours.resume()
    resume = server.opening().receive_data(client.start(ours.sealer, RESUME_PAYLOAD, 1.0))
    assert isinstance(resume, Resume)
    assert (resume.session_id, resume.payload, resume.standby) == (
        ours.session_id, RESUME_PAYLOAD, False)
    assert resume.reply == bytes(REPLY.size)  # OK, no body
    assert server.admissions == 1  # the NEW's; a resume costs no handshake
    assert client.receive_data(resume.reply) == ResumeAccepted()
    # The record moved the session's own opener on: the next one follows it.
    assert server.table.live[ours.session_id].opener.last == 0


def test_a_standby_parks_and_later_resumes_on_a_plain_record() -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    client = ours.standby()
    opening = server.opening()
    park = opening.receive_data(client.start())
    assert park == Park(ours.session_id, 1, bytes(REPLY.size))
    assert server.table.standbys[ours.session_id].stamp == 1
    assert client.receive_data(park.reply) == StandbyParked()
    # Later, at the hard handover: the session's next record, no associated data.
    resume = opening.receive_data(ours.sealer.seal(RESUME_PAYLOAD, 2.0))
    assert isinstance(resume, Resume)
    assert (resume.payload, resume.standby, resume.reply) == (RESUME_PAYLOAD, True, b"")


def test_a_second_standby_needs_a_newer_stamp_and_gets_it() -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    for stamp in (1, 2, 7):
        park = server.opening().receive_data(ours.standby(stamp).start())
        assert isinstance(park, Park)
        assert park.stamp == stamp


# ---- cut anywhere ------------------------------------------------------------

_cuts = st.lists(st.integers(min_value=1, max_value=1200), max_size=12)


@settings(max_examples=60, deadline=None)
@given(_cuts, _cuts, st.binary(max_size=40))
def test_a_new_session_cut_anywhere(cuts: list[int], reply_cuts: list[int],
                                    after: bytes) -> None:
    server = Server()
    client = new_opening()
    opening = server.opening()
    new, past = drive(opening.receive_data, split(client.start(WALL_NS) + after, cuts))
    assert isinstance(new, NewSession)
    assert past == after  # bytes past the opening are the records': none lost
    opened, past = drive(client.receive_data, split(new.reply + after, reply_cuts))
    assert isinstance(opened, SessionOpened)
    assert opened.session_id == new.session_id
    assert past == after


@settings(max_examples=60, deadline=None)
@given(_cuts, _cuts)
def test_a_resume_and_a_standby_cut_anywhere(resume_cuts: list[int],
                                             standby_cuts: list[int]) -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    first = ours.resume().start(ours.sealer, RESUME_PAYLOAD, 1.0)
    resume, past = drive(server.opening().receive_data, split(first, resume_cuts))
    assert isinstance(resume, Resume)
    assert resume.payload == RESUME_PAYLOAD
    assert past == b""
    # A standby, and at once the record that resumes on it.
    data = ours.standby().start() + ours.sealer.seal(RESUME_PAYLOAD, 2.0)
    resume, past = drive(server.opening().receive_data, split(data, standby_cuts))
    assert isinstance(resume, Resume)
    assert resume.standby
    assert (resume.payload, past) == (RESUME_PAYLOAD, b"")


def test_an_opening_never_holds_more_than_one_step() -> None:
    server = Server()
    client = new_opening()
    opening = server.opening()
    held = 0
    for byte in client.start(WALL_NS):
        opening.receive_data(bytes([byte]))
        held = max(held, opening.buffered)
    assert held < max(PREAMBLE.size, MAX_HANDSHAKE_MESSAGE)
