"""Link driver for Linux: rtnetlink through pyroute2's asyncio API.

Per configured device it reports whether the link exists, whether it is up,
and its addresses. It cannot know signal strength: that would need nl80211
for Wi-Fi (and a modem manager for cellular), so `signal` is always None.

Watching: one netlink socket subscribed to link, address and route
notifications, one more for queries. A notification only says *which* device
to look at again; the driver then reads that device's link and addresses
afresh. It never patches state from the notification itself, because a link
going down drops its routes without a route notification, and its addresses
may stay: only a full re-read gives a state that is true as a whole.

pyroute2's sockets need asyncio's own event loop (uvloop refuses AF_NETLINK
datagram endpoints). Started on any other loop, the driver runs them on an
asyncio loop of its own, in a thread, and hands each snapshot back to the
loop that started it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import ipaddress
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from pyroute2 import AsyncIPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from roam.errors import ConfigError
from roam.links.driver import LinkDriver, Watcher
from roam.links.state import LinkState

log = logging.getLogger(__name__)

# Kernel ABI values (linux/if.h, linux/if_addr.h, linux/rtnetlink.h).
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
IFA_F_DADFAILED = 0x08
IFA_F_OPTIMISTIC = 0x04
IFA_F_TENTATIVE = 0x40
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
WATCHED_GROUPS = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
                  | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)

IFNAMSIZ = 16  # the kernel's limit, including the terminating NUL

# One change on the command line (`ip link set dev X down`) reaches us as a
# burst: the link message, then route and address messages, spread over a few
# milliseconds. Emitting after each message would cost a re-read per message
# and show the policy half-done states (an address without its route). 20 ms
# covers a burst. A link message saying that a watched device is down or gone
# is read at once, without the wait: the session's hard handover starts from
# it, and 20 ms was a quarter of the stall when wifi went down in the lab
# (bench/handover.py); the rest of the burst is read a debounce later.
DEBOUNCE_S = 0.02

# After the event socket fails (typically ENOBUFS: the kernel dropped
# notifications because we read too slowly), we reopen it and re-read every
# device; retries back off to this ceiling so a vanished namespace does not
# spin the loop.
REOPEN_BACKOFF_MAX_S = 5.0

# A failed read (the query socket lost, a namespace going away) is retried
# after this long, with every touched device still marked.
READ_RETRY_S = 0.5

# Kernel-side receive buffer of the event socket; large, because overflowing
# it loses notifications and forces a full resynchronisation.
EVENT_RCVBUF = 1 << 20


def _describe(exc: BaseException) -> str:
    # pyroute2 raises NetlinkError with a bare code, and OSError without
    # strerror (ENOBUFS reads "[Errno 105] None"): name the errno in words.
    code = getattr(exc, "code", None) if isinstance(exc, NetlinkError) else None
    if isinstance(exc, OSError) and not exc.strerror:
        code = exc.errno
    if isinstance(code, int):
        return f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"
    return str(exc)


class _SocketGone(Exception):
    """The event socket delivered nothing: it was closed or lost under us."""


def _absent(path: str) -> LinkState:
    return LinkState(name=path, present=False, up=False)


def link_is_up(flags: int, operstate: str | None) -> bool:
    """Administratively up and able to carry packets.

    operstate UP is the kernel's word for that. Devices without carrier
    detection (TUN, dummy, loopback) stay UNKNOWN even when working; for them,
    and for a kernel that does not say (None), IFF_LOWER_UP, which the device
    driver sets while its lower layer is up, decides.
    """
    if not flags & IFF_UP:
        return False
    if operstate == "UP":
        return True
    return operstate in ("UNKNOWN", None) and bool(flags & IFF_LOWER_UP)


def usable_address(address: str, flags: int) -> bool:
    """An address the host can send from now.

    IPv6 link-local addresses are left out: they need a scope id and never
    reach a peer beyond the link. So are addresses still in duplicate
    address detection (unless optimistic, which the kernel lets us use) or
    that failed it: binding to them fails.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.is_link_local:
        return False
    if flags & IFA_F_DADFAILED:
        return False
    return not (flags & IFA_F_TENTATIVE and not flags & IFA_F_OPTIMISTIC)


