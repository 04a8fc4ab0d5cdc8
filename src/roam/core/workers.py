"""Which worker of a server holds a session, and what workers tell each other, sans-IO.

`roam server --workers N` runs N processes on one port (docs/workers.md).
The kernel spreads connections over them by a hash of the addresses, so a
RESUME or STANDBY transport may land on a worker that does not hold its
session. `Routes` decides from the cleartext preamble where such a transport
goes; the driver (roam.transport.handoff) passes the socket there.

In: the sessions this worker creates and ends (`created`, `ended`), what
the other workers say of theirs (`owned`, `forget`), preambles and UDP
session tags. Out: a worker index or None (keep it here), and the messages
to send every other worker (`announcements`).

Messages between workers (one per SOCK_SEQPACKET message, so no framing):

    OWNED     kind=1 | added:u16 | removed:u16 | session ids (16 bytes each)
    TRANSPORT kind=2 | the bytes read from it so far (the socket rides along)
    DATAGRAM  kind=3 | port:u16 | host length:u8 | host (ASCII) | UDP packet
    HELLOS    kind=4 | count:u16 | (client key (32 bytes) | stamp:u64) each

HELLOS carry the newest NEW handshake's timestamp per client key that a
worker accepted: every worker refuses a replayed message 1 (docs/protocol.md
2.3), not only the one that took it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from roam.core.preamble import TransportKind, decode_preamble
from roam.errors import ProtocolError

OWNED, TRANSPORT, DATAGRAM, HELLOS = 1, 2, 3, 4
_OWNED = struct.Struct("!BHH")
_DATAGRAM = struct.Struct("!BHB")
_HELLOS = struct.Struct("!BH")
_HELLO = struct.Struct("!32sQ")
# Stamps per HELLOS message: 1500 make 60 KiB, as MAX_IDS does.
MAX_HELLOS = 1500
SESSION_ID = 16
# Session ids per OWNED message: 4000 make 64 KiB, well under a Unix
# socket's default buffer (212 KiB), so one message always fits in it.
MAX_IDS = 4000
# A worker reads messages of at most this much: a UDP packet (at most 65507
# bytes) with its address, or a transport's bytes so far (the protocol
# stops reading at 4 KiB before its records begin: at most 8 KiB).
MAX_MESSAGE = 66 * 1024
# What a handed transport may bring: its preamble and what was read with it.
MAX_HANDED = 16 * 1024


@dataclass(frozen=True, slots=True)
class Owned:
    """A worker's sessions that began (`added`) and ended (`removed`)."""

    added: tuple[bytes, ...]
    removed: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Transport:
    """A transport handed over: the bytes its first worker read off it."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Datagram:
    """A UDP packet that reached another worker, and where it came from."""

    host: str
    port: int
    packet: bytes


@dataclass(frozen=True, slots=True)
class Hellos:
    """Client keys and the newest NEW timestamp another worker accepted from each."""

    entries: tuple[tuple[bytes, int], ...]


Message = Owned | Transport | Datagram | Hellos


def encode_owned(added: Iterable[bytes], removed: Iterable[bytes]) -> bytes:
    add, rem = tuple(added), tuple(removed)
    if len(add) + len(rem) > MAX_IDS or any(len(s) != SESSION_ID for s in add + rem):
        raise ValueError(f"at most {MAX_IDS} session ids of {SESSION_ID} bytes")
    return _OWNED.pack(OWNED, len(add), len(rem)) + b"".join(add) + b"".join(rem)


def encode_hellos(entries: Iterable[tuple[bytes, int]]) -> bytes:
    items = tuple(entries)
    if len(items) > MAX_HELLOS or any(len(k) != 32 or not 0 <= s < 1 << 64 for k, s in items):
        raise ValueError(f"at most {MAX_HELLOS} stamps of 32-byte keys")
    return _HELLOS.pack(HELLOS, len(items)) + b"".join(_HELLO.pack(k, s) for k, s in items)


def encode_transport(data: bytes) -> bytes:
    if len(data) > MAX_HANDED:
        raise ValueError(f"a handed transport brings at most {MAX_HANDED} bytes")
    return bytes([TRANSPORT]) + data


def encode_datagram(host: str, port: int, packet: bytes) -> bytes:
    raw = host.encode("ascii")
    if len(raw) > 255 or not 0 <= port <= 0xFFFF:
        raise ValueError(f"not an address: {host!r} port {port}")
    out = _DATAGRAM.pack(DATAGRAM, port, len(raw)) + raw + packet
    if len(out) > MAX_MESSAGE:
        raise ValueError(f"a datagram message is at most {MAX_MESSAGE} bytes")
    return out


def decode(message: bytes) -> Message:
    """A message from another worker; ProtocolError for anything else."""
    if not message:
        raise ProtocolError("empty message")
    if len(message) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(message)} bytes (at most {MAX_MESSAGE})")
    kind = message[0]
    if kind == OWNED:
        if len(message) < _OWNED.size:
            raise ProtocolError("OWNED message too short")
        _, n_add, n_rem = _OWNED.unpack_from(message)
        body = message[_OWNED.size:]
        if len(body) != SESSION_ID * (n_add + n_rem):
            raise ProtocolError(f"OWNED says {n_add}+{n_rem} session ids, carries "
                                f"{len(body)} bytes")
        ids = [body[i:i + SESSION_ID] for i in range(0, len(body), SESSION_ID)]
        return Owned(tuple(ids[:n_add]), tuple(ids[n_add:]))
    if kind == TRANSPORT:
        if len(message) - 1 > MAX_HANDED:
            raise ProtocolError(f"handed transport brings {len(message) - 1} bytes")
        return Transport(message[1:])
    if kind == DATAGRAM:
        if len(message) < _DATAGRAM.size:
            raise ProtocolError("DATAGRAM message too short")
        _, port, n = _DATAGRAM.unpack_from(message)
        end = _DATAGRAM.size + n
        if len(message) < end:
            raise ProtocolError("DATAGRAM message cut in its address")
        try:
            host = message[_DATAGRAM.size:end].decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("DATAGRAM address is not ASCII") from None
        return Datagram(host, port, message[end:])
    if kind == HELLOS:
        if len(message) < _HELLOS.size:
            raise ProtocolError("HELLOS message too short")
        _, count = _HELLOS.unpack_from(message)
        if len(message) != _HELLOS.size + count * _HELLO.size:
            raise ProtocolError(f"HELLOS says {count} stamps, carries "
                                f"{len(message) - _HELLOS.size} bytes")
        return Hellos(tuple(_HELLO.unpack_from(message, _HELLOS.size + i * _HELLO.size)
                            for i in range(count)))
    raise ProtocolError(f"unknown message kind {kind}")


class Routes:
    """Every worker's sessions as this worker knows them, and where a
    transport or packet belongs.

    A transport moves at most once: one handed over is opened where it
    lands (`handed=True`), whatever the table says, so a flood of RESUMEs
    costs each worker at most one pass of each socket. A session that no
    worker announced is opened here, which answers UNKNOWN_SESSION as a
    single server does.
    """

    __slots__ = ("_added", "_hellos", "_owners", "_removed", "_tags", "me")

    def __init__(self, me: int) -> None:
        self.me = me
        self._owners: dict[bytes, int] = {}
        # The first 8 bytes of a session id tag its UDP packets (docs/protocol.md 12.1).
        self._tags: dict[bytes, int] = {}
        self._added: list[bytes] = []
        self._removed: list[bytes] = []
        self._hellos: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._owners)

    def owner(self, session_id: bytes) -> int | None:
        return self._owners.get(session_id)

    # ---- this worker's sessions ------------------------------------------------

    def created(self, session_id: bytes, hello: tuple[bytes, int] | None = None) -> None:
        """A session began here; `hello`: its client's key and the HELLO
        timestamp this worker accepted, for the others to refuse a replay."""
        self._set(session_id, self.me)
        self._added.append(session_id)
        if hello is not None:
            key, stamp = hello
            self._hellos[key] = max(stamp, self._hellos.get(key, 0))

    def ended(self, session_id: bytes) -> None:
        if self._owners.get(session_id) == self.me:
            self._drop(session_id)
            self._removed.append(session_id)

    def announcements(self) -> list[bytes]:
        """OWNED messages for every other worker, saying what changed here
        since the last call; each session id once, in order."""
        ops = [(s, True) for s in self._added] + [(s, False) for s in self._removed]
        self._added, self._removed = [], []
        out = []
        hellos = list(self._hellos.items())
        self._hellos = {}
        for i in range(0, len(hellos), MAX_HELLOS):
            out.append(encode_hellos(hellos[i:i + MAX_HELLOS]))
        for i in range(0, len(ops), MAX_IDS):
            chunk = ops[i:i + MAX_IDS]
            out.append(encode_owned((s for s, add in chunk if add),
                                    (s for s, add in chunk if not add)))
        return out

    # ---- other workers' sessions -----------------------------------------------

    def owned(self, worker: int, message: Owned) -> None:
        """Another worker's announcement (added before removed: a session
        that began and ended between two announcements is in both)."""
        if worker == self.me:
            return
        for sid in message.added:
            self._set(sid, worker)
        for sid in message.removed:
            if self._owners.get(sid) == worker:
                self._drop(sid)

    def forget(self, worker: int) -> None:
        """A worker is gone, and its sessions with it."""
        if worker == self.me:
            return
        for sid in [s for s, w in self._owners.items() if w == worker]:
            self._drop(sid)

    # ---- decisions ---------------------------------------------------------------

    def route(self, preamble: bytes, *, handed: bool) -> int | None:
        """The worker to hand this transport to, or None to open it here:
        a NEW, a preamble that does not decode (refused here), a session of
        this worker's or of none, and a transport handed over already."""
        if handed:
            return None
        try:
            pre = decode_preamble(preamble)
        except ProtocolError:
            return None
        if pre.kind is TransportKind.NEW:
            return None
        owner = self._owners.get(pre.session_id)
        return None if owner is None or owner == self.me else owner

    def route_datagram(self, tag: bytes) -> int | None:
        """The worker whose session a UDP packet's tag names, or None: here."""
        owner = self._tags.get(tag)
        return None if owner is None or owner == self.me else owner

    def _set(self, sid: bytes, worker: int) -> None:
        self._owners[sid] = worker
        self._tags[sid[:8]] = worker

    def _drop(self, sid: bytes) -> None:
        del self._owners[sid]
        if self._tags.get(sid[:8]) is not None:
            del self._tags[sid[:8]]
