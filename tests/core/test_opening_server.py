"""The server's opening against hostile and mistaken clients: every refusal
carries its status and a reason that names the problem; a peer's bytes never
raise, and never make an opening hold more than one step."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.core.opening import NeedMore
from roam.core.opening_server import MIN_RECORD, Busy, NewSession, Park, Refuse, Resume
from roam.core.preamble import (
    HANDSHAKE_LEN,
    HELLO,
    MAX_FIRST_RECORD,
    MAX_HANDSHAKE_MESSAGE,
    PREAMBLE,
    PROLOGUE,
    REPLY,
    STANDBY_PROOF,
    Preamble,
    Status,
    Suite,
    TransportKind,
    reply_error,
)
from roam.crypto.keys import generate_private_key, public_key, short_id
from roam.crypto.noise import HandshakeState
from roam.crypto.records import HEADER

from .openings import (
    CLIENT_KEY,
    RESUME_PAYLOAD,
    SERVER_KEY,
    STRANGER_KEY,
    WALL_NS,
    Server,
    client_session,
    converse_new,
    drive,
    new_opening,
    split,
)

NEW = Preamble(TransportKind.NEW, Suite.AESGCM_SHA256).encode()
SOME_SID = b"\x05" * 16


def _refused(outcome: object, status: Status, *named: str) -> Refuse:
    """A refusal with `status` whose reason names each of `named`; its reply
    says the same unless the refusal travels otherwise."""
    assert isinstance(outcome, Refuse), outcome
    assert outcome.status is status
    for name in named:
        assert name in outcome.reason
    assert "192.0.2.7:40000" in outcome.log  # the log line names the peer
    if status is not Status.OK and outcome.reply:
        assert outcome.reply == reply_error(status, outcome.reason)
    if status is not Status.OK:
        assert outcome.code == status.name
    return outcome


def _hello(payload: bytes, key: bytes = CLIENT_KEY) -> bytes:
    """A NEW opening whose message 1 carries `payload`, whatever it is."""
    hs = HandshakeState(Suite.AESGCM_SHA256.noise_name, initiator=True,
                        prologue=PROLOGUE + NEW, s=key, rs=public_key(SERVER_KEY))
    msg1 = hs.write_message(payload)
    return NEW + HANDSHAKE_LEN.pack(len(msg1)) + msg1


# ---- the preamble ------------------------------------------------------------


@pytest.mark.parametrize(("data", "named"), [
    (b"GET / HTTP/1.1\r\n" + b"x" * 60, "not a roam transport"),
    (NEW[:4] + b"\x02" + NEW[5:], "protocol version 2"),
    (NEW[:5] + b"\x09" + NEW[6:], "unknown transport kind 9"),
    (NEW[:6] + b"\x07" + NEW[7:], "unknown cipher suite 7"),
    (NEW[:7] + b"\x01" + NEW[8:], "NEW carries no session id"),
])
def test_a_bad_preamble_is_refused_as_such(data: bytes, named: str) -> None:
    opening = Server().opening()
    _refused(opening.receive_data(data), Status.BAD_PREAMBLE, named)
    assert opening.needed == 0


def test_the_preamble_is_waited_for_whole() -> None:
    opening = Server().opening()
    assert opening.needed == PREAMBLE.size
    assert opening.receive_data(b"ROAM") == NeedMore(PREAMBLE.size - 4)


# ---- NEW ---------------------------------------------------------------------


def test_a_key_not_authorized_is_refused_inside_message_2() -> None:
    server = Server()
    refuse = _refused(server.opening().receive_data(new_opening(STRANGER_KEY).start(WALL_NS)),
                      Status.OK, "not authorized")
    assert short_id(public_key(STRANGER_KEY)) in refuse.log
    assert "not in the authorized keys" in refuse.log
    # The reply is OK and a message 2 (proving the server's key) saying so.
    status, length = REPLY.unpack_from(refuse.reply)
    assert (status, length) == (Status.OK, len(refuse.reply) - REPLY.size)
    assert server.last_hello == {}  # a stranger's HELLO is not kept
    assert refuse.code == "NOT_AUTHORIZED"


def test_a_client_pinning_another_server_key_is_refused() -> None:
    opening = Server().opening()
    wrong = new_opening(server_key=public_key(generate_private_key()))
    _refused(opening.receive_data(wrong.start(WALL_NS)), Status.HANDSHAKE_FAILED,
             "cannot decrypt the client's handshake",
             "--server-key is not this server's public key")


def test_a_replayed_hello_is_refused_and_so_is_an_older_one() -> None:
    server = Server()
    hello = new_opening().start(WALL_NS)
    assert isinstance(server.opening().receive_data(hello), NewSession)
    _refused(server.opening().receive_data(hello), Status.HANDSHAKE_FAILED, "replay",
             short_id(public_key(CLIENT_KEY)))
    older = new_opening().start(WALL_NS - 1)
    _refused(server.opening().receive_data(older), Status.HANDSHAKE_FAILED, "replay")
    assert server.last_hello[public_key(CLIENT_KEY)] == WALL_NS
    assert isinstance(server.opening().receive_data(new_opening().start(WALL_NS + 1)),
                      NewSession)


@pytest.mark.parametrize("payload", [b"", b"1234567", HELLO.pack(WALL_NS) + b"xy"])
def test_a_hello_of_another_size_is_refused(payload: bytes) -> None:
    _refused(Server().opening().receive_data(_hello(payload)), Status.HANDSHAKE_FAILED,
             f"handshake payload of {len(payload)} bytes", "expected 8 or 9")


def test_an_oversize_message_1_is_refused_on_its_length() -> None:
    opening = Server().opening()
    assert opening.receive_data(NEW) == NeedMore(HANDSHAKE_LEN.size)
    length = HANDSHAKE_LEN.pack(MAX_HANDSHAKE_MESSAGE + 1)
    _refused(opening.receive_data(length), Status.HANDSHAKE_FAILED,
             f"handshake message of {MAX_HANDSHAKE_MESSAGE + 1} bytes")
    # The largest allowed is asked for, and refused as garbage once it came.
    opening = Server().opening()
    assert opening.receive_data(NEW + HANDSHAKE_LEN.pack(MAX_HANDSHAKE_MESSAGE)) == NeedMore(
        MAX_HANDSHAKE_MESSAGE)
    _refused(opening.receive_data(os.urandom(MAX_HANDSHAKE_MESSAGE)), Status.HANDSHAKE_FAILED,
             "cannot decrypt")


@pytest.mark.parametrize("message", [b"", os.urandom(31), bytes(104), os.urandom(104)])
def test_a_garbage_message_1_is_refused(message: bytes) -> None:
    data = NEW + HANDSHAKE_LEN.pack(len(message)) + message
    _refused(Server().opening().receive_data(data), Status.HANDSHAKE_FAILED, "cannot decrypt")


def test_busy_when_no_handshake_may_start() -> None:
    server = Server(busy="64 openings from 192.0.2.7 already")
    opening = server.opening()
    busy = opening.receive_data(new_opening().start(WALL_NS))
    assert busy == Busy("too many handshakes in progress (64 openings from 192.0.2.7 "
                        "already)")
    assert isinstance(busy, Busy)
    assert busy.reply == reply_error(Status.BUSY, busy.reason)
    assert server.admissions == 1
    assert server.last_hello == {}  # message 1 was not even looked at
    assert opening.needed == 0


# ---- RESUME ------------------------------------------------------------------


def test_a_resume_of_an_unknown_session_is_refused() -> None:
    server = Server()
    raw = Preamble(TransportKind.RESUME, Suite.AESGCM_SHA256, SOME_SID).encode()
    _refused(server.opening().receive_data(raw), Status.UNKNOWN_SESSION,
             f"no session {SOME_SID.hex()[:8]} here")


def test_a_forged_first_record_is_refused_and_the_session_is_untouched() -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    raw = Preamble(TransportKind.RESUME, Suite.AESGCM_SHA256, ours.session_id).encode()
    forged = HEADER.pack(8 + 64, 1 << 20) + os.urandom(64)
    refuse = _refused(server.opening().receive_data(raw + forged), Status.RESUME_REFUSED,
                      "resume does not authenticate")
    assert f"session {ours.session_id.hex()[:8]}: refused resume" in refuse.log
    assert server.table.live[ours.session_id].opener.last is None
    # The genuine one still goes through.
    first = ours.resume().start(ours.sealer, RESUME_PAYLOAD, 1.0)
    assert isinstance(server.opening().receive_data(first), Resume)
    # ... once: played again, its counter is not newer.
    _refused(server.opening().receive_data(first), Status.RESUME_REFUSED,
             "does not authenticate")


def test_a_first_record_under_another_preamble_is_refused() -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    first = ours.resume().start(ours.sealer, RESUME_PAYLOAD, 1.0)
    # The suite byte changed on the way: the associated data no longer matches.
    changed = first[:6] + bytes([Suite.CHACHAPOLY_BLAKE2S]) + first[7:]
    _refused(server.opening().receive_data(changed), Status.RESUME_REFUSED,
             "does not authenticate")


@pytest.mark.parametrize("length", [0, MIN_RECORD - 1, MAX_FIRST_RECORD + 1, 256 * 1024])
def test_a_first_record_of_a_length_out_of_range_is_refused_on_its_header(length: int) -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    raw = Preamble(TransportKind.RESUME, Suite.AESGCM_SHA256, ours.session_id).encode()
    opening = server.opening()
    assert opening.receive_data(raw) == NeedMore(HEADER.size)
    _refused(opening.receive_data(HEADER.pack(length, 1)), Status.RESUME_REFUSED,
             f"first record length {length}", f"at most {MAX_FIRST_RECORD} bytes")


def test_a_session_that_ends_during_the_first_record_is_refused() -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    first = ours.resume().start(ours.sealer, RESUME_PAYLOAD, 1.0)
    opening = server.opening()
    assert isinstance(opening.receive_data(first[:-1]), NeedMore)
    server.table.live[ours.session_id].closed = True
    _refused(opening.receive_data(first[-1:]), Status.UNKNOWN_SESSION, "ended meanwhile")


# ---- STANDBY -----------------------------------------------------------------


def test_a_standby_with_a_bad_proof_is_refused() -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    other = client_session(converse_new(server, wall_ns=WALL_NS + 1)[0])
    forged = ours.standby(key=other.standby_key).start()
    _refused(server.opening().receive_data(forged), Status.RESUME_REFUSED,
             "standby proof does not authenticate")
    raw = Preamble(TransportKind.STANDBY, Suite.AESGCM_SHA256, ours.session_id).encode()
    _refused(server.opening().receive_data(raw + STANDBY_PROOF.pack(1, bytes(16))),
             Status.RESUME_REFUSED, "standby proof does not authenticate")
    assert server.table.standbys[ours.session_id].stamp == 0


def test_a_replayed_standby_stamp_is_refused() -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    proof = ours.standby(3).start()
    assert isinstance(server.opening().receive_data(proof), Park)
    _refused(server.opening().receive_data(proof), Status.RESUME_REFUSED,
             "standby stamp 3 is not newer than 3", "replay")
    _refused(server.opening().receive_data(ours.standby(2).start()), Status.RESUME_REFUSED,
             "not newer")


def test_a_standby_for_an_unknown_session_is_refused() -> None:
    raw = Preamble(TransportKind.STANDBY, Suite.AESGCM_SHA256, SOME_SID).encode()
    _refused(Server().opening().receive_data(raw + STANDBY_PROOF.pack(1, bytes(16))),
             Status.UNKNOWN_SESSION, f"no session {SOME_SID.hex()[:8]} here")


def test_a_forged_record_on_a_parked_standby_is_refused_without_a_reply() -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    opening = server.opening()
    assert isinstance(opening.receive_data(ours.standby().start()), Park)
    # Its OK went out at the park: a refusal now only closes.
    refuse = _refused(opening.receive_data(HEADER.pack(8 + 40, 9) + os.urandom(40)),
                      Status.RESUME_REFUSED, "does not authenticate")
    assert refuse.reply == b""


def test_a_parked_standby_takes_no_record_sealed_for_a_resume_preamble() -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    opening = server.opening()
    assert isinstance(opening.receive_data(ours.standby().start()), Park)
    raw = Preamble(TransportKind.RESUME, Suite.AESGCM_SHA256, ours.session_id).encode()
    sealed = ours.sealer.seal(RESUME_PAYLOAD, 1.0, ad=raw)
    assert _refused(opening.receive_data(sealed), Status.RESUME_REFUSED).reply == b""


# ---- garbage -----------------------------------------------------------------

# More than any opening reads: whatever came first, it has been decided.
_PAST_ANY_OPENING = bytes(PREAMBLE.size + 2 + MAX_HANDSHAKE_MESSAGE + HEADER.size
                          + MAX_FIRST_RECORD)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([b"", NEW, Preamble(TransportKind.RESUME, Suite.AESGCM_SHA256,
                                           SOME_SID).encode(),
                        Preamble(TransportKind.STANDBY, Suite.CHACHAPOLY_BLAKE2S,
                                 SOME_SID).encode()]),
       st.binary(max_size=1200), st.lists(st.integers(min_value=1, max_value=2500),
                                          max_size=8))
def test_garbage_ends_in_a_refusal(start: bytes, garbage: bytes, cuts: list[int]) -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    server.table.live[SOME_SID] = server.table.live[ours.session_id]
    server.table.standbys[SOME_SID] = server.table.standbys[ours.session_id]
    opening = server.opening()
    data = start + garbage + _PAST_ANY_OPENING
    held = 0

    def receive(piece: bytes) -> object:
        nonlocal held
        outcome = opening.receive_data(piece)
        held = max(held, opening.buffered)
        return outcome

    outcome, _ = drive(receive, split(data, cuts))
    assert isinstance(outcome, Refuse)
    assert outcome.reason
    assert held < MAX_HANDSHAKE_MESSAGE


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_random_bytes_fed_in_any_amount_never_raise(data: bytes) -> None:
    opening = Server().opening()
    outcome = opening.receive_data(data)
    assert isinstance(outcome, NeedMore | Refuse)
    if isinstance(outcome, NeedMore):
        assert outcome.size == opening.needed
