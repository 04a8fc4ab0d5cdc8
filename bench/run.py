"""Session benchmark on loopback: direct, roam and ssh -L side by side in one run.

    python bench/run.py [--bytes N] [--rounds N] [--runs N] [--streams K]
                        [--only direct,pyforward,roam,roam-chacha,roam-asyncio,roam-relay,ssh-aes,
                               ssh-chacha,ssh-jump]
                        [--out docs/benchmarks.md] [--json bench/results/session.json]

For each path it measures throughput to a sink that replies with the byte count after
the sender half-closes (N bytes on one connection, and N bytes shared by K parallel
connections; MB/s = 10^6 bytes/s), the CPU seconds both daemons of the path used per
GiB moved (utime + stime from /proc/PID/stat, daemons and their children), and 64-byte
request/response latency (p50 and p99 over R rounds). Every figure is the median of
--runs runs, interleaved across the paths (all of their daemons run from the start).
ssh -L runs twice, with aes128-gcm@openssh.com and with chacha20-poly1305@openssh.com;
roam runs with its default cipher (AES-GCM where the CPU has AES instructions) and with
--cipher chachapoly. One hop between the two ends costs each its own: roam through one
`roam relay` (roam-relay) against roam, and `ssh -L` through a second sshd with ProxyJump
(ssh-jump, aes128-gcm@openssh.com on both hops) against `ssh -L`; the section gives both
costs side by side.

The sink and echo servers (bench/servers.py) run in processes of their own; roam and
OpenSSH are started with throwaway keys in temporary directories. All traffic stays on
127.0.0.1, every load is bounded in bytes and time, and every process started is ended
through its own Popen. Rewrites the `bench:session` section of docs/benchmarks.md and
draws docs/img/session-*.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import select
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load
import plots
from benchlib import (
    ROOT,
    NotRunError,
    Procs,
    cell,
    cpu_seconds,
    fmt,
    machine_facts,
    machine_line,
    median_or_none,
    per_gib,
    run_ok,
    tail,
    write_section,
)

HOST = "127.0.0.1"
START, END = "<!-- bench:session:start -->", "<!-- bench:session:end -->"
READY_LIMIT = 20.0  # seconds for a tunnel to carry its first echo
SSHD = Path("/usr/sbin/sshd")
SSH_CIPHERS = {"ssh-aes": "aes128-gcm@openssh.com", "ssh-chacha": "chacha20-poly1305@openssh.com",
               "ssh-jump": "aes128-gcm@openssh.com"}
LABELS = {"direct": "direct", "pyforward": "2 plain Python forwarders (uvloop)",
          "roam": "roam", "roam-chacha": "roam --cipher chachapoly",
          "roam-asyncio": "roam --event-loop asyncio", "roam-relay": "roam through one relay",
          "ssh-aes": "ssh -L aes128-gcm", "ssh-chacha": "ssh -L chacha20-poly1305",
          "ssh-jump": "ssh -L aes128-gcm through a jump host (ssh -J)"}
ALIASES = {"ssh": ["ssh-aes", "ssh-chacha"]}
REFERENCE = "ssh-aes"  # the ratio is roam's single stream over this path's
# One hop's cost: (path with the hop, the same path without it, what the hop is).
HOPS = (("roam-relay", "roam", "one roam relay"),
        ("ssh-jump", "ssh-aes", "one ssh jump host"))


@dataclass
class Row:
    key: str
    path: str
    status: str = "ok"  # ok | failed | not run
    error: str = ""
    mbps: float | None = None  # one stream, median
    mbps_par: float | None = None  # K streams together, median
    cpu_gib: float | None = None  # CPU s/GiB of the path's daemons, one stream, median
    cpu_gib_par: float | None = None
    p50_us: float | None = None  # medians over the latency runs
    p99_us: float | None = None
    cpu_rt_us: float | None = None  # CPU µs of both daemons per round trip, median
    runs: list[dict[str, Any]] = field(default_factory=list)
    par_runs: list[dict[str, Any]] = field(default_factory=list)
    latency_runs: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)


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


# A setup starts the path's daemons and returns (sink port, echo port, daemon pids).
Setup = Callable[[int, int, Procs, Row], tuple[int, int, list[int]]]


def setup_roam(sink: int, echo: int, procs: Procs, row: Row, cipher: str = "auto",
               event_loop: str = "uvloop", relay: bool = False) -> tuple[int, int, list[int]]:
    roam = [sys.executable, "-m", "roam"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    tmp = procs.tmp
    server_pub = run_ok([*roam, "keygen", str(tmp / "server.key")], env).strip()
    client_pub = run_ok([*roam, "keygen", str(tmp / "client.key")], env).strip()
    (tmp / "authorized_keys").write_text(client_pub + "\n")
    port, lsink, lecho = free_port(), free_port(), free_port()
    via: list[str] = []
    relay_pids: list[int] = []
    if relay:
        # One relay hop on loopback: the client's path goes through it.
        relay_pub = run_ok([*roam, "keygen", str(tmp / "relay.key")], env).strip()
        rport = free_port()
        relay_proc = procs.start("roam relay", [
            *roam, "relay", "--listen", f"{HOST}:{rport}", "--key", str(tmp / "relay.key"),
            "--admit-keys", str(tmp / "authorized_keys"), "--control", str(tmp / "relay.sock")],
            env)
        relay_pids = [relay_proc.pid]
        via = ["--relay", f"r1={HOST}:{rport},key={relay_pub}", "--path",
               "relayed:dev=lo,via=r1", "--links", "static"]
    server = procs.start("roam server", [
        *roam, "server", "--listen", f"{HOST}:{port}", "--key", str(tmp / "server.key"),
        "--authorized-keys", str(tmp / "authorized_keys"),
        "--allow", f"{HOST}:{sink}", "--allow", f"{HOST}:{echo}",
        "--control", str(tmp / "server.sock"), "--event-loop", event_loop], env)
    client_cmd = [
        *roam, "client", "--server", f"{HOST}:{port}", "--server-key", server_pub,
        "--key", str(tmp / "client.key"), "--cipher", cipher, "--control", str(tmp / "client.sock"),
        "--forward", f"{HOST}:{lsink}={HOST}:{sink}",
        "--forward", f"{HOST}:{lecho}={HOST}:{echo}", "--event-loop", event_loop, *via]
    client = procs.start("roam client", client_cmd, env)
    wait_until(procs, lambda: probe(lsink, lecho), "roam forwards")
    row.notes["cipher"] = cipher
    row.notes["event loop"] = event_loop
    # Through a relay, CPU counts the three daemons a byte crosses.
    return lsink, lecho, [server.pid, client.pid, *relay_pids]


def check_ssh_tools() -> None:
    if not SSHD.exists():
        print(f"bench: {SSHD} is missing: install openssh-server (scripts/setup-env does "
              "it when run as root); the ssh -L rows are not run", file=sys.stderr)
        raise NotRunError("sshd missing")
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise NotRunError(f"{tool} missing")
    with contextlib.suppress(PermissionError):  # privilege separation dir
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)


def start_sshd(procs: Procs, name: str) -> tuple[int, subprocess.Popen[bytes]]:
    """(port, process) of an sshd of its own on a loopback port: a throwaway host key
    and config in the path's temporary directory, admitting the path's user_key (made
    once per path)."""
    tmp = procs.tmp
    if not (tmp / "user_key").exists():
        run_ok(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "user_key")])
        (tmp / "authorized_keys").write_text((tmp / "user_key.pub").read_text())
    host_key = tmp / f"{name}_host_key"
    run_ok(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
    port = free_port()
    config = tmp / f"{name}_config"
    config.write_text("\n".join([
        f"Port {port}", f"ListenAddress {HOST}", f"HostKey {host_key}",
        f"PidFile {tmp / (name + '.pid')}", f"AuthorizedKeysFile {tmp / 'authorized_keys'}",
        "StrictModes no", "UsePAM no", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", "AllowTcpForwarding yes",
        "X11Forwarding no", "LogLevel INFO", ""]))
    sshd = procs.start(name, [str(SSHD), "-D", "-e", "-f", str(config)])
    wait_until(procs, lambda: accepts(port), name)
    return port, sshd


def negotiated_ciphers(procs: Procs) -> list[str]:
    """The client->server cipher of each ssh connection the path's ssh log shows
    (a ProxyJump's inner ssh logs into the same file, with -v passed on)."""
    return re.findall(r"kex: client->server cipher: (\S+)", tail(procs.tmp / "ssh.log", 10**6))


def setup_ssh(sink: int, echo: int, procs: Procs, row: Row,
              cipher: str = "") -> tuple[int, int, list[int]]:
    check_ssh_tools()
    tmp = procs.tmp
    port, sshd = start_sshd(procs, "sshd")
    lsink, lecho = free_port(), free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    opts = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "BatchMode=yes",
            "ExitOnForwardFailure=yes", "IdentitiesOnly=yes"]
    cmd = ["ssh", "-v", "-N", "-F", "/dev/null", *(["-c", cipher] if cipher else []),
           "-L", f"{lsink}:{HOST}:{sink}", "-L", f"{lecho}:{HOST}:{echo}",
           *(x for o in opts for x in ("-o", o)),
           "-i", str(tmp / "user_key"), "-p", str(port), f"{user}@{HOST}"]
    ssh = procs.start("ssh", cmd)
    wait_until(procs, lambda: probe(lsink, lecho), "ssh -L forwards")
    row.notes["command"] = shlex.join(cmd)
    found = negotiated_ciphers(procs)
    row.notes["cipher"] = found[0] if found else "unknown"
    if cipher and row.notes["cipher"] != cipher:
        raise RuntimeError(f"ssh negotiated {row.notes['cipher']}, not {cipher}")
    return lsink, lecho, [sshd.pid, ssh.pid]


