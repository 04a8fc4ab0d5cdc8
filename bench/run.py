"""Session benchmark: direct vs roam vs ssh -L on loopback.

    python bench/run.py [--bytes N] [--rounds N] [--only direct,roam,ssh] [--out docs/benchmarks.md]

For each path it measures single-stream throughput (N bytes to a sink that replies with
the byte count after the sender half-closes; median of 3 runs, MB/s = 10^6 bytes/s) and
64-byte request/response latency (p50 and p99 over R rounds). The sink and echo servers
(bench/servers.py) run in processes of their own; roam and OpenSSH are started with
throwaway keys in temporary directories. All traffic stays on 127.0.0.1, every load is
bounded in bytes and time, and every process started is ended through its own Popen.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import pwd
import re
import select
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START, END = "<!-- bench:session:start -->", "<!-- bench:session:end -->"
CHUNK = 256 * 1024  # sendall buffer
RUNS = 3  # throughput runs per path; the median is reported
RUN_LIMIT = 60.0  # seconds of sending per throughput run
REPLY_LIMIT = 30.0  # seconds to wait for the sink's byte count after half-close
LATENCY_LIMIT = 30.0  # seconds for all latency rounds of one path
WARMUP = 20  # latency rounds not recorded
READY_LIMIT = 20.0  # seconds for a tunnel to carry its first echo
SSHD = Path("/usr/sbin/sshd")
LABELS = {"direct": "direct", "roam": "roam", "ssh": "ssh -L"}


class NotRunError(Exception):
    """A path that cannot be measured on this machine (a tool is missing)."""


@dataclass
class Row:
    path: str
    status: str = "ok"  # ok | failed | not run
    error: str = ""
    mbps: float | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    p50_us: float | None = None
    p99_us: float | None = None
    rounds: int = 0
    notes: dict[str, str] = field(default_factory=dict)


class Procs:
    """Processes of one path, each with a log file; close() ends each by its Popen."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name.replace(' ', '-')}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env,
                                    stdout=fh if stdout is None else stdout, stderr=fh)
        self.procs.append((name, proc, log))
        return proc

    def check_alive(self) -> None:
        for name, proc, log in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {tail(log)}")

    def close(self) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()


def tail(log: Path, limit: int = 400) -> str:
    text = log.read_text(errors="replace").strip() if log.exists() else ""
    text = " / ".join(line for line in text.splitlines() if line.strip())
    return (text[-limit:] if text else "(empty)")


def run_ok(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """Run a short command; return its stdout or raise with its stderr."""
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30,
                         stdin=subprocess.DEVNULL, check=False)
    if res.returncode != 0:
        err = " / ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"`{shlex.join(cmd[-3:])}` exited with {res.returncode}: {err}")
    return res.stdout


