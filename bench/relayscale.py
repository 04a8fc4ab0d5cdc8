"""Ten thousand spliced sessions on one relay: memory, descriptors and an echo across all.

    python bench/relayscale.py [--sessions 10000] [--batch 200] [--timeout 300]
                               [--bytes 64] [--nofile N]
                               [--json bench/results/relayscale.json] [--out docs/benchmarks.md]

Rewrites the `bench:relayscale` section of --out (docs/benchmarks.md).

The relay is a real `roam relay` process on loopback, started with --admit-keys (one
key per session, as many clients would have). Its next hop is a plain TCP echo
service in a process of its own (this script, `_echo`: asyncio, no thread per
connection), reached by the address each header names: no uplink, no roam server.
The load generator is this process (asyncio). For each session it

1. seals a client hop header with roam's own route_headers (roam.relay.route), as a
   client's transport does: the client's key, a server identity (the target) and the
   echo service's address as the last hop;
2. connects to the relay and writes the header and, right behind it, a few bytes (a
   real client's preamble follows its headers the same way, without waiting);
3. reads the relay's reply (OK, with a ticket), then the echo of those bytes.

At most --batch sessions are being opened at once; the headers are sealed before the
clock starts (their stamps stay well within the relay's 120 s window). Once every
session is open and the relay has settled, it reads the relay's VmRSS, open
descriptors and `roam status` (spliced, active), the machine's slab and TCP memory,
then sends --bytes random bytes on every session at once and checks every echo byte
for byte. Then it closes every session and checks that the relay let go of them.

Open files: the relay holds 2 sockets per spliced session (its pipes come from one
pool and only a direction whose destination is behind holds one), so 10,000 sessions
need about 20,100 descriptors; `roam relay` raises its soft limit
to the hard limit it inherits. This script raises its own soft limit to the hard one
and, when it may (root with CAP_SYS_RESOURCE) and the hard limit is too low, the hard
limit too (children inherit it); `--nofile N` gives the relay a limit of N instead,
e.g. the machine's default, to see what happens at it. A relay at its limit leaves
connections in its accept queue: a session not open within 20 s fails, and the opening
stops once --batch (at least 100) sessions failed.

Every load is bounded: connections only to 127.0.0.1, at most --sessions of them, every
phase within --timeout, and every process started is ended through its own Popen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import select
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing roam
sys.path.insert(1, str(ROOT / "bench"))

from benchlib import machine_facts, machine_line, write_section  # noqa: E402
from roam.control.client import request  # noqa: E402
from roam.crypto.keys import (  # noqa: E402
    encode_key,
    generate_private_key,
    public_key,
    write_private_key,
)
from roam.errors import RoamError  # noqa: E402
from roam.relay.hop import REPLY, Proof, Status, decode_reply  # noqa: E402
from roam.relay.route import RelayHop, route_headers  # noqa: E402

HOST = "127.0.0.1"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
RESULTS = ROOT / "bench" / "results" / "relayscale.json"
START, END = "<!-- bench:relayscale:start -->", "<!-- bench:relayscale:end -->"
# What the relay holds per spliced session: two sockets and two pipes of two ends.
FDS_PER_SESSION = 6
SPARE_FDS = 512
# Seconds the relay gets to settle before and after the sessions are opened.
SETTLE = 2.0
# A header is re-sealed when its stamp is older than this (the relay takes 120 s).
STAMP_MAX_AGE_S = 60.0
# Bytes sent right behind each header, as a client's preamble follows its headers.
FIRST_BYTES = 16
PIPE_PROBE = 2000  # pipes made by this script to weigh one in kernel memory
# Descriptors a relay may keep after its sessions ended: empty pipes kept for
# the next session (a pool keeps at most 16).
KEPT_FDS = 32
# One session's opening: a healthy relay answers within milliseconds; one at
# its open-files limit leaves a connection in its accept queue for good.
SESSION_TIMEOUT_S = 20.0
# The opening stops once this many sessions (or --batch, if more) failed.
GIVE_UP_AFTER = 100


# ---- the machine -----------------------------------------------------------------


def raise_nofile(need: int) -> tuple[int, int, int]:
    """This process's open-files limit raised for `need` descriptors (children inherit
    it): the soft limit to the hard one and, for root, the hard one to `need` when it
    is lower (at most fs.nr_open). (hard limit found, soft and hard now)."""
    found = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = [found]
    if found != resource.RLIM_INFINITY and found < need and os.geteuid() == 0:
        nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        wanted.insert(0, min(need, nr_open))  # needs CAP_SYS_RESOURCE, which root may lack
    for limit in wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            break
        except (ValueError, OSError):
            continue
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return found, soft, hard


def rss_kib(pid: int) -> int:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) if m else 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_of(pid: int) -> int:
    """The soft open-files limit of a running process (/proc/PID/limits)."""
    m = re.search(r"^Max open files\s+(\d+)", Path(f"/proc/{pid}/limits").read_text(), re.M)
    return int(m.group(1)) if m else 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slab_kib() -> int:
    """The kernel's slab memory, the whole machine's (/proc/meminfo)."""
    m = re.search(r"^Slab:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return int(m.group(1)) if m else 0


def tcp_sockstat() -> tuple[int, int]:
    """(TCP sockets in use, KiB of TCP buffers) on the whole machine (/proc/net/sockstat)."""
    m = re.search(r"TCP: inuse (\d+).*\bmem (\d+)", Path("/proc/net/sockstat").read_text())
    if m is None:
        return 0, 0
    return int(m.group(1)), int(m.group(2)) * os.sysconf("SC_PAGE_SIZE") // 1024


def pipe_kib() -> float | None:
    """Kernel memory of one empty pipe: PIPE_PROBE pipes made and closed here, weighed by
    the machine's slab (other work on the machine blurs it; None when it went down)."""
    fds: list[int] = []
    before = slab_kib()
    try:
        for _ in range(PIPE_PROBE):
            fds += os.pipe2(os.O_CLOEXEC)
        after = slab_kib()
    finally:
        for fd in fds:
            os.close(fd)
    grown = (after - before) / PIPE_PROBE
    return round(grown, 2) if grown > 0 else None