def setup_ssh_jump(sink: int, echo: int, procs: Procs, row: Row,
                   cipher: str = SSH_CIPHERS["ssh-jump"]) -> tuple[int, int, list[int]]:
    """`ssh -L` to a second sshd through a first one with ProxyJump (`ssh -J`): the
    forwarded bytes cross ssh, the jump sshd (a direct-tcpip channel) and the target
    sshd. ProxyJump runs a second ssh (`ssh -W`) as a child of the first and passes it
    -F and -v but no -o, -i or -c: both hops are set up in one ssh_config, each with
    `cipher`. CPU counts both sshds and the ssh process tree (the inner ssh included)."""
    check_ssh_tools()
    tmp = procs.tmp
    jump_port, jump = start_sshd(procs, "sshd-jump")
    target_port, target = start_sshd(procs, "sshd-target")
    user = pwd.getpwuid(os.getuid()).pw_name
    config = tmp / "ssh_config"
    common = [f"  HostName {HOST}", f"  User {user}", f"  IdentityFile {tmp / 'user_key'}",
              "  IdentitiesOnly yes", "  StrictHostKeyChecking no",
              "  UserKnownHostsFile /dev/null", "  BatchMode yes", f"  Ciphers {cipher}"]
    config.write_text("\n".join([
        "Host roam-bench-jump", f"  Port {jump_port}", *common,
        "Host roam-bench-target", f"  Port {target_port}", *common,
        "  ExitOnForwardFailure yes", ""]))
    lsink, lecho = free_port(), free_port()
    cmd = ["ssh", "-v", "-N", "-F", str(config), "-J", "roam-bench-jump",
           "-L", f"{lsink}:{HOST}:{sink}", "-L", f"{lecho}:{HOST}:{echo}", "roam-bench-target"]
    ssh = procs.start("ssh", cmd)
    wait_until(procs, lambda: probe(lsink, lecho), "ssh -J -L forwards")
    row.notes["command"] = shlex.join(cmd)
    found = negotiated_ciphers(procs)
    row.notes["cipher"] = " / ".join(found) if found else "unknown"
    if len(found) != 2 or any(c != cipher for c in found):
        raise RuntimeError(f"ssh -J negotiated {row.notes['cipher']} (jump / target), "
                           f"not {cipher} on both hops")
    return lsink, lecho, [jump.pid, target.pid, ssh.pid]