def pyroute2_runs_on(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether pyroute2's sockets can be opened on `loop`: asyncio's own loops only."""
    return isinstance(loop, asyncio.BaseEventLoop)


async def read_device(query: Any, name: str) -> tuple[int | None, bool, bool, tuple[str, ...]]:
    """(ifindex, present, up, usable addresses) of one device, read through `query`.

    `query` is an AsyncIPRoute. A device that does not exist reads as
    (None, False, False, ()).
    """
    try:
        links = await query.link("get", ifname=name)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return (None, False, False, ())
        raise
    link = links[0]
    index = int(link["index"])
    up = link_is_up(int(link["flags"]), link.get_attr("IFLA_OPERSTATE"))
    addresses: list[str] = []
    async for msg in await query.addr("dump", index=index):
        address = msg.get_attr("IFA_ADDRESS")
        # IFA_FLAGS carries all 32 bits; the header field only the low 8.
        flags = msg.get_attr("IFA_FLAGS")
        if flags is None:
            flags = msg["flags"]
        if isinstance(address, str) and usable_address(address, int(flags)):
            addresses.append(str(ipaddress.ip_address(address)))
    return (index, True, up, tuple(addresses))


class LinuxDriver(LinkDriver):
    """Links, addresses and routes from rtnetlink.

    `netns` names a network namespace (as `ip netns` does) to watch instead
    of our own; it must already exist. Before `start`, nothing has been read
    and every path reads as absent.
    """

    kind = "linux"
    reports_signal = False

    def __init__(self, devices: Mapping[str, str], *, netns: str | None = None,
                 debounce: float = DEBOUNCE_S) -> None:
        super().__init__(devices)
        for path, device in self._devices.items():
            # The kernel's own rule (dev_valid_name): such a device can never
            # appear, so the name is a configuration mistake, not a missing link.
            if (len(device.encode()) >= IFNAMSIZ or device in (".", "..")
                    or any(c in "/:" or c.isspace() for c in device)):
                raise ConfigError(f"linux link driver: path {path!r} names interface "
                                  f"{device!r}, which no Linux interface can be called "
                                  f"(at most {IFNAMSIZ - 1} bytes; not '.' or '..'; "
                                  f"no '/', ':' or whitespace)")
        self._netns = netns
        self._debounce = debounce
        self._states: dict[str, LinkState] = {p: _absent(p) for p in self._devices}
        self._index: dict[str, int] = {}  # device name -> ifindex, from the last read
        self._events: Any = None  # AsyncIPRoute bound to WATCHED_GROUPS
        self._query: Any = None  # AsyncIPRoute for link and address reads
        self._dirty: set[str] = set()  # device names to read again
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()  # a watched device went down: no debounce
        self._tasks: list[asyncio.Task[None]] = []
        # When the sockets live on a loop of their own (see the module's
        # docstring): the loop that started us, the thread and its loop.
        self._home: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._own: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    async def start(self, watcher: Watcher) -> None:
        self._begin(watcher)
        loop = asyncio.get_running_loop()
        if pyroute2_runs_on(loop):
            await self._start()
            return
        self._home = loop
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(started),),
                                        name="linux-links", daemon=True)
        self._thread.start()
        await asyncio.wrap_future(started)

    async def _serve(self, started: concurrent.futures.Future[None]) -> None:
        """The helper thread's life: start, run until close(), shut down."""
        self._own = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self._start()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        if not self._closed:  # else close() came while we started
            await self._stop.wait()
        await self._shutdown()

    def _notify(self) -> None:
        home = self._home
        if home is None:
            super()._notify()
            return
        # From the helper thread: the watcher runs on the loop that started us,
        # with the snapshot as it is now.
        snapshot = self.snapshot()
        with contextlib.suppress(RuntimeError):  # that loop closed meanwhile
            home.call_soon_threadsafe(self._deliver, snapshot)

    def _deliver(self, snapshot: dict[str, LinkState]) -> None:
        if self._watcher is None or self._closed:
            return
        try:
            self._watcher(snapshot)
        except Exception:
            log.exception("linux link driver: the watcher failed on a new snapshot")

    async def _start(self) -> None:
        try:
            # Subscribe before the first read, so that nothing changing between
            # the two goes unseen.
            await self._open_events()
            self._query = self._open_socket()
            await self._read(set(self._devices.values()))
        except (OSError, NetlinkError) as exc:
            self._close_sockets()
            self._closed = True
            where = f"network namespace {self._netns!r}" if self._netns else "this host"
            raise ConfigError(f"linux link driver cannot read rtnetlink in {where}: "
                              f"{_describe(exc)}") from exc
        self._notify()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._receive(), name="linux-links-receive"),
                       loop.create_task(self._flush(), name="linux-links-flush")]

    def snapshot(self) -> dict[str, LinkState]:
        return dict(self._states)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._watcher = None
        if self._thread is not None:
            own, stop = self._own, self._stop
            if own is not None and stop is not None:
                with contextlib.suppress(RuntimeError):  # the thread's loop ended already
                    own.call_soon_threadsafe(stop.set)
            await asyncio.to_thread(self._thread.join, 10.0)
            return
        await self._shutdown()

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._close_sockets()

    # -- sockets ---------------------------------------------------------

    def _open_socket(self, **options: int) -> Any:
        if self._netns is None:
            return AsyncIPRoute(**options)
        # flags=0: pyroute2 would otherwise create a missing namespace, and
        # watching a new empty one would hide a typo in the name.
        return AsyncIPRoute(netns=self._netns, flags=0, **options)

    async def _open_events(self) -> None:
        sock = self._open_socket(rcvbuf=EVENT_RCVBUF)
        try:
            await sock.bind(groups=WATCHED_GROUPS)
        except BaseException:
            with contextlib.suppress(OSError):
                sock.close()
            raise
        self._events = sock

    def _close_sockets(self) -> None:
        for sock in (self._events, self._query):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._events = None
        self._query = None

    # -- watching --------------------------------------------------------

    async def _receive(self) -> None:
        """Note which devices each notification touches; reopen the socket on failure."""
        backoff = 0.1
        while True:
            try:
                if self._events is None:
                    await self._open_events()
                    # Notifications were lost while the socket was down, so any
                    # device may have changed: read them all once subscribed.
                    self._mark(set(self._devices.values()))
                while True:
                    got = 0
                    async for msg in self._events.get():
                        got += 1
                        self._note(msg)
                    if got == 0:
                        raise _SocketGone("the netlink event socket was closed")
                    backoff = 0.1
            except (OSError, NetlinkError, _SocketGone) as exc:
                log.warning("linux link driver: netlink notifications failed (%s); "
                            "reopening in %.1f s and reading every device again", _describe(exc),
                            backoff)
                if self._events is not None:
                    with contextlib.suppress(OSError):
                        self._events.close()
                    self._events = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, REOPEN_BACKOFF_MAX_S)

    def _note(self, msg: Any) -> None:
        mtype = msg["header"]["type"]
        if mtype in (RTM_NEWLINK, RTM_DELLINK):
            names = {d for d, i in self._index.items() if i == msg.get("index")}
            # A new link, or one renamed into or out of a configured name.
            name = msg.get_attr("IFLA_IFNAME")
            if name in self._devices.values():
                names.add(name)
            self._mark(names, hurry=mtype == RTM_DELLINK or not link_is_up(
                msg.get("flags") or 0, msg.get_attr("IFLA_OPERSTATE")))
        elif mtype in (RTM_NEWADDR, RTM_DELADDR):
            self._mark({d for d, i in self._index.items() if i == msg.get("index")})
        elif mtype in (RTM_NEWROUTE, RTM_DELROUTE):
            oif = msg.get_attr("RTA_OIF")
            if oif is None:
                # Multipath and blackhole routes name no single device.
                self._mark(set(self._devices.values()))
            else:
                self._mark({d for d, i in self._index.items() if i == oif})

    def _mark(self, names: set[str], hurry: bool = False) -> None:
        if names:
            self._dirty |= names
            self._wake.set()
            if hurry:
                self._hurry.set()

    async def _flush(self) -> None:
        """Re-read the touched devices a debounce after the first notice (at
        once when one went down); emit on change."""
        while True:
            await self._wake.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._debounce):
                    await self._hurry.wait()
            self._wake.clear()
            self._hurry.clear()
            names, self._dirty = self._dirty, set()
            before = self.snapshot()
            try:
                if self._query is None:
                    self._query = self._open_socket()
                await self._read(names)
            except (OSError, NetlinkError) as exc:
                log.warning("linux link driver: reading %s failed (%s); will retry",
                            ", ".join(sorted(names)), _describe(exc))
                if self._query is not None:
                    with contextlib.suppress(OSError):
                        self._query.close()
                    self._query = None
                self._dirty |= names
                await asyncio.sleep(READ_RETRY_S)
                self._wake.set()
                continue
            if self.snapshot() != before:
                self._notify()

    # -- reading ---------------------------------------------------------

    async def _read(self, names: set[str]) -> None:
        """Read the named devices afresh and replace the states of their paths."""
        fresh: dict[str, tuple[bool, bool, tuple[str, ...]]] = {}
        for name in names:
            index, present, up, addresses = await read_device(self._query, name)
            if index is None:
                self._index.pop(name, None)
            else:
                self._index[name] = index
            fresh[name] = (present, up, addresses)
        for path, device in self._devices.items():
            if device in fresh:
                present, up, addresses = fresh[device]
                self._states[path] = LinkState(name=path, present=present, up=up,
                                               addresses=addresses, signal=None)
