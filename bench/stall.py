"""The ACK gaps of a healthy loaded path: what the stall floor must stay above.

    python bench/stall.py [--seconds 20] [--loads bulk,paced,mixed,competitor]
                          [--json bench/results/stall.json] [--out docs/performance.md]

With a standby transport, a session moves off its active one when data is
outstanding and nothing new was acknowledged for max(stall_floor, stall_rtts x srtt)
(`Session.handle_timer`, docs/protocol.md section 5.2). A loaded Python peer
acknowledges late now and then (a GC pause, a long write, its event loop busy), so
the floor must exceed the ACK gaps such a path shows, or the session would flap.

This measures them on loopback. A real `roam server` process (default settings)
reaches a sink and a source (`bench/servers.py`); roam's own `Client` runs in this
process, so its session can be watched: `Session._acked` is wrapped for the run, and
every time the server's ACK advances while frames were outstanding it records
`now - session._ack_progress` (the time since the previous advance, or since the
first frame went out with nothing outstanding: the quantity the stall check
compares) and the session's smoothed RTT. The client has one transport, so no stall
check runs and nothing measured here can switch anything.

Loads, `--seconds` each, one after the other on the same session:
1. bulk: 256 KiB writes into a channel to the sink, as fast as the session takes them;
2. paced: 1 KiB every millisecond into a channel to the sink (as bench/paced.py);
3. mixed: both at once, and a second channel downloading from the source in bulk;
4. competitor: bulk while a busy-looping Python process shares the server's CPU
   (both pinned to one CPU with taskset, this process to the others); skipped with a
   note when taskset is missing.

The applications are in this process, behind the same backpressure as a socket of
a forward (the driver pauses and resumes their reading). After each load the
uploads end, and the sink's byte count must match what was sent. Results go to
--json and a markdown table to stdout; with --out, the `bench:stall` section of that
file is rewritten (a "## Stall floor" section is added at its end if missing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import select
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing roam
sys.path.insert(1, str(ROOT / "bench"))

from benchlib import Procs, end, machine_facts, machine_line, run_ok, write_section  # noqa: E402
from load import percentile  # noqa: E402
from roam.core.session import Session, SessionConfig  # noqa: E402
from roam.crypto.keys import (  # noqa: E402
    encode_key,
    generate_private_key,
    public_key,
    write_private_key,
)
from roam.eventloop import loop_factory  # noqa: E402
from roam.transport.client import Client, ClientConfig  # noqa: E402
from roam.transport.driver import AppConnection, SessionDriver  # noqa: E402
from run import start_server as start_service  # noqa: E402

HOST = "127.0.0.1"
START, END = "<!-- bench:stall:start -->", "<!-- bench:stall:end -->"
RESULTS = ROOT / "bench" / "results" / "stall.json"
LOADS = ("bulk", "paced", "mixed", "competitor")
TITLES = {
    "bulk": "bulk upload",
    "paced": "paced upload, 1 KiB per ms",
    "mixed": "bulk + paced upload, bulk download",
    "competitor": "bulk upload, server CPU shared with a busy loop",
}
CONFIG = SessionConfig()  # the floor and the RTT factor the figures are compared with
# One read of an application socket: asyncio and uvloop read at most 256 KiB at once.
BLOCK = 256 * 1024
PACED_SIZE = 1024
PACED_INTERVAL = 0.001
MAX_BATCH = 4096  # paced messages joined into one write when catching up (as paced.py)
MAX_SECONDS = 600.0  # per load: a forgotten run must end
READY_LIMIT = 60.0  # seconds for the server's `listening` line
DRAIN_LIMIT = 30.0  # seconds for the sink's count after a load's last write
SETTLE_LIMIT = 5.0  # seconds for the last frames to be acknowledged between loads
MAX_SAMPLES = 5_000_000  # per load; a 20 s load gives tens of thousands
LARGEST = 10  # the longest gaps of each load, kept in the JSON with their srtt
# The competitor ends by itself too, should this process die without ending it.
COMPETITOR = ("import time\nend = time.monotonic() + {limit}\n"
              "while time.monotonic() < end:\n    pass\n")
# Random bytes: nothing for compression to gain, were it on.
PAYLOAD = os.urandom(BLOCK)


# ---- watching the session's ACKs --------------------------------------------------


@dataclass
class Gaps:
    """ACK gaps of one load, seconds, each with the srtt and stall threshold of its moment."""

    gaps: list[float] = field(default_factory=list)
    srtts: list[float] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)

    def add(self, gap: float, srtt: float | None) -> None:
        if len(self.gaps) >= MAX_SAMPLES:
            return
        self.gaps.append(gap)
        self.srtts.append(math.nan if srtt is None else srtt)
        # What `Session._stall_after` compares the gap with at this moment.
        floor = CONFIG.stall_floor
        self.thresholds.append(floor if srtt is None else max(floor, CONFIG.stall_rtts * srtt))


class AckWatch:
    """Wraps `Session._acked` (the class's, for the run): records the gaps of one session.

    The core is not changed: the wrapper reads the state `_acked` reads, calls it,
    and records a gap only when the first outstanding frame changed (what makes
    `_acked` move `_ack_progress`).
    """

    def __init__(self) -> None:
        self.session: Session | None = None
        self.into: Gaps | None = None  # None between loads
        self._original: Callable[[Session, int, float], None] | None = None

    def __enter__(self) -> AckWatch:
        original = Session._acked
        watch = self

        def acked(session: Session, received: int, now: float) -> None:
            unacked = session.replay.unacked
            first = unacked[0][0] if unacked else None
            since = session._ack_progress
            original(session, received, now)
            into = watch.into
            if first is None or into is None or session is not watch.session:
                return
            after = session.replay.unacked
            if after and after[0][0] == first:
                return  # nothing new acknowledged: the stall clock runs on
            into.add(now - since, session.rtt.srtt)

        self._original = original
        Session._acked = acked  # type: ignore[method-assign, assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._original is not None:
            Session._acked = self._original  # type: ignore[method-assign, assignment]
            self._original = None


# ---- applications in this process --------------------------------------------------


class Valve(asyncio.Transport):
    """Stands in for an application's socket: the driver pauses and resumes its
    reading as it would a forward's, and what the channel delivers is dropped."""

    def __init__(self, on_resume: Callable[[], None]) -> None:
        super().__init__()
        self.reading = True
        self._on_resume = on_resume

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            self._on_resume()

    def is_reading(self) -> bool:
        return self.reading

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass  # the application's side counts what it got

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        self.reading = False

    def abort(self) -> None:
        self.reading = False


class Upload(AppConnection):
    """A channel to the sink that this process writes into.

    bulk: one BLOCK per event-loop iteration while the session takes it, as a
    forward reads an application that always has data. Otherwise the caller
    writes (the paced stream). The sink answers the end of the stream with its count.
    """

    def __init__(self, driver: SessionDriver, port: int, *, bulk: bool) -> None:
        super().__init__(driver)
        self.valve = Valve(self._resumed)
        self.transport = self.valve
        self.bulk = bulk
        self.running = True
        self.sent = 0
        self.reply = bytearray()
        self.error: str | None = None
        self.done = asyncio.Event()  # the sink's count came, or the channel ended
        self._fill_pending = False
        self.cid = driver.session.open_channel(HOST, port)
        driver.add_app(self)
        if bulk:
            self._schedule_fill()

    def write(self, data: bytes) -> None:
        """What a read of the application's socket would hand the channel."""
        if self.running and not self.finished:
            self.sent += len(data)
            self.data_received(data)

    def _resumed(self) -> None:
        if self.bulk:
            self._schedule_fill()

    def _schedule_fill(self) -> None:
        # One fill chain at most: a resume while a fill is pending must not start a second.
        if not self._fill_pending and self.running:
            self._fill_pending = True
            self.driver.loop.call_soon(self._fill)

    def _fill(self) -> None:
        self._fill_pending = False
        if self.running and self.valve.reading and not self.finished:
            self.write(PAYLOAD)
            self._schedule_fill()

    def stop(self) -> None:
        """No more writes; FIN after what the channel buffered."""
        self.running = False
        if self.cid is not None and not self.finished:
            self.driver.session.end_channel(self.cid)
            self.driver.schedule()

    def counted(self) -> int | None:
        text = bytes(self.reply).strip()
        return int(text) if text.isdigit() else None

    # ChannelApp
    def deliver(self, data: bytes | memoryview) -> None:
        self.reply += data
        super().deliver(data)  # returns the credit, as a socket that took the bytes would
        if b"\n" in self.reply:
            self.done.set()

    def end(self) -> None:
        self.done.set()

    def finish(self) -> None:
        self.finished = True
        self.done.set()

    def abort(self) -> None:
        self.finished = True
        self.error = "the channel was reset"
        self.done.set()


class Download(AppConnection):
    """A channel from the source, read as fast as it comes (credit returned at once)."""

    def __init__(self, driver: SessionDriver, port: int) -> None:
        super().__init__(driver)
        self.transport = Valve(lambda: None)
        self.received = 0
        self.error: str | None = None
        self.cid = driver.session.open_channel(HOST, port)
        driver.add_app(self)

    def deliver(self, data: bytes | memoryview) -> None:
        self.received += len(data)
        super().deliver(data)

    def stop(self) -> None:
        # The source never ends: reset the channel, as an application closing would.
        self.connection_lost(None)

    def end(self) -> None:
        self.error = "the source ended"

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.finished = True
        self.error = "the channel was reset"


async def pace(app: Upload) -> None:
    """PACED_SIZE bytes every PACED_INTERVAL into `app`; late ones go together (as
    bench/paced.py sends: a stall shows as a burst, never as a skipped message)."""
    loop = asyncio.get_running_loop()
    message = PAYLOAD[:PACED_SIZE]
    t0 = loop.time()
    seq = 0
    while app.running and not app.finished:
        due = min(int((loop.time() - t0) / PACED_INTERVAL) + 1, seq + MAX_BATCH)
        if not app.valve.reading:
            # The channel's buffer is full: wait as a paused socket would, not spin.
            await asyncio.sleep(PACED_INTERVAL)
            continue
        if due > seq:
            app.write(message * (due - seq))
            seq = due
        await asyncio.sleep(max(0.0, t0 + seq * PACED_INTERVAL - loop.time()))


# ---- processes ---------------------------------------------------------------------


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class RoamServer:
    pid: int
    port: int
    key: bytes  # its public key
    client_key: bytes  # the one authorized client's private key


def start_roam_server(procs: Procs, tmp: Path, allow: list[int]) -> RoamServer:
    """A `roam server` process with default settings, one authorized client key."""
    server_key, client_key = generate_private_key(), generate_private_key()
    write_private_key(tmp / "server.key", server_key)
    (tmp / "authorized_keys").write_text(f"{encode_key(public_key(client_key))} bench\n")
    cmd = [sys.executable, "-m", "roam", "server", "--listen", f"{HOST}:0",
           "--key", str(tmp / "server.key"), "--authorized-keys", str(tmp / "authorized_keys"),
           "--control", str(tmp / "server.sock"), "--log-level", "warning"]
    for port in allow:
        cmd += ["--allow", f"{HOST}:{port}"]
    proc = procs.start("roam server", cmd, subprocess_env(), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], READY_LIMIT)
    line = proc.stdout.readline().decode().strip() if ready else ""
    m = re.match(r"listening .*:(\d+)$", line)
    if m is None:
        procs.check_alive()
        raise RuntimeError(f"roam server said {line!r} within {READY_LIMIT:g} s")
    return RoamServer(proc.pid, int(m.group(1)), public_key(server_key), client_key)