def setup_pyforward(sink: int, echo: int, procs: Procs, row: Row) -> tuple[int, int, list[int]]:
    """Two bench/pyforward.py processes chained per destination, as roam chains its
    client and server: what the daemons' event loops and system calls cost alone."""
    pids = []
    ports = []
    for dest in (sink, echo):
        to = dest
        for hop in ("server", "client"):
            proc = procs.start(f"pyforward {hop} {dest}", [
                sys.executable, str(ROOT / "bench" / "pyforward.py"), "--to", str(to)],
                stdout=subprocess.PIPE)
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 10)
            line = proc.stdout.readline() if ready else b""
            if not line.strip().isdigit():
                procs.check_alive()
                raise RuntimeError("pyforward printed no port")
            to = int(line)
            pids.append(proc.pid)
        ports.append(to)
    wait_until(procs, lambda: probe(ports[0], ports[1]), "pyforward")
    # CPU is counted for the two forwarders a byte crosses, as for roam's two daemons.
    return ports[0], ports[1], pids


SETUPS: dict[str, Setup] = {
    "direct": lambda sink, echo, procs, row: (sink, echo, []),
    "pyforward": setup_pyforward,
    "roam": setup_roam,
    "roam-chacha": lambda s, e, p, r: setup_roam(s, e, p, r, "chachapoly"),
    "roam-asyncio": lambda s, e, p, r: setup_roam(s, e, p, r, event_loop="asyncio"),
    "roam-relay": lambda s, e, p, r: setup_roam(s, e, p, r, relay=True),
    "ssh-aes": lambda s, e, p, r: setup_ssh(s, e, p, r, SSH_CIPHERS["ssh-aes"]),
    "ssh-chacha": lambda s, e, p, r: setup_ssh(s, e, p, r, SSH_CIPHERS["ssh-chacha"]),
    "ssh-jump": setup_ssh_jump,
}


