"""A unit's side of a SIP registrar: `--registrar sip:USER@DOMAIN,via=HOST:PORT,...`.

    --registrar sip:bob@roam.test,via=198.51.100.9:5060,password-file=bob.pass[,transport=udp]

A server registers its roam address as its contact (`sip:bob@HOST:PORT;
transport=tcp`) and moves the contact when its address changes; a client
names its server by the server's address-of-record (`--server
sip:bob@roam.test`) and reads the current contact from the registrar, at
start and after a failed resume, authenticating with its own account.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from roam.connector.allow import parse_port, split_host_port
from roam.crypto.keys import read_text_file
from roam.errors import ConfigError, KeyFileError, ProtocolError, TransportError
from roam.registrar.sipdriver import SipRefused, SipRegistrarClient
from roam.registrar.sipregister import Account
from roam.registrar.sipsyntax import SipError
from roam.registrar.sipuri import contact_uri, parse_uri

log = logging.getLogger("roam")

ADDRESS_POLL_S = 30.0  # a server without a link driver reads its addresses this often


@dataclass(frozen=True)
class SipRegistrar:
    account: Account
    via: tuple[str, int]
    transport: str = "tcp"

    def client(self) -> SipRegistrarClient:
        return SipRegistrarClient(self.account, self.via, transport=self.transport)


def is_sip(text: str) -> bool:
    return text.lower().startswith(("sip:", "sips:"))


def parse_sip_registrar(text: str) -> SipRegistrar:
    """`sip:USER@DOMAIN,via=HOST:PORT,password-file=FILE[,transport=tcp|udp]`."""

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"--registrar {text!r}: {problem}")

    aor, *options = [part.strip() for part in text.split(",")]
    values: dict[str, str] = {}
    for option in options:
        name, eq, value = option.partition("=")
        if not eq or name not in ("via", "password-file", "transport") or name in values:
            raise fail(f"unknown or repeated option {option!r} (known: via=HOST:PORT, "
                       "password-file=FILE, transport=tcp|udp)")
        values[name] = value
    if "via" not in values or "password-file" not in values:
        raise fail("a SIP registrar needs via=HOST:PORT and password-file=FILE")
    host, port_text = split_host_port(values["via"], "--registrar via=")
    port = parse_port(port_text, "--registrar via=")
    if port is None:
        raise fail("via= needs a port")
    transport = values.get("transport", "tcp").lower()
    if transport not in ("tcp", "udp"):
        raise fail(f"transport={transport!r}: tcp or udp")
    try:
        password = read_text_file(values["password-file"], "SIP password file",
                                  private=True).strip()
    except KeyFileError as exc:
        raise fail(str(exc)) from None
    if not password:
        raise fail(f"{values['password-file']} is empty")
    return SipRegistrar(Account(aor, password), (host, port), transport)


def _host_port(address: str) -> tuple[str, int]:
    host, port = split_host_port(address, "address")
    return host, int(port)


async def keep_registered(registrar: SipRegistrar, addresses: Callable[[], list[str]],
                          wake: asyncio.Event | None = None) -> None:
    """Keep the unit's first address registered as its contact; move it when
    the address changes (read every ADDRESS_POLL_S, and at once when `wake`
    is set: a mobile server's move). Runs until cancelled."""
    wake = wake or asyncio.Event()

    async def changed_or_due() -> None:
        try:
            async with asyncio.timeout(ADDRESS_POLL_S):
                await wake.wait()
        except TimeoutError:
            pass
        wake.clear()

    client = registrar.client()
    user = parse_uri(registrar.account.aor).user or "roam"

    def contact() -> str | None:
        found = addresses()
        if not found:
            return None
        host, port = _host_port(found[0])
        return contact_uri(user, host, port)

    current = contact()
    while current is None:
        log.warning("SIP registration of %s: no address to register yet",
                    registrar.account.aor)
        await changed_or_due()
        current = contact()
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(client.keep_registered(current), name="sip-registration")
            while True:
                await changed_or_due()
                now = contact()
                if now is not None and now != current:
                    log.info("SIP registration of %s moves to %s", registrar.account.aor, now)
                    current = now
                    client.move(now)
    finally:
        client.close()


def locator(registrar: SipRegistrar, peer_aor: str
            ) -> Callable[[], Awaitable[tuple[str, int] | None]]:
    """Where the peer is now, from its contact at the registrar (None: unknown)."""

    async def locate() -> tuple[str, int] | None:
        client = registrar.client()
        try:
            found = await client.lookup(peer_aor)
        except (SipRefused, TransportError, ProtocolError, OSError) as exc:
            log.warning("SIP lookup of %s at %s failed: %s", peer_aor, client.name, exc)
            return None
        finally:
            client.close()
        for binding in found.bindings:
            try:
                uri = binding.sip_uri()
            except SipError:
                continue
            if uri.port is not None:
                return uri.host.strip("[]"), uri.port
        return None

    return locate
