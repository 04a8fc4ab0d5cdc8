"""A unit's SIP registrar client: REGISTERs and lookups over UDP or TCP.

Every decision is roam.registrar.sipbindings' and sipregister's (what to
send, what an answer means); this module owns the socket to one registrar,
reads the clock, retransmits over UDP and gives up after a timeout.
Transactions go one at a time over one connection or socket (RFC 3261
section 18: over TCP the answer comes back on the connection the request
went out on).

    client = SipRegistrarClient(Account("sip:alice@example.net", password),
                                ("192.0.2.10", 5060), transport="tcp")
    await client.register("sip:alice@198.18.1.2:7000;transport=tcp")
    found = await client.lookup("sip:bob@example.net")    # Found(bindings=...)
    task = asyncio.create_task(client.keep_registered(contact))   # refreshes
    client.move(new_contact)                             # registers it at once

A refusal raises SipRefused (the registrar answered no: wrong password,
forbidden); no answer in time, or a connection that fails, raises
TransportError; garbage from the registrar raises SipError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable

from roam.errors import ProtocolError, RoamError, TransportError
from roam.registrar.sipbindings import DEFAULT_EXPIRES_S, Lookup, Registration
from roam.registrar.sipmessage import MessageStream, parse_response
from roam.registrar.sipregister import (
    Account,
    Event,
    Found,
    Ignored,
    Provisional,
    Random,
    Refused,
    Registered,
    Send,
    Unregistered,
)
from roam.registrar.sipsyntax import SipError

log = logging.getLogger("roam")

_Build = Callable[[], bytes]  # writes the first request once the socket is open

T1_S = 0.5  # RFC 3261 section 17.1.1.1: the round-trip estimate, first retransmission
T2_S = 4.0  # RFC 3261 section 17.1.2.2: the longest retransmission interval
# Timer F (RFC 3261 section 17.1.2.2) is 64*T1, 32 s: a unit that looks up
# its peer after a failed resume cannot wait that long for one registrar.
# 8 s still covers four UDP retransmissions (0.5, 1, 2, 4 s).
TRANSACTION_TIMEOUT_S = 8.0
CONNECT_TIMEOUT_S = 5.0
# One operation's requests: the first, a challenge answered, a stale nonce
# answered twice, an interval raised (roam.registrar.sipregister allows no more).
MAX_REQUESTS = 5
READ_SIZE = 65536
# keep_registered after a failure: tries again after 1 s, doubling to a minute.
RETRY_MIN_S = 1.0
RETRY_MAX_S = 60.0


class SipRefused(RoamError):
    """The registrar answered with a refusal; `status` and `reason` are its
    own, `detail` what they mean."""

    def __init__(self, registrar: str, refused: Refused) -> None:
        super().__init__(f"SIP registrar {registrar} refused: {refused}")
        self.status = refused.status
        self.reason = refused.reason
        self.detail = refused.detail


def _format(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Channel:
    """One socket to the registrar: whole responses in, requests out."""

    reliable: bool
    sent_by: tuple[str, int]

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def receive(self, timeout_s: float) -> bytes:
        """One whole message; TimeoutError if none arrives in time."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _TcpChannel(_Channel):
    reliable = True

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._stream = MessageStream()
        self._messages: list[bytes] = []
        host, port = writer.get_extra_info("sockname")[:2]
        self.sent_by = (str(host), int(port))

    @classmethod
    async def open(cls, address: tuple[str, int]) -> _TcpChannel:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(*address, limit=READ_SIZE)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def receive(self, timeout_s: float) -> bytes:
        async with asyncio.timeout(timeout_s):
            while not self._messages:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    raise TransportError("the registrar closed the connection")
                self._messages += self._stream.feed(data)
        return self._messages.pop(0)

    def close(self) -> None:
        self._writer.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception] = asyncio.Queue(maxsize=64)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.queue.full():  # a flood of datagrams is dropped, not held
            self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        # An ICMP port unreachable: nothing listens there. Said at once
        # rather than after every retransmission has gone unanswered.
        if not self.queue.full():
            self.queue.put_nowait(exc)


