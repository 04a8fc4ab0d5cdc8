"""The client daemon's transport side against a hostile server, on real sockets.

The server here is written for the test: it answers each stage of a
transport with garbage, or runs roam's own handshake and record code to be a
correctly keyed peer that then breaks the protocol. Whatever it does, the
client must not raise out of its tasks and callbacks (the loop's exception
handler records anything that escapes, and a record fails the test), must
keep its memory bounded, and must do what docs/protocol.md says: garbage
from the path condemns one transport (the client resumes on another), and a
broken protocol from the authenticated peer ends the session with CLOSE
carrying the right code.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import socket
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

import pytest

from roam.core import frames as fr
from roam.core.compress import OFF
from roam.core.liveness import MAX_PINGS as _MAX_PINGS
from roam.core.preamble import (
    ACCEPTED,
    HANDSHAKE_LEN,
    PREAMBLE,
    PROLOGUE,
    REFUSED,
    REPLY,
    Preamble,
    Status,
    TransportKind,
    decode_preamble,
    encode_reply,
)
from roam.core.session import Session, SessionConfig
from roam.core.states import SessionState
from roam.crypto.keys import generate_private_key, public_key
from roam.crypto.noise import CipherState, HandshakeState
from roam.crypto.records import HEADER, MAX_RECORD, TAG, RecordOpener, RecordSealer
from roam.errors import CloseCode, HandshakeError, RoamError, ServerBusy, TransportError
from roam.interfaces.forward import ForwardSpec
from roam.interfaces.reverse import ReverseForwards
from roam.transport.client import Client, ClientConfig

T = TypeVar("T")

# Every wait below is a guard against a hang, not a measure of speed: the
# conditions it waits for come within milliseconds on loopback.
HANG_GUARD = 20.0
# A new session or a resume on loopback takes milliseconds: a shorter guard
# for the tests whose failure would otherwise cost the whole HANG_GUARD.
BUG_GUARD = 2.0
U32 = 2**32 - 1
U64 = 2**64 - 1


# ---- the fake server ---------------------------------------------------------


class PeerSession:
    """The fake server's half of one session: its keys and sequence numbers."""

    def __init__(self, sid: bytes, send: CipherState, receive: CipherState) -> None:
        self.sid = sid
        self.sealer = RecordSealer(send, time.monotonic())
        self.opener = RecordOpener(receive)
        self.next_seq = 1
        self.received = 0  # the client's reliable frames, in order
        self.ack_sent = 0
        self.got: Counter[str] = Counter()  # the client's frames by type
        self.closes: list[fr.Close] = []
        # Counts, not frames: a flood's answers must not fill the test's own
        # memory (which the allocation measure would count).
        self.open_fails: Counter[CloseCode] = Counter()

    def seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq


Script = Callable[["Peer"], Coroutine[Any, Any, None]]


