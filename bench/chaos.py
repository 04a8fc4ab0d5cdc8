"""Chaos soak: real roam daemons carry TCP streams and UDP flows across a link that a
seeded fault injector keeps breaking, and every byte and datagram is checked.

    python bench/chaos.py --minutes N [--streams 50] [--flows 4] [--seed S] [--json OUT]
                          [--rate-kib 32] [--no-paths] [--keep]

What runs, all on 127.0.0.1 (every process is started and ended through its own
Popen, by PID, also on failure, Ctrl-C or SIGTERM):

- `roam server`, allowed to open two services: a TCP echo (`bench/servers.py echo`,
  a child process) and a UDP echo (asyncio, in this process);
- the link emulator (`roam.lab.linkemu`) in front of the server's TCP port, and a
  UDP relay (in this process) on the same port number in front of the server's UDP
  socket, so the session's datagram transport crosses the same faults;
- `roam client` pointed at the emulator, with a TCP forward and a `udp:` forward and,
  unless --no-paths, two emulated paths (wifi, cell) whose links the injector flaps.

Load, bounded in rate and in time: --streams TCP connections through the forward,
each sending a seeded position-dependent byte pattern at --rate-kib KiB/s in chunks
of random size and checking that what comes back is exactly that pattern (a lost,
duplicated, reordered or altered byte shows at its offset); --flows UDP flows, each
sending DATAGRAM_RATE datagrams per second whose content follows from (seed, flow,
sequence number), checking every echo. UDP may lose datagrams during faults (the
loss is reported); a duplicated, altered or never-sent datagram is a failure.

Faults come from a random.Random(seed): the same seed gives the same sequence of
faults with the same parameters (their timing against the traffic varies). The run
starts with a warm-up black hole of the longest length, so that both daemons fill
their buffers to their caps before memory is judged; then, until the end, one fault
after another with a quiet gap of 0.5-4 s: every kind once, then as FAULT_WEIGHTS
draws them.

At the end the injector stops and the link is healed, every stream half-closes and
must get every byte back and then EOF, every flow must get an echo through again,
and the daemons' RSS (sampled from /proc all along) must be bounded (see
memory_verdict). Exit status 0 only when all of that holds; on failure the working
directory (daemon logs, faults.jsonl, report.json) is kept and named.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import hashlib
import json
import math
import random
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "src"))

from tests.system.harness import SERVICES, Keys, Proc, Procs  # noqa: E402

KIB = 1024
MIB = 1024 * KIB

# Datagrams per second per UDP flow, and their payload sizes: small enough for any
# path MTU, varied so that framing on the stream and in UDP packets both vary.
DATAGRAM_RATE = 20
DATAGRAM_SIZES = (16, 1200)

# The warm-up black hole, at this many seconds into the load.
WARMUP_AT = 2.0

# A run in which no stream has received a byte for this long, while bytes were
# outstanding, has a client that no longer resumes: stop and report it rather than
# wait for the end. Longer than any single fault, a path's suspicion backoff
# (up to a minute) and the longest queue a rate cap can build.
NO_PROGRESS_LIMIT = 120.0

# How long the end waits for every stream to get its last byte and EOF.
DRAIN_TIMEOUT = 180.0

# How long one detached spell of the client's session may last, counting only the
# time in which the link was whole (no black hole, no link down): the README's
# resume is at once, then with a backoff of at most 2 s, each attempt giving up
# after max(1 s, 3 RTO). Longer, the client has stopped resuming, even if a later
# fault happens to wake it up. (Counting new transports at the link emulator
# would not tell: standby transports keep arriving from a client that does not
# resume.)
DETACHED_LIMIT = 30.0
BLOCKING = ("blackhole", "flap", "outage")

# After a fault, how long datagram loss is still put down to it: the liveness
# timeout (2 s), a resume attempt (1 s) and a UDP probe (1 s).
RECOVERY = 4.0

# roam's own caps (README, "Long outages"): what a bounded daemon may legitimately hold.
REPLAY_CAP = 8 * MIB
CHANNEL_CAP = 256 * KIB

# Relative frequency of each kind of fault. "flap" and "outage" need emulated paths.
FAULT_WEIGHTS: dict[str, int] = {
    "cut": 4,          # every transport reset (RST on both sides)
    "cut-burst": 2,    # 2-4 resets 1-400 ms apart: lost again while resuming
    "blackhole": 4,    # 0.2-5 s of silence both ways, TCP and UDP; sockets stay open
    "delay": 2,        # 5-400 ms one-way delay for 2-15 s (in the background)
    "rate": 2,         # 128 KiB/s-4 MiB/s per direction for 2-15 s (in the background)
    "udp-block": 1,    # UDP dropped for 2-15 s while TCP passes (in the background)
    "udp-rebind": 1,   # the relay takes a new source port: a NAT rebinding
    "flap": 3,         # one path's link down for 0.2-5 s, then up
    "outage": 1,       # both links down for 0.2-5 s, then up
}
PATH_FAULTS = ("flap", "outage")
BACKGROUND = ("delay", "rate", "udp-block")
PATHS = ("wifi", "cell")


class ChaosError(Exception):
    """Something the soak itself could not do (a control command refused, ...)."""


# ---------------------------------------------------------------------------
# Checking: pure functions and small classes, unit-tested on broken data.
# ---------------------------------------------------------------------------


class StreamPattern:
    """A seeded byte stream in which every offset has its own content.

    Block i is a window into one random buffer, shifted by 61*i bytes, so that a
    lost, repeated or reordered piece of any length compares against different
    random bytes and shows.
    """

    BLOCK = 64 * KIB
    _SHIFTS = 4096

    def __init__(self, seed: int) -> None:
        self._base = memoryview(random.Random(seed).randbytes(self.BLOCK + self._SHIFTS))

    def slice(self, offset: int, n: int) -> bytes:
        out = bytearray()
        while n > 0:
            index, pos = divmod(offset, self.BLOCK)
            start = (index * 61) % self._SHIFTS + pos
            take = min(n, self.BLOCK - pos)
            out += self._base[start:start + take]
            offset += take
            n -= take
        return bytes(out)


def first_difference(expected: bytes, data: bytes) -> int | None:
    """Index of the first byte where `data` differs from `expected` (or runs past it)."""
    if data == expected:
        return None
    for i in range(min(len(expected), len(data))):
        if data[i] != expected[i]:
            return i
    return min(len(expected), len(data))


@dataclass
class StreamChecker:
    """Checks the bytes of one stream as they arrive, in whatever pieces they come."""

    pattern: StreamPattern
    received: int = 0
    mismatch_at: int | None = None

    def feed(self, data: bytes) -> bool:
        """False (for good) once a byte differs from the pattern at its offset."""
        if self.mismatch_at is not None:
            return False
        where = first_difference(self.pattern.slice(self.received, len(data)), data)
        if where is not None:
            self.mismatch_at = self.received + where
            return False
        self.received += len(data)
        return True


def stream_problems(index: int, sent: int, checker: StreamChecker, eof: bool,
                    error: str | None) -> list[str]:
    """Why stream `index` is not byte-exact; [] when it is."""
    problems = []
    if error is not None:
        problems.append(f"stream {index}: {error}")
    if checker.mismatch_at is not None:
        problems.append(f"stream {index}: wrong byte at offset {checker.mismatch_at} "
                        f"(lost, duplicated, reordered or altered data)")
    elif checker.received != sent:
        problems.append(f"stream {index}: {checker.received} bytes back of {sent} sent")
    if not eof and error is None:
        problems.append(f"stream {index}: no EOF after the last byte")
    return problems


_DGRAM_HEADER = struct.Struct(">4sHIH")
_DGRAM_MAGIC = b"RCH1"


def datagram_payload(seed: int, flow: int, seq: int, size: int) -> bytes:
    return hashlib.shake_128(f"{seed}/{flow}/{seq}".encode()).digest(size)


def encode_datagram(seed: int, flow: int, seq: int, size: int) -> bytes:
    return _DGRAM_HEADER.pack(_DGRAM_MAGIC, flow, seq, size) + datagram_payload(
        seed, flow, seq, size)


@dataclass
class DatagramChecker:
    """One UDP flow's echoes: each must be a datagram this flow sent, intact, once."""

    seed: int
    flow: int
    received: int = 0
    duplicated: int = 0
    corrupted: int = 0
    first_problem: str | None = None
    seen: set[int] = field(default_factory=set)

    def feed(self, packet: bytes, sent: int) -> str:
        """Classify one echo as "ok", "duplicate" or "corrupt"; `sent` is how many
        datagrams (sequence numbers 0..sent-1) the flow has sent so far."""
        verdict, why = self._classify(packet, sent)
        if verdict == "ok":
            self.received += 1
        elif verdict == "duplicate":
            self.duplicated += 1
        else:
            self.corrupted += 1
        if why and self.first_problem is None:
            self.first_problem = why
        return verdict

    def _classify(self, packet: bytes, sent: int) -> tuple[str, str | None]:
        if len(packet) < _DGRAM_HEADER.size:
            return "corrupt", f"flow {self.flow}: a {len(packet)}-byte datagram"
        magic, flow, seq, size = _DGRAM_HEADER.unpack_from(packet)
        body = packet[_DGRAM_HEADER.size:]
        if magic != _DGRAM_MAGIC or flow != self.flow or seq >= sent or size != len(body):
            return "corrupt", (f"flow {self.flow}: header {magic!r} flow {flow} seq {seq} "
                               f"size {size} with {len(body)} bytes ({sent} sent)")
        if body != datagram_payload(self.seed, flow, seq, size):
            return "corrupt", f"flow {self.flow}: datagram {seq} altered"
        if seq in self.seen:
            return "duplicate", f"flow {self.flow}: datagram {seq} delivered twice"
        self.seen.add(seq)
        return "ok", None


