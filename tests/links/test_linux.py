from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvloop

from roam.errors import ConfigError
from roam.links import linux
from roam.links.linux import (
    IFA_F_DADFAILED,
    IFA_F_OPTIMISTIC,
    IFA_F_TENTATIVE,
    IFF_LOWER_UP,
    IFF_UP,
    LinuxDriver,
    link_is_up,
    usable_address,
)
from roam.links.state import LinkState
from tests.conftest import require

# Every wait on the kernel is bounded by this; a change normally shows in
# tens of milliseconds.
SEEN_WITHIN = 5.0
TEST_TIMEOUT = 60.0
COMMAND_TIMEOUT = 10.0

_serial = itertools.count()


# -- pure rules, no privileges -------------------------------------------


@pytest.mark.parametrize(("flags", "operstate", "up"), [
    (IFF_UP | IFF_LOWER_UP, "UP", True),
    (IFF_UP, "UP", True),
    (IFF_LOWER_UP, "UP", False),  # administratively down
    (IFF_UP, "DOWN", False),
    (IFF_UP, "LOWERLAYERDOWN", False),  # veth whose peer is down
    (IFF_UP, "DORMANT", False),  # wifi not yet authenticated
    (IFF_UP | IFF_LOWER_UP, "UNKNOWN", True),  # tun, dummy, loopback
    (IFF_UP, "UNKNOWN", False),
    (IFF_UP | IFF_LOWER_UP, None, True),  # no operstate: the lower layer decides
    (IFF_UP, None, False),
])
def test_link_is_up(flags: int, operstate: str | None, up: bool) -> None:
    assert link_is_up(flags, operstate) is up


@pytest.mark.parametrize(("address", "flags", "usable"), [
    ("198.18.0.1", 0, True),
    ("2001:db8::1", 0, True),
    ("fe80::1", 0, False),
    ("169.254.1.1", 0, True),  # IPv4 link-local is an address like any other here
    ("2001:db8::1", IFA_F_TENTATIVE, False),
    ("2001:db8::1", IFA_F_TENTATIVE | IFA_F_OPTIMISTIC, True),
    ("2001:db8::1", IFA_F_DADFAILED, False),
    ("not an address", 0, False),
])
def test_usable_address(address: str, flags: int, usable: bool) -> None:
    assert usable_address(address, flags) is usable


# -- a network namespace of our own (root) --------------------------------


def run(coro: Awaitable[None], event_loop: str = "asyncio") -> None:
    """On asyncio's loop, or on uvloop's, where pyroute2 cannot run and the
    driver takes a loop of its own in a thread."""
    async def bounded() -> None:
        await asyncio.wait_for(coro, TEST_TIMEOUT)

    factory = uvloop.new_event_loop if event_loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(bounded())


LOOPS = pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace, deleted afterwards whatever happens."""
    require(os.geteuid() == 0, "network namespaces need root")
    require(shutil.which("ip") is not None, "needs the ip command (iproute2)")
    name = f"roamlnk{os.getpid()}x{next(_serial)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=COMMAND_TIMEOUT)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=COMMAND_TIMEOUT)


def ip(ns: str, *args: str) -> None:
    """Run an ip command inside the test's namespace, never on the host."""
    subprocess.run(["ip", "-n", ns, *args], check=True, timeout=COMMAND_TIMEOUT,
                   capture_output=True)


