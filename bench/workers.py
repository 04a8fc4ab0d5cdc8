"""Throughput of sessions in parallel: one server process against `--workers 2`.

    python bench/workers.py [--sessions 8] [--runs 5] [--mb 1000] [--limit 30]
                            [--json bench/results/workers.json] [--out docs/benchmarks.md]

Rewrites the `bench:workers` section of --out.

Two real `roam server` processes on loopback, started once and both kept up:
one plain (a single process) and one with `--workers 2`; each allowed to reach
a sink (`bench/servers.py sink`, which counts what it reads). For each, one
`roam client` process per session (`--sessions`, each with a key of its own),
each with a forward to the sink. A run sends `--mb` MB in all, shared evenly,
one TCP connection per session's forward, all at once; the time runs from the
first byte to the last session's byte count from the sink, which must match
what was sent. The two servers take turns run after run (one first, then the
other first), so a drift of the machine's load hits both alike. CPU seconds of
the server processes (the supervisor and its workers) and of the clients are
read from /proc around each run.

Which worker holds which session is the kernel's hash of the connection's
addresses; the spread is read from the server's status and reported.

Connections only to 127.0.0.1; every process is ended through its own Popen.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

from benchlib import Procs, cpu_seconds, machine_facts, machine_line, write_section  # noqa: E402
from load import CHUNK, _reply, _send_one, split_bytes  # noqa: E402
from roam.control.client import request  # noqa: E402
from roam.crypto.keys import (  # noqa: E402
    encode_key,
    generate_private_key,
    public_key,
    write_private_key,
)

HOST = "127.0.0.1"
START, END = "<!-- bench:workers:start -->", "<!-- bench:workers:end -->"
RESULTS = ROOT / "bench" / "results" / "workers.json"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p),
    "PYTHONUNBUFFERED": "1"}
# A daemon prints its ready line within a few seconds even on a loaded machine.
READY_LIMIT = 60.0
SETUPS = ("one process", "--workers 2")


@dataclass
class Run:
    setup: str
    mb_per_s: float
    seconds: float
    bytes: int
    server_cpu_s: float
    client_cpu_s: float


@dataclass
class Result:
    sessions: int
    runs: int
    mb: int
    spread: dict[str, int] = field(default_factory=dict)  # worker index: sessions
    handed_over: int = 0  # transports the workers handed each other (none expected here)
    samples: list[Run] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    def of(self, setup: str) -> list[Run]:
        return [r for r in self.samples if r.setup == setup]

    def median(self, setup: str) -> float | None:
        runs = self.of(setup)
        return statistics.median(r.mb_per_s for r in runs) if runs else None


def _line(procs: Procs, name: str, proc: subprocess.Popen[bytes], pattern: str) -> re.Match[str]:
    """The ready line of `proc` that matches `pattern` (earlier lines skipped)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_LIMIT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            text = proc.stdout.readline().decode(errors="replace").strip()
            m = re.match(pattern, text)
            if m is not None:
                return m
            if not text:
                break
        procs.check_alive()
    procs.check_alive()
    raise RuntimeError(f"{name}: no line matching {pattern!r} within {READY_LIMIT:g} s")


def _probe(port: int) -> bool:
    """True once the forward carries a connection to the sink and back."""
    try:
        with socket.create_connection((HOST, port), timeout=5) as s:
            s.shutdown(socket.SHUT_WR)
            return s.recv(16) == b"0\n"
    except OSError:
        return False


@dataclass
class _Setup:
    name: str
    server_pid: int
    client_pids: list[int]
    ports: list[int]
    control: Path


def _start(procs: Procs, tmp: Path, sink: int, keys: list[Path], server_pub: str
           ) -> list[_Setup]:
    """Both servers and their clients; every process is started before any is
    waited for (interpreters start in parallel)."""
    servers = []
    for workers in (1, 2):
        servers.append(procs.start(f"server w{workers}", [
            sys.executable, "-m", "roam", "server", "--listen", f"{HOST}:0",
            *(["--workers", str(workers)] if workers > 1 else []),
            "--key", str(tmp / "server.key"), "--authorized-keys", str(tmp / "authorized_keys"),
            "--allow", f"{HOST}:{sink}", "--control", str(tmp / f"w{workers}.sock"),
            "--log-level", "warning"], ENV, stdout=subprocess.PIPE))
    setups, clients = [], []
    for name, server, workers in zip(SETUPS, servers, (1, 2), strict=True):
        port = int(_line(procs, "server", server, r"listening .*:(\d+)$").group(1))
        mine = [procs.start(f"client w{workers}-{i}", [
            sys.executable, "-m", "roam", "client", "--server", f"{HOST}:{port}",
            "--server-key", server_pub, "--key", str(key), "--no-udp",
            "--forward", f"{HOST}:0={HOST}:{sink}", "--control", str(tmp / f"w{workers}-c{i}.sock"),
            "--log-level", "warning"], ENV, stdout=subprocess.PIPE) for i, key in enumerate(keys)]
        clients.append(mine)
        setups.append(_Setup(name, server.pid, [c.pid for c in mine], [], tmp / f"w{workers}.sock"))
    for setup, mine in zip(setups, clients, strict=True):
        setup.ports = [int(_line(procs, "client", c, r"forward .*:(\d+)=").group(1)) for c in mine]
        for p in setup.ports:
            deadline = time.monotonic() + READY_LIMIT
            while not _probe(p):
                procs.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"forward {p} never carried a connection")
                time.sleep(0.05)
    return setups