@dataclass(frozen=True)
class MemoryVerdict:
    ok: bool
    first_quarter_kib: int
    last_quarter_kib: int
    margin_kib: int
    detail: str


def memory_margin_kib(streams: int, flows: int) -> int:
    """How far a bounded daemon's RSS may legitimately move between the first and
    the last quarter of the chaos phase.

    The warm-up black hole has already filled the buffers once before the first
    quarter, but a later coincidence of faults (a resume that resends the whole
    replay buffer while every channel is full again, a rate cap that holds them full
    for longer) can reach a higher high-water mark. The margin is what the design
    lets a session hold at its caps, counted again in full: the replay buffer plus
    every channel's buffer in both directions, plus 16 MiB of allocator slack (freed
    Python objects do not always give their pages back). A leak of a little per
    fault, per resume or per transport grows past that over a long run; a bounded
    daemon cannot.
    """
    return (REPLAY_CAP + 2 * CHANNEL_CAP * (streams + flows) + 16 * MIB) // KIB


def memory_verdict(samples: list[int], margin_kib: int) -> MemoryVerdict:
    """Bounded when the median RSS of the last quarter of `samples` is at most
    `margin_kib` above the median of the first quarter.

    Medians rather than single samples, so that one sample taken while a resume
    has every buffer full does not decide; quarters rather than halves, so that the
    two windows are far apart in time and a slow leak has had time to show.
    """
    if len(samples) < 8:
        return MemoryVerdict(False, 0, 0, margin_kib,
                             f"only {len(samples)} RSS samples: too few to judge")
    q = len(samples) // 4
    first = int(statistics.median(samples[:q]))
    last = int(statistics.median(samples[-q:]))
    ok = last <= first + margin_kib
    detail = (f"last-quarter median {last} KiB {'<=' if ok else '>'} first-quarter median "
              f"{first} KiB + {margin_kib} KiB")
    return MemoryVerdict(ok, first, last, margin_kib, detail)


# ---------------------------------------------------------------------------
# Faults: a deterministic plan, and the injector that applies it.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    kind: str
    gap: float = 0.0      # quiet seconds before it
    hold: float = 0.0     # how long it lasts (0 for instant ones)
    value: float = 0.0    # delay ms, rate B/s, or the burst's number of resets
    spacing: tuple[float, ...] = ()  # seconds between the resets of a burst
    path: str = ""        # the link a flap takes down

    def describe(self) -> str:
        if self.kind == "blackhole":
            return f"blackhole {self.hold:.2f} s"
        if self.kind == "delay":
            return f"delay {self.value:.0f} ms for {self.hold:.1f} s"
        if self.kind == "rate":
            return f"rate {self.value / KIB:.0f} KiB/s for {self.hold:.1f} s"
        if self.kind == "udp-block":
            return f"UDP blocked for {self.hold:.1f} s"
        if self.kind == "cut-burst":
            return "cut-burst " + " ".join(f"+{s * 1000:.0f}ms" for s in self.spacing)
        if self.kind == "flap":
            return f"{self.path} down {self.hold:.2f} s"
        if self.kind == "outage":
            return f"all links down {self.hold:.2f} s"
        return self.kind