def add_veth(ns: str, name: str = "rl0") -> None:
    # veth rather than dummy: the dummy module is missing on many kernels,
    # and a veth pair shows real carrier (it needs both ends up).
    ip(ns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")


class Recorder:
    """Collects the snapshots a driver emits."""

    def __init__(self) -> None:
        self.seen: list[dict[str, LinkState]] = []

    def __call__(self, snapshot: Mapping[str, LinkState]) -> None:
        self.seen.append(dict(snapshot))

    @property
    def last(self) -> dict[str, LinkState]:
        return self.seen[-1]

    async def until(self, predicate: Callable[[dict[str, LinkState]], bool],
                    what: str) -> dict[str, LinkState]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEEN_WITHIN
        while not (self.seen and predicate(self.last)):
            if loop.time() > deadline:
                last = self.last if self.seen else "nothing"
                raise AssertionError(f"the watcher did not see {what} within {SEEN_WITHIN} s; "
                                     f"last snapshot: {last}")
            await asyncio.sleep(0.01)
        return self.last


@asynccontextmanager
async def watching(ns: str, devices: Mapping[str, str]) -> AsyncIterator[Recorder]:
    recorder = Recorder()
    driver = LinuxDriver(devices, netns=ns)
    await driver.start(recorder)
    try:
        yield recorder
    finally:
        await driver.close()


@pytest.mark.root
@LOOPS
def test_follows_a_link_through_its_life(netns: str, event_loop: str) -> None:
    add_veth(netns)
    ip(netns, "addr", "add", "198.18.0.1/24", "dev", "rl0")

    async def main() -> None:
        async with watching(netns, {"wired": "rl0", "ghost": "rlnone0"}) as rec:
            assert len(rec.seen) == 1, "start emits the initial snapshot once"
            first = rec.last
            assert set(first) == {"wired", "ghost"}
            assert first["wired"] == LinkState(name="wired", present=True, up=False,
                                               addresses=("198.18.0.1",), signal=None)
            assert first["ghost"] == LinkState(name="ghost", present=False, up=False)

            ip(netns, "link", "set", "rl0p", "up")
            ip(netns, "link", "set", "rl0", "up")
            state = await rec.until(lambda s: s["wired"].up, "the link up")
            assert state["wired"].present
            assert state["wired"].signal is None
            # The kernel gives the link an fe80:: address when it comes up.
            assert all(not a.startswith("fe80:") for a in state["wired"].addresses)

            ip(netns, "link", "set", "rl0", "down")
            state = await rec.until(lambda s: not s["wired"].up, "the link down")
            # Down, yet the IPv4 address stays: the state is read, not inferred.
            assert "198.18.0.1" in state["wired"].addresses

            ip(netns, "link", "set", "rl0", "up")
            await rec.until(lambda s: s["wired"].up, "the link up again")

            ip(netns, "addr", "add", "198.18.0.2/24", "dev", "rl0")
            await rec.until(lambda s: "198.18.0.2" in s["wired"].addresses,
                            "the added address")
            ip(netns, "addr", "add", "2001:db8::2/64", "dev", "rl0", "nodad")
            await rec.until(lambda s: "2001:db8::2" in s["wired"].addresses,
                            "the added IPv6 address")
            ip(netns, "addr", "del", "198.18.0.2/24", "dev", "rl0")
            await rec.until(lambda s: "198.18.0.2" not in s["wired"].addresses,
                            "the removed address")

            ip(netns, "link", "del", "rl0")
            state = await rec.until(lambda s: not s["wired"].present, "the device deleted")
            assert state["wired"] == LinkState(name="wired", present=False, up=False)

            # A device created again under the configured name is found again.
            add_veth(netns)
            await rec.until(lambda s: s["wired"].present, "the device created again")

            assert all(s["ghost"] == first["ghost"] for s in rec.seen)
            for snapshot in rec.seen:
                assert set(snapshot) == {"wired", "ghost"}
            # Each emitted snapshot differs from the one before it.
            assert all(a != b for a, b in itertools.pairwise(rec.seen))

    run(main(), event_loop)


@pytest.mark.root
def test_no_carrier_is_not_up(netns: str) -> None:
    add_veth(netns)

    async def main() -> None:
        async with watching(netns, {"wired": "rl0"}) as rec:
            ip(netns, "link", "set", "rl0", "up")  # peer still down: no carrier
            await asyncio.sleep(0.3)
            assert not rec.last["wired"].up
            ip(netns, "link", "set", "rl0p", "up")
            await rec.until(lambda s: s["wired"].up, "carrier once the peer is up")
            ip(netns, "link", "set", "rl0p", "down")
            await rec.until(lambda s: not s["wired"].up, "carrier lost")

    run(main())


@pytest.mark.root
def test_rename_away_and_back(netns: str) -> None:
    add_veth(netns)

    async def main() -> None:
        async with watching(netns, {"wired": "rl0"}) as rec:
            assert rec.last["wired"].present
            ip(netns, "link", "set", "rl0", "name", "rl9")
            await rec.until(lambda s: not s["wired"].present, "the device renamed away")
            ip(netns, "link", "set", "rl9", "name", "rl0")
            await rec.until(lambda s: s["wired"].present, "the device renamed back")

    run(main())


@pytest.mark.root
def test_two_paths_on_one_device(netns: str) -> None:
    add_veth(netns)

    async def main() -> None:
        async with watching(netns, {"a": "rl0", "b": "rl0", "peer": "rl0p"}) as rec:
            ip(netns, "addr", "add", "198.18.0.1/24", "dev", "rl0")
            state = await rec.until(lambda s: s["a"].addresses == ("198.18.0.1",),
                                    "the address")
            assert state["b"].addresses == ("198.18.0.1",)
            assert state["peer"].addresses == ()

    run(main())


@pytest.mark.root
def test_a_burst_is_emitted_as_few_snapshots(netns: str) -> None:
    add_veth(netns)
    count = 40

    async def main() -> None:
        async with watching(netns, {"wired": "rl0"}) as rec:
            batch = "".join(f"addr add 198.18.1.{i + 1}/32 dev rl0\n" for i in range(count))
            proc = await asyncio.create_subprocess_exec(
                "ip", "-n", netns, "-batch", "-", stdin=asyncio.subprocess.PIPE)
            await asyncio.wait_for(proc.communicate(batch.encode()), COMMAND_TIMEOUT)
            assert proc.returncode == 0
            await rec.until(lambda s: len(s["wired"].addresses) == count, "every address")
            # Forty address notifications arrive within a few milliseconds;
            # the debounce turns them into a handful of snapshots at most.
            assert len(rec.seen) - 1 < count // 4

    run(main())


@pytest.mark.root
@LOOPS
def test_a_link_going_down_is_read_at_once_not_after_the_debounce(
        netns: str, event_loop: str) -> None:
    add_veth(netns)
    ip(netns, "addr", "add", "198.18.0.1/24", "dev", "rl0")
    ip(netns, "link", "set", "rl0p", "up")
    ip(netns, "link", "set", "rl0", "up")
    # A debounce far longer than the wait for the event: only the
    # link message's own urgency can bring the down state in time.
    debounce = 10 * SEEN_WITHIN

    async def main() -> None:
        rec = Recorder()
        driver = LinuxDriver({"wired": "rl0"}, netns=netns, debounce=debounce)
        await driver.start(rec)
        try:
            assert rec.last["wired"].up
            ip(netns, "link", "set", "rl0", "down")
            state = await rec.until(lambda s: not s["wired"].up, "the link down")
            assert state["wired"].present
        finally:
            await driver.close()

    run(main(), event_loop)


@pytest.mark.root
def test_lost_notifications_are_recovered(netns: str, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """When the event socket overflows, the driver reopens it and reads everything again."""
    add_veth(netns)
    # The kernel rounds this up to its minimum; a few hundred notifications
    # while the loop is blocked overflow it.
    monkeypatch.setattr(linux, "EVENT_RCVBUF", 1024)
    count = 300

    async def main() -> None:
        async with watching(netns, {"wired": "rl0"}) as rec:
            batch = "".join(f"addr add 198.18.{2 + i // 200}.{1 + i % 200}/32 dev rl0\n"
                            for i in range(count))
            # Blocking on purpose: nothing reads the event socket meanwhile.
            subprocess.run(["ip", "-n", netns, "-batch", "-"], input=batch.encode(),  # noqa: ASYNC221
                           check=True, timeout=COMMAND_TIMEOUT)
            await rec.until(lambda s: len(s["wired"].addresses) == count,
                            "every address after the overflow")

    with caplog.at_level(logging.WARNING, logger="roam.links.linux"):
        run(main())
    assert "ENOBUFS" in caplog.text


@pytest.mark.root
@LOOPS
def test_close_stops_the_watcher(netns: str, event_loop: str) -> None:
    add_veth(netns)

    async def main() -> None:
        rec = Recorder()
        driver = LinuxDriver({"wired": "rl0"}, netns=netns)
        await driver.start(rec)
        await driver.close()
        await driver.close()
        ip(netns, "link", "set", "rl0", "name", "rl9")
        await asyncio.sleep(0.3)
        assert len(rec.seen) == 1
        # On uvloop the helper thread is gone as well.
        assert all(t.name != "linux-links" for t in threading.enumerate())

    run(main(), event_loop)


@pytest.mark.root
@LOOPS
def test_missing_namespace_is_a_config_error_and_is_not_created(event_loop: str) -> None:
    require(os.geteuid() == 0, "network namespaces need root")
    name = f"roamlnk{os.getpid()}missing"

    async def main() -> None:
        driver = LinuxDriver({"wired": "rl0"}, netns=name)
        with pytest.raises(ConfigError, match=f"network namespace '{name}'"):
            await driver.start(lambda _s: None)
        await driver.close()

    run(main(), event_loop)
    assert not Path("/run/netns", name).exists()