def pipe_quota() -> dict[str, int]:
    """What an unprivileged user's pipes may take (pipe(7)): past the soft limit, a new
    pipe gets 2 pages instead of 16; root (CAP_SYS_RESOURCE) is not held to it."""
    out = {}
    for name in ("pipe-user-pages-soft", "pipe-user-pages-hard", "pipe-max-size"):
        with contextlib.suppress(OSError, ValueError):
            out[name] = int(Path(f"/proc/sys/fs/{name}").read_text())
    return out


# ---- processes -------------------------------------------------------------------


class Procs:
    """Child processes, each with a log file, each ended through its own Popen."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=ENV,
                                    stdin=subprocess.DEVNULL)
        self.procs.append((name, proc))
        return proc

    def line(self, name: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
        """The next stdout line of `proc`; RuntimeError with its log when none comes."""
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        text = proc.stdout.readline().decode().strip() if ready else ""
        if not text:
            raise RuntimeError(f"{name}: no output within {timeout:g} s (exit {proc.poll()}):"
                               f"\n{self.log(name)[-2000:]}")
        return text

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()


def start_echo(procs: Procs) -> tuple[int, int]:
    proc = procs.start("echo", [sys.executable, str(Path(__file__).resolve()), "_echo"])
    return proc.pid, int(procs.line("echo", proc, 20))


def start_relay(procs: Procs, tmp: Path, admitted: Path, nofile: int | None) -> tuple[
        int, int, bytes]:
    """A `roam relay` process admitting `admitted`; (pid, port, its public key)."""
    key = generate_private_key()
    write_private_key(tmp / "relay.key", key)
    cmd = [sys.executable, "-m", "roam", "relay", "--listen", f"{HOST}:0",
           "--key", str(tmp / "relay.key"), "--admit-keys", str(admitted),
           "--control", str(tmp / "relay.sock")]
    proc = procs.start("relay", cmd)
    if nofile is not None:
        # Soft and hard, whether the relay raised its soft limit yet or not: it ends
        # at `nofile` either way.
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (nofile, nofile))
    line = procs.line("relay", proc, 60)
    m = re.match(r"listening .*:(\d+)$", line)
    if m is None:
        raise RuntimeError(f"relay said {line!r}")
    return proc.pid, int(m.group(1)), public_key(key)


_LOG_KINDS = (
    (re.compile(r"relay: accept failed: (.*)"), "accept failed: {}"),
    (re.compile(r"relay: refused(?: \S+)?: (.*)"), "refused: {}"),
    (re.compile(r"relay: connection from .* ended: (.*)"), "connection ended: {}"),
    (re.compile(r"relay: connection from .* failed"), "connection failed (an exception)"),
    (re.compile(r"(Traceback|Error:.*)"), "{}"),
)


def log_counts(text: str) -> dict[str, int]:
    """What the relay's log says besides its splices, counted by kind (the variable
    parts of a line, such as addresses and key ids, left out)."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        for pattern, kind in _LOG_KINDS:
            if m := pattern.search(line):
                what = re.sub(r"\d+(\.\d+)*|\b[A-Za-z0-9+/]{8}\b", "N", m.group(1)
                              if pattern.groups else "")
                counts[kind.format(what)[:160]] += 1
                break
    return dict(counts.most_common())