class Peer:
    """One transport as the fake server sees it."""

    def __init__(self, server: FakeServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.raw = b""
        self.preamble: Preamble | None = None
        self.session: PeerSession | None = None
        self.acks = True  # acknowledge the client's reliable frames
        self.closed = asyncio.Event()  # the client closed or dropped it

    # -- opening --

    async def read_preamble(self) -> Preamble:
        self.raw = await self.reader.readexactly(PREAMBLE.size)
        self.preamble = decode_preamble(self.raw)
        return self.preamble

    async def read_hello(self) -> HandshakeState:
        """Message 1 of a NEW transport, processed as the real server does."""
        assert self.preamble is not None
        (n,) = HANDSHAKE_LEN.unpack(await self.reader.readexactly(HANDSHAKE_LEN.size))
        msg1 = await self.reader.readexactly(n)
        hs = HandshakeState(self.preamble.suite.noise_name, initiator=False,
                            prologue=PROLOGUE + self.raw, s=self.server.key)
        hs.read_message(msg1)
        return hs

    def accept(self, hs: HandshakeState, payload: bytes = ACCEPTED) -> PeerSession:
        """Answer message 1 with OK and message 2 carrying `payload`."""
        self.writer.write(encode_reply(Status.OK, hs.write_message(payload)))
        send, receive = hs.split()
        session = PeerSession(hs.handshake_hash[:16], send, receive)
        self.server.sessions.append(session)
        self.session = session
        return session

    async def accept_resume(self) -> None:
        """Open the client's RESUME with the session's keys; answer OK and RESUMED.

        Nothing is resent: the scripts that lose a transport sent no
        reliable frame on it.
        """
        assert self.preamble is not None
        session = next(s for s in self.server.sessions if s.sid == self.preamble.session_id)
        length, counter = HEADER.unpack(await self.reader.readexactly(HEADER.size))
        body = await self.reader.readexactly(length - 8)
        (resume,) = fr.decode_frames(session.opener.open(counter, body, ad=self.raw))
        assert isinstance(resume, fr.Resume)
        self.session = session
        self.writer.write(encode_reply(Status.OK))
        self.send(fr.encode(fr.Resumed(session.received)))

    async def opening(self) -> None:
        """What the real server does with a NEW or a RESUME transport."""
        pre = await self.read_preamble()
        if pre.kind is TransportKind.NEW:
            self.accept(await self.read_hello())
        else:
            await self.accept_resume()

    # -- records --

    def send(self, *frames: bytes) -> None:
        """One record holding `frames`, sealed with the session's key."""
        assert self.session is not None
        self.writer.write(self.session.sealer.seal(b"".join(frames), time.monotonic()))

    def reliable(self, frame: Callable[..., fr.Frame], *fields: Any) -> bytes:
        """`frame` (a reliable frame's class) with the next sequence number."""
        assert self.session is not None
        return fr.encode(frame(self.session.seq(), *fields))

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def serve(self) -> None:
        """Read the client's records until it goes: note them, acknowledge them,
        answer its PINGs (as the real server would)."""
        session = self.session
        assert session is not None
        try:
            while True:
                length, counter = HEADER.unpack(await self.reader.readexactly(HEADER.size))
                body = await self.reader.readexactly(length - 8)
                answer: list[bytes] = []
                for frame in fr.decode_frames(session.opener.open(counter, body)):
                    session.got[type(frame).__name__] += 1
                    if isinstance(frame, fr.RELIABLE_CLASSES):
                        if frame.seq <= session.received:
                            continue
                        assert frame.seq == session.received + 1, "the client skipped a seq"
                        session.received = frame.seq
                        if isinstance(frame, fr.Close):
                            session.closes.append(frame)
                        elif isinstance(frame, fr.OpenFail):
                            session.open_fails[frame.code] += 1
                    elif isinstance(frame, fr.Ping):
                        answer.append(fr.encode(fr.Pong(frame.token)))
                if self.acks and session.received > session.ack_sent:
                    session.ack_sent = session.received
                    answer.insert(0, fr.encode(fr.Ack(session.received)))
                if answer and not self.writer.is_closing():
                    self.send(*answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()

    def serving(self) -> asyncio.Task[None]:
        return self.server.task(self.serve())

    async def until_gone(self) -> None:
        """Read nothing more, until the client closes or aborts the transport."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        self.closed.set()

    def close(self) -> None:
        self.writer.close()


async def honest(peer: Peer) -> None:
    await peer.opening()
    await peer.serve()


async def peer_opening_only(peer: Peer) -> None:
    """An honest opening, then nothing read: the client's records stay in its
    socket (and, once that is full, in its session)."""
    await peer.opening()


class FakeServer:
    """Listens on 127.0.0.1; the n-th transport runs `scripts[n]`, later ones `honest`."""

    def __init__(self, *scripts: Script, rcvbuf: int | None = None) -> None:
        self.key = generate_private_key()
        self.client_key = generate_private_key()
        self.scripts = list(scripts)
        self.rcvbuf = rcvbuf
        self.peers: list[Peer] = []
        self.sessions: list[PeerSession] = []
        self.errors: list[BaseException] = []  # the fake server's own failures
        self._tasks: set[asyncio.Task[None]] = set()
        # start_server's connection handlers: one cancelled at teardown would
        # make asyncio's own callback raise (streams.py), so close() ends them.
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> FakeServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf is not None:
            # Inherited by accepted sockets: a server that reads nothing
            # fills up after a few KiB, and the client's writes then stall.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.bind(("127.0.0.1", 0))
        self._server = await asyncio.start_server(self._handle, sock=sock)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away mid-script: it may
        except Exception as exc:
            self.errors.append(exc)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        peer = Peer(self, reader, writer)
        index = len(self.peers)
        self.peers.append(peer)
        script = self.scripts[index] if index < len(self.scripts) else honest
        try:
            await self._guard(script(peer))
        finally:
            self._handlers.discard(handler)  # type: ignore[arg-type]

    def kinds(self) -> list[TransportKind]:
        return [p.preamble.kind for p in self.peers if p.preamble is not None]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for peer in self.peers:
            peer.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        # Aborted, every script ends at its next read or write.
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=HANG_GUARD)
        assert not self.errors, self.errors


# ---- the harness ---------------------------------------------------------------


def _record(escaped: list[dict[str, Any]], context: dict[str, Any]) -> None:
    """Keep what escaped, except asyncio's own report of the fake server's
    connection handler cancelled at loop shutdown (a client that reconnects
    while the test ends): Python 3.11's streams.py calls task.exception() on
    it in a done callback, which raises CancelledError there. That is the
    test's server, not the client under test."""
    if (isinstance(context.get("exception"), asyncio.CancelledError)
            and "StreamReaderProtocol.connection_made" in str(context.get("message"))):
        return
    escaped.append(context)


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `main` on a fresh loop whose exception handler records whatever
    escapes a task or a callback; any such record fails the test."""
    escaped: list[dict[str, Any]] = []
    with asyncio.Runner() as runner:
        runner.get_loop().set_exception_handler(lambda loop, context: _record(escaped, context))
        result = runner.run(asyncio.wait_for(main(), 3 * HANG_GUARD))
    # "Task exception was never retrieved" is reported when the task is freed.
    gc.collect()
    assert not escaped, [(c.get("message"), repr(c.get("exception"))) for c in escaped]
    return result


async def until(condition: Callable[[], bool], what: str, guard: float = HANG_GUARD) -> None:
    """Poll the daemon under test (it has no event for these states)."""
    try:
        async with asyncio.timeout(guard):
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def make_client(server: FakeServer, **session: Any) -> Client:
    return Client(ClientConfig("127.0.0.1", server.port, public_key(server.key),
                               server.client_key, SessionConfig(**session), udp=False,
                               compression=OFF))


def core(client: Client) -> Session:
    assert client.driver is not None
    return client.driver.session


def check_tasks(client: Client) -> None:
    """The reconnect loop ended, if it did, without an exception of its own."""
    task = client._reconnecting
    if task is not None and task.done() and not task.cancelled():
        assert task.exception() is None, repr(task.exception())


def footprint(session: Session) -> dict[str, int]:
    """What a session holds that a peer can make it hold more of."""
    return {
        "channels": len(session.channel_ids()),
        "replay_bytes": session.statistics().replay_bytes,
        "replay_frames": len(session.replay.pending or ()) + len(session.replay.unacked or ()),
        "control": len(session.control_frames()),
        "round_robin": len(session.channels.rr or ()),
        "events": len(session._events),
    }


class Allocations:
    """Bytes held by memory the client's own code allocated: the transport
    side (roam/transport) and the session core it calls, by tracemalloc,
    whatever the innermost frame (frames.encode under session.py counts)."""

    _FILTERS = (tracemalloc.Filter(True, "*/roam/transport/*", all_frames=True),
                tracemalloc.Filter(True, "*/roam/core/session.py", all_frames=True))
    # Deep enough that a frame encoded for the session (frames._frame <-
    # _encode <- encode <- session) counts; tracing slows every allocation
    # of the process several times, so the floods measured are modest.
    _DEPTH = 4

    def __enter__(self) -> Allocations:
        tracemalloc.start(self._DEPTH)
        self.base = self.now()
        return self

    def __exit__(self, *exc: object) -> None:
        tracemalloc.stop()

    def now(self) -> int:
        snapshot = tracemalloc.take_snapshot().filter_traces(self._FILTERS)
        return sum(stat.size for stat in snapshot.statistics("filename"))

    @property
    def growth(self) -> int:
        return self.now() - self.base


async def hold(peer: Peer) -> None:
    """An honest opening, then reading in the background: the test drives the rest."""
    await peer.opening()
    peer.serving()


async def attached(*scripts: Script, rcvbuf: int | None = None,
                   **session: Any) -> tuple[FakeServer, Client, Peer]:
    """A client with a session on the fake server; the first transport's peer
    (`hold` unless a script is given) is handed back."""
    server = await FakeServer(*(scripts or (hold,)), rcvbuf=rcvbuf).start()
    client = make_client(server, **session)
    await client.handshake(timeout=5)
    return server, client, server.peers[0]


async def finish(server: FakeServer, client: Client) -> None:
    check_tasks(client)
    client.stop()
    await server.close()


def seen_all(client: Client, peer: Peer) -> Callable[[], bool]:
    """The client has opened every record the peer sealed so far."""
    assert peer.session is not None
    session = peer.session

    def check() -> bool:
        driver = client.driver
        return (driver is not None and driver.opener.last is not None
                and driver.opener.last >= session.sealer.counter - 1)
    return check


async def flood(peer: Peer, frames: Iterable[bytes], record: int = 128 * 1024) -> None:
    """Send `frames` in records of about `record` bytes. After each record the
    loop runs the client (which shares it): drain() does not yield while the
    socket takes everything, and a flood that never yields would look to the
    client like silence followed by a burst."""
    batch: list[bytes] = []
    size = 0
    for frame in frames:
        if batch and size + len(frame) > record:
            peer.send(*batch)
            await peer.drain()
            await asyncio.sleep(0)
            batch, size = [], 0
        batch.append(frame)
        size += len(frame)
    if batch:
        peer.send(*batch)
        await peer.drain()


def raw_frame(ftype: int, body: bytes) -> bytes:
    """A frame as the wire has it, including ones the encoder would refuse."""
    return fr.HEADER.pack(ftype, len(body)) + body


# ---- before the records: the reply to a NEW transport ------------------------


def _keyed(payload: bytes) -> Script:
    """A correctly keyed server whose message 2 carries `payload`."""
    async def script(peer: Peer) -> None:
        await peer.read_preamble()
        peer.accept(await peer.read_hello(), payload)
        await peer.until_gone()
    return script


def _low_order_point() -> Script:
    async def script(peer: Peer) -> None:
        await peer.read_preamble()
        await peer.read_hello()
        peer.writer.write(encode_reply(Status.OK, bytes(32) + bytes(17)))
        await peer.until_gone()
    return script


# Random replies (seeded, so a failure repeats): whatever the status byte
# happens to be, the outcome is one of the errors the daemon handles.
_RANDOM = [random.Random(n).randbytes(n) for n in (1, 3, 50, 200, 5000)]


# (reply, the error, whether the fake server must close for the client to
# see the end: a reply whose length runs past what was sent waits for more).
@pytest.mark.parametrize(("data", "expected", "closes"), [
    # An HTTP server: status 'H' is unknown, its "length" runs past the end.
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", TransportError, True),
    (REPLY.pack(0xEE, 5) + b"weird", TransportError, False),  # an unknown status
    (REPLY.pack(Status.OK, 0xFFFF) + b"x" * 100, TransportError, True),  # huge length, EOF
    (REPLY.pack(Status.OK, 0xFFFF) + bytes(0xFFFF), HandshakeError, False),  # all of it
    (REPLY.pack(Status.OK, 0), HandshakeError, False),  # no message 2 at all
    # A forged message 2.
    (REPLY.pack(Status.OK, 48) + random.Random(48).randbytes(48), HandshakeError, False),
    (REPLY.pack(Status.BUSY, 3) + b"\xff\xfe\xfd", ServerBusy, False),  # reason not UTF-8
    (REPLY.pack(Status.UNKNOWN_SESSION, 0), HandshakeError, False),  # nonsense for a NEW
    (REPLY.pack(Status.HANDSHAKE_FAILED, 0xFFFF) + b"r" * 0xFFFF, HandshakeError, False),
    (b"\x00", TransportError, True),  # a reply cut short
    *[(data, (TransportError, HandshakeError, ServerBusy), True) for data in _RANDOM],
], ids=["http", "unknown-status", "huge-length-eof", "huge-length", "empty-ok",
        "forged-message-2", "busy-not-utf8", "unknown-session", "huge-reason", "cut-short",
        *[f"random-{len(d)}" for d in _RANDOM]])
def test_garbage_instead_of_the_reply_is_a_clear_error(
        data: bytes, expected: type[RoamError] | tuple[type[RoamError], ...],
        closes: bool) -> None:
    """Each is an error the daemon handles (retry, back off, or give up
    saying why); none leaves a session or a socket behind."""
    async def main() -> None:
        async def script(peer: Peer) -> None:
            await peer.read_preamble()
            await peer.read_hello()
            peer.writer.write(data)
            await peer.drain()
            if closes:
                peer.close()
            else:
                await peer.until_gone()

        server = await FakeServer(script).start()
        client = make_client(server)
        try:
            with pytest.raises(expected):
                await client.handshake(timeout=2)
            assert client.driver is None
            if not closes:
                await until(server.peers[0].closed.is_set, "the client let go of it")
        finally:
            await finish(server, client)

    run(main)


def test_a_reply_announcing_64_kib_then_silence_times_out() -> None:
    async def main() -> None:
        async def script(peer: Peer) -> None:
            await peer.read_preamble()
            await peer.read_hello()
            peer.writer.write(REPLY.pack(Status.OK, 0xFFFF) + bytes(1000))
            await peer.until_gone()

        server = await FakeServer(script).start()
        client = make_client(server)
        try:
            with pytest.raises(TransportError, match="no answer"):
                await client.handshake(timeout=0.5)
            assert client.driver is None
        finally:
            await finish(server, client)

    run(main)


@pytest.mark.parametrize("payload", [
    b"",  # neither accepted nor refused
    ACCEPTED + b"\x01",  # zstd, which this client did not offer
    ACCEPTED + b"\x00\x00",  # longer than any accepted payload
    REFUSED + b"\xff\xfe not UTF-8",
    b"\x07" + b"?" * 500,
], ids=["empty", "unoffered-compression", "too-long", "refused-not-utf8", "unknown"])
def test_a_keyed_server_with_a_malformed_answer_is_refused(payload: bytes) -> None:
    async def main() -> None:
        server = await FakeServer(_keyed(payload)).start()
        client = make_client(server)
        try:
            with pytest.raises(HandshakeError):
                await client.handshake(timeout=2)
            assert client.driver is None
            await until(server.peers[0].closed.is_set, "the client let go of it")
        finally:
            await finish(server, client)

    run(main)


def test_a_low_order_ephemeral_key_in_message_2_is_refused() -> None:
    async def main() -> None:
        server = await FakeServer(_low_order_point()).start()
        client = make_client(server)
        try:
            with pytest.raises(HandshakeError, match="did not prove"):
                await client.handshake(timeout=2)
        finally:
            await finish(server, client)

    run(main)


# ---- garbage in the record stream: the transport goes, the session resumes ------


def _then(send: Callable[[Peer], bytes], *, and_silence: bool = False) -> Script:
    """An honest opening, then `send`'s bytes on the transport as they are."""
    async def script(peer: Peer) -> None:
        await peer.opening()
        peer.writer.write(send(peer))
        await peer.drain()
        await peer.until_gone()
    return script


def _sealed(plaintext: bytes) -> Callable[[Peer], bytes]:
    def build(peer: Peer) -> bytes:
        assert peer.session is not None
        return bytes(peer.session.sealer.seal(plaintext, time.monotonic()))
    return build


def _forged(peer: Peer) -> bytes:
    other = RecordSealer(CipherState("AESGCM", os.urandom(32)), time.monotonic())
    return bytes(other.seal(fr.encode(fr.Ping(1)), time.monotonic()))


def _replayed(peer: Peer) -> bytes:
    record = _sealed(fr.encode(fr.Ping(1)))(peer)
    return record + record


def _epoch_far_ahead(peer: Peer) -> bytes:
    assert peer.session is not None
    sealer = peer.session.sealer
    counter, sealer.counter = sealer.counter, 65 << 32  # MAX_EPOCH_SKIP is 64
    try:
        return bytes(sealer.seal(fr.encode(fr.Ping(1)), time.monotonic()))
    finally:
        sealer.counter = counter  # the resumed transport goes on at the real one


GARBAGE = {
    "length-beyond-max": lambda peer: HEADER.pack(MAX_RECORD + 8 + 1, 0) + bytes(64),
    "length-u32-max": lambda peer: HEADER.pack(U32, 0) + bytes(64),
    "length-below-min": lambda peer: HEADER.pack(8 + TAG - 1, 0) + bytes(64),
    "length-zero": lambda peer: bytes(HEADER.size),
    "max-length-garbage": lambda peer: HEADER.pack(MAX_RECORD + 8, 0) + bytes(MAX_RECORD),
    "forged": _forged,
    "replayed": _replayed,
    "epoch-far-ahead": _epoch_far_ahead,
    "http": lambda peer: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
}


@pytest.mark.parametrize("attack", list(GARBAGE))
def test_garbage_records_condemn_the_transport_and_the_session_resumes(attack: str) -> None:
    async def main() -> None:
        server, client, _ = await attached(_then(GARBAGE[attack]))
        try:
            sid = client.session_id
            await until(lambda: len(server.peers) >= 2 and core(client).state
                        is SessionState.ATTACHED and client.driver is not None
                        and client.driver.proto is not None and not client.reconnecting,
                        "the resume on a new transport")
            assert server.kinds() == [TransportKind.NEW, TransportKind.RESUME]
            assert client.session_id == sid
            assert len(server.sessions) == 1
            assert not server.sessions[0].closes
            assert server.peers[0].reader.at_eof() or server.peers[0].writer.is_closing()
        finally:
            await finish(server, client)

    run(main)


def test_a_record_cut_short_at_the_maximum_length_is_found_by_the_silence() -> None:
    """256 KiB announced, part of it sent, then nothing: the client holds at
    most that one record, and its dead timer moves it to another transport."""
    async def main() -> None:
        server, client, _ = await attached(
            _then(lambda peer: HEADER.pack(MAX_RECORD + 8, 0) + bytes(MAX_RECORD // 2)),
            dead_floor=0.5)
        try:
            await until(lambda: len(server.peers) >= 2 and core(client).state
                        is SessionState.ATTACHED and not client.reconnecting,
                        "the resume after the silence")
            assert server.kinds() == [TransportKind.NEW, TransportKind.RESUME]
        finally:
            await finish(server, client)

    run(main)


def test_an_authentic_record_of_the_maximum_size_is_taken() -> None:
    """The limit itself is legal: 256 KiB of plaintext, 20,000 PINGs in one
    record. They are answered, but with no more PONGs than the pinger can
    be waiting for."""
    async def main() -> None:
        server, client, peer = await attached()
        try:
            ping = fr.encode(fr.Ping(7))
            peer.send(*[ping] * ((MAX_RECORD - TAG) // len(ping)))
            await until(seen_all(client, peer), "the record opened")
            await until(lambda: peer.session is not None and peer.session.got["Pong"] > 0,
                        "the PINGs answered")
            # Whatever else would arrive arrives with the next keepalive.
            await until(lambda: peer.session is not None and peer.session.got["Ping"] > 0,
                        "the client's next PING")
            assert peer.session is not None
            assert peer.session.got["Pong"] <= _MAX_PINGS
            assert core(client).state is SessionState.ATTACHED
            assert len(server.peers) == 1
        finally:
            await finish(server, client)

    run(main)


# ---- an authenticated peer that breaks the protocol: CLOSE with the right code ----

PE, FLOW = CloseCode.PROTOCOL_ERROR, CloseCode.FLOW_CONTROL
Build = Callable[[Peer], list[bytes]]


def _one(frame: Callable[..., fr.Frame], *fields: Any) -> Build:
    return lambda peer: [peer.reliable(frame, *fields)]


def _open_raw(kind: int, host: bytes) -> Build:
    def build(peer: Peer) -> list[bytes]:
        assert peer.session is not None
        body = fr._OPEN.pack(peer.session.seq(), 2, kind, 1000, 22, len(host)) + host
        return [raw_frame(fr.FrameType.OPEN, body)]
    return build


def _close_raw(code: int, reason: bytes) -> Build:
    def build(peer: Peer) -> list[bytes]:
        assert peer.session is not None
        body = fr._CLOSE.pack(peer.session.seq(), code) + reason
        return [raw_frame(fr.FrameType.CLOSE, body)]
    return build


BROKEN: dict[str, tuple[Build, CloseCode]] = {
    "empty-record": (lambda peer: [], PE),
    "unknown-frame-type": (lambda peer: [raw_frame(0x10, b"")], PE),
    "truncated-header": (lambda peer: [b"\x0a\x00\x00"], PE),
    "body-over-the-limit": (lambda peer: [raw_frame(fr.FrameType.PING,
                                                    bytes(fr.MAX_FRAME_BODY + 1))], PE),
    "fixed-body-too-short": (lambda peer: [raw_frame(fr.FrameType.PING, bytes(7))], PE),
    "body-past-the-record": (lambda peer: [fr.HEADER.pack(fr.FrameType.PING, 8) + bytes(4)],
                             PE),
    "switch-unknown-flags": (lambda peer: [raw_frame(fr.FrameType.SWITCH,
                                                     bytes(8) + b"\x80")], PE),
    "joined-outside-an-opening": (lambda peer: [fr.encode(fr.Joined(0))], PE),
    "data-never-opened": (_one(fr.Data, 2, 0, b"x"), PE),
    "data-on-own-unused-number": (_one(fr.Data, 7, 0, b"x"), PE),
    "data-unknown-flags": (lambda peer: [raw_frame(fr.FrameType.DATA, fr._DATA.pack(
        peer.session.seq() if peer.session else 0, 2, 0x80) + b"x")], PE),
    "window-channel-0": (_one(fr.Window, 0, 1), PE),
    "window-never-opened": (_one(fr.Window, U32, U32), PE),
    "open-with-clients-parity": (_one(fr.Open, 3, fr.ChannelKind.STREAM, 1000, "h", 1), PE),
    "open-unknown-kind": (_open_raw(9, b"h"), PE),
    "open-empty-host": (_open_raw(1, b""), PE),
    "open-host-not-utf8": (_open_raw(1, b"\xff\xfe"), PE),
    "open-ok-for-nothing": (_one(fr.OpenOk, 1, 1000), PE),
    "open-fail-for-nothing": (_one(fr.OpenFail, 5, CloseCode.NORMAL, ""), PE),
    "fin-never-opened": (_one(fr.Fin, 4), PE),
    "reset-never-opened": (_one(fr.Reset, 6, CloseCode.NORMAL), PE),
    "ack-beyond-sent": (lambda peer: [fr.encode(fr.Ack(U64))], PE),
    "resumed-outside-a-resume": (lambda peer: [fr.encode(fr.Resumed(0))], PE),
    "resume-to-the-client": (lambda peer: [fr.encode(fr.Resume(0))], PE),
    "handover-begin-from-the-server": (lambda peer: [fr.encode(fr.HandoverBegin(1))], PE),
    "handover-ready-unasked": (lambda peer: [fr.encode(fr.HandoverReady(1))], PE),
    "dgram-never-opened": (lambda peer: [fr.encode(fr.Dgram(2, b"x"))], PE),
    "close-unknown-code": (_close_raw(999, b""), PE),
    "close-reason-not-utf8": (_close_raw(0, b"\xc3\x28"), PE),
}


@pytest.mark.parametrize("attack", list(BROKEN))
def test_a_broken_protocol_ends_the_session_with_close_and_its_code(attack: str) -> None:
    build, code = BROKEN[attack]

    async def main() -> None:
        server, client, peer = await attached()
        try:
            broken = core(client)
            peer.send(*build(peer))
            await until(lambda: peer.session is not None and bool(peer.session.closes),
                        "the client's CLOSE")
            assert peer.session is not None
            (close,) = peer.session.closes
            assert close.code is code, close
            # That session is over (the client then makes a new one).
            assert broken.state is SessionState.CLOSED
            await until(peer.closed.is_set, "the client closed the transport after CLOSE")
        finally:
            await finish(server, client)

    run(main)


async def _with_channel(peer: Peer, client: Client) -> int:
    """A channel the client opened (as a forward would); the peer has its OPEN."""
    cid = core(client).open_channel("svc.example", 7)
    assert client.driver is not None
    client.driver.schedule()
    await until(lambda: peer.session is not None and peer.session.got["Open"] >= 1,
                "the client's OPEN")
    return cid


ON_CHANNEL: dict[str, tuple[Callable[[Peer, int], list[list[bytes]]], CloseCode]] = {
    # 64 KiB of window; two full DATA frames in one record exceed it before
    # the client can grant more.
    "data-beyond-credit": (lambda peer, cid: [[
        peer.reliable(fr.OpenOk, cid, 1000),
        peer.reliable(fr.Data, cid, 0, bytes(fr.MAX_DATA_CHUNK)),
        peer.reliable(fr.Data, cid, 0, bytes(fr.MAX_DATA_CHUNK))]], FLOW),
    "window-overflow": (lambda peer, cid: [[
        # Credit may reach 2^32 exactly, not beyond.
        peer.reliable(fr.OpenOk, cid, U32),
        peer.reliable(fr.Window, cid, 2)]], FLOW),
    "window-overflow-in-steps": (lambda peer, cid: [[
        peer.reliable(fr.OpenOk, cid, 0)],
        [peer.reliable(fr.Window, cid, 2**31) for _ in range(3)]], FLOW),
    "data-before-open-ok": (lambda peer, cid: [[
        peer.reliable(fr.Data, cid, 0, b"x")]], PE),
    "second-open-ok": (lambda peer, cid: [[
        peer.reliable(fr.OpenOk, cid, 1000),
        peer.reliable(fr.OpenOk, cid, 1000)]], PE),
    "fin-twice": (lambda peer, cid: [[
        peer.reliable(fr.OpenOk, cid, 1000),
        peer.reliable(fr.Fin, cid),
        peer.reliable(fr.Fin, cid)]], PE),
    "data-after-fin": (lambda peer, cid: [[
        peer.reliable(fr.OpenOk, cid, 1000),
        peer.reliable(fr.Fin, cid),
        peer.reliable(fr.Data, cid, 0, b"late")]], PE),
    "compressed-not-negotiated": (lambda peer, cid: [[
        peer.reliable(fr.OpenOk, cid, 1000),
        peer.reliable(fr.Data, cid, fr.FLAG_COMPRESSED, b"x" * 10)]], PE),
    "history-not-negotiated": (lambda peer, cid: [[
        peer.reliable(fr.OpenOk, cid, 1000),
        peer.reliable(fr.Data, cid, fr.FLAG_HISTORY, b"x" * 10)]], PE),
    "dgram-on-a-stream-channel": (lambda peer, cid: [[
        peer.reliable(fr.OpenOk, cid, 1000),
        fr.encode(fr.Dgram(cid, b"x"))]], PE),
}


@pytest.mark.parametrize("attack", list(ON_CHANNEL))
def test_a_broken_channel_protocol_ends_the_session_with_close_and_its_code(
        attack: str) -> None:
    build, code = ON_CHANNEL[attack]

    async def main() -> None:
        server, client, peer = await attached(channel_window=64 * 1024)
        try:
            cid = await _with_channel(peer, client)
            broken = client.driver
            assert broken is not None
            for record in build(peer, cid):
                peer.send(*record)
            await until(lambda: peer.session is not None and bool(peer.session.closes),
                        "the client's CLOSE")
            assert peer.session is not None
            (close,) = peer.session.closes
            assert close.code is code, close
            assert broken.session.state is SessionState.CLOSED
            assert not broken.apps
        finally:
            await finish(server, client)

    run(main)


def test_after_closing_for_a_protocol_error_the_client_makes_a_new_session() -> None:
    async def main() -> None:
        server, client, peer = await attached()
        try:
            sid = client.session_id
            peer.send(fr.HEADER.pack(0x10, 0))  # an unknown frame type
            await until(lambda: peer.session is not None and bool(peer.session.closes),
                        "the client's CLOSE")
            await until(lambda: client.session_id != sid and client.driver is not None
                        and core(client).state is SessionState.ATTACHED,
                        "a new session", BUG_GUARD)
            assert server.kinds() == [TransportKind.NEW, TransportKind.NEW]
        finally:
            await finish(server, client)

    run(main)


def test_a_huge_close_reason_from_the_server_means_a_new_session() -> None:
    """CLOSE with 60 KiB of reason (the encoder cuts at 255, the decoder takes
    what the body holds): the client closes every channel and starts anew."""
    async def main() -> None:
        server, client, peer = await attached()
        try:
            sid = client.session_id
            peer.send(*_close_raw(CloseCode.SHUTDOWN, "é".encode() * (fr.MAX_FRAME_BODY // 2 - 5)
                                  )(peer))
            await until(lambda: client.session_id != sid and client.driver is not None
                        and core(client).state is SessionState.ATTACHED, "a new session")
            assert server.kinds() == [TransportKind.NEW, TransportKind.NEW]
            assert not server.sessions[0].closes  # a received CLOSE is not answered
        finally:
            await finish(server, client)

    run(main)


# ---- the resume: what comes back on the new transport ---------------------------


def _resume_answered_with(first: Callable[[PeerSession], list[bytes]]) -> Script:
    """A RESUME transport whose status is OK and whose first record is `first`."""
    async def script(peer: Peer) -> None:
        await peer.read_preamble()
        session = peer.server.sessions[0]
        length, counter = HEADER.unpack(await peer.reader.readexactly(HEADER.size))
        session.opener.open(counter, await peer.reader.readexactly(length - 8), ad=peer.raw)
        peer.session = session
        peer.writer.write(encode_reply(Status.OK))
        peer.send(*first(session))
        await peer.serve()
    return script


_drop_at_once = _then(lambda peer: HEADER.pack(0, 0))  # garbage: the first transport goes

RESUMES: dict[str, Callable[[PeerSession], list[bytes]]] = {
    "resumed-absurd-mark": lambda s: [fr.encode(fr.Resumed(U64))],
    "ping-instead-of-resumed": lambda s: [fr.encode(fr.Ping(1))],
}


@pytest.mark.parametrize("attack", list(RESUMES))
def test_a_bad_first_record_after_a_resume_drops_that_transport_only(attack: str) -> None:
    async def main() -> None:
        server, client, _ = await attached(_drop_at_once,
                                           _resume_answered_with(RESUMES[attack]))
        try:
            sid = client.session_id
            await until(lambda: len(server.peers) >= 3 and core(client).state
                        is SessionState.ATTACHED and not client.reconnecting,
                        "a resume on a third transport", BUG_GUARD)
            assert server.kinds() == [TransportKind.NEW] + [TransportKind.RESUME] * 2
            assert client.session_id == sid
        finally:
            await finish(server, client)

    run(main)


def test_a_resume_refused_with_garbage_is_tried_again() -> None:
    """Unauthenticated answers to a RESUME (garbage, an unknown status, a
    refusal) cost that attempt only."""
    async def garbage(peer: Peer) -> None:
        await peer.read_preamble()
        peer.writer.write(b"\xee\xff\xff" + bytes(100))
        peer.close()

    async def refused(peer: Peer) -> None:
        await peer.read_preamble()
        peer.writer.write(encode_reply(Status.RESUME_REFUSED, b"\xff" * 1024))
        peer.close()

    async def main() -> None:
        server, client, _ = await attached(_drop_at_once, garbage, refused)
        try:
            sid = client.session_id
            await until(lambda: len(server.peers) >= 4 and core(client).state
                        is SessionState.ATTACHED and not client.reconnecting,
                        "the resume on the fourth transport")
            assert server.kinds() == [TransportKind.NEW] + [TransportKind.RESUME] * 3
            assert client.session_id == sid
        finally:
            await finish(server, client)

    run(main)


def test_unknown_session_in_answer_to_a_resume_means_a_new_session() -> None:
    """As docs/protocol.md section 2.5 has it. The status is cleartext, so
    anything on the path can send it: the price is the connections the
    session carried, not the client."""
    async def unknown(peer: Peer) -> None:
        await peer.read_preamble()
        peer.writer.write(encode_reply(Status.UNKNOWN_SESSION, "é".encode() * 500))
        peer.close()

    async def main() -> None:
        server, client, _ = await attached(_drop_at_once, unknown)
        try:
            sid = client.session_id
            await until(lambda: client.session_id != sid and client.driver is not None
                        and core(client).state is SessionState.ATTACHED, "a new session")
            assert server.kinds() == [TransportKind.NEW, TransportKind.RESUME, TransportKind.NEW]
            assert not client.stopped.is_set()
        finally:
            await finish(server, client)

    run(main)


def test_a_forged_answer_to_the_replacement_handshake_is_retried_not_final() -> None:
    """UNKNOWN_SESSION and then a message 2 that does not prove the server's
    key: both forgeable on the path. The server was proven by that key before,
    so the client tries again rather than stop for good."""
    async def unknown(peer: Peer) -> None:
        await peer.read_preamble()
        peer.writer.write(encode_reply(Status.UNKNOWN_SESSION, b"forged"))
        peer.close()

    async def forged(peer: Peer) -> None:
        await peer.read_preamble()
        await peer.read_hello()
        peer.writer.write(REPLY.pack(Status.OK, 48) + random.Random(7).randbytes(48))
        await peer.until_gone()

    async def main() -> None:
        server, client, _ = await attached(_drop_at_once, unknown, forged)
        try:
            sid = client.session_id
            await until(lambda: client.session_id != sid and client.driver is not None
                        and core(client).state is SessionState.ATTACHED, "a new session")
            assert server.kinds() == [TransportKind.NEW, TransportKind.RESUME,
                                      TransportKind.NEW, TransportKind.NEW]
            assert not client.stopped.is_set()
        finally:
            await finish(server, client)

    run(main)


def test_a_proven_refusal_of_the_replacement_handshake_stops_the_client() -> None:
    """The server, proven by its key, says this client is not authorized:
    no retry changes that, and the daemon says so and stops."""
    async def unknown(peer: Peer) -> None:
        await peer.read_preamble()
        peer.writer.write(encode_reply(Status.UNKNOWN_SESSION, b"restarted"))
        peer.close()

    async def refuse(peer: Peer) -> None:
        await peer.read_preamble()
        hs = await peer.read_hello()
        msg2 = hs.write_message(REFUSED + b"this client's key is not authorized by the server")
        peer.writer.write(encode_reply(Status.OK, msg2))
        await peer.until_gone()

    async def main() -> None:
        server, client, _ = await attached(_drop_at_once, unknown, refuse)
        try:
            await until(client.stopped.is_set, "the client stopping")
        finally:
            await finish(server, client)

    run(main)


# ---- floods ------------------------------------------------------------------------


def _opens(peer: Peer, n: int, first: int = 2, host: str = "svc.example", port: int = 22,
           kind: fr.ChannelKind = fr.ChannelKind.STREAM) -> Iterator[bytes]:
    for i in range(n):
        yield peer.reliable(fr.Open, first + 2 * i, kind, 1 << 20, host, port)


def test_a_flood_of_opens_is_refused_one_by_one_and_leaves_nothing_behind() -> None:
    """The client opens nothing for the server but its reverse forwards: each
    OPEN gets OPEN_FAIL, NOT_ALLOWED (or FLOW_CONTROL for those beyond the
    channel limit within one read), and once acknowledged nothing is held."""
    n = 30_000

    async def main() -> None:
        server, client, peer = await attached()
        try:
            await flood(peer, _opens(peer, n))
            await until(lambda: peer.session is not None
                        and peer.session.open_fails.total() == n, "every OPEN answered")
            await until(lambda: footprint(core(client))["replay_frames"] == 0,
                        "the answers acknowledged")
            assert peer.session is not None
            assert set(peer.session.open_fails) <= {CloseCode.NOT_ALLOWED, CloseCode.FLOW_CONTROL}
            assert peer.session.open_fails[CloseCode.NOT_ALLOWED] >= 4096
            assert footprint(core(client)) == {"channels": 0, "replay_bytes": 0,
                                               "replay_frames": 0, "control": 0,
                                               "round_robin": 0, "events": 0}
            assert core(client).state is SessionState.ATTACHED
            assert len(server.peers) == 1
        finally:
            await finish(server, client)

    run(main)


def test_a_flood_of_opens_never_acknowledged_ends_the_session() -> None:
    """A server that opens and opens and never acknowledges the answers would
    have the client hold every OPEN_FAIL forever: past twice its replay limit
    the client ends the session with FLOW_CONTROL."""
    limit = 64 * 1024

    async def main() -> None:
        server, client, peer = await attached(replay_limit=limit)
        peer.acks = False
        try:
            async def opens() -> None:
                await flood(peer, _opens(peer, 200_000), record=16 * 1024)

            flooding = server.task(opens())
            await until(lambda: peer.session is not None and bool(peer.session.closes),
                        "the client's CLOSE")
            flooding.cancel()
            assert peer.session is not None
            (close,) = peer.session.closes
            assert close.code is CloseCode.FLOW_CONTROL, close
            # The answers to what one read held may come on top of the limit.
            assert core(client).statistics().replay_bytes < 2 * limit + 2 * 1024 * 1024
        finally:
            await finish(server, client)

    run(main)


def test_an_endless_stream_of_pings_is_answered_and_nothing_piles_up() -> None:
    async def main() -> None:
        server, client, peer = await attached()
        try:
            await flood(peer, (fr.encode(fr.Ping(token)) for token in range(100_000)))
            await until(seen_all(client, peer), "every record opened")
            await until(lambda: footprint(core(client))["control"] == 0, "the PONGs sent")
            assert peer.session is not None
            assert peer.session.got["Pong"] > 0
            assert core(client).state is SessionState.ATTACHED
            assert footprint(core(client))["events"] == 0
        finally:
            await finish(server, client)

    run(main)


async def _stall_the_client(client: Client, peer: Peer) -> int:
    """Make the client's writes stall: its send buffer is small, the fake
    server's receive buffer too and it reads nothing, and a channel with
    200 KiB of credit has more data than that to send. The channel is handed
    back with its credit spent and data waiting."""
    assert client.driver is not None
    assert client.driver.proto is not None
    transport = client.driver.proto.transport
    assert transport is not None
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    session = core(client)
    cid = session.open_channel("svc.example", 7)
    # Blindly: the fake server reads nothing, so it answers the OPEN it knows comes.
    peer.send(peer.reliable(fr.OpenOk, cid, 200 * 1024))
    session.send(cid, bytes(1024 * 1024))
    client.driver.schedule()
    await until(lambda: client.driver is not None and client.driver.proto is not None
                and client.driver.proto.write_paused, "the client's writes stalled")
    await until(lambda: session.channels.by_id[cid].credit == 0, "the credit spent")
    return cid


def test_a_server_that_never_reads_cannot_make_the_client_queue_without_bound() -> None:
    """PINGs want PONGs and WINDOW(0) wakes a channel that has data; while
    the client cannot write, neither may pile up with every frame."""
    n = 5_000

    async def main() -> None:
        server, client, peer = await attached(peer_opening_only, rcvbuf=4096)
        try:
            cid = await _stall_the_client(client, peer)
            with Allocations() as allocations:
                await flood(peer, (frame for i in range(n) for frame in (
                    fr.encode(fr.Ping(i)), peer.reliable(fr.Window, cid, 0))),
                    record=16 * 1024)
                await until(seen_all(client, peer), "every record opened")
                growth = allocations.growth
            assert client.driver is not None
            assert client.driver.proto is not None
            assert client.driver.proto.write_paused  # still stalled: nothing was sent
            room = footprint(core(client))
            assert room["control"] <= 64, room
            assert room["round_robin"] <= 2, room
            # A PONG queued per PING would be about 56 bytes each: 270 KiB.
            assert growth < 128 * 1024, growth
            assert core(client).state is SessionState.ATTACHED
        finally:
            await finish(server, client)

    run(main)


def test_data_for_a_forgotten_channel_is_dropped_without_holding_anything() -> None:
    async def main() -> None:
        server, client, peer = await attached()
        try:
            cid = await _with_channel(peer, client)
            peer.send(peer.reliable(fr.OpenOk, cid, 1000),
                      peer.reliable(fr.Reset, cid, CloseCode.NORMAL))
            await until(lambda: core(client).channel_ids() == [], "the channel forgotten")
            with Allocations() as allocations:
                await flood(peer, (peer.reliable(fr.Data, cid, 0, bytes(1024))
                                   for _ in range(4_000)))
                await until(seen_all(client, peer), "every record opened")
                await until(lambda: footprint(core(client))["replay_frames"] == 0,
                            "everything acknowledged")
                growth = allocations.growth
            assert footprint(core(client)) == {"channels": 0, "replay_bytes": 0,
                                               "replay_frames": 0, "control": 0,
                                               "round_robin": 0, "events": 0}
            assert core(client).state is SessionState.ATTACHED
            assert growth < 256 * 1024, growth
        finally:
            await finish(server, client)

    run(main)


def test_a_flood_of_window_frames_grants_credit_and_holds_nothing() -> None:
    async def main() -> None:
        server, client, peer = await attached()
        try:
            cid = await _with_channel(peer, client)
            core(client).send(cid, bytes(1000))
            peer.send(peer.reliable(fr.OpenOk, cid, 0))
            await flood(peer, (peer.reliable(fr.Window, cid, i % 2)
                               for i in range(50_000)))
            await until(seen_all(client, peer), "every record opened")
            await until(lambda: footprint(core(client))["replay_frames"] == 0,
                        "everything acknowledged")
            assert core(client).channels.by_id[cid].credit == 25_000 - 1000
            assert footprint(core(client))["round_robin"] == 0
            assert core(client).state is SessionState.ATTACHED
        finally:
            await finish(server, client)

    run(main)


def test_opens_for_a_reverse_forward_are_bounded_by_the_channel_limit() -> None:
    """With a reverse forward the client does connect for the server: a
    flood of OPENs naming it gets at most max_channels local connections;
    OPENs naming anything else are refused with a code that says why."""
    limit = 16

    async def main() -> None:
        conns: set[asyncio.StreamWriter] = set()
        most = 0

        async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal most
            conns.add(writer)
            most = max(most, len(conns))
            with contextlib.suppress(ConnectionError):
                await reader.read()
            conns.discard(writer)
            writer.close()

        local = await asyncio.start_server(service, "127.0.0.1", 0)
        port = local.sockets[0].getsockname()[1]
        server, client, peer = await attached(max_channels=limit)
        try:
            assert client.driver is not None
            ReverseForwards([ForwardSpec.parse_reverse(f"127.0.0.1:2222=127.0.0.1:{port}")]
                            ).attach(client.driver)
            assert peer.session is not None
            session = peer.session
            # Refusals first, in flights smaller than the channel limit: the
            # limit counts every OPEN of a read before the forwards see them.
            refused = [("127.0.0.1", 2223, fr.ChannelKind.STREAM),  # no forward there
                       ("not a host!", 2222, fr.ChannelKind.STREAM),
                       ("127.0.0.1", 2222, fr.ChannelKind.DATAGRAM)]
            first = 2
            for host, rport, kind in refused:
                for _ in range(5):
                    await flood(peer, _opens(peer, 10, first, host, rport, kind))
                    first += 20
                    answered = (first - 2) // 2
                    # Awaited within this iteration: the loop variable is the right one.
                    await until(lambda: session.open_fails.total() == answered,  # noqa: B023
                                "the flight refused")
            assert session.open_fails == {CloseCode.NOT_ALLOWED: 100, CloseCode.UNREACHABLE: 50}
            await flood(peer, _opens(peer, 200, first, "127.0.0.1", 2222))
            await until(lambda: session.got["OpenOk"] + session.open_fails.total() == 350,
                        "every OPEN answered")
            # One channel is the client's own LISTEN.
            assert 0 < session.got["OpenOk"] <= limit - 1
            assert most <= limit - 1
            assert session.open_fails[CloseCode.FLOW_CONTROL] == 200 - session.got["OpenOk"]
            assert len(core(client).channel_ids()) <= limit
        finally:
            await finish(server, client)
            local.close()

    run(main)
