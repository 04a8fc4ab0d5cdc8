"""A unit's side of the registrar: register where it is, look up a peer.

    --registrar HOST:PORT,key=REGISTRAR_PUBLIC_KEY     (repeatable)

Several registrars may be listed: a registration goes to every one, and
any one accepting it is enough; a lookup asks them in turn until one knows
the peer. A unit registers at start, again at half its expiry, and at once
when its addresses change (`Registration.changed`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from roam.connector.allow import format_host_port
from roam.crypto.keys import short_id
from roam.errors import ProtocolError
from roam.pinned import parse_pinned
from roam.registrar.channel import UnitChannel
from roam.registrar.messages import (
    Answer,
    Code,
    Found,
    Lookup,
    Refused,
    Register,
    Registered,
    decode_answer,
)

log = logging.getLogger("roam")

ASK_TIMEOUT_S = 5.0  # connect, handshake and answer: a registrar is one RTT away
EXPIRES_S = 600  # what a unit asks for; it registers again at half of it
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # after no registrar accepted


@dataclass(frozen=True, slots=True)
class RegistrarSpec:
    host: str
    port: int
    key: bytes

    @property
    def address(self) -> str:
        return format_host_port(self.host, self.port)


def parse_registrar(text: str) -> RegistrarSpec:
    """`HOST:PORT,key=PUBLIC_KEY`; a ConfigError names the problem."""
    return RegistrarSpec(*parse_pinned(text, flag="--registrar", text=text, whose="registrar"))


class RegistrarError(ProtocolError):
    """The registrar could not be asked, or its answer made no sense."""


async def ask(spec: RegistrarSpec, private_key: bytes, requests: Sequence[bytes],
              timeout: float = ASK_TIMEOUT_S) -> list[Answer]:
    """Send each request on one connection; the answers, in order."""
    channel = UnitChannel(private_key, spec.key)
    answers: list[Answer] = []
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(spec.host, spec.port)
            try:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for request in requests:
                    writer.write(channel.request(request))
                    while True:
                        data = await reader.read(65536)
                        if not data:
                            raise RegistrarError(f"registrar {spec.address} closed the "
                                                 "connection")
                        bodies = channel.frames.feed(data)
                        if bodies:
                            answers += [decode_answer(channel.answer(b)) for b in bodies]
                            break
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        raise RegistrarError(f"registrar {spec.address}: {exc or 'no answer in time'}") from None
    except ProtocolError as exc:
        raise RegistrarError(f"registrar {spec.address}: {exc}") from None
    return answers


async def lookup(specs: Sequence[RegistrarSpec], private_key: bytes,
                 target: bytes) -> Found | Refused:
    """The peer's current record from the first registrar that knows it."""
    last: Refused | None = None
    for spec in specs:
        try:
            (answer,) = await ask(spec, private_key, [Lookup(target).encode()])
        except RegistrarError as exc:
            log.warning("lookup of %s: %s", short_id(target), exc)
            continue
        if isinstance(answer, Found):
            return answer
        if isinstance(answer, Refused):
            last = answer
    return last or Refused(Code.NOT_FOUND, "no registrar answered")


class Registration:
    """Keeps this unit registered at every registrar listed."""

    def __init__(self, specs: Sequence[RegistrarSpec], private_key: bytes,
                 addresses: Callable[[], list[str]], relays: Callable[[], list[str]],
                 visible_to: frozenset[bytes], expires_s: int = EXPIRES_S) -> None:
        self.specs = list(specs)
        self._key = private_key
        self._addresses = addresses
        self._relays = relays
        self._visible = visible_to
        self.expires_s = expires_s
        self._changed = asyncio.Event()
        self._stamp = 0
        self.last: list[str] | None = None  # the addresses last accepted somewhere

    def changed(self) -> None:
        """The unit's addresses changed: register again now."""
        self._changed.set()

    def _next_stamp(self) -> int:
        # Strictly rising even when the clock is not: the registrar takes
        # only a newer stamp than the last it accepted.
        self._stamp = max(self._stamp + 1, time.time_ns())
        return self._stamp

    async def register_once(self) -> bool:
        """Register at every registrar; True when at least one accepted."""
        addresses = self._addresses()
        request = Register(self._next_stamp(), self.expires_s, tuple(addresses),
                           tuple(self._relays()), self._visible).encode()
        accepted = False
        for spec in self.specs:
            try:
                (answer,) = await ask(spec, self._key, [request])
            except RegistrarError as exc:
                log.warning("registration: %s", exc)
                continue
            if isinstance(answer, Registered):
                accepted = True
                log.info("registered %s at registrar %s for %d s",
                         ", ".join(addresses) or "no address", spec.address, answer.expires_s)
            else:
                log.warning("registrar %s refused the registration: %s", spec.address,
                            answer.reason if isinstance(answer, Refused) else answer)
        if accepted:
            self.last = addresses
        return accepted

    async def run(self) -> None:
        failures = 0
        while True:
            self._changed.clear()
            if await self.register_once():
                failures = 0
                wait = self.expires_s / 2
            else:
                wait = RETRY_S[min(failures, len(RETRY_S) - 1)] * random.uniform(0.8, 1.2)
                failures += 1
            try:
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            except TimeoutError:
                pass