def _throughput(ports: list[int], nbytes: int, limit: float) -> tuple[int, float]:
    """All of `nbytes` over one connection per port at once: (bytes counted, seconds)."""
    shares = split_bytes(nbytes, len(ports))
    payload = memoryview(os.urandom(CHUNK))
    socks = [socket.create_connection((HOST, p), timeout=30) for p in ports]
    results: list[tuple[int, int] | BaseException] = [RuntimeError("not run")] * len(ports)
    start = threading.Barrier(len(ports) + 1)
    deadline = time.perf_counter() + limit

    def one(i: int) -> None:
        try:
            start.wait(10)
            sent, _ = _send_one(socks[i], shares[i], payload, deadline)
            results[i] = (sent, _reply(socks[i]))
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True, name=f"session-{i}")
               for i in range(len(ports))]
    try:
        for t in threads:
            t.start()
        start.wait(10)
        t0 = time.perf_counter()
        for t in threads:
            t.join(limit + 60)
        t1 = time.perf_counter()
    finally:
        for s in socks:
            s.close()
    total = 0
    for i, res in enumerate(results):
        if isinstance(res, BaseException):
            raise RuntimeError(f"session {i}: {type(res).__name__}: {res}")
        if res[0] != res[1]:
            raise RuntimeError(f"session {i}: the sink counted {res[1]} of {res[0]} bytes")
        total += res[1]
    return total, t1 - t0


def _spread(setup: _Setup) -> tuple[dict[str, int], int]:
    status = request(str(setup.control), "status")
    spread = Counter(str(s.get("worker", 0)) for s in status["sessions"])
    handed = sum(w.get("handed_in", 0) for w in status.get("workers", []))
    return dict(sorted(spread.items())), handed


def run(sessions: int = 8, runs: int = 5, mb: int = 1000, limit: float = 30.0,
        tmp: Path | None = None, say: Callable[[str], None] = print) -> Result:
    res = Result(sessions, runs, mb, facts=machine_facts())
    with tempfile.TemporaryDirectory(prefix="roam-bench-workers-") as t:
        d = Path(t) if tmp is None else tmp
        procs = Procs(d)
        try:
            skey = generate_private_key()
            write_private_key(d / "server.key", skey)
            keys = []
            lines = []
            for i in range(sessions):
                k = generate_private_key()
                write_private_key(d / f"client{i}.key", k)
                keys.append(d / f"client{i}.key")
                lines.append(f"{encode_key(public_key(k))} unit{i}\n")
            (d / "authorized_keys").write_text("".join(lines))
            sink_proc = procs.start("sink", [sys.executable, str(ROOT / "bench" / "servers.py"),
                                             "sink", "--port", "0"], ENV, stdout=subprocess.PIPE)
            sink = int(_line(procs, "sink", sink_proc, r"(\d+)$").group(1))
            setups = _start(procs, d, sink, keys, encode_key(public_key(skey)))
            res.spread, _ = _spread(setups[1])
            say(f"sessions per worker: {res.spread}")
            nbytes = mb * 1_000_000
            for n in range(runs):
                order = setups if n % 2 == 0 else setups[::-1]
                for s in order:
                    server0 = cpu_seconds([s.server_pid])
                    client0 = cpu_seconds(s.client_pids)
                    got, secs = _throughput(s.ports, nbytes, limit)
                    sample = Run(s.name, round(got / secs / 1e6, 1), round(secs, 3), got,
                                 round(cpu_seconds([s.server_pid]) - server0, 2),
                                 round(cpu_seconds(s.client_pids) - client0, 2))
                    res.samples.append(sample)
                    say(f"run {n + 1}/{runs} {s.name}: {sample.mb_per_s} MB/s "
                        f"({got} bytes in {secs:.2f} s; CPU s server {sample.server_cpu_s}, "
                        f"clients {sample.client_cpu_s})")
            _, res.handed_over = _spread(setups[1])
        finally:
            procs.close()
    return res