def relay_status(tmp: Path) -> dict[str, Any]:
    try:
        status: dict[str, Any] = request(str(tmp / "relay.sock"), "status", timeout=30)
    except (RoamError, OSError) as exc:
        return {"error": str(exc)}
    return status


# ---- the echo service (a process of its own) ---------------------------------------


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close when the peer half-closes


async def echo_main() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_EchoProtocol, HOST, 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    return 0


# ---- the load generator ------------------------------------------------------------


@dataclass
class Session:
    key: bytes
    header: bytes = b""
    sealed_at: float = 0.0
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    open_s: float | None = None


class Generator:
    def __init__(self, relay: RelayHop, echo_port: int, keys: list[bytes]) -> None:
        self.relay = relay
        self.server = f"{HOST}:{echo_port}"
        self.target = os.urandom(32)  # the server identity the headers name
        self.sessions = [Session(k) for k in keys]
        self.failures: Counter[str] = Counter()

    def seal(self, s: Session) -> None:
        s.sealed_at = time.monotonic()
        s.header = route_headers([self.relay], sender_private=s.key, target=self.target,
                                 server=self.server, wall=time.time(),
                                 stamp_ns=time.time_ns(),
                                 proof_for=lambda relay, wall: (Proof.KEY, 0, b""))

    def fail(self, why: str) -> None:
        self.failures[why[:160]] += 1

    async def open_one(self, s: Session, timeout: float) -> bool:
        if time.monotonic() - s.sealed_at > STAMP_MAX_AGE_S:
            self.seal(s)
        first = os.urandom(FIRST_BYTES)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        stage = "before its reply"
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(self.relay.host, self.relay.port)
                s.reader, s.writer = reader, writer
                writer.write(s.header + first)
                reply = await reader.readexactly(REPLY.size)
                decoded = decode_reply(reply)
                if decoded is None:
                    reply += await reader.readexactly(int.from_bytes(reply[5:7], "big"))
                    decoded = decode_reply(reply)
                if decoded is None:
                    raise RuntimeError("the relay's reply ended early")
                status, body, _ = decoded
                if status is not Status.OK:
                    self.fail(f"{status.name}: {body.decode('utf-8', 'replace')}")
                    return False
                stage = "after its OK, before the echo of the first bytes"
                if await reader.readexactly(FIRST_BYTES) != first:
                    self.fail("first bytes came back different")
                    return False
        except TimeoutError:
            self.fail(f"no answer within {timeout:g} s ({stage})")
            return False
        except asyncio.IncompleteReadError:
            self.fail(f"the relay closed the connection {stage}")
            return False
        except (OSError, RoamError, RuntimeError) as exc:
            self.fail(f"{type(exc).__name__}: {exc} ({stage})")
            return False
        s.open_s = loop.time() - t0
        return True

    async def open_all(self, batch: int, timeout: float) -> float:
        """Open every session, `batch` at a time; seconds taken."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(batch)
        started = loop.time()

        async def one(s: Session) -> None:
            async with gate:
                if sum(self.failures.values()) >= max(batch, GIVE_UP_AFTER):
                    self.fail("not tried: the relay had refused or dropped enough already")
                    return
                if not await self.open_one(s, min(timeout, SESSION_TIMEOUT_S)):
                    self.drop(s)

        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(one(s) for s in self.sessions))
        except TimeoutError:
            self.fail("not opened within --timeout")
        return loop.time() - started

    def drop(self, s: Session) -> None:
        if s.writer is not None:
            s.writer.transport.abort()
        s.reader = s.writer = None

    @property
    def open(self) -> list[Session]:
        return [s for s in self.sessions if s.open_s is not None and s.writer is not None]

    async def echo_round(self, nbytes: int, timeout: float) -> tuple[int, float]:
        """`nbytes` random bytes on every open session at once; (byte-exact echoes,
        seconds until the last came back)."""
        loop = asyncio.get_running_loop()
        live = self.open
        payloads = [os.urandom(nbytes) for _ in live]
        started = loop.time()
        for s, data in zip(live, payloads, strict=True):
            assert s.writer is not None
            s.writer.write(data)

        async def back(s: Session, data: bytes) -> bool:
            assert s.reader is not None
            try:
                return await s.reader.readexactly(len(data)) == data
            except (OSError, asyncio.IncompleteReadError):
                return False

        try:
            async with asyncio.timeout(timeout):
                exact = sum(await asyncio.gather(*(back(s, d) for s, d in
                                                   zip(live, payloads, strict=True))))
        except TimeoutError:
            exact = 0
        return exact, loop.time() - started

    async def close_all(self) -> None:
        for s in self.sessions:
            if s.writer is not None:
                s.writer.close()
        for s in self.sessions:
            if s.writer is not None:
                with contextlib.suppress(OSError):
                    await s.writer.wait_closed()
            s.reader = s.writer = None


# ---- the benchmark -----------------------------------------------------------------


@dataclass
class RelayScaleResult:
    sessions: int
    batch: int
    echo_bytes: int
    opened: int = 0
    open_seconds: float | None = None
    open_p50_ms: float | None = None
    open_p99_ms: float | None = None
    open_failures: dict[str, int] = field(default_factory=dict)
    seal_seconds: float | None = None  # sealing every header (before the clock)
    relay_nofile: int = 0  # the relay's open-files limit
    nofile_found: int = 0  # the hard limit this script found
    relay_rss_before_kib: int = 0
    relay_rss_after_kib: int = 0
    kib_per_session: float | None = None
    relay_fds_before: int = 0
    relay_fds_after: int = 0
    fds_per_session: float | None = None
    relay_capacity: int | None = None  # sessions its open-files limit allows, as measured
    relay_cpu_open_s: float | None = None  # CPU the relay used while opening
    relay_status: dict[str, Any] = field(default_factory=dict)
    slab_kib_per_session: float | None = None  # whole machine, every end of a session
    tcp_sockets_added: int = 0
    tcp_buffers_kib_after: int = 0
    pipe_kib: float | None = None  # one empty pipe, weighed separately
    pipe_quota: dict[str, int] = field(default_factory=dict)
    echo_exact: int = 0
    echo_seconds: float | None = None
    relay_fds_closed: int | None = None  # after every session closed
    relay_active_closed: int | None = None
    relay_log: dict[str, int] = field(default_factory=dict)  # log_counts of its log
    machine: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.opened == self.sessions and self.echo_exact == self.sessions


async def run(sessions: int, *, batch: int = 200, nbytes: int = 64, timeout: float = 300.0,
              nofile: int | None = None, tmp: Path | None = None,
              say: Any = print) -> RelayScaleResult:
    """The whole benchmark; every phase is bounded by `timeout` (the opening) or a
    fraction of it, and what did not happen within it is reported as such."""
    if sessions < 1 or not 1 <= batch <= 1024:
        raise ValueError("--sessions must be positive and --batch 1..1024 (the relay's "
                         "listen backlog is 1024)")
    loop = asyncio.get_running_loop()
    began = loop.time()
    found, _, hard = raise_nofile(max(FDS_PER_SESSION * sessions, sessions) + SPARE_FDS)
    res = RelayScaleResult(sessions, batch, nbytes, nofile_found=found,
                           pipe_quota=pipe_quota(), machine=machine_facts())
    if hard != resource.RLIM_INFINITY and hard < sessions + SPARE_FDS:
        raise SystemExit(f"relayscale.py: this process needs about {sessions + SPARE_FDS} "
                         f"open files and may have {hard} (ulimit -Hn; as root this script "
                         "raises it): use fewer --sessions")
    res.pipe_kib = pipe_kib()
    with tempfile.TemporaryDirectory(prefix="roam-relayscale-", dir=tmp) as d:
        tdir = Path(d)
        procs = Procs(tdir)
        gen: Generator | None = None
        try:
            keys = [generate_private_key() for _ in range(sessions)]
            admitted = tdir / "admitted"
            admitted.write_text("".join(f"{encode_key(public_key(k))} unit{i}\n"
                                        for i, k in enumerate(keys)))
            _, echo_port = start_echo(procs)
            relay_pid, relay_port, relay_pub = start_relay(procs, tdir, admitted, nofile)
            res.relay_nofile = nofile_of(relay_pid)
            gen = Generator(RelayHop("r1", HOST, relay_port, relay_pub), echo_port, keys)
            sealing = loop.time()
            for s in gen.sessions:
                gen.seal(s)
            res.seal_seconds = round(loop.time() - sealing, 2)
            await asyncio.sleep(SETTLE)
            res.relay_rss_before_kib = rss_kib(relay_pid)
            res.relay_fds_before = fd_count(relay_pid)
            slab_before, (tcp_before, _) = slab_kib(), tcp_sockstat()
            cpu_before = cpu_seconds(relay_pid)
            say(f"opening {sessions} sessions through the relay ({batch} at a time; its "
                f"open-files limit {res.relay_nofile})")
            res.open_seconds = round(await gen.open_all(batch, timeout), 2)
            res.relay_cpu_open_s = round(cpu_seconds(relay_pid) - cpu_before, 2)
            live = gen.open
            res.opened = len(live)
            res.open_failures = dict(gen.failures.most_common())
            times = sorted(s.open_s for s in live if s.open_s is not None)
            if times:
                res.open_p50_ms = round(statistics.median(times) * 1e3, 2)
                res.open_p99_ms = round(times[min(len(times) - 1, int(len(times) * 0.99))]
                                        * 1e3, 2)
            say(f"opened {res.opened} in {res.open_seconds} s; settling")
            await asyncio.sleep(SETTLE)
            res.relay_rss_after_kib = rss_kib(relay_pid)
            res.relay_fds_after = fd_count(relay_pid)
            tcp_after, res.tcp_buffers_kib_after = tcp_sockstat()
            res.tcp_sockets_added = tcp_after - tcp_before
            if res.opened:
                res.kib_per_session = round(
                    (res.relay_rss_after_kib - res.relay_rss_before_kib) / res.opened, 2)
                res.fds_per_session = round(
                    (res.relay_fds_after - res.relay_fds_before) / res.opened, 2)
                res.slab_kib_per_session = round((slab_kib() - slab_before) / res.opened, 2)
            res.relay_capacity = (res.relay_nofile - res.relay_fds_before) // max(
                1, round(res.fds_per_session or FDS_PER_SESSION))
            if res.relay_fds_after < res.relay_nofile - 4:
                res.relay_status = await loop.run_in_executor(None, relay_status, tdir)
            else:
                # Its control socket could not accept either (and asyncio logs
                # about a hundred tracebacks per try): not asked.
                res.relay_status = {"error": "not asked: the relay is at its open-files limit"}
            say(f"echo of {nbytes} bytes on {res.opened} sessions at once")
            res.echo_exact, echo_s = await gen.echo_round(nbytes, timeout / 5)
            res.echo_seconds = round(echo_s, 3)
            await gen.close_all()
            # The relay sees each end of stream, passes it on and lets go.
            deadline = loop.time() + timeout / 5
            while loop.time() < deadline:
                if fd_count(relay_pid) < res.relay_nofile - 4:
                    status = await loop.run_in_executor(None, relay_status, tdir)
                    res.relay_active_closed = status.get("active")
                    # Connections the relay took from its accept queue late (their
                    # clients gave up) end too.
                    if (res.relay_active_closed == 0
                            and fd_count(relay_pid) <= res.relay_fds_before + KEPT_FDS):
                        break
                await asyncio.sleep(0.5)
            res.relay_fds_closed = fd_count(relay_pid)
        finally:
            if gen is not None:
                for s in gen.sessions:
                    gen.drop(s)
            res.relay_log = log_counts(procs.log("relay"))
            procs.close()
    res.seconds = round(loop.time() - began, 1)
    return res


# ---- report ------------------------------------------------------------------------


def table(res: RelayScaleResult) -> str:
    st = res.relay_status
    rows = [
        ("sessions opened", f"{res.opened} of {res.sessions} in {res.open_seconds} s "
                            f"({res.batch} at a time; p50 {res.open_p50_ms} ms, "
                            f"p99 {res.open_p99_ms} ms each)"),
        ("relay says", f"{st['active']} active, {st['spliced']} spliced"
                       + (f", {st['pipes']} pipes open" if "pipes" in st else "")
                       if "active" in st else st.get("error", "?")),
        ("relay RSS before / after", f"{res.relay_rss_before_kib} / "
                                     f"{res.relay_rss_after_kib} KiB"),
        ("relay KiB per spliced session", f"{res.kib_per_session}"),
        ("relay open files before / after", f"{res.relay_fds_before} / {res.relay_fds_after} "
                                            f"({res.fds_per_session} per session; limit "
                                            f"{res.relay_nofile}, room for about "
                                            f"{res.relay_capacity} sessions)"),
        ("relay CPU while opening", f"{res.relay_cpu_open_s} s"),
        ("kernel slab KiB per session", f"{res.slab_kib_per_session} (whole machine: every "
                                        "end of a session)"),
        ("one empty pipe, kernel KiB", f"{res.pipe_kib}"),
        ("TCP sockets added / buffers", f"{res.tcp_sockets_added} / "
                                        f"{res.tcp_buffers_kib_after} KiB (whole machine)"),
        ("echo round (byte-exact)", f"{res.echo_exact} of {res.opened}, {res.echo_bytes} bytes "
                                    f"each, all back in {res.echo_seconds} s"),
        ("after closing", f"{res.relay_active_closed} active, {res.relay_fds_closed} open "
                          "files"),
    ]
    if res.open_failures:
        rows.append(("failures", "; ".join(f"{n} x {why}" for why, n in
                                           list(res.open_failures.items())[:4])))
    if res.relay_log:
        rows.append(("relay log", "; ".join(f"{n} x {why}" for why, n in
                                            list(res.relay_log.items())[:4])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def render(res: RelayScaleResult, argv: list[str]) -> str:
    lines = ["## Ten thousand spliced sessions on one relay", "",
             "| measure | value |", "|---|---|"]
    lines += [f"| {k.strip()} | {v.strip().replace('|', '/')} |" for k, v in
              (line.strip().split("  ", 1) for line in table(res).splitlines())]
    lines.append("")
    held = "" if res.opened == res.sessions else " (not all of them)"
    lines.append(f"- One relay process held **{res.opened} of {res.sessions}** spliced "
                 f"sessions at once{held}: **{res.kib_per_session} KiB** of its RSS and "
                 f"{res.fds_per_session} open files per session; an echo across all of them "
                 f"came back byte-exact on {res.echo_exact}.")
    quota = res.pipe_quota.get("pipe-user-pages-soft")
    m = res.machine
    lines += [
        "", "The relay is a real `roam relay` process (asyncio, splice(2) through pipes from "
        "one pool) with --admit-keys listing one key per session; its next hop is a plain "
        "TCP echo service in a process of its own, dialled at the address each header "
        "names. The load generator is one asyncio process: for each session it seals a "
        "client hop header with roam.relay.route.route_headers (the session's own key), "
        f"writes it and {FIRST_BYTES} bytes right behind it, reads the relay's OK and the "
        "echo of those bytes; then, with every session open, it sends "
        f"{res.echo_bytes} random bytes on each at once and checks every echo. Memory: the "
        "relay's VmRSS before and after opening, over the sessions opened. Kernel memory "
        "is not in the RSS: the slab figure is the whole machine's /proc/meminfo Slab "
        "before and after (every end of a session, blurred by other work on the machine); "
        "an empty pipe holds no page, a pipe holding bytes up to 16 (64 KiB). Open files: "
        "a spliced session holds 2 sockets in the relay; a pipe is borrowed from the pool "
        "only while a direction's destination is behind (about 20,100 descriptors for "
        "10,000 sessions); "
        f"the relay ran with a limit of {res.relay_nofile} (the hard limit this script found "
        f"was {res.nofile_found}; as root with CAP_SYS_RESOURCE it raises it for its "
        "children). At its limit a relay cannot accept (connections wait in its accept "
        "queue, its control socket too), answers BUSY when it cannot dial onward, and "
        "moves a read through Python when it cannot make a pipe."
        + (f" Pipes: an unprivileged relay's pipes past fs.pipe-user-pages-soft ({quota} "
           "pages: 1,024 default pipes) get 2 pages (8 KiB) instead of 16; root is not held "
           "to it." if quota else ""),
        "",
        f"- Date: {m.get('date')}; {machine_line(m)}",
        f"- Command: `{shlex.join(['python', 'bench/relayscale.py', *argv])}`"]
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if argv[:1] == ["_echo"]:
        return asyncio.run(echo_main())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=200,
                        help="sessions being opened at once (the relay's backlog is 1024)")
    parser.add_argument("--bytes", type=int, default=64, help="bytes per echo, per session")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds the opening may take; the echo round and the closing "
                             "get a fifth each")
    parser.add_argument("--nofile", type=int, default=None,
                        help="the relay's open-files limit (default: inherited, raised by "
                             "this script as root to what --sessions needs)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                        help="the markdown file whose bench:relayscale section is rewritten")
    args = parser.parse_args(argv)
    if args.sessions < 1 or not 1 <= args.batch <= 1024 or args.bytes < 1:
        parser.error("--sessions and --bytes must be positive, --batch 1..1024")

    async def go() -> RelayScaleResult:
        async with asyncio.timeout(args.timeout * 1.6 + 120):
            return await run(args.sessions, batch=args.batch, nbytes=args.bytes,
                             timeout=args.timeout, nofile=args.nofile)

    try:
        res = asyncio.run(go())
    except TimeoutError:
        print(f"relayscale.py: not done within --timeout {args.timeout:g} s", file=sys.stderr)
        return 2
    print(table(res))
    write_section(args.out, START, END, render(res, argv))
    print(f"rewrote the bench:relayscale section of {args.out}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(asdict(res), indent=2) + "\n")
    print(f"results in {args.json}")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
