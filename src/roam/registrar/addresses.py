"""Where a unit says it can be reached: what it advertises, or its own
interfaces' addresses on the port it listens on."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from roam.connector.allow import format_host_port

WILDCARDS = ("", "0.0.0.0", "::")  # listen addresses that mean every interface


def interface_addresses() -> list[str]:
    """Every global address of this host's interfaces (no loopback, no link-local)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _read_addresses()
    # pyroute2's synchronous IPRoute runs an event loop of its own, which
    # cannot start inside a running one (a daemon's): one dump, a few ms,
    # in a thread of its own.
    with ThreadPoolExecutor(1, thread_name_prefix="roam-addresses") as pool:
        return pool.submit(_read_addresses).result()


def _read_addresses() -> list[str]:
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    out: list[str] = []
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            text = msg.get_attr("IFA_ADDRESS")
            if not text:
                continue
            addr = ipaddress.ip_address(text)
            if addr.is_loopback or addr.is_link_local or addr.is_multicast:
                continue
            out.append(str(addr))
    return out


def reachable_at(listen: tuple[str, int] | None, advertise: list[str]
                 ) -> Callable[[], list[str]]:
    """What to register, read anew each time (an address may come or go):
    `advertise` as given (behind a port forward, say); else the address the
    unit listens on, or every interface's when it listens on all."""
    if advertise:
        return lambda: list(advertise)
    if listen is None:
        return list  # uplinks only: reachable through relays alone
    host, port = listen
    if host not in WILDCARDS:
        return lambda: [format_host_port(host, port)]
    return lambda: [format_host_port(a, port) for a in interface_addresses()]