def overlap(res: Result) -> bool:
    """Whether the two setups' ranges of MB/s overlap."""
    a, b = ([r.mb_per_s for r in res.of(s)] for s in SETUPS)
    return bool(a and b) and min(a) <= max(b) and min(b) <= max(a)


def server_share(runs: list[Run]) -> float:
    """The server processes' CPU while sending, in % of one CPU (median of the runs)."""
    return statistics.median(100 * r.server_cpu_s / r.seconds for r in runs)


def table(res: Result) -> str:
    rows = ["| server | MB/s, median (min-max) | server CPU, % of one CPU | "
            "server CPU s per GB | client CPU s per GB |",
            "|---|---|---|---|---|"]
    for setup in SETUPS:
        runs = res.of(setup)
        if not runs:
            continue
        speeds = [r.mb_per_s for r in runs]
        gb = sum(r.bytes for r in runs) / 1e9
        rows.append(f"| {setup} | {statistics.median(speeds):.1f} "
                    f"({min(speeds):.1f}-{max(speeds):.1f}) | {server_share(runs):.0f} | "
                    f"{sum(r.server_cpu_s for r in runs) / gb:.2f} | "
                    f"{sum(r.client_cpu_s for r in runs) / gb:.2f} |")
    return "\n".join(rows)


def render(res: Result, argv: list[str]) -> str:
    one, two = res.median(SETUPS[0]), res.median(SETUPS[1])
    ratio = f"{two / one:.2f}" if one and two else "—"
    spread = ", ".join(f"worker {k}: {v}" for k, v in res.spread.items())
    return "\n".join([
        f"## {res.sessions} sessions in parallel: one server process or `--workers 2`",
        "",
        table(res),
        "",
        f"- `--workers 2` against one process: **{ratio}x** the throughput "
        f"(medians of {res.runs} runs each, taking turns)" + (
            "; the two ranges overlap: on this machine the difference is within the "
            "run-to-run noise." if overlap(res) else "."),
        f"- Sessions per worker (the kernel's hash of each connection): {spread}; "
        f"transports handed between workers: {res.handed_over}.",
        *([f"- The single server process used {server_share(res.of(SETUPS[0])):.0f} % of one "
           "CPU while carrying the runs: it was not what limited them."]
          if res.of(SETUPS[0]) and server_share(res.of(SETUPS[0])) < 90 else []),
        "",
        f"Each run sends {res.mb} MB in all through {res.sessions} sessions at once, one "
        f"`roam client` process per session, each with a forward to a sink that counts what "
        "it reads; MB/s is 10^6 bytes over the time from the first byte to the last count, "
        "which matched what was sent every time. The two servers are real `roam server` "
        "processes (uvloop, compression auto), both up for the whole run, taking turns. "
        "CPU: the server processes (with `--workers 2` the supervisor and its two workers) "
        "and the client processes, from /proc, per GB carried.",
        "",
        "This machine has "
        f"{res.facts.get('nproc', '?')} CPUs for everything: the clients (one process per "
        "session, each carrying its bytes through its own encryption), the load generator and "
        "the sink need CPU as much as the server does, so a second worker cannot double the "
        "server's share here, and the run measures the whole machine as much as the server. "
        "The figures say how much a second worker wins on a shared 2-CPU machine, not how the "
        "server scales on a machine with cores to spare; with the kernel's hash, a handful of "
        "sessions may also fall unevenly on the workers (see the spread above). Other work on "
        "the machine at the time shows in the load average below.",
        "",
        f"- Date: {res.facts.get('date', '?')}; {machine_line(res.facts)}",
        f"- Command: `python bench/workers.py{' ' if argv else ''}{' '.join(argv)}`; raw results "
        "in `bench/results/workers.json`",
    ])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mb", type=int, default=1000, help="MB sent per run, over all sessions")
    parser.add_argument("--limit", type=float, default=30.0, help="seconds of sending per run")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true",
                        help="print the section; write neither --json nor --out")
    args = parser.parse_args(argv)
    res = run(args.sessions, args.runs, args.mb, args.limit)
    section = render(res, argv)
    print(section)
    if not args.no_write:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**asdict(res), "python": platform.python_version()},
                                        indent=1) + "\n")
        write_section(args.out, START, END, section)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