def fault_plan(seed: int, paths: bool,
               gaps: tuple[float, float] = (0.5, 4.0)) -> Iterator[Fault]:
    """The endless sequence of faults for `seed`: the same seed, the same faults.

    Every kind comes once first, in a seeded order, so that even a short run meets
    each of them; then kinds are drawn by FAULT_WEIGHTS. `gaps` bounds the quiet
    time before each fault.
    """
    rng = random.Random(seed)
    kinds = [k for k in FAULT_WEIGHTS if paths or k not in PATH_FAULTS]
    weights = [FAULT_WEIGHTS[k] for k in kinds]
    first = list(kinds)
    rng.shuffle(first)
    while True:
        kind = first.pop(0) if first else rng.choices(kinds, weights)[0]
        gap = rng.uniform(*gaps)
        if kind == "blackhole":
            yield Fault(kind, gap, hold=rng.uniform(0.2, 5.0))
        elif kind == "cut-burst":
            n = rng.randint(2, 4)
            # Log-uniform from 1 ms: on loopback a resume takes a few ms, so the
            # next reset must be able to land just before or just after RESUMED.
            yield Fault(kind, gap, value=n, spacing=tuple(
                math.exp(rng.uniform(math.log(0.001), math.log(0.4))) for _ in range(n - 1)))
        elif kind == "delay":
            yield Fault(kind, gap, hold=rng.uniform(2.0, 15.0), value=rng.uniform(5.0, 400.0))
        elif kind == "rate":
            # Log-uniform: slow links are as likely as merely narrow ones.
            rate = math.exp(rng.uniform(math.log(128 * KIB), math.log(4 * MIB)))
            yield Fault(kind, gap, hold=rng.uniform(2.0, 15.0), value=round(rate))
        elif kind == "udp-block":
            yield Fault(kind, gap, hold=rng.uniform(2.0, 15.0))
        elif kind == "flap":
            yield Fault(kind, gap, hold=rng.uniform(0.2, 5.0), path=rng.choice(PATHS))
        elif kind == "outage":
            yield Fault(kind, gap, hold=rng.uniform(0.2, 5.0))
        else:
            yield Fault(kind, gap)


async def _unix_line(path: Path, line: bytes, timeout: float = 10.0) -> bytes:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 22)
        try:
            writer.write(line + b"\n")
            await writer.drain()
            return await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def link_command(control: Path, line: str) -> str:
    """One command to the link emulator's control socket."""
    answer = (await _unix_line(control, line.encode())).decode().strip()
    if not answer or answer.startswith("error"):
        raise ChaosError(f"link emulator: {line!r}: {answer or 'no answer'}")
    return answer


async def daemon_request(control: Path, cmd: str, **fields: object) -> Any:
    """One request to a roam daemon's control socket (what `roam status` sends)."""
    answer = json.loads(await _unix_line(control, json.dumps({**fields, "cmd": cmd}).encode()))
    if not answer.get("ok"):
        raise ChaosError(f"{control.name}: {cmd}: {answer.get('error')}")
    return answer.get("result")


class UdpRelay:
    """The UDP half of the link: between the client's datagram socket and the
    server's UDP port, with the faults that make sense for datagrams."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self.blackholed = False   # the link's black hole: nothing passes
        self.blocked = False      # UDP alone dropped (a network that filters it)
        self.delay = 0.0          # seconds, each way, like the TCP link's delay
        self.forwarded = 0
        self.dropped = 0
        self.rebinds = 0
        self._front: asyncio.DatagramTransport | None = None
        self._back: asyncio.DatagramTransport | None = None
        self._client: Any = None

    async def start(self) -> bool:
        """False when the port is taken for UDP: datagrams then only take the stream."""
        loop = asyncio.get_running_loop()
        try:
            self._front, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self._from_client), local_addr=("127.0.0.1", self.port))
        except OSError:
            return False
        await self.rebind(count=False)
        return True

    async def rebind(self, count: bool = True) -> None:
        """A new source port towards the server, as when a NAT's mapping changes."""
        loop = asyncio.get_running_loop()
        old = self._back
        self._back, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._from_server), remote_addr=self.target)
        if old is not None:
            old.close()
        self.rebinds += count

    def close(self) -> None:
        for t in (self._front, self._back):
            if t is not None:
                t.close()

    def _passing(self) -> bool:
        return not (self.blackholed or self.blocked)

    def _from_client(self, data: bytes, addr: Any) -> None:
        self._client = addr
        self._forward(data, self._to_server)

    def _from_server(self, data: bytes, _addr: Any) -> None:
        self._forward(data, self._to_client)

    # Where a packet goes is looked up when it leaves, not when it arrived: with a
    # delay on, a rebind in between must not have it sent on the closed socket.

    def _to_server(self, data: bytes) -> None:
        back = self._back
        if back is not None and not back.is_closing():
            back.sendto(data)

    def _to_client(self, data: bytes) -> None:
        front, client = self._front, self._client
        if front is not None and client is not None and not front.is_closing():
            front.sendto(data, client)

    def _forward(self, data: bytes, send: Callable[[bytes], None]) -> None:
        if not self._passing():
            self.dropped += 1
            return
        self.forwarded += 1
        if self.delay > 0:
            asyncio.get_running_loop().call_later(self.delay, send, data)
        else:
            send(data)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, receive: Callable[[bytes, Any], None]) -> None:
        self._receive = receive

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._receive(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable while the far side rebinds or is gone: UDP may lose.
        pass


class UdpEcho(asyncio.DatagramProtocol):
    """The UDP service beside the server: sends every datagram back to its sender."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)


@dataclass
class AppliedFault:
    at: float
    kind: str
    what: str
    ended: float | None = None


class Injector:
    """Applies faults to the link emulator, the UDP relay and the client's links."""

    def __init__(self, link_control: Path, relay: UdpRelay | None,
                 client_control: Path | None, clock: Callable[[], float],
                 log_path: Path) -> None:
        self.link_control = link_control
        self.relay = relay
        self.client_control = client_control
        self.clock = clock
        self.applied: list[AppliedFault] = []
        self._background: dict[str, asyncio.Task[None]] = {}
        self._log = log_path.open("a")

    def _record(self, fault: Fault) -> AppliedFault:
        entry = AppliedFault(round(self.clock(), 3), fault.kind, fault.describe())
        self.applied.append(entry)
        self._log.write(json.dumps({"t": entry.at, "kind": fault.kind,
                                    **dataclasses.asdict(fault)}) + "\n")
        self._log.flush()
        return entry

    async def run(self, plan: Iterator[Fault], until: float) -> None:
        for fault in plan:
            if self.clock() + fault.gap >= until:
                return
            await asyncio.sleep(fault.gap)
            await self.apply(fault)

    async def apply(self, fault: Fault) -> None:
        entry = self._record(fault)
        kind = fault.kind
        if kind == "cut":
            await link_command(self.link_control, "cut")
        elif kind == "cut-burst":
            await link_command(self.link_control, "cut")
            for pause in fault.spacing:
                await asyncio.sleep(pause)
                await link_command(self.link_control, "cut")
        elif kind == "blackhole":
            await self._blackhole(fault.hold)
        elif kind == "udp-rebind":
            if self.relay is not None:
                await self.relay.rebind()
        elif kind in ("flap", "outage"):
            await self._links_down([fault.path] if kind == "flap" else list(PATHS), fault.hold)
        elif kind in BACKGROUND:
            await self._replace_background(kind, self._condition(fault, entry))
            return
        entry.ended = round(self.clock(), 3)

    async def _blackhole(self, hold: float) -> None:
        try:
            await link_command(self.link_control, "blackhole")
            if self.relay is not None:
                self.relay.blackholed = True
            await asyncio.sleep(hold)
        finally:
            if self.relay is not None:
                self.relay.blackholed = False
            await link_command(self.link_control, "restore")

    async def _links_down(self, names: list[str], hold: float) -> None:
        if self.client_control is None:
            return
        try:
            for name in names:
                await daemon_request(self.client_control, "link", path=name, change="down")
            await asyncio.sleep(hold)
        finally:
            for name in names:
                await daemon_request(self.client_control, "link", path=name, change="up")

    async def _replace_background(self, kind: str, condition: Any) -> None:
        # The previous condition of this kind is undone before the new one is set,
        # so that its undoing cannot land after (and erase) the new setting.
        old = self._background.pop(kind, None)
        if old is not None:
            old.cancel()
            await asyncio.gather(old, return_exceptions=True)
        self._background[kind] = asyncio.get_running_loop().create_task(condition)

    async def _condition(self, fault: Fault, entry: AppliedFault) -> None:
        kind = fault.kind
        try:
            if kind == "delay":
                await link_command(self.link_control, f"delay {fault.value:.1f}")
                if self.relay is not None:
                    self.relay.delay = fault.value / 1000
            elif kind == "rate":
                await link_command(self.link_control, f"rate {int(fault.value)}")
            elif kind == "udp-block" and self.relay is not None:
                self.relay.blocked = True
            await asyncio.sleep(fault.hold)
        finally:
            if kind == "delay":
                if self.relay is not None:
                    self.relay.delay = 0.0
                await link_command(self.link_control, "delay 0")
            elif kind == "rate":
                await link_command(self.link_control, "rate none")
            elif kind == "udp-block" and self.relay is not None:
                self.relay.blocked = False
            entry.ended = round(self.clock(), 3)

    async def heal(self) -> list[str]:
        """Undo every fault: the link passes everything, at full speed, both links up.
        Returns what went wrong applying the background conditions."""
        for task in list(self._background.values()):
            task.cancel()
        outcomes = await asyncio.gather(*self._background.values(), return_exceptions=True)
        self._background.clear()
        errors = [f"fault injector: {exc}" for exc in outcomes
                  if isinstance(exc, Exception) and not isinstance(exc, asyncio.CancelledError)]
        for line in ("restore", "delay 0", "rate none"):
            await link_command(self.link_control, line)
        if self.relay is not None:
            self.relay.blackholed = self.relay.blocked = False
            self.relay.delay = 0.0
        if self.client_control is not None:
            for name in PATHS:
                await daemon_request(self.client_control, "link", path=name, change="up")
        self._log.close()
        return errors

    def counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.applied))


