"""A server without --path: register again as soon as its addresses change.

A mobile server (--path) knows when it moves (roam.transport.mobility). One
that listens on every interface without naming its networks learns of a new
address (a DHCP lease renewed with another, a cable moved) only by looking:
every ADDRESS_POLL seconds it reads its interfaces' addresses and, when they
differ from the last reading, wakes its registrations, which register the
new ones at once instead of at half their expiry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("roam")

# One netlink address dump (a few hundred microseconds) every 2 s: a client
# whose resume fails asks the registrar again with its own backoff (up to
# 2 s between tries, roam.transport.client.BACKOFF), so a fresher record
# would wait for the client anyway.
ADDRESS_POLL = 2.0


async def watch_addresses(reachable: Callable[[], list[str]], changed: Callable[[], None],
                          interval: float = ADDRESS_POLL) -> None:
    """Call `changed()` whenever `reachable()` answers differently; until cancelled."""
    last = _read(reachable)
    while True:
        await asyncio.sleep(interval)
        now = _read(reachable)
        if now is None or now == last:
            continue
        log.info("reached at %s now (was %s): registering again",
                 ", ".join(now) or "no address", ", ".join(last or []) or "no address")
        last = now
        changed()


def _read(reachable: Callable[[], list[str]]) -> list[str] | None:
    try:
        return sorted(reachable())
    except OSError as exc:  # netlink refused or the namespace is going away
        log.warning("cannot read this host's addresses: %s", exc)
        return None
