"""Many sessions on one server: memory per idle session, and a mass hard handover.

    python bench/scale.py [--sessions 10000] [--handover 1000] [--batch 200]
                          [--workers 1] [--bytes 4096] [--timeout 300]
                          [--json bench/results/scale.json]
    python bench/scale.py --breakdown [--sessions 1000]   # where a session's memory goes

Without --breakdown it also rewrites the `bench:scale` section of --out
(docs/benchmarks.md) and draws docs/img/scale-resume.png.

The server is a real `roam server` process on loopback (default settings, UDP on),
allowed to reach an echo service (`bench/servers.py echo`). The load generator is
this process: one `roam.transport.client.Client` per session, each with a key of
its own (as many mobile units would have), opened at most `--batch` handshakes at
a time (the server answers BUSY beyond MAX_HANDSHAKES). `--workers W` moves the
idle sessions beyond the handover set into W-1 more processes of this script.

1. Memory: the server's VmRSS before and after opening the sessions, over the
   number opened: KiB per idle session (kernel socket buffers are not in it;
   /proc/net/sockstat's TCP pages are reported beside it).
2. Handover: on `--handover` of those sessions a channel to the echo service,
   some bytes echoed byte-exact; then more bytes sent and, in the same instant,
   every one of those transports reset (SO_LINGER 0, then close: an RST, as a
   dying path or a cut proxy gives). Each client's own reconnect loop resumes
   the session (a hard handover: `on_handover` reports it). Measured: time from
   the reset until every session resumed, until every in-flight echo came back
   byte-exact, and a third round of bytes echoed byte-exact afterwards.

Generator choices, both to keep the generator from being what is measured:
- `udp=False`: idle sessions have no datagram channels, and a UDP socket per
  session would double the generator's sockets for nothing. The server keeps
  its UDP listener (one socket for all sessions).
- The generator's sessions ping every GENERATOR_KEEPALIVE seconds instead of
  every second: the server still pings each session (every second while it
  carries data, every 10 s once idle: its defaults) and the clients answer, so
  both sides see traffic and no dead timer fires.

The idle CPU and the mass handover are measured once every session is idle
(`SessionConfig.idle_after` after the last one opened), as a server's
sessions mostly are.

Results go to bench/results/scale.json and a short table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import platform
import re
import resource
import select
import shlex
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing roam
sys.path.insert(1, str(ROOT / "bench"))

import plots  # noqa: E402
from benchlib import write_section  # noqa: E402
from roam.core.session import SessionConfig  # noqa: E402
from roam.core.states import SessionState  # noqa: E402
from roam.crypto.keys import (  # noqa: E402
    encode_key,
    generate_private_key,
    public_key,
    write_private_key,
)
from roam.errors import HandshakeError, TransportError  # noqa: E402
from roam.transport.client import Client, ClientConfig, HandoverRecord  # noqa: E402
from roam.transport.driver import SessionDriver  # noqa: E402

HOST = "127.0.0.1"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
RESULTS = ROOT / "bench" / "results" / "scale.json"
START, END = "<!-- bench:scale:start -->", "<!-- bench:scale:end -->"
# See the module docstring: the server's pings keep both sides' timers fed.
GENERATOR_KEEPALIVE = 30.0
# Handshake attempts per session: BUSY and a slow server are retried.
OPEN_ATTEMPTS = 5
# Idle time after opening, so the RSS is read with every session settled.
SETTLE = 2.0
# A session is idle (slow keepalive) once it carried no reliable frame for this
# long; the idle CPU and the mass handover are measured after it.
IDLE_AFTER = SessionConfig().idle_after
# Seconds over which the CPU of idle sessions is measured.
IDLE_CPU_WINDOW = 3.0

log = logging.getLogger("scale")


# ---- limits and processes ------------------------------------------------------


def raise_nofile(need: int) -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); clear error if short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(f"scale.py: needs about {need} file descriptors per process, the hard "
                         f"limit is {hard}: raise it (ulimit -Hn, limits.conf) or use fewer "
                         "--sessions / more --workers")
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int | None = None) -> int:
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    m = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(m.group(1)) if m else 0


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tcp_kernel_kib() -> int:
    """Pages the kernel charges to TCP sockets now (/proc/net/sockstat), in KiB."""
    m = re.search(r"TCP:.*\bmem (\d+)", Path("/proc/net/sockstat").read_text())
    return int(m.group(1)) * os.sysconf("SC_PAGE_SIZE") // 1024 if m else 0


class Procs:
    """Child processes, each with a log file, each ended through its own Popen."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], *, stdin: bool = False) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=ENV,
                                    stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self.procs.append((name, proc))
        return proc

    def line(self, name: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
        """The next stdout line of `proc`; RuntimeError with its log when none comes."""
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        text = proc.stdout.readline().decode().strip() if ready else ""
        if not text:
            tail = (self.tmp / f"{name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name}: no output within {timeout:g} s "
                               f"(exit {proc.poll()}):\n{tail}")
        return text

    def close(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            for pipe in (proc.stdout, proc.stdin):
                if pipe is not None:
                    pipe.close()


@dataclass
class Keys:
    """The server's key and one client key per session, in files for the processes."""

    server: Path
    server_pub: bytes
    clients: Path  # one base64 private key per line (this script's own format)
    authorized: Path

    @classmethod
    def make(cls, d: Path, n: int) -> Keys:
        skey = generate_private_key()
        write_private_key(d / "server.key", skey)
        privs = [generate_private_key() for _ in range(n)]
        (d / "clients").write_text("".join(encode_key(k) + "\n" for k in privs))
        (d / "authorized_keys").write_text(
            "".join(f"{encode_key(public_key(k))} unit{i}\n" for i, k in enumerate(privs)))
        return cls(d / "server.key", public_key(skey), d / "clients", d / "authorized_keys")


def load_client_keys(path: Path, first: int, count: int) -> list[bytes]:
    lines = path.read_text().split()
    return [base64.b64decode(line) for line in lines[first:first + count]]


def start_echo(procs: Procs) -> int:
    proc = procs.start("echo", [sys.executable, str(ROOT / "bench" / "servers.py"), "echo",
                                "--port", "0"])
    return int(procs.line("echo", proc, 10))


def start_server(procs: Procs, keys: Keys, echo_port: int, tmp: Path) -> tuple[int, int]:
    """A `roam server` process with default settings; (pid, port)."""
    cmd = [sys.executable, "-m", "roam", "server", "--listen", f"{HOST}:0",
           "--key", str(keys.server), "--authorized-keys", str(keys.authorized),
           "--allow", f"{HOST}:{echo_port}", "--control", str(tmp / "server.sock"),
           "--log-level", "warning"]
    proc = procs.start("server", cmd)
    line = procs.line("server", proc, 60)
    m = re.match(r"listening .*:(\d+)$", line)
    if m is None:
        raise RuntimeError(f"server said {line!r}")
    return proc.pid, int(m.group(1))


def count_busy(tdir: Path) -> int:
    """Transports the server refused as BUSY so far, from its log."""
    text = (tdir / "server.log").read_text(errors="replace")
    # The server logs one line a second with the count since its last one;
    # refusals after the last line are not in it yet.
    return sum(int(n) for n in re.findall(r"(\d+) transports refused since", text))


# ---- the load generator ----------------------------------------------------------


class Echo:
    """One channel to the echo service: what was sent, what came back."""

    def __init__(self, driver: SessionDriver, host: str, port: int) -> None:
        self.driver = driver
        self.cid: int | None = driver.session.open_channel(host, port)
        self.sent = bytearray()
        self.got = bytearray()
        self.ended: str | None = None
        self._waiter: asyncio.Future[None] | None = None
        driver.add_app(self)

    def send(self, data: bytes) -> None:
        if self.cid is not None:
            self.sent += data
            self.driver.session.send(self.cid, data)
            self.driver.flush()

    async def echoed(self) -> bool:
        """Wait until as many bytes came back as were sent; True when they are the same."""
        while len(self.got) < len(self.sent) and self.ended is None:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.got == self.sent

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # ChannelApp
    def deliver(self, data: bytes) -> None:
        self.got += data
        if self.cid is not None:
            self.driver.session.consumed(self.cid, len(data))
        if len(self.got) >= len(self.sent):
            self._wake()

    def end(self) -> None:
        self._gone("EOF from the echo service")

    def finish(self) -> None:
        self._gone("channel closed")

    def abort(self) -> None:
        self._gone("channel reset")

    def _gone(self, why: str) -> None:
        self.ended = why
        self._wake()


@dataclass
class Generator:
    host: str
    port: int
    server_pub: bytes
    keys: list[bytes]
    batch: int = 200
    clients: list[Client] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    retries: int = 0

    def config(self, key: bytes) -> ClientConfig:
        return ClientConfig(self.host, self.port, self.server_pub, key,
                            SessionConfig(keepalive_interval=GENERATOR_KEEPALIVE), udp=False)

    async def open(self) -> float:
        """Open one session per key, `batch` handshakes at a time; seconds taken."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        gate = asyncio.Semaphore(self.batch)

        async def one(key: bytes) -> None:
            async with gate:
                client = Client(self.config(key))
                for attempt in range(OPEN_ATTEMPTS):
                    try:
                        await client.handshake(timeout=30)
                        self.clients.append(client)
                        return
                    except (HandshakeError, TransportError) as exc:
                        why = str(exc)
                        if attempt == OPEN_ATTEMPTS - 1:
                            self.failures[why[:120]] += 1
                            return
                        self.retries += 1
                        await asyncio.sleep(0.1 * (attempt + 1))

        await asyncio.gather(*(one(k) for k in self.keys))
        return loop.time() - started

    def stop(self) -> None:
        for client in self.clients:
            client.stop()


@dataclass
class HandoverResult:
    sessions: int
    bytes_per_round: int
    channels_opened_exact: int = 0
    resumed: int = 0
    all_resumed_s: float | None = None
    resume_p50_s: float | None = None
    resume_p99_s: float | None = None
    in_flight_exact: int = 0
    all_in_flight_echoed_s: float | None = None
    after_exact: int = 0
    new_sessions: int = 0  # a resume that ended in a new handshake (channels lost)
    errors: list[str] = field(default_factory=list)
    # Seconds from the reset to each session's resume, sorted (for the figure).
    resume_times_s: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        n = self.sessions
        return (self.resumed == n and self.in_flight_exact == n and self.after_exact == n
                and self.channels_opened_exact == n and self.new_sessions == 0)


async def _all_echoed(echoes: list[Echo], timeout: float) -> int:
    """How many channels echoed byte-exact within `timeout` (the rest count as failed)."""
    async def one(e: Echo) -> bool:
        try:
            return await asyncio.wait_for(e.echoed(), timeout)
        except TimeoutError:
            return False

    return sum(await asyncio.gather(*(one(e) for e in echoes)))


def reset_transport(client: Client) -> bool:
    """Reset the client's transport as a dying path would: RST, no FIN."""
    driver = client.driver
    proto = driver.proto if driver is not None else None
    if proto is None or proto.transport is None:
        return False
    sock = proto.transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    proto.transport.abort()
    return True


async def mass_handover(clients: list[Client], echo_port: int, nbytes: int,
                        timeout: float) -> HandoverResult:
    """Channels on `clients`, a byte-exact echo, a reset of every transport with bytes
    in flight, and the time until every session resumed and echoed byte-exact."""
    loop = asyncio.get_running_loop()
    res = HandoverResult(len(clients), nbytes)
    drivers = [c.driver for c in clients]
    echoes = [Echo(d, HOST, echo_port) for d in drivers if d is not None]
    for e in echoes:
        e.send(os.urandom(nbytes))
    res.channels_opened_exact = await _all_echoed(echoes, timeout)

    resumed_at: dict[int, float] = {}
    done = asyncio.Event()
    for i, client in enumerate(clients):
        def record(r: HandoverRecord, i: int = i) -> None:
            resumed_at.setdefault(i, loop.time())
            if len(resumed_at) == len(clients):
                done.set()
        client.on_handover = record

    # Bytes in flight, then every transport reset in the same loop iteration.
    for e in echoes:
        e.send(os.urandom(nbytes))
    t0 = loop.time()
    for client in clients:
        if not reset_transport(client):
            res.errors.append("a transport was already gone before the reset")

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout)
    times = sorted(t - t0 for t in resumed_at.values())
    res.resume_times_s = [round(t, 4) for t in times]
    res.resumed = len(times)
    if times:
        res.resume_p50_s = round(statistics.median(times), 3)
        res.resume_p99_s = round(times[min(len(times) - 1, int(len(times) * 0.99))], 3)
    if res.resumed == len(clients):
        res.all_resumed_s = round(times[-1], 3)
    res.new_sessions = sum(1 for c, d in zip(clients, drivers, strict=True) if c.driver is not d)
    res.in_flight_exact = await _all_echoed(echoes, timeout)
    if res.in_flight_exact == len(echoes):
        res.all_in_flight_echoed_s = round(loop.time() - t0, 3)
    for e in echoes:
        e.send(os.urandom(nbytes))
    res.after_exact = await _all_echoed(echoes, timeout)
    attached = sum(1 for c in clients
                   if c.driver is not None and c.driver.session.state is SessionState.ATTACHED)
    if attached != len(clients):
        res.errors.append(f"{len(clients) - attached} sessions not ATTACHED at the end")
    for e in echoes:
        if e.ended is not None:
            res.errors.append(f"channel {e.cid}: {e.ended}")
            break
    return res


# ---- worker processes (idle sessions beyond the handover set) -------------------


async def worker_main(args: argparse.Namespace) -> int:
    raise_nofile(args.count + 100)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    gen = Generator(HOST, args.port, base64.b64decode(args.server_pub),
                    load_client_keys(Path(args.keys), args.first, args.count), args.batch)
    seconds = await gen.open()
    print(json.dumps({"opened": len(gen.clients), "seconds": round(seconds, 2),
                      "retries": gen.retries, "failures": dict(gen.failures),
                      "rss_kib": rss_kib()}), flush=True)
    # Hold the sessions until the coordinator closes our stdin.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    gen.stop()
    return 0


def spawn_workers(procs: Procs, keys: Keys, port: int, first: int, total: int, workers: int,
                  batch: int) -> list[subprocess.Popen[bytes]]:
    out = []
    share, extra = divmod(total, workers)
    at = first
    for w in range(workers):
        count = share + (1 if w < extra else 0)
        if count == 0:
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "_worker", "--port", str(port),
               "--server-pub", encode_key(keys.server_pub), "--keys", str(keys.clients),
               "--first", str(at), "--count", str(count),
               "--batch", str(max(1, batch // workers))]
        out.append(procs.start(f"worker{w}", cmd, stdin=True))
        at += count
    return out


# ---- the benchmark ---------------------------------------------------------------


@dataclass
class ScaleResult:
    sessions: int
    opened: int = 0
    open_seconds: float = 0.0
    open_retries: int = 0
    open_failures: dict[str, int] = field(default_factory=dict)
    server_rss_before_kib: int = 0
    server_rss_after_kib: int = 0
    kib_per_session: float | None = None
    tcp_kernel_kib_per_session: float | None = None
    generator_kib_per_session: float | None = None
    # CPU the server spends on idle sessions (its keepalives), as % of one CPU.
    server_idle_cpu_percent: float | None = None
    generator_idle_cpu_percent: float | None = None
    # Transports the server answered BUSY (MAX_HANDSHAKES), while opening and resuming.
    busy_while_opening: int = 0
    busy_while_resuming: int = 0
    handover: HandoverResult | None = None
    server_rss_after_handover_kib: int = 0
    workers: int = 1
    machine: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def machine_facts() -> dict[str, Any]:
    return {"python": platform.python_version(), "kernel": platform.release(),
            "cpus": os.cpu_count(), "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            # Other work on the machine takes CPU from the server and the generator.
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d")}


async def run(sessions: int, handover: int, *, batch: int = 200, workers: int = 1,
              nbytes: int = 4096, timeout: float = 120.0, tmp: Path | None = None,
              say: Any = print, idle_after: float = IDLE_AFTER,
              idle_cpu_window: float = IDLE_CPU_WINDOW) -> ScaleResult:
    """The whole benchmark. `timeout` bounds the opening, and each waiting phase of
    the handover gets a fifth of it: a phase that runs out is reported as such (the
    sessions or echoes missing), so an overloaded server still gives a result.
    `idle_after` and `idle_cpu_window` are for the smoke test, which checks the
    run end to end and not the figures: with less than the server's own
    idle_after its sessions are not idle yet when the idle CPU is taken."""
    if handover > sessions:
        raise ValueError("--handover cannot exceed --sessions")
    own = sessions if workers <= 1 else handover
    raise_nofile(own + handover + 200)
    loop = asyncio.get_running_loop()
    began = loop.time()
    res = ScaleResult(sessions, workers=max(1, workers), machine=machine_facts())
    with tempfile.TemporaryDirectory(prefix="roam-scale-", dir=tmp) as d:
        tdir = Path(d)
        procs = Procs(tdir)
        gen: Generator | None = None
        spawned: list[subprocess.Popen[bytes]] = []
        try:
            keys = Keys.make(tdir, sessions)
            echo_port = start_echo(procs)
            server_pid, port = start_server(procs, keys, echo_port, tdir)
            await asyncio.sleep(0.5)
            res.server_rss_before_kib = rss_kib(server_pid)
            tcp_before = tcp_kernel_kib()
            gen_before = rss_kib()
            gen = Generator(HOST, port, keys.server_pub,
                            load_client_keys(keys.clients, 0, own), batch)
            say(f"opening {sessions} sessions ({own} here"
                + (f", {sessions - own} in {workers - 1} worker processes)" if own < sessions
                   else ")"))
            if own < sessions:
                spawned = spawn_workers(procs, keys, port, own, sessions - own, workers - 1,
                                        batch)
            opening = loop.time()
            try:
                async with asyncio.timeout(timeout):
                    await gen.open()
            except TimeoutError:
                res.open_failures["not opened within --timeout"] = own - len(gen.clients)
            res.opened = len(gen.clients)
            res.open_retries = gen.retries
            res.open_failures = dict(gen.failures)
            if own:
                res.generator_kib_per_session = round((rss_kib() - gen_before) / own, 2)
            for w, proc in enumerate(spawned):
                report = json.loads(await loop.run_in_executor(
                    None, procs.line, f"worker{w}", proc, timeout))
                res.opened += report["opened"]
                res.open_retries += report["retries"]
                for why, n in report["failures"].items():
                    res.open_failures[why] = res.open_failures.get(why, 0) + n
            opened = loop.time()
            res.open_seconds = round(opened - opening, 2)
            res.busy_while_opening = count_busy(tdir)
            await asyncio.sleep(SETTLE)
            res.server_rss_after_kib = rss_kib(server_pid)
            # Every session idle, as a server's sessions mostly are.
            await asyncio.sleep(max(0.0, opened + idle_after + 1.0 - loop.time()))
            cpu0, gcpu0, t0 = cpu_seconds(server_pid), cpu_seconds(), loop.time()
            await asyncio.sleep(idle_cpu_window)
            elapsed = loop.time() - t0
            res.server_idle_cpu_percent = round(
                100 * (cpu_seconds(server_pid) - cpu0) / elapsed, 1)
            res.generator_idle_cpu_percent = round(100 * (cpu_seconds() - gcpu0) / elapsed, 1)
            if res.opened:
                res.kib_per_session = round(
                    (res.server_rss_after_kib - res.server_rss_before_kib) / res.opened, 2)
                res.tcp_kernel_kib_per_session = round(
                    (tcp_kernel_kib() - tcp_before) / res.opened, 2)
            say(f"{res.opened} sessions open in {res.open_seconds} s: server RSS "
                f"{res.server_rss_before_kib} -> {res.server_rss_after_kib} KiB, "
                f"{res.kib_per_session} KiB per session")
            if handover:
                say(f"hard handover of {handover} sessions at once")
                res.handover = await mass_handover(gen.clients[:handover], echo_port, nbytes,
                                                   max(10.0, timeout / 5))
                res.server_rss_after_handover_kib = rss_kib(server_pid)
                res.busy_while_resuming = count_busy(tdir) - res.busy_while_opening
        finally:
            if gen is not None:
                gen.stop()
            for proc in spawned:
                if proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
            procs.close()
    res.seconds = round(loop.time() - began, 1)
    return res


def table(res: ScaleResult) -> str:
    rows = [
        ("sessions opened", f"{res.opened} of {res.sessions} in {res.open_seconds} s "
                            f"({res.open_retries} retried)"),
        ("server RSS before / after", f"{res.server_rss_before_kib} / "
                                      f"{res.server_rss_after_kib} KiB"),
        ("server KiB per idle session", f"{res.kib_per_session}  (aim: <= 16)"),
        ("kernel TCP KiB per session", f"{res.tcp_kernel_kib_per_session} (both ends; not RSS)"),
        ("generator KiB per session", f"{res.generator_kib_per_session}"),
        ("CPU while idle", f"server {res.server_idle_cpu_percent} %, generator "
                           f"{res.generator_idle_cpu_percent} % of one CPU"),
        ("BUSY answers (at least)", f"{res.busy_while_opening} opening, "
                                    f"{res.busy_while_resuming} resuming"),
    ]
    h = res.handover
    if h is not None:
        rows += [
            ("handover sessions", f"{h.sessions}, {h.bytes_per_round} bytes per round"),
            ("echo before (byte-exact)", f"{h.channels_opened_exact} of {h.sessions}"),
            ("resumed", f"{h.resumed} of {h.sessions}"),
            ("all resumed after", f"{h.all_resumed_s} s  (aim: <= 5; p50 {h.resume_p50_s} s, "
                                  f"p99 {h.resume_p99_s} s)"),
            ("in-flight echo (byte-exact)", f"{h.in_flight_exact} of {h.sessions}, all by "
                                            f"{h.all_in_flight_echoed_s} s"),
            ("echo after (byte-exact)", f"{h.after_exact} of {h.sessions}"),
            ("new sessions instead", f"{h.new_sessions}"),
        ]
        if h.errors:
            rows.append(("errors", "; ".join(h.errors[:3])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def draw(res: ScaleResult, img: Path) -> Path | None:
    """The resume times of the mass handover, as a cumulative distribution."""
    h = res.handover
    if h is None or not h.resume_times_s or not plots.have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    times = h.resume_times_s
    ax.plot(times, [(i + 1) / h.sessions for i in range(len(times))], drawstyle="steps-post")
    ax.axvline(5.0, color="0.5", linestyle="--", linewidth=1, label="aim: 5 s")
    ax.set_xlabel("seconds since every transport was reset")
    ax.set_ylabel("sessions resumed (share)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{h.sessions} hard handovers at once, {res.sessions} sessions on one "
                 "server", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = img / "scale-resume.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def render(res: ScaleResult, argv: list[str], figure: Path | None) -> str:
    h = res.handover
    kib = res.kib_per_session
    lines = ["## Ten thousand sessions on one server", "",
             "| measure | value |", "|---|---|"]
    lines += [f"| {k.strip()} | {v.strip()} |" for k, v in
              (line.strip().split("  ", 1) for line in table(res).splitlines())]
    lines.append("")
    if kib is not None:
        lines.append(f"- Server memory per idle session: **{kib} KiB** (aim: 16 KiB or less, "
                     f"{'met' if kib <= 16 else 'not met'}).")
    if h is not None:
        if h.all_resumed_s is not None:
            met = "met" if h.all_resumed_s <= 5 else "not met"
            resumed = f"all resumed within **{h.all_resumed_s} s** (aim: 5 s, {met})"
        else:
            resumed = f"{h.resumed} of {h.sessions} resumed (aim: all within 5 s, not met)"
        lines.append(f"- {h.sessions} hard handovers at once: {resumed}; every channel "
                     "byte-exact before, in flight and after: "
                     f"{'yes' if h.ok else 'no'}.")
    if figure is not None:
        lines += ["", f"![Resume times](img/{figure.name})"]
    m = res.machine
    lines += [
        "", f"The server is a real `roam server` process with default settings (uvloop, "
        f"UDP on, compression auto); the load generator is roam's own `Client`, "
        f"{res.workers} process(es), each session with a key of its own, pinging every "
        f"{GENERATOR_KEEPALIVE:g} s (the server pings every second while a session carries "
        "data, every 10 s once it is idle, after 30 s without). Memory: the server's "
        "VmRSS before and after opening the sessions, over their number; kernel socket "
        "buffers are not in it. Handover: the sessions get a channel to an echo service "
        "and echo some bytes; then more bytes are sent and every transport is reset (RST) "
        "in the same instant; each client's own reconnect loop resumes its session. The "
        "idle CPU and the handover are measured once every session is idle (30 s after "
        "the last one opened). Where "
        "the memory goes: `python bench/scale.py --breakdown` and docs/performance.md.",
        "",
        f"- Date: {m.get('date')}; {m.get('cpus')} CPUs, Linux {m.get('kernel')}, Python "
        f"{m.get('python')}; load average {m.get('load_average_at_start')} at the start",
        f"- Command: `python bench/scale.py {shlex.join(argv)}`; raw results in "
        "`bench/results/scale.json`"]
    return "\n".join(lines)


# ---- where a session's memory goes ------------------------------------------------


def _stop_ids() -> set[int]:
    """Objects a walk from one session must not enter: shared by every session."""
    stop = {id(m.__dict__) for m in list(sys.modules.values()) if m is not None}
    stop |= {id(m) for m in list(sys.modules.values())}
    return stop


SHARED_TYPES: tuple[type, ...] = (type, asyncio.AbstractEventLoop, asyncio.Server)


def reachable(roots: Iterable[object], stop: set[int],
              shared: tuple[type, ...]) -> dict[int, object]:
    seen: dict[int, object] = {}
    todo = list(roots)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in stop or isinstance(obj, shared):
            continue
        seen[id(obj)] = obj
        todo.extend(gc.get_referents(obj))
    return seen


def session_roots(server: Any, sid: bytes) -> list[object]:
    """Everything the server holds for session `sid`, besides its entries in shared maps."""
    driver = server.sessions[sid]
    roots: list[object] = [driver, server._standby.get(sid)]
    if server.udp is not None:
        roots.append(server.udp.sessions.get(sid[:8]))
    for task in server._tasks:
        frame = task.get_coro().cr_frame
        if frame is not None and frame.f_locals.get("driver") is driver:
            roots.append(task)
    proto = driver.proto
    if proto is not None and proto.transport is not None:
        sock = proto.transport.get_extra_info("socket")
        selector = driver.loop._selector
        key = selector.get_map().get(sock.fileno()) if sock is not None else None
        roots.append(key)
    return [r for r in roots if r is not None]


def deep_size_by_type(server: Any) -> dict[str, int]:
    """Bytes (sys.getsizeof) of the objects one session alone holds, by type: those
    reachable from one session's roots and not from another's."""
    sids = list(server.sessions)
    stop = _stop_ids() | {id(server), id(server.sessions), id(server._standby),
                          id(server._tasks), id(server.config), id(server.config.session),
                          id(server.config.connector)}
    if server.udp is not None:
        stop.add(id(server.udp))
    shared = (*SHARED_TYPES, type(server))
    a = reachable(session_roots(server, sids[0]), stop, shared)
    b = reachable(session_roots(server, sids[1]), stop, shared)
    sizes: Counter[str] = Counter()
    for key, obj in a.items():
        if key not in b:
            t = type(obj)
            name = (t.__qualname__ if t.__module__ == "builtins"
                    else f"{t.__module__}.{t.__qualname__}")
            sizes[name] += sys.getsizeof(obj)
    return dict(sizes.most_common())


async def breakdown(sessions: int, say: Any = print) -> dict[str, Any]:
    """A Server in this process under tracemalloc, the clients in a worker process:
    per-session bytes by allocation site, by type for one session, and RSS."""
    from roam.connector.allow import AccessList
    from roam.connector.connector import Connector
    from roam.crypto.keys import load_authorized_keys, load_private_key
    from roam.transport.server import Server, ServerConfig

    raise_nofile(sessions + 200)
    with tempfile.TemporaryDirectory(prefix="roam-scale-") as d:
        tdir = Path(d)
        keys = Keys.make(tdir, sessions)
        server = Server(ServerConfig(HOST, 0, load_private_key(keys.server),
                                     load_authorized_keys(keys.authorized),
                                     Connector(AccessList.parse([f"{HOST}:9"])),
                                     SessionConfig(detached_timeout=900.0)))
        _, port = await server.start()
        procs = Procs(tdir)
        try:
            gc.collect()
            tracemalloc.start(1)
            before = tracemalloc.take_snapshot()
            rss_before = rss_kib()
            proc = spawn_workers(procs, keys, port, 0, sessions, 1, 200)[0]
            loop = asyncio.get_running_loop()
            report = json.loads(await loop.run_in_executor(None, procs.line, "worker0", proc,
                                                           300))
            await asyncio.sleep(SETTLE)
            gc.collect()
            after = tracemalloc.take_snapshot()
            rss_after = rss_kib()
            opened = len(server.sessions)
            stats = after.compare_to(before, "lineno")
            traced = sum(s.size_diff for s in stats)
            sites = [{"site": f"{Path(s.traceback[0].filename).name}:{s.traceback[0].lineno}",
                      "bytes_per_session": round(s.size_diff / opened, 1)}
                     for s in stats[:30] if s.size_diff > 0]
            by_type = deep_size_by_type(server)
            tracemalloc.stop()
            out = {"sessions": opened, "worker": report,
                   "rss_kib_per_session": round((rss_after - rss_before) / opened, 2),
                   "traced_bytes_per_session": round(traced / opened, 1),
                   "top_sites": sites,
                   "one_session_bytes_by_type": by_type,
                   "one_session_bytes": sum(by_type.values())}
        finally:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            procs.close()
            await server.close()
    # tracemalloc's own records inflate this RSS, and it does not see what OpenSSL
    # allocates (about 2.5 KiB per AES-GCM key object, five per server session).
    say(f"{out['sessions']} sessions: traced {out['traced_bytes_per_session']} bytes per "
        f"session (Python objects only; RSS here {out['rss_kib_per_session']} KiB per "
        "session, inflated by tracemalloc)")
    say("by allocation site (bytes per session):")
    for s in sites[:20]:
        say(f"  {s['bytes_per_session']:>8}  {s['site']}")
    say(f"one session's own objects (sys.getsizeof): {out['one_session_bytes']} bytes")
    for name, size in list(by_type.items())[:25]:
        say(f"  {size:>8}  {name}")
    return out


# ---- command line ------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if argv[:1] == ["_worker"]:
        p = argparse.ArgumentParser()
        p.add_argument("_worker")
        for flag in ("--port", "--first", "--count", "--batch"):
            p.add_argument(flag, type=int, required=True)
        p.add_argument("--server-pub", required=True)
        p.add_argument("--keys", required=True)
        return asyncio.run(worker_main(p.parse_args(argv)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10000)
    parser.add_argument("--handover", type=int, default=1000,
                        help="sessions that get a channel and hand over at once")
    parser.add_argument("--batch", type=int, default=200,
                        help="handshakes in progress at once (the server allows 256)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes for the generator (idle sessions go to the extra ones)")
    parser.add_argument("--bytes", type=int, default=4096, help="bytes per echo round")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds the opening may take; each handover phase gets a fifth "
                             "(the whole run stays under about 2.2 times this)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                        help="the markdown file whose bench:scale section is rewritten")
    parser.add_argument("--img", type=Path, default=None,
                        help="directory for the PNG (default: img/ beside --out)")
    parser.add_argument("--breakdown", action="store_true",
                        help="where a session's memory goes (in-process server, tracemalloc)")
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= 256:
        parser.error("--batch must be 1..256 (the server's MAX_HANDSHAKES)")
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)

    async def go() -> dict[str, Any]:
        # Room for the handover phases and the cleanup after the opening's bound.
        async with asyncio.timeout(args.timeout * 2.2 + 60):
            if args.breakdown:
                return await breakdown(args.sessions if args.sessions != 10000 else 1000)
            res = await run(args.sessions, args.handover, batch=args.batch,
                            workers=args.workers, nbytes=args.bytes, timeout=args.timeout)
            print(table(res))
            section = render(res, argv, draw(res, args.img or args.out.parent / "img"))
            write_section(args.out, START, END, section)
            print(f"rewrote the bench:scale section of {args.out}")
            return asdict(res)

    try:
        out = asyncio.run(go())
    except TimeoutError:
        print(f"scale.py: not done within --timeout {args.timeout:g} s", file=sys.stderr)
        return 2
    target = args.json.with_name(args.json.stem + "-breakdown.json") if args.breakdown \
        else args.json
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2) + "\n")
    print(f"results in {target}")
    if args.breakdown:
        return 0
    h = out.get("handover")
    ok = out["opened"] == out["sessions"] and (h is None or HandoverResult(**h).ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
