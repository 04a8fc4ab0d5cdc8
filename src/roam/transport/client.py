"""The client daemon's transport side: handshake once, resume on every new transport."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from roam.core.preamble import HANDSHAKE_LEN, REPLY, Preamble, Status, Suite, TransportKind
from roam.core.session import Session, SessionConfig, SessionState
from roam.crypto.keys import encode_key, public_key
from roam.crypto.noise import HandshakeState
from roam.crypto.records import RecordOpener, RecordSealer
from roam.errors import HandshakeError, ProtocolError, TransportError
from roam.transport.driver import SessionDriver
from roam.transport.protocol import TransportProtocol
from roam.transport.server import ACCEPTED, HELLO, PROLOGUE, REFUSED

log = logging.getLogger("roam.client")

# Waits between reconnect attempts: the first at once (a reset is usually a
# one-off), then doubling, capped so a returning network is found within 2 s.
BACKOFF = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass
class ClientConfig:
    server_host: str
    server_port: int
    server_key: bytes
    private_key: bytes
    session: SessionConfig
    suite: Suite = Suite.AESGCM_SHA256


class Client:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.driver: SessionDriver | None = None
        self.session_id: bytes | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._need_handshake = False  # the server forgot the session
        self.on_new_session: Callable[[SessionDriver], None] = lambda d: None
        self.stopped = asyncio.Event()
        self.transports = 0

    @property
    def server(self) -> str:
        return f"{self.config.server_host}:{self.config.server_port}"

    async def _connect(self, timeout: float) -> TransportProtocol:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(TransportProtocol, self.config.server_host,
                                       self.config.server_port), timeout)
        except TimeoutError:
            raise TransportError(f"connecting to {self.server} timed out") from None
        except OSError as exc:
            raise TransportError(f"cannot connect to {self.server}: "
                                 f"{exc.strerror or exc}") from None
        self.transports += 1
        return proto

    async def _read_reply(self, proto: TransportProtocol, timeout: float) -> tuple[Status, bytes]:
        status_raw, length = REPLY.unpack(await proto.read_exactly(REPLY.size, timeout))
        body = await proto.read_exactly(length, timeout)
        try:
            return Status(status_raw), body
        except ValueError:
            raise TransportError(f"{self.server} answered with unknown status "
                                 f"{status_raw}") from None

    async def handshake(self, timeout: float = 10.0) -> SessionDriver:
        """A new session. HandshakeError when the server refuses us or is not the one pinned."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        proto = await self._connect(timeout)
        raw = Preamble(TransportKind.NEW, cfg.suite).encode()
        hs = HandshakeState(cfg.suite.noise_name, initiator=True, prologue=PROLOGUE + raw,
                            s=cfg.private_key, rs=cfg.server_key)
        msg1 = hs.write_message(HELLO.pack(time.time_ns()))
        started = loop.time()
        proto.write(raw + HANDSHAKE_LEN.pack(len(msg1)) + msg1)
        try:
            status, body = await self._read_reply(proto, timeout)
        except TransportError:
            proto.abort()
            raise
        if status is not Status.OK:
            proto.abort()
            raise HandshakeError(f"server {self.server} refused the handshake: "
                                 f"{body.decode(errors='replace')}")
        try:
            payload = hs.read_message(body)
        except ProtocolError as exc:
            proto.abort()
            raise HandshakeError(
                f"server {self.server} did not prove it holds the key pinned with --server-key "
                f"({encode_key(cfg.server_key)}): {exc}; refusing to proceed") from None
        if payload[:1] != ACCEPTED:
            proto.abort()
            reason = payload[1:].decode(errors="replace") if payload[:1] == REFUSED else "?"
            raise HandshakeError(
                f"server {self.server} refused this client: {reason}; add its public key "
                f"{encode_key(public_key(cfg.private_key))} to the server's authorized keys")
        now = loop.time()
        send, recv = hs.split()
        session = Session(is_client=True, now=now, config=cfg.session)
        session.rtt.sample(now - started)
        self.session_id = hs.handshake_hash[:16]
        driver = SessionDriver(session, RecordSealer(send, now), RecordOpener(recv),
                               name=f"session {self.session_id.hex()[:8]}")
        driver.on_transport_lost = self._transport_lost
        session.transport_attached(now, resume=False)
        driver.attach(proto)
        self.driver = driver
        log.info("%s: new session with %s", driver.name, self.server)
        self.on_new_session(driver)
        return driver

    def _transport_lost(self, reason: str) -> None:
        if self.stopped.is_set():
            return
        log.warning("transport to %s lost (%s); resuming", self.server, reason)
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(
                self._reconnect(), name="reconnect")

    async def _reconnect(self) -> None:
        attempt = 0
        while not self.stopped.is_set():
            await asyncio.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])
            attempt += 1
            driver = self.driver
            if driver is None:
                return
            try:
                if self._need_handshake:
                    await self.handshake(timeout=max(self._attempt_timeout(driver.session), 5.0))
                    self._need_handshake = False
                    return
                if driver.session.state is SessionState.CLOSED:
                    return
                if await self._resume(driver):
                    return
            except HandshakeError as exc:
                log.error("%s", exc)
                self.stopped.set()
                return
            except TransportError as exc:
                log.info("resume attempt %d failed: %s", attempt, exc)

    def _attempt_timeout(self, session: Session) -> float:
        # Long enough for a handshake over a slow path, short enough to move
        # on from a black-holed one well before the session's dead timer.
        return max(1.0, 3 * session.rtt.rto)

    async def _resume(self, driver: SessionDriver) -> bool:
        """One resume attempt; True when the session is attached again."""
        session = driver.session
        timeout = self._attempt_timeout(session)
        proto = await self._connect(timeout)
        loop = asyncio.get_running_loop()
        if self.session_id is None:
            raise TransportError("no session to resume")
        raw = Preamble(TransportKind.RESUME, self.config.suite, self.session_id).encode()
        now = loop.time()
        session.transport_attached(now, resume=True)
        first = session.payloads_to_send(now)
        proto.write(raw + driver.sealer.seal(first[0], now, ad=raw))
        try:
            status, body = await self._read_reply(proto, timeout)
        except TransportError:
            proto.abort()
            session.transport_lost(loop.time())
            raise
        if status is Status.UNKNOWN_SESSION:
            proto.abort()
            log.warning("server %s no longer knows the session (%s); starting a new one: "
                        "%d open connections are lost", self.server,
                        body.decode(errors="replace"), len(driver.apps))
            driver.close(reason="session unknown to the server")
            self._need_handshake = True
            await self.handshake(timeout=max(timeout, 5.0))
            self._need_handshake = False
            return True
        if status is not Status.OK or session.state is not SessionState.RESUMING:
            proto.abort()
            session.transport_lost(loop.time())
            raise TransportError(f"resume refused by {self.server}: "
                                 f"{body.decode(errors='replace') or status.name}")
        driver.attach(proto)
        return True

    def stop(self) -> None:
        self.stopped.set()
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self.driver is not None:
            self.driver.close(reason="client shutting down")