def timed_run(port: int, nbytes: int, streams: int, pids: list[int]) -> dict[str, Any]:
    """One throughput run with the CPU time the daemons used during it."""
    before = cpu_seconds(pids) if pids else 0.0
    run = load.throughput(HOST, port, nbytes, streams)
    if pids:
        run["cpu_s"] = cpu_seconds(pids) - before
        run["cpu_s_per_gib"] = per_gib(run["cpu_s"], run["bytes"])
    return run


def timed_latency(port: int, rounds: int, pids: list[int]) -> dict[str, Any]:
    """One latency run with the CPU time the daemons used per round trip: unlike the
    round trip's wall time, which waits on the machine's scheduler, it is the
    daemons' own cost, and it varies little from run to run."""
    before = cpu_seconds(pids) if pids else 0.0
    run = load.latency(HOST, port, rounds)
    if pids:
        # The warm-up rounds ran too: count them.
        run["cpu_us_per_round"] = ((cpu_seconds(pids) - before) * 1e6
                                   / (run["rounds"] + load.WARMUP))
    return run


def measure(keys: list[str], sink: int, echo: int, args: argparse.Namespace,
            stack: contextlib.ExitStack) -> list[Row]:
    """Every path's daemons up at once, then the runs interleaved: run i of each
    path before run i+1 of any, so that a machine whose speed drifts during the
    benchmark (other tenants, thermal limits) shifts every path alike."""
    rows = [Row(key, LABELS[key]) for key in keys]
    live: list[tuple[Row, Procs, int, int, list[int]]] = []
    for row in rows:
        print(f"bench: starting {row.path} ...", file=sys.stderr, flush=True)
        procs = Procs(Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix=f"roam-bench-{row.key}-"))))
        stack.callback(procs.close)
        try:
            lsink, lecho, pids = SETUPS[row.key](sink, echo, procs, row)
        except NotRunError as exc:
            row.status, row.error = "not run", str(exc)
            continue
        except Exception as exc:
            row.status, row.error = "failed", f"{type(exc).__name__}: {exc}"
            continue
        live.append((row, procs, lsink, lecho, pids))
    for run in range(args.runs):
        for row, procs, lsink, lecho, pids in live:
            if row.status != "ok":
                continue
            print(f"bench: run {run + 1}/{args.runs}: {row.path}", file=sys.stderr, flush=True)
            try:
                row.runs.append(timed_run(lsink, args.bytes, 1, pids))
                row.par_runs.append(timed_run(lsink, args.bytes, args.streams, pids))
                row.latency_runs.append(timed_latency(lecho, args.rounds, pids))
                procs.check_alive()
            except Exception as exc:
                row.status, row.error = "failed", f"{type(exc).__name__}: {exc}"
    for row in rows:
        summarize(row)
    return rows