class _UdpChannel(_Channel):
    reliable = False

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _UdpProtocol) -> None:
        self._transport, self._protocol = transport, protocol
        host, port = transport.get_extra_info("sockname")[:2]
        self.sent_by = (str(host), int(port))

    @classmethod
    async def open(cls, address: tuple[str, int]) -> _UdpChannel:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(_UdpProtocol,
                                                                  remote_addr=address)
        return cls(transport, protocol)

    async def send(self, data: bytes) -> None:
        self._transport.sendto(data)

    async def receive(self, timeout_s: float) -> bytes:
        async with asyncio.timeout(timeout_s):
            item = await self._protocol.queue.get()
        if isinstance(item, Exception):
            raise TransportError(f"the registrar's port is unreachable: {item}")
        return item

    def close(self) -> None:
        self._transport.close()


class SipRegistrarClient:
    """A unit's registration at one SIP registrar and its lookups there; see
    the module's docstring."""

    def __init__(self, account: Account, registrar: tuple[str, int], *,
                 transport: str = "tcp", expires_s: int = DEFAULT_EXPIRES_S,
                 instance: str | None = None, timeout_s: float = TRANSACTION_TIMEOUT_S,
                 random: Random = os.urandom) -> None:
        self.account = account
        self.registrar = registrar
        self.name = f"{_format(registrar)} ({transport})"
        self.timeout_s = timeout_s
        self.registration = Registration(account, transport=transport, random=random,
                                         expires_s=expires_s, instance=instance)
        self._lookup = Lookup(account, transport=transport, random=random)
        self._udp = transport.lower() == "udp"
        self._channel: _Channel | None = None
        self._lock = asyncio.Lock()
        self._contact = ""  # what keep_registered keeps registered
        self._moved = asyncio.Event()

    # -- operations -----------------------------------------------------------

    async def register(self, contact: str) -> Registered:
        """Bind the AOR to `contact` (first time, refresh, or a move that
        replaces the old contact); SipRefused, TransportError or SipError if not."""
        # A move: a connection or socket from before may be bound to the
        # address the unit has just left.
        moved = self.registration.contact not in (None, contact)
        event = await self._operation(
            lambda: self.registration.register(contact, time.monotonic()), self.registration,
            fresh=moved)
        if not isinstance(event, Registered):
            raise ProtocolError(f"registrar {self.name}: {type(event).__name__} "
                                "in answer to a registration")
        if len(event.bindings) > 1:
            log.info("SIP registrar %s lists %d contacts for %s: %s", self.name,
                     len(event.bindings), self.account.aor,
                     ", ".join(b.uri for b in event.bindings))
        return event

    async def unregister(self, *, everything: bool = False) -> Unregistered:
        """Remove this unit's contacts (or, with `everything`, every binding of the AOR)."""
        event = await self._operation(
            lambda: self.registration.unregister(time.monotonic(), everything=everything),
            self.registration)
        if not isinstance(event, Unregistered):
            raise ProtocolError(f"registrar {self.name}: {type(event).__name__} "
                                "in answer to a removal")
        return event

    async def lookup(self, peer_aor: str) -> Found:
        """A peer's current contacts, read from the registrar by its AOR."""
        event = await self._operation(
            lambda: self._lookup.query(peer_aor, time.monotonic()), self._lookup)
        if not isinstance(event, Found):
            raise ProtocolError(f"registrar {self.name}: {type(event).__name__} "
                                "in answer to a lookup")
        return event

    async def keep_registered(self, contact: str) -> None:
        """Register `contact` and keep it registered until cancelled:
        refreshed when the registration says (half its expiry), registered
        anew at once after `move()`, tried again after a failure (1 s,
        doubling to a minute), each failure logged."""
        self._contact = contact
        backoff = RETRY_MIN_S
        while True:
            self._moved.clear()
            current = self._contact
            try:
                registered = await self.register(current)
            except (SipRefused, TransportError, ProtocolError, OSError) as exc:
                log.warning("SIP registration of %s at %s failed: %s (again in %.0f s)",
                            self.account.aor, self.name, exc, backoff)
                delay = backoff
                backoff = min(backoff * 2, RETRY_MAX_S)
            else:
                log.debug("SIP registrar %s: %s is at %s for %d s", self.name,
                          self.account.aor, registered.contact, registered.expires_s)
                backoff = RETRY_MIN_S
                refresh_at = self.registration.refresh_at
                delay = refresh_at - time.monotonic() if refresh_at is not None else backoff
            if self._contact != current:
                continue  # moved while that registration was under way
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, delay)):
                    await self._moved.wait()

    def move(self, contact: str) -> None:
        """The unit is now reachable at `contact`: keep_registered registers
        it at once, replacing the old one."""
        self._contact = contact
        self._moved.set()

    def close(self) -> None:
        self._drop_channel()

    # -- transactions -----------------------------------------------------------

    async def _operation(self, build: _Build, machine: Registration | Lookup, *,
                         fresh: bool = False) -> Event:
        """One operation, its challenge answered and its interval raised as
        the machine says. A TCP connection used before that fails is opened
        anew once: the registrar may have restarted, or the unit moved. (A
        UDP socket that got no answer would get none on a new one either.)"""
        async with self._lock:
            if fresh:
                self._drop_channel()
            reused = self._channel is not None
            try:
                return await self._attempt(build, machine)
            except (TransportError, OSError) as exc:
                self._drop_channel()
                if not reused or self._udp:
                    raise self._transport_error(exc) from None
                log.debug("SIP registrar %s: %s; again on a new connection", self.name, exc)
            try:
                return await self._attempt(build, machine)
            except (TransportError, OSError) as exc:
                self._drop_channel()
                raise self._transport_error(exc) from None

    def _transport_error(self, exc: BaseException) -> TransportError:
        if isinstance(exc, TimeoutError):
            why = f"no connection within {CONNECT_TIMEOUT_S:g} s"
        elif isinstance(exc, OSError) and exc.errno:
            why = os.strerror(exc.errno)  # asyncio's own text repeats the address
        else:
            why = str(exc) or type(exc).__name__
        return TransportError(f"SIP registrar {self.name}: {why}")

    async def _attempt(self, build: _Build, machine: Registration | Lookup) -> Event:
        channel = await self._open()
        machine.sent_by = channel.sent_by
        data = build()
        for _ in range(MAX_REQUESTS):
            try:
                event = await self._transaction(channel, machine, data)
            except SipError as exc:
                self._drop_channel()  # a stream that cannot be framed cannot go on
                raise SipError(f"SIP registrar {self.name}: {exc}") from None
            if isinstance(event, Send):
                data = event.data
                continue
            if isinstance(event, Refused):
                raise SipRefused(self.name, event)
            return event
        raise ProtocolError(f"SIP registrar {self.name} asked again after {MAX_REQUESTS} "
                            "requests")

    async def _transaction(self, channel: _Channel, machine: Registration | Lookup,
                           data: bytes) -> Event:
        """Send `data` and wait for its final answer: a non-INVITE client
        transaction (RFC 3261 section 17.1.2), retransmitted over UDP at
        T1, 2*T1, ... up to T2 (Timer E), T2 apart after a provisional, and
        given up after timeout_s (Timer F)."""
        loop = asyncio.get_running_loop()
        await channel.send(data)
        give_up = loop.time() + self.timeout_s
        interval = T1_S
        resend_at = loop.time() + interval
        while True:
            now = loop.time()
            if now >= give_up:
                raise TransportError(f"no answer within {self.timeout_s:g} s")
            wait = give_up - now if channel.reliable else min(give_up, resend_at) - now
            try:
                message = await channel.receive(max(wait, 0.0))
            except TimeoutError:
                if not channel.reliable and loop.time() >= resend_at:
                    await channel.send(data)
                    interval = min(interval * 2, T2_S)
                    resend_at = loop.time() + interval
                continue
            try:
                event = machine.receive(parse_response(message), time.monotonic())
            except SipError as exc:
                if channel.reliable:
                    raise
                # RFC 3261 section 18.1.2: a malformed datagram is discarded.
                log.debug("SIP registrar %s: a bad datagram dropped: %s", self.name, exc)
                continue
            if isinstance(event, Ignored):
                log.debug("SIP registrar %s: %s", self.name, event.reason)
                continue
            if isinstance(event, Provisional):
                interval = T2_S
                resend_at = loop.time() + interval
                continue
            return event

    async def _open(self) -> _Channel:
        if self._channel is None:
            if self._udp:
                self._channel = await _UdpChannel.open(self.registrar)
            else:
                self._channel = await _TcpChannel.open(self.registrar)
        return self._channel

    def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

