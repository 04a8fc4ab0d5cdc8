"""The client's openings against every reply a server, or the path, can give:
each ends the attempt with the exception the reconnect logic acts on."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.core.compress import OFF, ZSTD, ZSTD_HISTORY
from roam.core.opening import NeedMore
from roam.core.opening_client import (
    NewOpening,
    ResumeAccepted,
    SessionOpened,
    StandbyParked,
    UnknownSession,
)
from roam.core.opening_server import Busy, Refuse
from roam.core.preamble import (
    ACCEPTED,
    HANDSHAKE_LEN,
    PREAMBLE,
    PROLOGUE,
    REFUSED,
    REPLY,
    Status,
    Suite,
    encode_reply,
    reply_error,
)
from roam.crypto.keys import encode_key, generate_private_key, public_key
from roam.crypto.noise import HandshakeState
from roam.errors import ClientRefused, HandshakeError, ServerBusy, TransportError

from .openings import (
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

# Every exception a client opening raises on what it reads.
DOCUMENTED = (TransportError, HandshakeError)  # ServerBusy and ClientRefused are these


def _answered(client: NewOpening, payload: bytes) -> object:
    """The client's outcome when a server holding the pinned key answers its
    message 1 with `payload` in message 2."""
    hello = client.start(WALL_NS)
    raw, msg1 = hello[:PREAMBLE.size], hello[PREAMBLE.size + HANDSHAKE_LEN.size:]
    hs = HandshakeState(Suite.AESGCM_SHA256.noise_name, initiator=False,
                        prologue=PROLOGUE + raw, s=SERVER_KEY)
    hs.read_message(msg1)
    return client.receive_data(encode_reply(Status.OK, hs.write_message(payload)))


# ---- NEW ---------------------------------------------------------------------


def test_the_reply_is_read_in_two_steps() -> None:
    client = new_opening()
    client.start(WALL_NS)
    assert client.needed == REPLY.size
    assert client.receive_data(REPLY.pack(Status.OK, 49)) == NeedMore(49)
    assert client.receive_data(bytes(9)) == NeedMore(40)


def test_a_refused_key_raises_client_refused_naming_the_key_to_add() -> None:
    server = Server()
    client = new_opening(STRANGER_KEY)
    refuse = server.opening().receive_data(client.start(WALL_NS))
    assert isinstance(refuse, Refuse)
    with pytest.raises(ClientRefused, match="refused this client: this client's key is not "
                       "authorized") as caught:
        client.receive_data(refuse.reply)
    assert encode_key(public_key(STRANGER_KEY)) in str(caught.value)


@pytest.mark.parametrize(("payload", "reason"), [
    (REFUSED + b"\xff\xfe not UTF-8", "refused this client: \ufffd"),
    (b"\x07", "refused this client: ?"),
    (b"", "refused this client: ?"),
])
def test_anything_but_accepted_is_a_refusal(payload: bytes, reason: str) -> None:
    with pytest.raises(ClientRefused, match=reason.replace("?", r"\?")):
        _answered(new_opening(), payload)


@pytest.mark.parametrize("payload", [
    ACCEPTED + bytes([ZSTD]),  # this client offered none
    ACCEPTED + b"\x00\x00",  # longer than any accepted payload
    ACCEPTED + bytes([0x04]),  # a bit no one offers
])
def test_a_malformed_acceptance_raises_handshake_error(payload: bytes) -> None:
    with pytest.raises(HandshakeError, match="malformed answer"):
        _answered(new_opening(compression=OFF), payload)


@pytest.mark.parametrize(("payload", "chosen"), [
    (ACCEPTED, 0), (ACCEPTED + b"\x00", 0), (ACCEPTED + bytes([ZSTD]), ZSTD),
    (ACCEPTED + bytes([ZSTD_HISTORY]), ZSTD_HISTORY),
])
def test_an_acceptance_chooses_what_was_offered(payload: bytes, chosen: int) -> None:
    opened = _answered(new_opening(), payload)
    assert isinstance(opened, SessionOpened)
    assert opened.compression == chosen


def test_a_server_without_the_pinned_key_is_caught() -> None:
    # The server refuses a client that pinned another key ...
    server = Server()
    client = new_opening(server_key=public_key(generate_private_key()))
    refuse = server.opening().receive_data(client.start(WALL_NS))
    assert isinstance(refuse, Refuse)
    with pytest.raises(HandshakeError, match="refused the handshake: cannot decrypt"):
        client.receive_data(refuse.reply)
    # ... and one that answers OK without the key does not prove it.
    client = new_opening()
    client.start(WALL_NS)
    with pytest.raises(HandshakeError, match="did not prove it holds the key pinned") as caught:
        client.receive_data(encode_reply(Status.OK, random.Random(48).randbytes(48)))
    assert encode_key(public_key(SERVER_KEY)) in str(caught.value)
    assert not isinstance(caught.value, ClientRefused)


@pytest.mark.parametrize(("reply", "error", "match"), [
    (REPLY.pack(0xEE, 5) + b"weird", TransportError, "answered with unknown status 238"),
    (reply_error(Status.BUSY, "256 openings"), ServerBusy, r"is busy \(256 openings\)"),
    (REPLY.pack(Status.BUSY, 0), ServerBusy, r"no reason given"),
    (REPLY.pack(Status.BUSY, 3) + b"\xff\xfe\xfd", ServerBusy, "is busy"),
    (REPLY.pack(Status.UNKNOWN_SESSION, 0), HandshakeError, "refused the handshake"),
    (REPLY.pack(Status.OK, 0), HandshakeError, "did not prove"),
    (REPLY.pack(Status.OK, 0xFFFF) + bytes(0xFFFF), HandshakeError, "did not prove"),
])
def test_replies_to_a_new_opening(reply: bytes, error: type[Exception], match: str) -> None:
    client = new_opening()
    client.start(WALL_NS)
    with pytest.raises(error, match=match):
        client.receive_data(reply)


def test_busy_from_a_server_opening_is_server_busy() -> None:
    server = Server(busy="64 openings from 192.0.2.7 already")
    client = new_opening()
    busy = server.opening().receive_data(client.start(WALL_NS))
    assert isinstance(busy, Busy)
    with pytest.raises(ServerBusy, match="too many handshakes in progress"):
        client.receive_data(busy.reply)


# ---- RESUME and STANDBY ------------------------------------------------------


def test_a_resume_the_server_does_not_know_is_told_apart() -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    del server.table.live[ours.session_id]  # the server restarted
    client = ours.resume()
    refuse = server.opening().receive_data(client.start(ours.sealer, RESUME_PAYLOAD, 1.0))
    assert isinstance(refuse, Refuse)
    unknown = client.receive_data(refuse.reply)
    assert isinstance(unknown, UnknownSession)
    assert f"no session {ours.session_id.hex()[:8]} here" in unknown.reason


@pytest.mark.parametrize(("reply", "error", "match"), [
    (reply_error(Status.RESUME_REFUSED, "resume does not authenticate"), TransportError,
     "resume refused by server.test:7000: resume does not authenticate"),
    (REPLY.pack(Status.RESUME_REFUSED, 0), TransportError, "RESUME_REFUSED"),
    (REPLY.pack(Status.HANDSHAKE_FAILED, 0), TransportError, "HANDSHAKE_FAILED"),
    (reply_error(Status.BUSY, "later"), ServerBusy, "is busy"),
    (REPLY.pack(9, 0), TransportError, "unknown status 9"),
])
def test_replies_to_a_resume(reply: bytes, error: type[Exception], match: str) -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    client = ours.resume()
    client.start(ours.sealer, RESUME_PAYLOAD, 1.0)
    with pytest.raises(error, match=match):
        client.receive_data(reply)


def test_a_resume_accepted_hands_over_what_follows() -> None:
    ours = client_session(converse_new(Server())[0])
    client = ours.resume()
    client.start(ours.sealer, RESUME_PAYLOAD, 1.0)
    assert client.receive_data(encode_reply(Status.OK) + b"RESUMED") == ResumeAccepted(
        b"RESUMED")


def test_a_refused_standby_names_its_path() -> None:
    server = Server()
    ours = client_session(converse_new(server)[0])
    client = ours.standby(key=client_session(
        converse_new(server, wall_ns=WALL_NS + 1)[0]).standby_key)
    refuse = server.opening().receive_data(client.start())
    assert isinstance(refuse, Refuse)
    with pytest.raises(TransportError, match="refused the standby via wlan0: standby proof "
                       "does not authenticate"):
        client.receive_data(refuse.reply)
    client = ours.standby()
    client.start()
    with pytest.raises(TransportError, match="via wlan0: UNKNOWN_SESSION"):
        client.receive_data(REPLY.pack(Status.UNKNOWN_SESSION, 0))
    client = ours.standby()
    client.start()
    assert client.receive_data(encode_reply(Status.OK)) == StandbyParked()


# ---- garbage -----------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["new", "resume", "standby"]), st.binary(max_size=300),
       st.lists(st.integers(min_value=1, max_value=300), max_size=6))
def test_garbage_replies_raise_only_documented_errors(kind: str, garbage: bytes,
                                                      cuts: list[int]) -> None:
    ours = client_session(converse_new(Server())[0])
    receive: Callable[[bytes], object]
    if kind == "new":
        new = new_opening()
        new.start(WALL_NS)
        receive = new.receive_data
    elif kind == "resume":
        resume = ours.resume()
        resume.start(ours.sealer, RESUME_PAYLOAD, 1.0)
        receive = resume.receive_data
    else:
        standby = ours.standby()
        standby.start()
        receive = standby.receive_data
    # Enough after it for any reply to be whole.
    data = garbage + bytes(REPLY.size + 0xFFFF)
    try:
        outcome, _ = drive(receive, split(data, cuts))
    except DOCUMENTED:
        return
    # Only a reply a server could send gets through: OK, or UNKNOWN_SESSION
    # to a resume; a NEW's garbage can never prove the server's key.
    assert kind != "new"
    assert isinstance(outcome, ResumeAccepted | UnknownSession | StandbyParked)
    assert data[:1] in (b"\x00", b"\x03")