def summarize(row: Row) -> None:
    """Medians of what the runs measured (a failed row keeps what it got, unused)."""
    row.mbps = median_or_none(r["mbps"] for r in row.runs)
    row.mbps_par = median_or_none(r["mbps"] for r in row.par_runs)
    row.cpu_gib = median_or_none(r.get("cpu_s_per_gib") for r in row.runs)
    row.cpu_gib_par = median_or_none(r.get("cpu_s_per_gib") for r in row.par_runs)
    row.p50_us = median_or_none(r["p50_us"] for r in row.latency_runs)
    row.p99_us = median_or_none(r["p99_us"] for r in row.latency_runs)
    row.cpu_rt_us = median_or_none(r.get("cpu_us_per_round") for r in row.latency_runs)


def ssh_facts() -> dict[str, str]:
    facts = {"openssh": "not installed", "ssh cipher": "n/a"}
    if shutil.which("ssh"):  # ssh -V prints on stderr; -G shows the default cipher order
        res = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10,
                             check=False)
        facts["openssh"] = (res.stderr or res.stdout).strip()
        cfg = run_ok(["ssh", "-G", "-F", "/dev/null", "-p", "22", f"x@{HOST}"])
        if ciphers := re.search(r"^ciphers (\S+)", cfg, re.M):
            facts["ssh cipher"] = ciphers.group(1).split(",")[0]
    return facts


def ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value is not None and reference else None


def table_row(r: Row, ref_mbps: float | None, args: argparse.Namespace) -> str:
    if r.status != "ok":
        return f"| {r.path} | {cell(r.status + ': ' + r.error)} |" + " — |" * 7
    tput = fmt(r.mbps)
    if late := [f"{x['bytes'] / 1e6:.0f} MB" for x in r.runs + r.par_runs if x["timed_out"]]:
        tput += f" (hit the {load.RUN_LIMIT:g} s limit, moved {', '.join(late)})"
    p99 = fmt(r.p99_us)
    if any(x["rounds"] < args.rounds for x in r.latency_runs):
        p99 += " (rounds cut by the time limit)"
    return (f"| {r.path} | {tput} | {fmt(r.mbps_par)} | {fmt(ratio(r.mbps, ref_mbps), 2)} | "
            f"{fmt(r.cpu_gib, 2)} | {fmt(r.cpu_gib_par, 2)} | {fmt(r.p50_us)} | {p99} | "
            f"{fmt(r.cpu_rt_us)} |")