def cpu_list(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def task_affinity(pid: int) -> dict[int, set[int]]:
    """The CPU affinity of each thread of `pid`."""
    out: dict[int, set[int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            out[int(task.name)] = os.sched_getaffinity(int(task.name))
    return out


@dataclass
class Competitor:
    proc: subprocess.Popen[bytes]
    setup: str  # where everything runs, for the report


@contextlib.contextmanager
def competing(server_pid: int, limit: float) -> Iterator[Competitor]:
    """The server (all its threads) and a busy-looping Python process pinned to one
    CPU, this process to the others; every affinity put back afterwards."""
    mine = os.sched_getaffinity(0)
    target = max(mine)
    others = mine - {target}
    threads = task_affinity(server_pid)
    # taskset -a: every thread of the server, not only its main one.
    run_ok(["taskset", "-a", "-p", "-c", str(target), str(server_pid)])
    proc: subprocess.Popen[bytes] | None = None
    try:
        if others:
            os.sched_setaffinity(0, others)
        # Not one of `procs`: it ends after its load, and procs.check_alive would
        # then take it for a daemon that died.
        proc = subprocess.Popen(["taskset", "-c", str(target), sys.executable, "-c",
                                 COMPETITOR.format(limit=limit)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        yield Competitor(proc, f"server and a busy loop pinned to CPU {target}, the client "
                               f"to CPU {cpu_list(others) if others else target}")
    finally:
        if proc is not None:
            end(proc)
        os.sched_setaffinity(0, mine)
        for tid, cpus in threads.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)


# ---- one load ----------------------------------------------------------------------


@dataclass
class LoadResult:
    load: str
    title: str
    seconds: float
    samples: int = 0
    median_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    srtt_median_ms: float | None = None
    # Gaps that reached max(stall_floor, stall_rtts x srtt) of their moment: with a
    # standby, each would have been taken for a stall.
    over_threshold: int = 0
    threshold_median_ms: float | None = None
    up_mbps: float | None = None  # 10^6 bytes/s the sink counted, over the load and its drain
    down_mbps: float | None = None
    exact: bool | None = None  # the sink counted every byte sent
    largest: list[dict[str, float]] = field(default_factory=list)  # gap_ms, srtt_ms
    note: str = ""  # why it was not run
    setup: str = ""  # the competitor's pinning
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.note) or (self.samples > 0 and self.exact is True and not self.errors)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def summarize(res: LoadResult, gaps: Gaps) -> None:
    """The figures of `gaps` into `res`."""
    res.samples = len(gaps.gaps)
    if not gaps.gaps:
        return
    ordered = sorted(gaps.gaps)
    res.median_ms = ms(statistics.median(ordered))
    res.p99_ms = ms(percentile(ordered, 99))
    res.p999_ms = ms(percentile(ordered, 99.9))
    res.max_ms = ms(ordered[-1])
    srtts = [s for s in gaps.srtts if not math.isnan(s)]
    res.srtt_median_ms = ms(statistics.median(srtts)) if srtts else None
    res.threshold_median_ms = ms(statistics.median(gaps.thresholds))
    res.over_threshold = sum(1 for g, t in zip(gaps.gaps, gaps.thresholds, strict=True)
                             if g >= t)
    top = sorted(range(len(gaps.gaps)), key=lambda i: gaps.gaps[i], reverse=True)[:LARGEST]
    res.largest = [{"gap_ms": ms(gaps.gaps[i]),
                    "srtt_ms": ms(gaps.srtts[i]) if not math.isnan(gaps.srtts[i]) else -1.0}
                   for i in top]


async def settle(session: Session) -> None:
    """Until nothing is outstanding (bounded): the next load starts from a quiet session."""
    step = 0.01
    for _ in range(int(SETTLE_LIMIT / step)):
        if not session.replay.unacked:
            return
        await asyncio.sleep(step)


async def run_load(name: str, client: Client, watch: AckWatch, sink: int, source: int,
                   seconds: float) -> LoadResult:
    res = LoadResult(name, TITLES[name], seconds)
    driver = client.driver
    if driver is None:
        res.errors.append("no session")
        return res
    session = driver.session
    loop = asyncio.get_running_loop()
    gaps = Gaps()
    watch.session, watch.into = session, gaps
    uploads: list[Upload] = []
    download: Download | None = None
    pacer: asyncio.Task[None] | None = None
    try:
        started = loop.time()
        if name in ("bulk", "mixed", "competitor"):
            uploads.append(Upload(driver, sink, bulk=True))
        if name in ("paced", "mixed"):
            paced = Upload(driver, sink, bulk=False)
            uploads.append(paced)
            pacer = loop.create_task(pace(paced))
        if name == "mixed":
            download = Download(driver, source)
        driver.schedule()
        await asyncio.sleep(seconds)
        for up in uploads:
            up.stop()
        if pacer is not None:
            pacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pacer
        if download is not None:
            download.stop()
            res.down_mbps = round(download.received / (loop.time() - started) / 1e6, 1)
            if download.error:
                res.errors.append(f"download: {download.error}")
        # Every upload's count from the sink, all within one DRAIN_LIMIT.
        try:
            async with asyncio.timeout(DRAIN_LIMIT):
                await asyncio.gather(*(up.done.wait() for up in uploads))
        except TimeoutError:
            res.errors.append(f"the sink's count did not come within {DRAIN_LIMIT:g} s")
        took = loop.time() - started
        res.exact = all(up.counted() == up.sent for up in uploads)
        for up in uploads:
            if up.error:
                res.errors.append(up.error)
            elif up.counted() != up.sent:
                res.errors.append(f"sent {up.sent} bytes, the sink counted {up.counted()}")
        res.up_mbps = round(sum(up.sent for up in uploads) / took / 1e6, 1)
        await settle(session)
    finally:
        watch.into = None
        for up in uploads:
            up.running = False
        if pacer is not None and not pacer.done():
            pacer.cancel()
    summarize(res, gaps)
    return res


# ---- the benchmark -----------------------------------------------------------------


@dataclass
class StallResult:
    seconds: float
    loads: list[LoadResult] = field(default_factory=list)
    stall_floor_ms: float = ms(CONFIG.stall_floor)
    stall_rtts: float = CONFIG.stall_rtts
    largest_p999_ms: float | None = None
    largest_p999_load: str | None = None
    largest_max_ms: float | None = None
    largest_max_load: str | None = None
    transports: int = 0  # the client's transports: 1 unless it had to reconnect
    machine: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.transports == 1 and all(r.ok for r in self.loads)


def overall(res: StallResult) -> None:
    measured = [r for r in res.loads if r.samples]
    if not measured:
        return
    worst = max(measured, key=lambda r: r.p999_ms or 0.0)
    res.largest_p999_ms, res.largest_p999_load = worst.p999_ms, worst.load
    worst = max(measured, key=lambda r: r.max_ms or 0.0)
    res.largest_max_ms, res.largest_max_load = worst.max_ms, worst.load


async def run(loads: list[str], seconds: float, *, tmp: Path | None = None,
              say: Callable[[str], None] = print) -> StallResult:
    """Every load in turn on one session; each bounded by `seconds` plus its drain."""
    res = StallResult(seconds, machine=machine_facts())
    with tempfile.TemporaryDirectory(prefix="roam-stall-", dir=tmp) as d:
        tdir = Path(d)
        procs = Procs(tdir)
        client: Client | None = None
        try:
            sink = start_service(procs, "sink")
            source = start_service(procs, "source")
            server = start_roam_server(procs, tdir, [sink, source])
            # udp=False: no datagram channel here, and the stream is what is measured.
            client = Client(ClientConfig(HOST, server.port, server.key, server.client_key,
                                         CONFIG, udp=False))
            await client.handshake(timeout=10)
            with AckWatch() as watch:
                for name in loads:
                    procs.check_alive()
                    if name == "competitor":
                        if shutil.which("taskset") is None:
                            skipped = LoadResult(name, TITLES[name], seconds,
                                                 note="not run: taskset is missing")
                            res.loads.append(skipped)
                            say(f"{name}: {skipped.note}")
                            continue
                        with competing(server.pid, seconds + DRAIN_LIMIT) as rival:
                            say(f"{name}: {seconds:g} s ({rival.setup})")
                            one = await run_load(name, client, watch, sink, source, seconds)
                            one.setup = rival.setup
                            if rival.proc.poll() is not None:
                                one.errors.append("the busy loop exited early (exit "
                                                  f"{rival.proc.returncode})")
                            res.loads.append(one)
                        continue
                    say(f"{name}: {seconds:g} s")
                    res.loads.append(await run_load(name, client, watch, sink, source,
                                                    seconds))
            res.transports = client.transports
            if client.transports != 1:
                res.errors.append(f"the client used {client.transports} transports: a "
                                  "transport was lost during the run")
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.shutdown()
            procs.close()
    overall(res)
    return res


# ---- output --------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def table(res: StallResult) -> str:
    lines = ["| load | ACK gaps | median ms | p99 ms | p99.9 ms | max ms | srtt median ms "
             "| at or over the threshold | MB/s up / down |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res.loads:
        if r.note:
            lines.append(f"| {r.title} | {r.note} | | | | | | | |")
            continue
        down = f" / {fmt(r.down_mbps)}" if r.down_mbps is not None else ""
        lines.append(f"| {r.title} | {r.samples} | {fmt(r.median_ms)} | {fmt(r.p99_ms)} "
                     f"| {fmt(r.p999_ms)} | {fmt(r.max_ms)} | {fmt(r.srtt_median_ms)} "
                     f"| {r.over_threshold} | {fmt(r.up_mbps)}{down} |")
    return "\n".join(lines)


def findings(res: StallResult) -> list[str]:
    out = []
    if res.largest_p999_ms is not None and res.largest_max_ms is not None:
        out.append(f"- Largest p99.9 of the ACK gap: **{res.largest_p999_ms:.1f} ms** "
                   f"({TITLES[res.largest_p999_load or 'bulk']}); largest gap of all: "
                   f"**{res.largest_max_ms:.1f} ms** ({TITLES[res.largest_max_load or 'bulk']}).")
    total = sum(r.samples for r in res.loads)
    over = sum(r.over_threshold for r in res.loads)
    out.append(f"- The threshold today is max(`stall_floor` {res.stall_floor_ms:g} ms, "
               f"`stall_rtts` {res.stall_rtts:g} x srtt); {over} of {total} gaps reached it "
               "(each would have been taken for a stall, had a standby been there). Times "
               "are the session's own clock, the event loop's: uvloop's counts whole "
               "milliseconds.")
    for r in res.loads:
        if r.setup:
            out.append(f"- {r.title}: {r.setup}.")
        for e in r.errors:
            out.append(f"- {r.title}: {e}")
    out += [f"- {e}" for e in res.errors]
    return out


def render(res: StallResult, argv: list[str]) -> str:
    lines = [table(res), "", *findings(res), "",
             f"- Machine: {machine_line(res.machine)}; {res.machine.get('date', '')}",
             f"- Command: `{shlex.join(['python', 'bench/stall.py', *argv])}`; raw figures "
             "(with each load's ten longest gaps) in the --json file (default "
             "`bench/results/stall.json`)"]
    return "\n".join(lines)


INTRO = """## Stall floor

With a standby transport, a session moves off its active one when data is
outstanding and nothing new was acknowledged for max(`stall_floor`,
`stall_rtts` x srtt) (docs/protocol.md, section 5.2). A healthy peer that
is busy (a GC pause, a long write, its event loop full) acknowledges late now
and then, so the floor must exceed the longest ACK gap a healthy loaded path
shows, or a pause would be taken for a black hole and the session would flap.
`bench/stall.py` measures those gaps on loopback: a real `roam server`
process, roam's `Client` in the benchmark's process, and every time the
server's ACK advances while frames were outstanding, the time since the
previous advance (the quantity the stall check compares), under four loads.

```sh
python bench/stall.py --out docs/performance.md   # 20 s per load (--seconds)
```"""


def write_doc(out: Path, section: str) -> None:
    """Rewrite the bench:stall section of `out`; the "## Stall floor" section with
    its markers goes at the end first if they are not there."""
    text = out.read_text() if out.exists() else ""
    if START not in text or END not in text:
        head = text.rstrip("\n") + "\n\n" if text.strip() else ""
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"{head}{INTRO}\n\n{START}\n{END}\n")
    write_section(out, START, END, section)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per load")
    parser.add_argument("--loads", default=",".join(LOADS),
                        help=f"comma-separated, in order (default: {','.join(LOADS)})")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=None,
                        help="a markdown file whose bench:stall section is rewritten")
    args = parser.parse_args(argv)
    loads = [name.strip() for name in args.loads.split(",") if name.strip()]
    unknown = [name for name in loads if name not in LOADS]
    if unknown or not loads:
        parser.error(f"--loads: unknown {', '.join(unknown) or '(none given)'}; "
                     f"known: {', '.join(LOADS)}")
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS:g}]")

    async def go() -> StallResult:
        # Each load: its seconds, its drain, settling, and the competitor's setup.
        async with asyncio.timeout(len(loads) * (args.seconds + DRAIN_LIMIT + SETTLE_LIMIT
                                                 + 10) + READY_LIMIT + 30):
            return await run(loads, args.seconds)

    try:
        with asyncio.Runner(loop_factory=loop_factory("uvloop")) as runner:
            res = runner.run(go())
    except TimeoutError:
        print("stall.py: the run did not end in time", file=sys.stderr)
        return 2
    section = render(res, argv)
    print(section)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(asdict(res), indent=2) + "\n")
    print(f"results in {args.json}")
    if args.out is not None:
        write_doc(args.out, section)
        print(f"rewrote the bench:stall section of {args.out}")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