# ---------------------------------------------------------------------------
# Load: TCP streams and UDP flows.
# ---------------------------------------------------------------------------


@dataclass
class Stream:
    index: int
    seed: int
    checker: StreamChecker
    sent: int = 0
    eof: bool = False
    error: str | None = None
    longest_stall: float = 0.0
    stall_began: float = 0.0
    waiting_since: float | None = None  # oldest moment with bytes sent and not back

    @classmethod
    def make(cls, index: int, seed: int) -> Stream:
        stream_seed = seed * 100_003 + index
        return cls(index, stream_seed, StreamChecker(StreamPattern(stream_seed)))

    @property
    def received(self) -> int:
        return self.checker.received

    def problems(self) -> list[str]:
        return stream_problems(self.index, self.sent, self.checker, self.eof, self.error)


class _StreamBroken(Exception):
    """The stream's check failed or its connection ended early: stop both halves."""


async def run_stream(stream: Stream, port: int, rate: float, stop: asyncio.Event,
                     clock: Callable[[], float]) -> None:
    """Send the stream's pattern at `rate` bytes/s until `stop`, then half-close, and
    check every byte that comes back, until EOF."""
    rng = random.Random(stream.seed)
    pattern = StreamPattern(stream.seed)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        stream.error = f"connect: {exc}"
        return
    half_closed = False

    async def send() -> None:
        nonlocal half_closed
        due = clock()
        while not stop.is_set():
            # Chunks of 1 B to 16 KiB: records, frames and reads all get cut
            # at different places.
            n = rng.randint(1, 16 * KIB)
            due += n / rate
            # After a long backpressure stall, catch up at most one second's worth,
            # so that the load stays bounded.
            due = max(due, clock() - 1.0)
            wait = due - clock()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                if stop.is_set():
                    break
            writer.write(pattern.slice(stream.sent, n))
            stream.sent += n
            if stream.waiting_since is None:
                stream.waiting_since = clock()
            await writer.drain()
        writer.write_eof()
        half_closed = True
        await writer.drain()

    async def receive() -> None:
        while True:
            data = await reader.read(256 * KIB)
            now = clock()
            if not data:
                if not half_closed:
                    stream.error = f"EOF from the forward after {stream.received} bytes, " \
                                   "before the stream ended"
                    raise _StreamBroken
                stream.eof = True
                return
            if stream.waiting_since is not None and \
                    now - stream.waiting_since > stream.longest_stall:
                stream.longest_stall = now - stream.waiting_since
                stream.stall_began = stream.waiting_since
            if not stream.checker.feed(data):
                raise _StreamBroken
            stream.waiting_since = now if stream.received < stream.sent else None

    sender = asyncio.create_task(send())
    try:
        await asyncio.gather(sender, receive())
    except _StreamBroken:
        pass
    except (OSError, asyncio.IncompleteReadError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
    finally:
        if not sender.done():
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        writer.close()


class UdpFlow(asyncio.DatagramProtocol):
    """One application source address sending datagrams through the udp: forward."""

    def __init__(self, index: int, seed: int, clock: Callable[[], float]) -> None:
        self.index = index
        self.seed = seed
        self.clock = clock
        self.checker = DatagramChecker(seed, index)
        self.sent = 0
        self.sent_at: list[float] = []  # by sequence number: when lost ones were sent
        self.send_errors = 0
        self.received_at_stop = 0
        self.recovered = False
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.checker.feed(data, self.sent)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the client restarts its forward: counted.
        self.send_errors += 1

    def send_one(self, rng: random.Random) -> None:
        if self.transport is None:
            return
        size = rng.randint(*DATAGRAM_SIZES)
        self.transport.sendto(encode_datagram(self.seed, self.index, self.sent, size))
        self.sent_at.append(self.clock())
        self.sent += 1

    @property
    def lost(self) -> int:
        return self.sent - self.checker.received


async def run_flow(flow: UdpFlow, port: int, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: flow, remote_addr=("127.0.0.1", port))
    rng = random.Random(flow.seed * 7919 + flow.index)
    while not stop.is_set():
        flow.send_one(rng)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1 / DATAGRAM_RATE)