def draw(rows: list[Row], args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The three figures of the section; empty when matplotlib is missing."""
    ok = [r for r in rows if r.status == "ok"]
    names = [textwrap.fill(r.path, 18) for r in ok]
    note = f"median of {args.runs} runs; bench/run.py"
    figs = [
        ("Throughput, loopback", plots.grouped_bars(
            args.img / "session-throughput.png", "Throughput on loopback (MB/s)", "MB/s", names,
            {"1 stream": [r.mbps for r in ok],
             f"{args.streams} streams": [r.mbps_par for r in ok]}, note)),
        ("Latency, loopback", plots.grouped_bars(
            args.img / "session-latency.png", "64-byte request/response latency (µs)", "µs",
            names, {"p50": [r.p50_us for r in ok], "p99": [r.p99_us for r in ok]}, note)),
        ("CPU per GiB, loopback", plots.grouped_bars(
            args.img / "session-cpu.png", "CPU seconds per GiB, both daemons together",
            "CPU s/GiB", [n for n, r in zip(names, ok, strict=True) if r.cpu_gib is not None],
            {"1 stream": [r.cpu_gib for r in ok if r.cpu_gib is not None],
             f"{args.streams} streams": [r.cpu_gib_par for r in ok if r.cpu_gib is not None]},
            note)),
    ]
    return [(title, path) for title, path in figs if path is not None]


def pct(value: float | None, reference: float | None) -> str:
    share = ratio(value, reference)
    return "—" if share is None else f"{100 * share:.0f}%"


def added(value: float | None, reference: float | None, digits: int = 1) -> str:
    return "—" if value is None or reference is None else f"{value - reference:+.{digits}f}"


def hop_lines(by: dict[str, Row], k: int) -> list[str]:
    """What one hop costs each kind of path, measured in this run: the path with the
    hop against the same path without it (HOPS)."""
    lines: list[str] = []
    for key, base_key, what in HOPS:
        hop, base = by.get(key), by.get(base_key)
        if hop is None and base is None:
            continue
        vs = f"{LABELS[key]} against {LABELS[base_key]}"
        if hop is None or base is None or hop.status != "ok" or base.status != "ok":
            why = ", ".join(f"{LABELS[x]} {by[x].status if x in by else 'not selected'}"
                            for x in (key, base_key))
            lines.append(f"- {what.capitalize()} ({vs}): not available ({why}).")
            continue
        share = ratio(hop.mbps, base.mbps)
        delta = (hop.p50_us - base.p50_us
                 if hop.p50_us is not None and base.p50_us is not None else None)
        tput = (f"single stream **{pct(hop.mbps, base.mbps)}** of the throughput without it "
                f"({fmt(hop.mbps)} against {fmt(base.mbps)} MB/s")
        lat = (f"p50 **{added(hop.p50_us, base.p50_us)} µs** ({fmt(hop.p50_us)} against "
               f"{fmt(base.p50_us)} µs")
        if key == "roam-relay":  # the relay's aims: 90% of the throughput, < 30 µs per hop
            tput += "; aim: at least 90%, " + (
                "—" if share is None else "met" if share >= 0.9 else "not met")
            lat += "; aim: under 30 µs, " + (
                "—" if delta is None else "met" if delta < 30 else "not met")
        lines.append(
            f"- {what.capitalize()} ({vs}): {tput}), {k} streams "
            f"{pct(hop.mbps_par, base.mbps_par)}; {lat}); CPU "
            f"{added(hop.cpu_gib, base.cpu_gib, 2)} s/GiB and "
            f"{added(hop.cpu_rt_us, base.cpu_rt_us)} µs per round trip.")
    if lines:
        lines[:0] = ["", "One hop between the ends, for each kind of path (the path through the "
                     "hop against the same path without it, in this run):", ""]
    return lines


def render(rows: list[Row], facts: dict[str, str], args: argparse.Namespace,
           figures: list[tuple[str, Path]]) -> str:
    by = {r.key: r for r in rows}
    roam, ref = by.get("roam"), by.get(REFERENCE)
    ref_mbps = ref.mbps if ref and ref.status == "ok" else None
    k = args.streams
    lines = ["## Session throughput and latency (loopback)", "",
             f"| path | 1 stream MB/s | {k} streams MB/s | 1 stream, ratio to ssh -L aes128-gcm "
             f"| CPU s/GiB, 1 stream | CPU s/GiB, {k} streams | p50 µs | p99 µs "
             "| CPU µs per round trip |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
             *(table_row(r, ref_mbps, args) for r in rows), ""]
    if roam and roam.status == "ok" and roam.mbps and ref and ref_mbps:
        lines.append(
            f"roam / ssh -L (aes128-gcm) single-stream throughput ratio: "
            f"**{roam.mbps / ref_mbps:.2f}** (roam {roam.mbps:.1f} MB/s, ssh -L {ref_mbps:.1f} "
            f"MB/s; aim: at least 1.0, {'met' if roam.mbps >= ref_mbps else 'not met'}); "
            f"with {k} streams {fmt(ratio(roam.mbps_par, ref.mbps_par), 2)}.")
        direct = by.get("direct")
        if (direct and direct.p50_us is not None and roam.p50_us is not None
                and ref.p50_us is not None):
            added, ssh_added = roam.p50_us - direct.p50_us, ref.p50_us - direct.p50_us
            lines += ["", f"Latency added to a direct connection's p50: roam **{added:.1f} µs**, "
                      f"ssh -L {ssh_added:.1f} µs (aim: roam adds no more than ssh -L, "
                      f"{'met' if added <= ssh_added else 'not met'}); CPU per round trip, both "
                      f"daemons: roam {fmt(roam.cpu_rt_us)} µs, ssh -L {fmt(ref.cpu_rt_us)} µs."]
    else:
        why = ", ".join(f"{LABELS[key]} {by[key].status if key in by else 'not selected'}"
                        for key in ("roam", REFERENCE))
        lines.append(f"roam / ssh -L (aes128-gcm) ratio: not available ({why}; see the table).")
    lines += hop_lines(by, k)
    lines += [""] + [f"![{title}](img/{path.name})" for title, path in figures]
    if not figures:
        lines.append("(No figures: matplotlib is not installed; `pip install -e '.[bench]'`.)")
    lines += [
        "", f"Every figure is the median of {args.runs} runs; every path's daemons run "
        "from the start, and the runs are interleaved (run 1 of each path, then run 2 of "
        "each, ...), so drift in the machine's speed touches all paths. Throughput: "
        f"{args.bytes} bytes on one TCP connection, and {args.bytes} bytes shared by {k} "
        f"connections sending at once (at most {load.RUN_LIMIT:g} s of sending), to a sink "
        "that replies with the "
        "byte count after the half-close; MB/s = 10^6 bytes/s from the first byte to the last "
        "reply. CPU s/GiB: user + system time of both daemons of the path (roam client and "
        "server; ssh and sshd with its children) during the throughput runs, per 2^30 bytes "
        "moved; direct has no daemons. Through one relay it counts the relay too; through a "
        "jump host, both sshds with their children and ssh with the second ssh that "
        "ProxyJump starts (`ssh -W`, which adds its own encryption for the jump hop around "
        "the end-to-end one). Latency: one connection, 64-byte request, 64-byte "
        f"echo, {args.rounds} rounds per run (TCP_NODELAY, {load.WARMUP} warm-up rounds not "
        "counted in the percentiles); CPU per round trip is the user + system time of both "
        "daemons over all rounds of the run, warm-up included, per round. The benchmark "
        "client, the sink and the daemons share the machine's CPUs.",
        "",
        f"- Date: {facts['date']}",
        f"- Machine: {machine_line(facts)}",
        f"- OpenSSH: {facts['openssh']}; default cipher {facts['ssh cipher']}; rows run with "
        "`ssh -c aes128-gcm@openssh.com` and `ssh -c chacha20-poly1305@openssh.com`, the jump "
        "host's with `Ciphers aes128-gcm@openssh.com` for both hops in its ssh_config "
        "(negotiated: " + ", ".join(
            f"{r.path}: {r.notes.get('cipher', 'n/a')}" for r in rows if r.key in SSH_CIPHERS)
        + "); roam's default cipher is AES-256-GCM on a CPU with AES instructions",
        f"- Run as: `{facts['command']}`", f"- Reproduce: `{facts['reproduce']}`"]
    return "\n".join(lines)


def parse_only(text: str) -> list[str]:
    """Path keys from a comma-separated list, aliases expanded, in table order."""
    asked = [p.strip() for p in text.split(",") if p.strip()]
    keys = {k for p in asked for k in ALIASES.get(p, [p])}
    unknown = sorted(keys - set(LABELS))
    if unknown or not keys:
        raise ValueError(f"--only takes a subset of {','.join([*LABELS, *ALIASES])}, "
                         f"got {unknown or 'nothing'}")
    return [k for k in LABELS if k in keys]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=1 << 30, help="bytes per throughput run")
    parser.add_argument("--rounds", type=int, default=5000, help="latency rounds per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--streams", type=int, default=8, help="parallel streams")
    parser.add_argument("--only", default=",".join(LABELS), help="comma-separated paths")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--img", type=Path, default=None,
                        help="directory for the PNGs (default: img/ beside --out)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "session.json",
                        help="raw results (default bench/results/session.json)")
    args = parser.parse_args(argv)
    try:
        args.only = parse_only(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    if min(args.bytes, args.rounds, args.runs, args.streams) <= 0:
        parser.error("--bytes, --rounds, --runs and --streams must be positive")
    if args.streams > 64 or args.runs > 20:
        parser.error("at most 64 streams and 20 runs")
    args.img = args.img or args.out.parent / "img"
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv[1:])
    facts = {**machine_facts(), **ssh_facts(), "command": shlex.join(["python", *argv]),
             "reproduce": shlex.join([
                 "python", "bench/run.py", "--bytes", str(args.bytes), "--rounds",
                 str(args.rounds), "--runs", str(args.runs), "--streams", str(args.streams),
                 "--only", ",".join(args.only)])}
    with tempfile.TemporaryDirectory(prefix="roam-bench-servers-") as tmp, \
            contextlib.ExitStack() as stack:
        procs = Procs(Path(tmp))
        stack.callback(procs.close)
        sink, echo = start_server(procs, "sink"), start_server(procs, "echo")
        rows = measure(args.only, sink, echo, args, stack)
        procs.check_alive()
    section = render(rows, facts, args, draw(rows, args))
    print(section)
    write_section(args.out, START, END, section)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"facts": facts, "bytes": args.bytes, "rounds": args.rounds,
                                     "runs": args.runs, "streams": args.streams,
                                     "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    print(f"bench: wrote {args.out} and {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