def free_port() -> int:
    """A loopback port free for TCP and UDP (it may be taken between this and its use)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((HOST, 0))
            port: int = tcp.getsockname()[1]
            try:
                udp.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port")


def start_server(procs: Procs, kind: str) -> int:
    cmd = [sys.executable, str(ROOT / "bench" / "servers.py"), kind, "--port", "0"]
    proc = procs.start(f"{kind} server", cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    line = proc.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        procs.check_alive()
        raise RuntimeError(f"{kind} server printed no port")
    return int(line)


def probe(lsink: int, lecho: int) -> bool:
    """True once both forwards carry data end to end."""
    try:
        with socket.create_connection((HOST, lecho), timeout=2) as s:
            s.sendall(b"ready?")
            got = b""
            while len(got) < 6 and (data := s.recv(6)):
                got += data
        with socket.create_connection((HOST, lsink), timeout=2) as s:
            s.shutdown(socket.SHUT_WR)
            reply = s.recv(16)
        return got == b"ready?" and reply == b"0\n"
    except OSError:
        return False


def accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
        return True
    return False


def wait_until(procs: Procs, ready: Callable[[], bool], what: str) -> None:
    """Poll ready() until READY_LIMIT, failing early if a process of this path exited."""
    deadline = time.monotonic() + READY_LIMIT
    while time.monotonic() < deadline:
        procs.check_alive()
        if ready():
            return
        time.sleep(0.05)
    logs = "; ".join(f"{name} log: {tail(log)}" for name, _, log in procs.procs)
    raise RuntimeError(f"{what} not ready after {READY_LIMIT:g} s; {logs}")


def setup_roam(sink: int, echo: int, procs: Procs, row: Row) -> tuple[int, int]:
    roam = [sys.executable, "-m", "roam"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    tmp = procs.tmp
    server_pub = run_ok([*roam, "keygen", str(tmp / "server.key")], env).strip()
    client_pub = run_ok([*roam, "keygen", str(tmp / "client.key")], env).strip()
    (tmp / "authorized_keys").write_text(client_pub + "\n")
    port, lsink, lecho = free_port(), free_port(), free_port()
    procs.start("roam server", [
        *roam, "server", "--listen", f"{HOST}:{port}", "--key", str(tmp / "server.key"),
        "--authorized-keys", str(tmp / "authorized_keys"),
        "--allow", f"{HOST}:{sink}", "--allow", f"{HOST}:{echo}"], env)
    procs.start("roam client", [
        *roam, "client", "--server", f"{HOST}:{port}", "--server-key", server_pub,
        "--key", str(tmp / "client.key"),
        "--forward", f"{HOST}:{lsink}={HOST}:{sink}",
        "--forward", f"{HOST}:{lecho}={HOST}:{echo}"], env)
    wait_until(procs, lambda: probe(lsink, lecho), "roam forwards")
    return lsink, lecho


def setup_ssh(sink: int, echo: int, procs: Procs, row: Row) -> tuple[int, int]:
    if not SSHD.exists():
        print(f"bench: {SSHD} is missing: install openssh-server (scripts/setup-env does "
              "it when run as root); the ssh -L row is not run", file=sys.stderr)
        raise NotRunError("sshd missing")
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise NotRunError(f"{tool} missing")
    with contextlib.suppress(PermissionError):  # privilege separation dir
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    tmp = procs.tmp
    for key in ("host_key", "user_key"):
        run_ok(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)])
    (tmp / "authorized_keys").write_text((tmp / "user_key.pub").read_text())
    port = free_port()
    config = tmp / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", f"ListenAddress {HOST}", f"HostKey {tmp / 'host_key'}",
        f"PidFile {tmp / 'sshd.pid'}", f"AuthorizedKeysFile {tmp / 'authorized_keys'}",
        "StrictModes no", "UsePAM no", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", "AllowTcpForwarding yes",
        "X11Forwarding no", "LogLevel INFO", ""]))
    procs.start("sshd", [str(SSHD), "-D", "-e", "-f", str(config)])
    lsink, lecho = free_port(), free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    opts = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "BatchMode=yes",
            "ExitOnForwardFailure=yes", "IdentitiesOnly=yes"]
    cmd = ["ssh", "-v", "-N", "-F", "/dev/null", "-L", f"{lsink}:{HOST}:{sink}",
           "-L", f"{lecho}:{HOST}:{echo}", *(x for o in opts for x in ("-o", o)),
           "-i", str(tmp / "user_key"), "-p", str(port), f"{user}@{HOST}"]
    wait_until(procs, lambda: accepts(port), "sshd")
    procs.start("ssh", cmd)
    wait_until(procs, lambda: probe(lsink, lecho), "ssh -L forwards")
    row.notes["command"] = shlex.join(cmd)
    match = re.search(r"kex: client->server cipher: (\S+)", tail(procs.tmp / "ssh.log", 10**6))
    row.notes["cipher"] = match.group(1) if match else "unknown"
    return lsink, lecho


SETUPS: dict[str, Callable[[int, int, Procs, Row], tuple[int, int]]] = {
    "direct": lambda sink, echo, procs, row: (sink, echo), "roam": setup_roam, "ssh": setup_ssh}


def throughput_run(port: int, nbytes: int, payload: memoryview) -> dict[str, Any]:
    """Send nbytes (or what RUN_LIMIT allows) and time it until the sink's count arrives."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        sent, timed_out = 0, False
        t0 = time.perf_counter()
        deadline = t0 + RUN_LIMIT
        while sent < nbytes:
            if time.perf_counter() >= deadline:
                timed_out = True
                break
            n = min(CHUNK, nbytes - sent)
            s.sendall(payload[:n])
            sent += n
        s.shutdown(socket.SHUT_WR)
        s.settimeout(REPLY_LIMIT)
        reply = b""
        while not reply.endswith(b"\n") and (data := s.recv(64)):
            reply += data
        t1 = time.perf_counter()
    if not reply.strip().isdigit():
        raise RuntimeError(f"sink sent no byte count after {sent} bytes ({reply!r})")
    received = int(reply)
    if received != sent:
        raise RuntimeError(f"sink received {received} of {sent} bytes")
    secs = t1 - t0
    return {"bytes": received, "seconds": secs, "mbps": received / secs / 1e6,
            "timed_out": timed_out}


