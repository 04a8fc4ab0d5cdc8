"""The event loop the daemons run on: uvloop by default, asyncio's own on request.

uvloop runs the loop itself in C (libuv): measured through both daemons, a
64-byte round trip costs an eighth less CPU than on asyncio's selector loop,
eight bulk streams a sixth less, one bulk stream the same (docs/
performance.md). The record path works on both; two things differ, and the
code that depends on them says so where it does:

- uvloop's transports are not subclasses of `asyncio.Transport`
  (`stream_transport` checks what the code uses instead);
- a write that the socket does not take at once is kept by reference by
  uvloop, where asyncio copies it (`roam.crypto.records.SealScratch`).

pyroute2 cannot open its netlink sockets on uvloop; the linux link driver
runs them on an asyncio loop of its own (`roam.links.linux`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

EVENT_LOOPS = ("uvloop", "asyncio")
DEFAULT = "uvloop"


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """For `asyncio.Runner(loop_factory=...)`: None is asyncio's own loop."""
    if name == "asyncio":
        return None
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    raise ValueError(f"unknown event loop {name!r} (known: {', '.join(EVENT_LOOPS)})")


def stream_transport(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """`transport` as a stream transport, on either loop; TypeError otherwise."""
    # Datagram transports have sendto (asyncio's derive from Transport too).
    if not hasattr(transport, "sendto") and all(
            hasattr(transport, name) for name in ("write", "pause_reading", "write_eof")):
        return cast(asyncio.Transport, transport)
    raise TypeError(f"expected a stream transport, got {type(transport).__name__}")