async def flow_recovers(flow: UdpFlow, tries: int = 40) -> bool:
    """After the chaos, one more datagram at a time until one comes back: the flow
    works again (a datagram path that stays broken would never answer)."""
    rng = random.Random(flow.index)
    for _ in range(tries):
        before = flow.checker.received
        flow.send_one(rng)
        await asyncio.sleep(0.5)
        if flow.checker.received > before:
            return True
    return False


# ---------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------


@dataclass
class ChaosConfig:
    seconds: float
    workdir: Path
    streams: int = 50
    flows: int = 4
    seed: int = 1
    rate_kib: float = 32.0
    paths: bool = True
    # Quiet seconds between faults (a short run packs them closer).
    gaps: tuple[float, float] = (0.5, 4.0)
    say: Callable[[str], None] = print


@dataclass
class Report:
    seed: int
    seconds: float
    streams: int
    flows: int
    paths: bool
    rate_kib: float
    workdir: str
    problems: list[str] = field(default_factory=list)
    stream_rows: list[dict[str, Any]] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    streams_ok: int = 0
    datagrams_sent: int = 0
    datagrams_received: int = 0
    datagrams_lost: int = 0
    datagrams_duplicated: int = 0
    datagrams_corrupted: int = 0
    datagrams_lost_quiet: int = 0
    datagram_loss_by_second: list[tuple[int, int]] = field(default_factory=list)
    flows_recovered: int = 0
    udp_relay: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    fault_log: list[dict[str, Any]] = field(default_factory=list)
    link: dict[str, Any] = field(default_factory=dict)
    client_status: dict[str, Any] = field(default_factory=dict)
    server_status: dict[str, Any] = field(default_factory=dict)
    server_resumes_logged: int = 0
    server_new_sessions: int = 0
    rss_times: list[float] = field(default_factory=list)
    rss: dict[str, list[int]] = field(default_factory=dict)
    chaos_from: float = 0.0
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    longest_stall_ms: float = 0.0
    longest_stall_stream: int | None = None
    longest_stall_began: float = 0.0
    longest_stall_after: str = ""
    drain_seconds: float = 0.0
    interrupted: bool = False
    state_samples: list[tuple[float, str | None, int | None]] = field(default_factory=list)
    worst_detached: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.interrupted

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ok"] = self.ok
        return out


class _Daemons:
    """The processes of one run, and where to reach them."""

    def __init__(self, procs: Procs, workdir: Path) -> None:
        self.procs = procs
        self.workdir = workdir
        self.watched: list[Proc] = []
        self.keys = Keys.make(workdir / "keys")
        self.server_ctl = workdir / "server.sock"
        self.link_ctl = workdir / "link.sock"
        self.client_ctl = workdir / "client.sock"
        self.echo_port = self.server_port = self.link_port = 0
        self.tcp_forward = self.udp_forward = 0

    def start_server_side(self, udp_echo: int) -> None:
        """The TCP echo service, the server, and the link emulator in front of it."""
        echo = self.procs.start("echo", [sys.executable, str(SERVICES), "echo", "--port", "0"],
                                ready="")
        self.watched.append(echo)
        self.echo_port = int(echo.ready)
        server = self.procs.start("server", [
            sys.executable, "-m", "roam", "server", "--listen", "127.0.0.1:0",
            "--key", str(self.keys.server_key), "--authorized-keys", str(self.keys.authorized),
            "--allow", f"127.0.0.1:{self.echo_port}", "--allow", f"127.0.0.1:{udp_echo}",
            "--control", str(self.server_ctl)], ready="listening")
        self.watched.append(server)
        self.server_port = int(server.ready.rsplit(":", 1)[1])
        link = self.procs.start("link", [
            sys.executable, "-m", "roam.lab.linkemu", "--listen", "127.0.0.1:0",
            "--target", f"127.0.0.1:{self.server_port}", "--control", str(self.link_ctl)],
            ready="listening")
        self.watched.append(link)
        self.link_port = int(link.ready.rsplit(":", 1)[1])

    def start_client(self, paths: bool, udp_echo: int) -> None:
        """The client, through the link emulator, with a TCP and a UDP forward."""
        argv = [sys.executable, "-m", "roam", "client",
                "--server", f"127.0.0.1:{self.link_port}",
                "--server-key", self.keys.server_pub, "--key", str(self.keys.client_key),
                "--forward", f"127.0.0.1:0=127.0.0.1:{self.echo_port}",
                "--forward", f"udp:127.0.0.1:0=127.0.0.1:{udp_echo}",
                "--control", str(self.client_ctl),
                "--event-log", str(self.workdir / "events.jsonl")]
        if paths:
            # Both paths leave by loopback through the same emulator; the emulated
            # driver lets the injector take either link down.
            argv += ["--links", "emulated",
                     "--path", "wifi:dev=lo,priority=10,kind=wifi",
                     "--path", "cell:dev=lo,priority=20,kind=cellular"]
        client = self.procs.start("client", argv, ready="forward")
        self.watched.append(client)
        self.tcp_forward = int(client.ready.split("=")[0].rsplit(":", 1)[1])
        second = _next_line(client, 20.0)
        if not second.startswith("forward udp:"):
            raise ChaosError(f"client: no UDP forward line (got {second!r})")
        self.udp_forward = int(second.split("=")[0].rsplit(":", 1)[1])

    def by_name(self, name: str) -> Proc:
        return next(p for p in self.watched if p.name == name)

    def exited(self) -> list[str]:
        return [f"{p.name} exited with status {p.popen.returncode}" for p in self.watched
                if p.popen.poll() is not None]