def latency(port: int, rounds: int) -> tuple[float, float, int]:
    request = os.urandom(64)
    buf = bytearray(64)
    view = memoryview(buf)
    samples: list[int] = []
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = time.perf_counter() + LATENCY_LIMIT
        for i in range(WARMUP + rounds):
            if time.perf_counter() >= deadline:
                break
            t0 = time.perf_counter_ns()
            s.sendall(request)
            got = 0
            while got < 64:
                n = s.recv_into(view[got:])
                if n == 0:
                    raise RuntimeError("echo server closed the connection")
                got += n
            t1 = time.perf_counter_ns()
            if buf != request:
                raise RuntimeError("echo reply differs from the request")
            if i >= WARMUP:
                samples.append(t1 - t0)
    if not samples:
        raise RuntimeError("no latency round completed")
    samples.sort()  # nearest-rank percentiles, in microseconds
    p50, p99 = (samples[max(0, math.ceil(p / 100 * len(samples)) - 1)] / 1000 for p in (50, 99))
    return p50, p99, len(samples)


def measure(name: str, sink: int, echo: int, args: argparse.Namespace) -> Row:
    row = Row(LABELS[name])
    try:
        with tempfile.TemporaryDirectory(prefix=f"roam-bench-{name}-") as tmp:
            procs = Procs(Path(tmp))
            try:
                lsink, lecho = SETUPS[name](sink, echo, procs, row)
                payload = memoryview(os.urandom(CHUNK))
                for _ in range(RUNS):
                    row.runs.append(throughput_run(lsink, args.bytes, payload))
                row.mbps = statistics.median(r["mbps"] for r in row.runs)
                row.p50_us, row.p99_us, row.rounds = latency(lecho, args.rounds)
            finally:
                procs.close()
    except NotRunError as exc:
        row.status, row.error = "not run", str(exc)
    except Exception as exc:
        row.status, row.error = "failed", f"{type(exc).__name__}: {exc}"
    return row


def machine_facts(argv: list[str], args: argparse.Namespace) -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    facts = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(len(os.sched_getaffinity(0))), "cpu": cpu.group(1) if cpu else "unknown",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(), "openssh": "not installed", "ssh cipher": "n/a",
        "command": shlex.join(["python", *argv]),
        "reproduce": shlex.join(["python", "bench/run.py", "--bytes", str(args.bytes),
                                 "--rounds", str(args.rounds), "--only", ",".join(args.only)]),
    }
    if shutil.which("ssh"):  # ssh -V prints on stderr; -G shows the default cipher order
        res = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10,
                             check=False)
        facts["openssh"] = (res.stderr or res.stdout).strip()
        cfg = run_ok(["ssh", "-G", "-F", "/dev/null", "-p", "22", f"x@{HOST}"])
        if ciphers := re.search(r"^ciphers (\S+)", cfg, re.M):
            facts["ssh cipher"] = ciphers.group(1).split(",")[0]
    return facts


def cell(text: str) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= 240 else text[:237] + "..."


def table_row(r: Row, ssh_mbps: float | None, rounds: int) -> str:
    if r.status != "ok" or r.mbps is None or r.p50_us is None or r.p99_us is None:
        return f"| {r.path} | {cell(r.status + ': ' + r.error)} | — | — | — |"
    tput = f"{r.mbps:.1f}"
    if late := [f"{x['bytes'] / 1e6:.0f} MB" for x in r.runs if x["timed_out"]]:
        tput += f" (hit the {RUN_LIMIT:g} s limit, moved {', '.join(late)})"
    ratio = f"{r.mbps / ssh_mbps:.2f}" if ssh_mbps else "—"
    p99 = f"{r.p99_us:.1f}" + (f" ({r.rounds} rounds in time limit)" if r.rounds < rounds else "")
    return f"| {r.path} | {tput} | {ratio} | {r.p50_us:.1f} | {p99} |"


