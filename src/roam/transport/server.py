"""The server daemon's transport side: handshakes, resumes, the session table."""

from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass

from roam.connector.connector import Connector
from roam.core.admission import Openings, source_of
from roam.core.compress import AUTO, ZSTD, ZSTD_HISTORY, CompressionMode
from roam.core.datagrams import DatagramPath
from roam.core.preamble import (
    HANDSHAKE_LEN,
    MAX_HANDSHAKE_MESSAGE,
    PREAMBLE,
    STANDBY_PROOF,
    Preamble,
    Status,
    TransportKind,
    decode_preamble,
    encode_reply,
    reply_error,
)
from roam.core.session import Session, SessionConfig
from roam.crypto.keys import short_id
from roam.crypto.noise import CipherState, HandshakeState
from roam.crypto.records import HEADER, RecordFramer, RecordOpener, RecordSealer
from roam.errors import CryptoError, ProtocolError, TransportError
from roam.transport.datagrams import DatagramListener, SessionDatagrams
from roam.transport.driver import SessionDriver
from roam.transport.protocol import TransportProtocol
from roam.transport.ratelog import RateLimitedLog

log = logging.getLogger("roam.server")

PROLOGUE = b"roam/1 "
# A peer that has not finished its half of the handshake by then is dropped:
# it holds a socket and a task, and honest peers answer within a few RTTs.
HANDSHAKE_TIMEOUT = 10.0
# NEW transports in their handshake at once; more are answered BUSY. Each
# costs two X25519 operations and a socket and a task until
# HANDSHAKE_TIMEOUT, so this bounds what unauthenticated peers can make us do.
MAX_HANDSHAKES = 256
# Of which from one source address (an IPv6 /64): one host's idle
# handshakes cannot make the server answer BUSY to everyone else.
MAX_HANDSHAKES_PER_SOURCE = 64
# Transports in their opening at once, resumes and standbys included. A
# resume costs one AEAD check, and after a network-wide outage a thousand
# clients resume at once: under the NEW limit most of them were answered
# BUSY and retried, and the last resumed after 31 s (bench/scale.py). Over
# it the oldest opening of the source holding most gives way (core/admission.py).
MAX_OPENINGS = 4096
# Once this many openings are in progress, one source may hold at most
# MAX_OPENINGS_PER_SOURCE; its next opening evicts its own oldest. Below
# it, a thousand clients behind one carrier NAT resume at once unhindered.
OPENINGS_LOAD = 1024
MAX_OPENINGS_PER_SOURCE = 256
# The first record of a resume carries RESUME alone (about 40 bytes sealed):
# a stranger who read the session id off the wire may make us hold this much
# per opening, not a whole record (256 KiB).
MAX_FIRST_RECORD = 1024
# How long a stopping server waits for its sessions' CLOSE frames to reach
# the kernel (sockets with room take them at once).
SHUTDOWN_WAIT = 2.0
# Connections the kernel queues until the loop accepts them. asyncio's
# default of 100 overflows when a network event moves many clients at once
# (a cell tower, a gateway reboot): each dropped SYN is retried after 1 s,
# then 3 s, 7 s, and so the resume of hundreds of sessions took 5 to 10 s.
# The kernel caps this at net.core.somaxconn.
LISTEN_BACKLOG = 4096
ACCEPTED = b"\x00"
REFUSED = b"\x01"
# Message 1 carries the client's wall clock in ns (as WireGuard's TAI64N
# does): IK's first message can be replayed verbatim, and a replay must not
# make a session. The server keeps the newest timestamp per client key.
# Exactly these 8 bytes: the client offers no compression (as before
# compression existed, so either side may be older).
HELLO = struct.Struct("!Q")
# The timestamp and the compression the client offers: a set of bits, ZSTD
# (0x01) and ZSTD_HISTORY (0x02, zstd whose streams start from the session's
# recent data); the server ignores bits it does not know. The ACCEPTED that
# answers it carries one more byte: the compression chosen, one of the
# offered bits or 0 for none.
HELLO_COMPRESS = struct.Struct("!QB")
# A parked standby waits this long for its RESUME at most: the client opens
# a new one long before (its TCP keepalives find a dead one in about a
# minute); this only bounds what a vanished client leaves behind.
STANDBY_LIFETIME = 24 * 3600.0


@dataclass(slots=True)
class _Standby:
    """A session's standby key, its newest stamp, and the transport parked now."""

    key: CipherState
    stamp: int = 0
    proto: TransportProtocol | None = None


