"""A server's state and a client's keys, for openings driven in memory.

The server side holds what a server daemon gives its openings (private key,
authorized keys, compression, the newest HELLO per client, its sessions);
`converse_new` and friends hand the bytes of one opening across, whole or
in the chunks a test chooses.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from roam.core.compress import AUTO, CompressionMode
from roam.core.opening import NeedMore
from roam.core.opening_client import NewOpening, ResumeOpening, SessionOpened, StandbyOpening
from roam.core.opening_server import (
    NewSession,
    Park,
    ServerOpening,
    ServerOutcome,
    StandbyState,
)
from roam.core.preamble import Suite
from roam.crypto.keys import generate_private_key, public_key
from roam.crypto.noise import CipherState
from roam.crypto.records import RecordOpener, RecordSealer

SERVER_KEY = generate_private_key()
CLIENT_KEY = generate_private_key()
STRANGER_KEY = generate_private_key()
# Any wall clock will do: the server only requires it to rise per client.
WALL_NS = 1_700_000_000_000_000_000
# The first record of a resume; an opening carries it without reading it.
RESUME_PAYLOAD = b"\x07RESUME(0)"


@dataclass
class Live:
    """A session as the server holds it."""

    name: str
    opener: RecordOpener
    closed: bool = False


@dataclass
class Table:
    live: dict[bytes, Live] = field(default_factory=dict)
    standbys: dict[bytes, StandbyState] = field(default_factory=dict)

    def resumable(self, session_id: bytes) -> Live | None:
        found = self.live.get(session_id)
        return None if found is None or found.closed else found

    def standby(self, session_id: bytes) -> StandbyState | None:
        return self.standbys.get(session_id)


class Server:
    """What a server daemon keeps across openings."""

    def __init__(self, compression: CompressionMode = AUTO, busy: str | None = None) -> None:
        self.key = SERVER_KEY
        self.authorized = {public_key(CLIENT_KEY): "laptop"}
        self.compression = compression
        self.busy = busy  # a reason: every NEW handshake is answered BUSY
        self.table = Table()
        self.last_hello: dict[bytes, int] = {}
        self.admissions = 0

    def _admit(self) -> str | None:
        self.admissions += 1
        return self.busy

    def opening(self) -> ServerOpening:
        return ServerOpening(private_key=self.key, authorized=self.authorized,
                             compression=self.compression, sessions=self.table,
                             last_hello=self.last_hello, admit_handshake=self._admit,
                             peer="192.0.2.7:40000")

    def accept(self, new: NewSession) -> None:
        """Keep the session, as the daemon does with a NewSession."""
        self.table.live[new.session_id] = Live(f"session {new.session_id.hex()[:8]}",
                                               RecordOpener(new.keys.receive))
        self.table.standbys[new.session_id] = StandbyState(new.keys.standby)


@dataclass
class ClientSession:
    """What a client keeps of a session for its later openings."""

    session_id: bytes
    sealer: RecordSealer
    opener: RecordOpener
    standby_key: CipherState
    stamp: int = 0

    def resume(self) -> ResumeOpening:
        return ResumeOpening(suite=Suite.AESGCM_SHA256, session_id=self.session_id,
                             server="server.test:7000")

    def standby(self, stamp: int | None = None, key: CipherState | None = None
                ) -> StandbyOpening:
        self.stamp = self.stamp + 1 if stamp is None else stamp
        return StandbyOpening(suite=Suite.AESGCM_SHA256, session_id=self.session_id,
                              key=key or self.standby_key, stamp=self.stamp,
                              server="server.test:7000", via="wlan0")


def new_opening(key: bytes = CLIENT_KEY, server_key: bytes | None = None,
                compression: CompressionMode = AUTO,
                suite: Suite = Suite.AESGCM_SHA256) -> NewOpening:
    return NewOpening(suite=suite, private_key=key,
                      server_key=server_key or public_key(SERVER_KEY),
                      compression=compression, server="server.test:7000")


def feed(opening: ServerOpening, data: bytes, cuts: Iterable[int] = ()) -> ServerOutcome:
    """Feed `data` in pieces ending at `cuts`; every outcome before the last
    must be NeedMore, and say what `needed` says."""
    pieces = split(data, cuts)
    for piece in pieces[:-1]:
        outcome = opening.receive_data(piece)
        assert isinstance(outcome, NeedMore), outcome
        assert outcome.size == opening.needed > 0
    return opening.receive_data(pieces[-1])


def drive(receive: Callable[[bytes], object], pieces: Sequence[bytes]) -> tuple[object, bytes]:
    """Feed pieces until an outcome other than NeedMore (feeding a Park's
    `rest` back, as a driver does); that outcome, and every byte past the
    opening: its `rest` and the pieces not fed."""
    queue = list(pieces)
    outcome: object = NeedMore(0)
    while queue:
        outcome = receive(queue.pop(0))
        if isinstance(outcome, Park):
            queue.insert(0, outcome.rest)
        elif not isinstance(outcome, NeedMore):
            rest = getattr(outcome, "rest", b"")
            return outcome, rest + b"".join(queue)
    return outcome, b""


def split(data: bytes, cuts: Iterable[int]) -> Sequence[bytes]:
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def converse_new(server: Server, client: NewOpening | None = None,
                 wall_ns: int = WALL_NS) -> tuple[SessionOpened, NewSession]:
    """A NEW opening handed across whole; the server keeps the session."""
    client = client or new_opening()
    out = server.opening().receive_data(client.start(wall_ns))
    assert isinstance(out, NewSession), out
    server.accept(out)
    opened = client.receive_data(out.reply)
    assert isinstance(opened, SessionOpened), opened
    return opened, out


def client_session(opened: SessionOpened) -> ClientSession:
    return ClientSession(opened.session_id, RecordSealer(opened.keys.send, 0.0),
                         RecordOpener(opened.keys.receive), opened.keys.standby)