def render(rows: list[Row], facts: dict[str, str], args: argparse.Namespace) -> str:
    by = {r.path: r for r in rows}
    roam, ssh = by.get("roam"), by.get("ssh -L")
    ssh_mbps = ssh.mbps if ssh and ssh.status == "ok" else None
    lines = ["## Session throughput and latency (loopback)", "",
             "| path | throughput MB/s | ratio to ssh -L | p50 µs | p99 µs |",
             "|---|---:|---:|---:|---:|", *(table_row(r, ssh_mbps, args.rounds) for r in rows), ""]
    if roam and roam.mbps and ssh and ssh_mbps and roam.status == "ok":
        lines.append(f"roam / ssh -L throughput ratio: **{roam.mbps / ssh_mbps:.2f}** "
                     f"(roam {roam.mbps:.1f} MB/s, ssh -L {ssh_mbps:.1f} MB/s); p50 latency "
                     f"roam {roam.p50_us:.1f} µs vs ssh -L {ssh.p50_us:.1f} µs.")
    else:
        why = ", ".join(f"{label} {by[label].status if label in by else 'not selected'}"
                        for label in ("roam", "ssh -L"))
        lines.append(f"roam / ssh -L throughput ratio: not available ({why}; see the table).")
    lines += [
        "", f"Throughput: median of {RUNS} runs, each one TCP connection sending {args.bytes} "
        f"bytes (at most {RUN_LIMIT:g} s of sending) to a sink that replies with the byte count "
        "after the half-close; MB/s = 10^6 bytes/s from the first byte to that reply. Latency: "
        f"one connection, 64-byte request, 64-byte echo, {args.rounds} rounds (TCP_NODELAY, "
        f"{WARMUP} warm-up rounds not counted).", "",
        f"- Date: {facts['date']}",
        f"- Machine: {facts['nproc']} CPUs ({facts['cpu']}), {facts['kernel']}, "
        f"Python {facts['python']}",
        f"- OpenSSH: {facts['openssh']}; default cipher {facts['ssh cipher']}, negotiated "
        f"{ssh.notes.get('cipher', 'n/a') if ssh else 'n/a'}",
        f"- Run as: `{facts['command']}`", f"- Reproduce: `{facts['reproduce']}`"]
    return "\n".join(lines)


def write_section(out: Path, section: str) -> None:
    block = f"{START}\n{section}\n{END}"
    if out.exists():
        text = out.read_text()
        start = text.find(START)
        end = text.find(END, start)
        if start != -1 and end != -1:
            text = text[:start] + block + text[end + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = f"# roam benchmarks\n\n{block}\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=1 << 30, help="bytes per throughput run")
    parser.add_argument("--rounds", type=int, default=5000, help="latency rounds")
    parser.add_argument("--only", default="direct,roam,ssh", help="comma-separated paths")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "session.json",
                        help="raw results (default bench/results/session.json)")
    args = parser.parse_args(argv)
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in args.only if p not in LABELS]
    if unknown or not args.only:
        parser.error(f"--only takes a subset of {','.join(LABELS)}, got {unknown or 'nothing'}")
    if args.bytes <= 0 or args.rounds <= 0:
        parser.error("--bytes and --rounds must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv[1:])
    facts = machine_facts(argv, args)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="roam-bench-servers-") as tmp:
        procs = Procs(Path(tmp))
        try:
            sink, echo = start_server(procs, "sink"), start_server(procs, "echo")
            for name in (n for n in LABELS if n in args.only):
                print(f"bench: measuring {LABELS[name]} ...", file=sys.stderr, flush=True)
                rows.append(measure(name, sink, echo, args))
                procs.check_alive()
        finally:
            procs.close()
    section = render(rows, facts, args)
    print(section)
    write_section(args.out, section)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"facts": facts, "bytes": args.bytes, "rounds": args.rounds,
                                     "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    print(f"bench: wrote {args.out} and {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