def _next_line(proc: Proc, timeout: float) -> str:
    """The next stdout line of `proc`, or '' after `timeout` s."""
    out: list[bytes] = []
    stdout = proc.popen.stdout
    if stdout is None:
        return ""
    reader = threading.Thread(target=lambda: out.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return out[0].decode().strip() if out else ""


def _rss_kib(proc: Proc) -> int | None:
    try:
        return proc.rss_kib()
    except OSError:
        return None


async def _roam_status(control: Path, server: bool) -> dict[str, Any]:
    """`roam status --json` against a daemon's control socket, as a person runs it."""
    argv = [sys.executable, "-m", "roam", "status", "--json", "--control", str(control)]
    if server:
        argv.append("--server")
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        return {"error": "roam status: no answer in 60 s"}
    finally:
        if proc.returncode is None:  # timed out or interrupted: ended by its PID
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        return {"error": err.decode(errors="replace").strip()}
    result: dict[str, Any] = json.loads(out)
    return result


async def run(config: ChaosConfig) -> Report:
    """One soak, start to end; the report says whether everything was exact and bounded."""
    if config.seconds < 20:
        raise ValueError("a chaos run needs at least 20 s (warm-up black hole and recovery)")
    say = config.say
    report = Report(config.seed, config.seconds, config.streams, config.flows, config.paths,
                    config.rate_kib, str(config.workdir))
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    def clock() -> float:
        return loop.time() - t0

    echo_transport, _ = await loop.create_datagram_endpoint(
        UdpEcho, local_addr=("127.0.0.1", 0))
    udp_echo_port = echo_transport.get_extra_info("sockname")[1]
    relay: UdpRelay | None = None
    tasks: list[asyncio.Task[Any]] = []
    with Procs(config.workdir) as procs:
        daemons = _Daemons(procs, config.workdir)
        try:
            # Started from the loop's own thread, blocking it for the few seconds this
            # takes: a thread that went on starting processes after a Ctrl-C could
            # leave one that nobody ends.
            daemons.start_server_side(udp_echo_port)
            # The relay is up before the client, so that its first UDP probe passes.
            relay = UdpRelay(daemons.link_port, ("127.0.0.1", daemons.server_port))
            if not await relay.start():
                say(f"UDP port {daemons.link_port} is taken: datagrams only take the stream")
                relay = None
            daemons.start_client(config.paths, udp_echo_port)
            injector = Injector(daemons.link_ctl, relay,
                                daemons.client_ctl if config.paths else None, clock,
                                config.workdir / "faults.jsonl")
            await _soak(config, report, daemons, injector, clock, tasks)
            report.client_status = await _roam_status(daemons.client_ctl, server=False)
            report.server_status = await _roam_status(daemons.server_ctl, server=True)
            with contextlib.suppress(ChaosError, OSError, TimeoutError):
                report.link = json.loads(await link_command(daemons.link_ctl, "stats"))
        except asyncio.CancelledError:
            report.interrupted = True
            raise
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if relay is not None:
                report.udp_relay = {"forwarded": relay.forwarded, "dropped": relay.dropped,
                                    "rebinds": relay.rebinds}
                relay.close()
            echo_transport.close()
            report.problems += [f"at the end: {g}" for g in daemons.exited()]
    server_log = (config.workdir / "server.log").read_text(errors="replace") \
        if (config.workdir / "server.log").exists() else ""
    report.server_resumes_logged = server_log.count(": resumed on a ")
    report.server_new_sessions = server_log.count(": new session from ")
    if report.server_new_sessions > 1:
        report.problems.append(f"the server started {report.server_new_sessions} sessions: "
                               "the client lost its session and every connection with it")
    (config.workdir / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    return report


async def _soak(config: ChaosConfig, report: Report, daemons: _Daemons, injector: Injector,
                clock: Callable[[], float], tasks: list[asyncio.Task[Any]]) -> None:
    say = config.say
    loop = asyncio.get_running_loop()
    stop_load = asyncio.Event()
    abort = asyncio.Event()
    streams = [Stream.make(i, config.seed) for i in range(config.streams)]
    flows = [UdpFlow(i, config.seed, clock) for i in range(config.flows)]
    stream_tasks = [loop.create_task(run_stream(s, daemons.tcp_forward, config.rate_kib * KIB,
                                                stop_load, clock)) for s in streams]
    flow_stop = asyncio.Event()
    tasks += stream_tasks
    tasks += [loop.create_task(run_flow(f, daemons.udp_forward, flow_stop)) for f in flows]
    server, client = daemons.by_name("server"), daemons.by_name("client")
    report.rss = {"server": [], "client": []}
    interval = min(3.0, max(0.25, config.seconds / 200))

    async def sample() -> None:
        while True:
            s, c = _rss_kib(server), _rss_kib(client)
            if s is not None and c is not None:
                report.rss_times.append(round(clock(), 2))
                report.rss["server"].append(s)
                report.rss["client"].append(c)
            await asyncio.sleep(interval)

    async def watch() -> None:
        last_total, last_change = 0, clock()
        while True:
            await asyncio.sleep(0.5)
            gone = daemons.exited()
            if gone:
                report.problems += [f"during the run: {g}" for g in gone]
                abort.set()
                return
            total = sum(s.received for s in streams)
            outstanding = any(s.received < s.sent for s in streams)
            if total != last_total or not outstanding:
                last_total, last_change = total, clock()
            elif clock() - last_change > NO_PROGRESS_LIMIT:
                report.problems.append(
                    f"no stream received a byte for {NO_PROGRESS_LIMIT:.0f} s "
                    f"(from t={last_change:.1f} s) while bytes were outstanding")
                abort.set()
                return

    async def poll_state() -> None:
        # Once a second: the session's state as `roam status` shows it, and how many
        # transports have reached the link emulator so far.
        while True:
            state: str | None = None
            conns: int | None = None
            try:
                status = await daemon_request(daemons.client_ctl, "status")
                state = (status.get("session") or {}).get("state")
                stats = json.loads(await link_command(daemons.link_ctl, "stats"))
                conns = int(stats["connections_total"])
            except (ChaosError, OSError, TimeoutError, ValueError, KeyError):
                pass  # no answer this time: the sample says unknown
            report.state_samples.append((round(clock(), 2), state, conns))
            await asyncio.sleep(1.0)

    tasks += [loop.create_task(sample()), loop.create_task(watch()),
              loop.create_task(poll_state())]
    end = config.seconds
    say(f"chaos: seed {config.seed}, {config.seconds:.0f} s, {config.streams} streams at "
        f"{config.rate_kib:g} KiB/s, {config.flows} UDP flows, "
        f"{'paths wifi+cell' if config.paths else 'no paths'}; logs in {config.workdir}")

    async def until(t: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(abort.wait(), max(0.0, t - clock()))

    # Warm-up: the longest black hole, so that the buffers reach their caps before
    # the memory baseline is taken; the chaos phase starts once every stream has
    # moved again (or after a minute: a stream that never moves fails anyway).
    await until(WARMUP_AT)
    if not abort.is_set():
        await injector.apply(Fault("blackhole", hold=5.0))
        mark = {s.index: s.received for s in streams}
        deadline = clock() + 60
        while (clock() < deadline and not abort.is_set()
               and any(s.received == mark[s.index] and s.error is None for s in streams)):
            await until(clock() + 0.1)
    report.chaos_from = round(clock(), 2)
    say(f"t={clock():6.1f}s warm-up black hole done; faults until t={end:.0f}s")
    plan = fault_plan(config.seed, config.paths, config.gaps)
    chaos = loop.create_task(injector.run(plan, until=end))
    tasks.append(chaos)
    progress = loop.create_task(_progress(say, streams, flows, injector, clock))
    tasks.append(progress)
    await until(end)
    chaos.cancel()
    await asyncio.gather(chaos, return_exceptions=True)
    if chaos.done() and not chaos.cancelled() and chaos.exception() is not None:
        report.problems.append(f"fault injector: {chaos.exception()}")
    progress.cancel()
    try:
        report.problems += await injector.heal()
    except (ChaosError, OSError, TimeoutError) as exc:
        report.problems.append(f"could not heal the link: {exc}")
    say(f"t={clock():6.1f}s load stopped, link healed; draining "
        f"{len(injector.applied)} faults applied")

    # The end: every stream half-closes and must get every byte back, then EOF.
    stop_load.set()
    drain_from = clock()
    flow_stop.set()
    drain = asyncio.gather(*stream_tasks, return_exceptions=True)
    # After an abort (a daemon gone, no progress) there is little to wait for; the
    # watchdog goes on during the drain, so a client that stops resuming now ends
    # it as well.
    limit = 15.0 if abort.is_set() else DRAIN_TIMEOUT
    aborted = loop.create_task(abort.wait())
    await asyncio.wait([drain, aborted], timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    aborted.cancel()
    if not drain.done():
        await asyncio.wait([drain], timeout=5.0)  # the last bytes of an abort's moment
    if not drain.done():
        report.problems.append(f"streams not drained {clock() - drain_from:.0f} s after the "
                               f"end: {sum(not s.eof for s in streams)} still open")
    report.drain_seconds = round(clock() - drain_from, 2)
    for f in flows:
        f.received_at_stop = f.checker.received
    tries = 4 if abort.is_set() else 40
    recovered = await asyncio.gather(*(flow_recovers(f, tries) for f in flows))
    for f, ok in zip(flows, recovered, strict=True):
        f.recovered = ok
    await asyncio.sleep(1.0)  # echoes of the last probes: counted, not lost
    for f in flows:
        if f.transport is not None:
            f.transport.close()
    _judge(config, report, streams, flows, injector)


async def _progress(say: Callable[[str], None], streams: list[Stream], flows: list[UdpFlow],
                    injector: Injector, clock: Callable[[], float]) -> None:
    while True:
        await asyncio.sleep(30)
        say(f"t={clock():6.1f}s {sum(s.received for s in streams) / MIB:8.1f} MiB back, "
            f"{sum(f.checker.received for f in flows)} datagrams back, "
            f"{len(injector.applied)} faults")


def fault_windows(applied: list[AppliedFault], recovery: float) -> list[tuple[float, float]]:
    """The merged time spans in which a fault was on, or recovered from."""
    spans = sorted((f.at, (f.ended if f.ended is not None else f.at) + recovery)
                   for f in applied)
    merged: list[tuple[float, float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def in_windows(t: float, windows: list[tuple[float, float]]) -> bool:
    i = bisect.bisect_right(windows, (t, math.inf)) - 1
    return i >= 0 and windows[i][0] <= t <= windows[i][1]


def detached_on_whole_link(samples: list[tuple[float, str | None, int | None]],
                           blocking: list[tuple[float, float]]) -> dict[str, Any]:
    """Of the spells in which the sampled session state was not "attached", the one
    with the most time in which no blocking fault (a black hole, a link down) was
    on: how long the client stayed away from a link it could have resumed on."""
    worst: dict[str, Any] = {}
    spell: dict[str, Any] | None = None
    last_t: float | None = None
    for t, state, _ in samples:
        if state is None:
            continue  # no answer this time: neither extends nor ends the spell
        if state == "attached":
            spell = None
        elif spell is None:
            spell = {"from": t, "to": t, "whole_link_s": 0.0}
        else:
            assert last_t is not None
            middle = (last_t + t) / 2
            if not any(a <= middle <= b for a, b in blocking):
                spell["whole_link_s"] = round(spell["whole_link_s"] + t - last_t, 2)
            spell["to"] = t
            if not worst or spell["whole_link_s"] > worst["whole_link_s"]:
                worst = dict(spell)
        last_t = t
    return worst


def _judge(config: ChaosConfig, report: Report, streams: list[Stream], flows: list[UdpFlow],
           injector: Injector) -> None:
    for s in streams:
        problems = s.problems()
        report.problems += problems
        report.streams_ok += not problems
        report.stream_rows.append({"index": s.index, "sent": s.sent, "received": s.received,
                                   "eof": s.eof, "error": s.error,
                                   "mismatch_at": s.checker.mismatch_at,
                                   "longest_stall_ms": round(s.longest_stall * 1000)})
    report.bytes_sent = sum(s.sent for s in streams)
    report.bytes_received = sum(s.received for s in streams)
    worst = max(streams, key=lambda s: s.longest_stall, default=None)
    if worst is not None:
        report.longest_stall_ms = round(worst.longest_stall * 1000)
        report.longest_stall_stream = worst.index
        report.longest_stall_began = round(worst.stall_began, 2)
        before = [f for f in injector.applied if f.at <= worst.stall_began + 0.5]
        report.longest_stall_after = (f"{before[-1].what} at t={before[-1].at:.1f} s"
                                      if before else "")
    for f in flows:
        c = f.checker
        report.datagrams_sent += f.sent
        report.datagrams_received += c.received
        report.datagrams_duplicated += c.duplicated
        report.datagrams_corrupted += c.corrupted
        report.flows_recovered += f.recovered
        if c.duplicated or c.corrupted:
            report.problems.append(f"UDP flow {f.index}: {c.duplicated} duplicated, "
                                   f"{c.corrupted} corrupted (first: {c.first_problem})")
        if not f.recovered:
            report.problems.append(f"UDP flow {f.index}: no echo after the chaos ended")
    report.datagrams_lost = report.datagrams_sent - report.datagrams_received
    windows = fault_windows(injector.applied, RECOVERY)
    lost_at = [f.sent_at[seq] for f in flows for seq in range(f.sent)
               if seq not in f.checker.seen]
    report.datagrams_lost_quiet = sum(not in_windows(t, windows) for t in lost_at)
    report.datagram_loss_by_second = sorted(Counter(int(t) for t in lost_at).items())
    report.faults = injector.counts()
    blocking = [(f.at, f.ended if f.ended is not None else math.inf)
                for f in injector.applied if f.kind in BLOCKING]
    report.worst_detached = detached_on_whole_link(report.state_samples, blocking)
    if report.worst_detached.get("whole_link_s", 0.0) > DETACHED_LIMIT:
        w = report.worst_detached
        report.problems.append(
            f"the client's session stayed detached from t={w['from']} to t={w['to']} s, "
            f"{w['whole_link_s']:.0f} s of it with the link whole: the client stopped "
            f"resuming")
    report.fault_log = [dataclasses.asdict(f) for f in injector.applied]
    if len(injector.applied) < 2:
        report.problems.append(f"only {len(injector.applied)} faults applied")
    margin = memory_margin_kib(config.streams, config.flows)
    start = next((i for i, t in enumerate(report.rss_times) if t >= report.chaos_from), 0)
    for name, series in report.rss.items():
        verdict = memory_verdict(series[start:], margin)
        report.memory[name] = {
            **dataclasses.asdict(verdict),
            "start_kib": series[0] if series else 0,
            "peak_kib": max(series, default=0),
            "end_kib": series[-1] if series else 0,
        }
        if not verdict.ok:
            report.problems.append(f"{name} memory not bounded: {verdict.detail}")


# ---------------------------------------------------------------------------
# The summary.
# ---------------------------------------------------------------------------


def table(report: Report) -> str:
    def mib(n: int) -> str:
        return f"{n} ({n / MIB:.1f} MiB)"

    session = (report.client_status.get("session") or {}) if report.client_status else {}
    sessions = report.server_status.get("sessions") or [] if report.server_status else []
    server_session = sessions[0] if sessions else {}
    handovers = report.client_status.get("handovers") or []
    kinds = Counter(h.get("kind") for h in handovers)
    rows: list[tuple[str, str]] = [
        ("seed / duration", f"{report.seed} / {report.seconds:.0f} s "
                            f"(chaos from t={report.chaos_from:.0f} s)"),
        ("streams x rate", f"{report.streams} x {report.rate_kib:g} KiB/s"),
        ("TCP bytes app -> service", mib(report.bytes_sent)),
        ("TCP bytes service -> app", mib(report.bytes_received) + " checked"),
        ("streams byte-exact + EOF", f"{report.streams_ok} of {report.streams}"),
        ("drain after the end", f"{report.drain_seconds:.1f} s"),
        ("datagrams sent", str(report.datagrams_sent)),
        ("datagrams received", str(report.datagrams_received)),
        ("datagrams lost", f"{report.datagrams_lost} "
                           f"({100 * report.datagrams_lost / max(1, report.datagrams_sent):.2f}%)"),
        ("  of them, sent while no fault", f"{report.datagrams_lost_quiet} (not within "
                                           f"{RECOVERY:g} s of a fault)"),
        ("datagrams duplicated", str(report.datagrams_duplicated)),
        ("datagrams corrupted", str(report.datagrams_corrupted)),
        ("UDP flows working after", f"{report.flows_recovered} of {report.flows}"),
        ("UDP relay", ", ".join(f"{k} {v}" for k, v in report.udp_relay.items()) or "none"),
        ("faults applied", f"{sum(report.faults.values())}: " + ", ".join(
            f"{k} {v}" for k, v in sorted(report.faults.items()))),
        ("transports over the link", str(report.link.get("connections_total", "?"))),
        ("session resumes (client)", str(session.get("resumes", "?"))),
        ("session resumes (server)", f"{server_session.get('resumes', '?')} "
                                     f"({report.server_resumes_logged} logged)"),
        ("frames resent (client)", str(session.get("frames_resent", "?"))),
        ("handovers in status", ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
         or "none"),
        ("datagrams on the stream", f"{session.get('datagrams_sent', '?')} sent, "
                                    f"{session.get('datagrams_received', '?')} received"),
        ("sessions at the server", str(report.server_new_sessions)),
        ("longest detached, link whole", (
            f"{report.worst_detached['whole_link_s']:.1f} s (detached t="
            f"{report.worst_detached['from']}-{report.worst_detached['to']} s)")
         if report.worst_detached else "none"),
        ("longest stall", f"{report.longest_stall_ms:.0f} ms (stream "
                          f"{report.longest_stall_stream}, from t={report.longest_stall_began}"
                          f" s, after {report.longest_stall_after or '-'})"),
    ]
    for name, m in report.memory.items():
        rows.append((f"RSS {name} start/peak/end",
                     f"{m['start_kib'] // 1024} / {m['peak_kib'] // 1024} / "
                     f"{m['end_kib'] // 1024} MiB"))
        rows.append((f"RSS {name} bounded", ("yes: " if m["ok"] else "NO: ") + m["detail"]))
    width = max(len(k) for k, _ in rows)
    lines = ["chaos summary"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    if report.problems:
        lines.append("FAIL")
        lines += [f"  - {p}" for p in report.problems[:40]]
        if len(report.problems) > 40:
            lines.append(f"  ... and {len(report.problems) - 40} more")
    elif report.interrupted:
        lines.append("INTERRUPTED")
    else:
        lines.append("PASS: every byte and datagram exact, memory bounded")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, required=True, help="length of the load")
    parser.add_argument("--streams", type=int, default=50, help="concurrent TCP streams")
    parser.add_argument("--flows", type=int, default=4, help="UDP datagram flows")
    parser.add_argument("--seed", type=int, default=None,
                        help="fault and data seed (default: random, printed)")
    parser.add_argument("--rate-kib", type=float, default=32.0,
                        help="KiB/s each stream sends (default 32)")
    parser.add_argument("--no-paths", dest="paths", action="store_false",
                        help="a client without --path: no link flaps")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the working directory (logs) even when the run passes")
    args = parser.parse_args(argv)
    if args.streams < 1 or args.flows < 0 or args.rate_kib <= 0:
        parser.error("--streams must be >= 1, --flows >= 0, --rate-kib > 0")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    workdir = Path(tempfile.mkdtemp(prefix="roam-chaos-"))
    config = ChaosConfig(args.minutes * 60, workdir, args.streams, args.flows, seed,
                         args.rate_kib, args.paths)

    async def guarded() -> Report:
        # SIGTERM ends the run like Ctrl-C: through cancellation, so that every
        # process is still ended by its PID on the way out.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run(config)

    started = time.monotonic()
    try:
        report = asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"\ninterrupted: every process ended; logs kept in {workdir}", file=sys.stderr)
        return 130
    print(table(report))
    print(f"wall time {time.monotonic() - started:.0f} s; reproduce with "
          f"python bench/chaos.py --minutes {args.minutes:g} --streams {args.streams} "
          f"--flows {args.flows} --seed {seed}" + ("" if args.paths else " --no-paths"))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=1))
    if report.ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs, faults.jsonl and report.json kept in {workdir}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