@dataclass
class ServerConfig:
    host: str
    port: int
    private_key: bytes
    authorized: dict[bytes, str]
    connector: Connector
    session: SessionConfig
    # UDP for datagram channels, on the same address and port as TCP.
    udp: bool = True
    # Compression this server allows, and does with what it sends.
    compression: CompressionMode = AUTO


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.sessions: dict[bytes, SessionDriver] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_hello: dict[bytes, int] = {}
        # Transports in their opening, and of those the NEW handshakes.
        self.openings: Openings[TransportProtocol] = Openings(
            MAX_OPENINGS, MAX_OPENINGS_PER_SOURCE, load=OPENINGS_LOAD)
        self.handshakes: Openings[TransportProtocol] = Openings(
            MAX_HANDSHAKES, MAX_HANDSHAKES_PER_SOURCE, evict=False)
        # One line a second at most for what strangers can cause.
        self._log_busy = RateLimitedLog(log)
        self._log_evicted = RateLimitedLog(log)
        self._log_refused = RateLimitedLog(log)
        self._standby: dict[bytes, _Standby] = {}
        self.udp: DatagramListener | None = None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, self.config.host, self.config.port,
                                                backlog=LISTEN_BACKLOG)
        sock = self._server.sockets[0].getsockname()
        if self.config.udp:
            self.udp = DatagramListener()
            try:
                await self.udp.start(sock[0], sock[1])
            except TransportError:
                self._server.close()
                raise
        log.info("listening on %s:%d%s", sock[0], sock[1], " (TCP and UDP)" if self.udp else "")
        return sock[0], sock[1]

    async def close(self, timeout: float = SHUTDOWN_WAIT) -> None:
        """Stop listening and end every session with CLOSE, so that clients
        close their applications' connections now instead of resuming."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        drivers = list(self.sessions.values())
        for driver in drivers:
            driver.close(reason="server shutting down")
        try:
            async with asyncio.timeout(timeout):
                for driver in drivers:
                    await driver.close_and_wait(timeout)
        except TimeoutError:
            unsent = sum(1 for d in drivers if not d.done.is_set())
            log.warning("%d session(s) could not be told that the server stops", unsent)
        if self.udp is not None:
            self.udp.close()
            await self.udp.wait_closed()

    def _accept(self) -> TransportProtocol:
        return TransportProtocol(on_made=self._admit)

    def _admit(self, proto: TransportProtocol) -> None:
        """A connection arrived: admit it as an opening, or refuse it before
        it costs a task (a flood's connections must be cheap to turn away)."""
        admission = self.openings.admit(proto, source_of(proto.peer_host))
        for old in admission.evict:
            self._log_evicted(f"opening from {old.peer} dropped to make room for one from "
                              f"{proto.peer}: {len(self.openings)} openings in progress, "
                              f"{self.openings.held_by(source_of(old.peer_host))} from its "
                              "source")
            old.abort()
        if not admission.admitted:
            self._refuse_busy(proto, admission.reason)
            return
        task = asyncio.get_running_loop().create_task(self._handle(proto), name="opening")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, proto: TransportProtocol) -> None:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await self._opening(proto)
        except TimeoutError:
            log.debug("transport from %s: handshake not finished in %g s", proto.peer,
                      HANDSHAKE_TIMEOUT)
            proto.abort()
        except TransportError as exc:
            log.debug("transport from %s ended during the handshake: %s", proto.peer, exc)
            proto.abort()
        finally:
            self.openings.release(proto)

    async def _opening(self, proto: TransportProtocol) -> None:
        raw = await proto.read_exactly(PREAMBLE.size, HANDSHAKE_TIMEOUT)
        try:
            pre = decode_preamble(raw)
        except ProtocolError as exc:
            self._refuse(proto, Status.BAD_PREAMBLE, str(exc))
            return
        if pre.kind is TransportKind.NEW:
            await self._new(proto, pre, raw)
        elif pre.kind is TransportKind.STANDBY:
            await self._park(proto, pre, raw)
        else:
            await self._resume(proto, pre, raw)

    async def _new(self, proto: TransportProtocol, pre: Preamble, raw: bytes) -> None:
        admission = self.handshakes.admit(proto, source_of(proto.peer_host))
        if not admission.admitted:
            self._refuse_busy(proto, f"too many handshakes in progress ({admission.reason})")
            return
        try:
            await self._handshake(proto, pre, raw)
        finally:
            self.handshakes.release(proto)

    async def _handshake(self, proto: TransportProtocol, pre: Preamble, raw: bytes) -> None:
        (length,) = HANDSHAKE_LEN.unpack(await proto.read_exactly(2, HANDSHAKE_TIMEOUT))
        if length > MAX_HANDSHAKE_MESSAGE:
            self._refuse(proto, Status.HANDSHAKE_FAILED, f"handshake message of {length} bytes")
            return
        msg1 = await proto.read_exactly(length, HANDSHAKE_TIMEOUT)
        hs = HandshakeState(pre.suite.noise_name, initiator=False, prologue=PROLOGUE + raw,
                            s=self.config.private_key)
        try:
            hello = hs.read_message(msg1)
        except ProtocolError as exc:
            self._refuse(proto, Status.HANDSHAKE_FAILED,
                         f"cannot decrypt the client's handshake ({exc}): the client's "
                         "--server-key is not this server's public key")
            return
        client_key = hs.remote_static
        if client_key is None:
            self._refuse(proto, Status.HANDSHAKE_FAILED, "handshake carried no client key")
            return
        who = self.config.authorized.get(client_key)
        if who is None:
            # Anyone can make a key and try it: once a second at most.
            self._log_refused(f"refused client {short_id(client_key)} from {proto.peer}: its "
                              "key is not in the authorized keys")
            msg2 = hs.write_message(REFUSED + b"this client's key is not authorized by the server")
            proto.write(encode_reply(Status.OK, msg2))
            proto.close()
            return
        if len(hello) == HELLO.size:
            (stamp,), offer = HELLO.unpack(hello), None
        elif len(hello) == HELLO_COMPRESS.size:
            stamp, offer = HELLO_COMPRESS.unpack(hello)
        else:
            self._refuse(proto, Status.HANDSHAKE_FAILED, f"handshake payload of {len(hello)} "
                         f"bytes from client {short_id(client_key)}; expected {HELLO.size} or "
                         f"{HELLO_COMPRESS.size}")
            return
        if stamp <= self._last_hello.get(client_key, 0):
            self._refuse(proto, Status.HANDSHAKE_FAILED,
                         f"handshake from client {short_id(client_key)} is a replay (its "
                         "timestamp is not newer than the last one; is the client's clock "
                         "going backwards?)")
            return
        self._last_hello[client_key] = stamp
        # Compression only when both sides allow it; each then compresses
        # what it sends as its own mode says.
        chosen = 0
        if offer is not None and self.config.compression.enabled:
            chosen = (ZSTD_HISTORY if offer & ZSTD_HISTORY else ZSTD) & offer
        msg2 = hs.write_message(ACCEPTED if offer is None else ACCEPTED + bytes([chosen]))
        send, recv = hs.split()
        dsend, drecv = hs.datagram_keys()
        standby_key = hs.standby_key()
        sid = hs.handshake_hash[:16]
        loop = asyncio.get_running_loop()
        now = loop.time()
        session = Session(is_client=False, now=now, config=self.config.session,
                          compression=self.config.compression if chosen else None,
                          history=chosen == ZSTD_HISTORY)
        driver = SessionDriver(session, RecordSealer(send, now), RecordOpener(recv),
                               name=f"session {sid.hex()[:8]} ({who})")
        self.config.connector.attach(driver)
        self.sessions[sid] = driver
        self._standby[sid] = _Standby(standby_key)
        if self.udp is not None:
            datagrams = SessionDatagrams(driver, DatagramPath(sid[:8], dsend, drecv, now,
                                                              is_client=False))
            driver.datagrams = datagrams
            self.udp.add(sid[:8], datagrams)
        driver.on_transport_lost = lambda reason: log.info(
            "%s: transport lost (%s); waiting for the client to resume", driver.name, reason)
        driver.closed.add_callback(lambda: self._reap(sid, driver))
        proto.write(encode_reply(Status.OK, msg2))
        session.transport_attached(now, resume=False)
        driver.attach(proto)
        log.info("%s: new session from %s, client %s", driver.name, proto.peer,
                 short_id(client_key))

    def _reap(self, sid: bytes, driver: SessionDriver) -> None:
        """The session ended: forget it, its standby and its UDP tag."""
        if self.sessions.get(sid) is driver:
            del self.sessions[sid]
            standby = self._standby.pop(sid, None)
            if standby is not None and standby.proto is not None:
                standby.proto.abort()
            if self.udp is not None:
                self.udp.remove(sid[:8])

    async def _resume(self, proto: TransportProtocol, pre: Preamble, raw: bytes) -> None:
        driver = self.sessions.get(pre.session_id)
        if driver is None:
            self._refuse(proto, Status.UNKNOWN_SESSION,
                         f"no session {pre.session_id.hex()[:8]} here (expired or restarted)")
            return
        await self._resume_record(proto, pre.session_id, driver, raw, HANDSHAKE_TIMEOUT)

    async def _resume_record(self, proto: TransportProtocol, sid: bytes, driver: SessionDriver,
                             ad: bytes, timeout: float) -> None:
        """Read the first record (RESUME) and move the session onto `proto`.

        After a RESUME preamble the record is sealed with the preamble as
        associated data and the server answers a status first; on a parked
        standby, whose preamble was answered already, it is a plain record.
        """
        standby = not ad
        header = await proto.read_exactly(HEADER.size, timeout)
        length, counter = HEADER.unpack(header)
        if not 24 <= length <= MAX_FIRST_RECORD:
            self._refuse(proto, Status.RESUME_REFUSED, f"first record length {length} (a "
                         f"resume's first record carries RESUME alone: at most "
                         f"{MAX_FIRST_RECORD} bytes)")
            return
        body = await proto.read_exactly(length - 8, HANDSHAKE_TIMEOUT)
        if driver.session.closed or self.sessions.get(sid) is not driver:
            self._refuse(proto, Status.UNKNOWN_SESSION, "the session ended meanwhile")
            return
        try:
            payload = driver.opener.open(counter, body, ad=ad)
        except CryptoError as exc:
            self._log_refused(f"{driver.name}: refused resume from {proto.peer}: {exc}")
            if not standby:
                proto.write(reply_error(Status.RESUME_REFUSED, "resume does not authenticate"))
            proto.close()
            return
        if not standby:
            proto.write(encode_reply(Status.OK))
        now = asyncio.get_running_loop().time()
        driver.session.transport_attached(now, resume=True)
        try:
            # The RESUME goes in before anything the client sent after it.
            driver.session.receive_payload(payload, now)
        except ProtocolError as exc:
            log.warning("%s: bad resume from %s: %s", driver.name, proto.peer, exc)
            driver.close(exc.code, str(exc))
            proto.close()
            return
        driver.attach(proto, RecordFramer())
        log.info("%s: resumed on a %s from %s", driver.name,
                 "standby transport" if standby else "new transport", proto.peer)
        driver.flush()

    async def _park(self, proto: TransportProtocol, pre: Preamble, raw: bytes) -> None:
        """STANDBY: check the proof, answer OK, and keep the transport for a resume."""
        stamp, tag = STANDBY_PROOF.unpack(await proto.read_exactly(STANDBY_PROOF.size,
                                                                   HANDSHAKE_TIMEOUT))
        sid = pre.session_id
        driver, standby = self.sessions.get(sid), self._standby.get(sid)
        if driver is None or standby is None:
            self._refuse(proto, Status.UNKNOWN_SESSION,
                         f"no session {sid.hex()[:8]} here (expired or restarted)")
            return
        try:
            standby.key.decrypt_with_nonce(stamp, raw, tag)
        except CryptoError:
            self._refuse(proto, Status.RESUME_REFUSED, "standby proof does not authenticate")
            return
        if stamp <= standby.stamp:
            self._refuse(proto, Status.RESUME_REFUSED,
                         f"standby stamp {stamp} is not newer than {standby.stamp} (a replay)")
            return
        standby.stamp = stamp
        old, standby.proto = standby.proto, proto
        if old is not None:
            old.abort()  # one standby per session: the newest
        proto.write(encode_reply(Status.OK))
        log.info("%s: standby transport parked from %s", driver.name, proto.peer)
        task = asyncio.get_running_loop().create_task(self._parked(proto, sid, driver, standby),
                                                      name=f"standby-{sid.hex()[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _parked(self, proto: TransportProtocol, sid: bytes, driver: SessionDriver,
                      standby: _Standby) -> None:
        try:
            await self._resume_record(proto, sid, driver, b"", STANDBY_LIFETIME)
        except TransportError as exc:
            log.debug("%s: standby transport from %s ended: %s", driver.name, proto.peer, exc)
            proto.abort()
        finally:
            if standby.proto is proto:
                standby.proto = None

    def _refuse_busy(self, proto: TransportProtocol, reason: str) -> None:
        """BUSY: the client retries with jittered backoff. Logged at most once
        a second: when a mass reconnect overloads the server, a line per
        refused transport (tens of thousands) costs the CPU that it lacks."""
        self._log_busy(f"transport from {proto.peer} answered BUSY: {reason}")
        proto.write(reply_error(Status.BUSY, reason))
        proto.close()

    def _refuse(self, proto: TransportProtocol, status: Status, reason: str) -> None:
        self._log_refused(f"transport from {proto.peer} refused: {reason}")
        proto.write(reply_error(status, reason))
        proto.close()
