"""Compression on a slow link (network lab): bytes on the wire and completion time.

    python bench/compression.py [--runs 3] [--only direct,roam-off,roam,roam-zstd,ssh,ssh-c]
                                [--out docs/benchmarks.md] [--json bench/results/compression.json]

One lab (`NetLab(wifi_delay_ms=50, mtu=1500)`, the wifi link capped at 2 Mbit/s each way
by tbf: 100 ms round trip) for all paths. A real HTTP server (`python3 -m http.server`,
one request per connection) serves three workloads in the server namespace, and curl
fetches them in the mobile namespace through each path:

- json: an API client's session, 24 JSON responses of 40 KiB, fetched one after another;
- log: one 1 MiB text log (syslog-style lines), streamed in one response;
- compressed: one 512 KiB gzip -9 file (already compressed; nothing left to gain).

Paths: direct TCP; roam --compress off; roam (default: auto); roam --compress zstd
(level 3), each flag given to both daemons; ssh -L; ssh -C -L (OpenSSH's zlib). Each
fetch is timed from curl's start to its exit, and checked byte for byte against the
served files. Bytes on the wire: an nftables counter per path in the mobile namespace,
on every TCP or UDP packet between mobile and that path's server port (whole IP packets,
both directions), read before and after. All paths are up from the start and the runs
are interleaved (run 1 of every path and workload, then run 2, ...). Must run as root;
every process is started through the lab and ended by its own Popen, and the lab is
always torn down. Rewrites the `bench:compression` section of docs/benchmarks.md and
draws docs/img/compression-*.png.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "src"))

import plots
from benchlib import (
    ROOT,
    NotRunError,
    cell,
    fmt,
    machine_facts,
    machine_line,
    median_or_none,
    run_ok,
    with_range,
    write_section,
)
from roam.lab.netlab import NetLab
from tunnels import ENV, Daemons

START, END = "<!-- bench:compression:start -->", "<!-- bench:compression:end -->"
RATE = 2_000_000  # bits/s each way on the wifi link
ONE_WAY_MS = 50.0  # each way: a 100 ms round trip
LAB_MTU = 1500
HTTP_PORT = 8080
SSH_PORTS = {"ssh": 2222, "ssh-c": 2223}
ROAM_PORTS = {"roam-off": 7000, "roam": 7001, "roam-zstd": 7002}
FORWARD_PORTS = {"roam-off": 7100, "roam": 7101, "roam-zstd": 7102, "ssh": 7103, "ssh-c": 7104}
LABELS = {"direct": "direct TCP", "roam-off": "roam --compress off",
          "roam": "roam (--compress auto)", "roam-zstd": "roam --compress zstd",
          "ssh": "ssh -L", "ssh-c": "ssh -C -L"}
WORKLOADS = {"json": "JSON API (24 x 40 KiB)", "log": "text log (1 MiB)",
             "compressed": "gzip file (512 KiB)"}
READY_LIMIT = 30.0
FETCH_LIMIT = 120.0  # seconds for one workload on one path
SSHD = Path("/usr/sbin/sshd")


# -- the workloads ------------------------------------------------------------

_WORDS = ["alpha", "beta", "gamma", "delta", "active", "pending", "error", "user",
          "account", "session", "order", "invoice", "device", "region", "eu-west", "us-east"]


def _json_doc(rng: random.Random, size: int) -> bytes:
    """One API response: a page of records, as a REST API returns them: records
    are added until the page's JSON reaches `size`, then it is cut there."""
    items: list[dict[str, Any]] = []
    body = b""
    # Each record's own indented JSON, plus what nesting adds (two spaces a
    # line, a comma and a line break): a bound above what it adds to the page,
    # so the whole page is dumped only once it might have reached `size`, not
    # once per record (quadratic: most of the time the workloads took).
    bound = len(json.dumps({"page": 1, "count": 10**9, "items": [None]}, indent=1))
    while bound < size or len(body) < size:
        if bound >= size:
            body = json.dumps({"page": 1, "count": len(items), "items": items},
                              indent=1).encode()
            if len(body) >= size:
                break
        i = len(items)
        items.append({
            "id": 100000 + rng.randrange(900000), "type": rng.choice(_WORDS[8:14]),
            "status": rng.choice(_WORDS[4:7]), "owner": f"{rng.choice(_WORDS[7:9])}-{i}",
            "created": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T"
                       f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
            "amount": round(rng.random() * 10000, 2), "currency": "EUR",
            "tags": rng.sample(_WORDS, 3), "region": rng.choice(_WORDS[14:]),
            "links": {"self": f"/api/v1/items/{i}", "owner": f"/api/v1/users/{i % 97}"}})
        own = json.dumps(items[-1], indent=1)
        bound += len(own) + 2 * (own.count("\n") + 1) + 2
    return body[:size]


def _log(rng: random.Random, size: int) -> bytes:
    lines: list[str] = []
    total = 0
    services = ["sshd", "nginx", "kernel", "systemd", "cron", "postgres", "app"]
    messages = ["connection from {ip} port {port}", "GET /api/v1/items/{n} 200 {ms}ms",
                "session opened for user {user}", "checkpoint complete: wrote {n} buffers",
                "worker {n} finished job in {ms} ms", "link eth0 up, speed 1000 Mbps",
                "Accepted publickey for {user} from {ip} port {port}"]
    while total < size:
        line = (f"2026-12-01T{rng.randrange(24):02d}:{rng.randrange(60):02d}:"
                f"{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z host-{rng.randrange(8)} "
                f"{rng.choice(services)}[{rng.randrange(100, 9999)}]: "
                + rng.choice(messages).format(
                    ip=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
                    port=rng.randrange(1024, 65536), n=rng.randrange(100000),
                    ms=rng.randrange(1, 900), user=rng.choice(["alice", "bob", "deploy"])))
        lines.append(line)
        total += len(line) + 1
    return ("\n".join(lines) + "\n").encode()[:size]


def make_workloads(root: Path) -> dict[str, list[str]]:
    """Write the served files under root; workload -> paths relative to it."""
    rng = random.Random(2026)
    (root / "api").mkdir()
    names = []
    for i in range(24):
        name = f"api/items-{i:02d}.json"
        (root / name).write_bytes(_json_doc(rng, 40 * 1024))
        names.append(name)
    (root / "app.log").write_bytes(_log(rng, 1 << 20))
    # An archive as people ship them: a gzip -9 of another log, cut to 512 KiB.
    (root / "archive.gz").write_bytes(gzip.compress(_log(rng, 3 << 20), 9)[:512 * 1024])
    return {"json": names, "log": ["app.log"], "compressed": ["archive.gz"]}


# -- measuring ------------------------------------------------------------------

@dataclass
class Cell:
    runs: list[dict[str, float]] = field(default_factory=list)
    status: str = "ok"
    error: str = ""

    def median(self, key: str) -> float | None:
        return median_or_none(r[key] for r in self.runs)


@dataclass
class Row:
    key: str
    path: str
    status: str = "ok"  # ok | failed | not measured
    error: str = ""
    cells: dict[str, Cell] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def wire_port(key: str) -> int:
    """The server-side port of a path's traffic on the link (its transport's)."""
    if key == "direct":
        return HTTP_PORT
    return ROAM_PORTS[key] if key.startswith("roam") else SSH_PORTS[key]


def count_wire(lab: NetLab, tmp: Path) -> None:
    """nftables counters in the mobile namespace, one per path, for every packet
    (TCP or UDP, whole IP packets) between mobile and the server's port of that path:
    a path's bytes on the wire, its own keepalives included and no other path's."""
    server = lab.addresses["server"]
    lines = ["table inet roambench {"]
    rules_out, rules_in = [], []
    for key in LABELS:
        port = wire_port(key)
        lines.append(f"  counter p{port} {{ }}")
        rules_out.append(f"    ip daddr {server} meta l4proto {{ tcp, udp }} th dport {port} "
                         f'counter name "p{port}"')
        rules_in.append(f"    ip saddr {server} meta l4proto {{ tcp, udp }} th sport {port} "
                        f'counter name "p{port}"')
    lines += ["  chain out {", "    type filter hook output priority 0; policy accept;",
              *rules_out, "  }", "  chain in {",
              "    type filter hook input priority 0; policy accept;", *rules_in, "  }", "}"]
    script = tmp / "count.nft"
    script.write_text("\n".join(lines) + "\n")
    lab.check("mobile", ["nft", "-f", str(script)])


def wire_bytes(lab: NetLab, port: int) -> int:
    """Bytes of one path on the link so far (both directions)."""
    out = json.loads(lab.check("mobile", ["nft", "-j", "list", "counter", "inet", "roambench",
                                          f"p{port}"]))
    return sum(int(item["counter"]["bytes"]) for item in out["nftables"] if "counter" in item)


def fetch(lab: NetLab, key: str, port: int, host: str, names: list[str], served: Path,
          tmp: Path) -> dict[str, float]:
    """curl the names through one path; seconds and wire bytes, after checking every byte."""
    out = Path(tempfile.mkdtemp(prefix="got-", dir=tmp))
    try:
        before = wire_bytes(lab, wire_port(key))
        started = time.perf_counter()
        proc = lab.run("mobile", ["curl", "--silent", "--show-error", "--fail",
                                  "--max-time", str(int(FETCH_LIMIT)), "--output-dir", str(out),
                                  "--remote-name-all",
                                  *(f"http://{host}:{port}/{n}" for n in names)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=FETCH_LIMIT + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"curl did not finish within {FETCH_LIMIT:g} s") from None
        seconds = time.perf_counter() - started
        wire = wire_bytes(lab, wire_port(key)) - before
        if proc.returncode != 0:
            raise RuntimeError(f"curl exited {proc.returncode}: {err.decode(errors='replace')}")
        for name in names:
            got = out / Path(name).name
            if not got.exists() or (hashlib.sha256(got.read_bytes()).digest()
                                    != hashlib.sha256((served / name).read_bytes()).digest()):
                raise RuntimeError(f"{name} did not arrive intact")
        return {"seconds": seconds, "wire_bytes": wire}
    finally:
        shutil.rmtree(out, ignore_errors=True)


# -- the paths ------------------------------------------------------------------

def setup_roam(lab: NetLab, path: Daemons, row: Row, compress: str) -> tuple[str, int]:
    roam = [sys.executable, "-m", "roam"]
    tmp = path.tmp
    server_pub = run_ok([*roam, "keygen", str(tmp / "server.key")], ENV).strip()
    client_pub = run_ok([*roam, "keygen", str(tmp / "client.key")], ENV).strip()
    (tmp / "authorized_keys").write_text(client_pub + "\n")
    server, port = lab.addresses["server"], ROAM_PORTS[row.key]
    forward = FORWARD_PORTS[row.key]
    path.start("server", f"{row.key}-server", [
        *roam, "server", "--listen", f"{server}:{port}", "--key", str(tmp / "server.key"),
        "--authorized-keys", str(tmp / "authorized_keys"),
        "--allow", f"127.0.0.1:{HTTP_PORT}", "--control", str(tmp / "server.sock"),
        "--compress", compress])
    path.start("mobile", f"{row.key}-client", [
        *roam, "client", "--server", f"{server}:{port}", "--server-key", server_pub,
        "--key", str(tmp / "client.key"), "--control", str(tmp / "client.sock"),
        "--compress", compress, "--forward", f"127.0.0.1:{forward}=127.0.0.1:{HTTP_PORT}"])
    # Both daemons: each compresses what it sends as its own flag says, and the
    # responses, most of the bytes, are the server's to compress.
    row.notes["setup"] = f"roam server and roam client both with --compress {compress}"
    return "127.0.0.1", forward


def setup_sshd(lab: NetLab, tmp: Path) -> Path:
    """sshd on the server's address, port 2222, throwaway keys; returns the user key."""
    if not SSHD.exists() or shutil.which("ssh") is None:
        raise NotRunError("OpenSSH is not installed (Debian: openssh-server, openssh-client)")
    for key in ("host_key", "user_key"):
        run_ok(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)])
    (tmp / "authorized_keys").write_text((tmp / "user_key.pub").read_text())
    with contextlib.suppress(PermissionError):
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation
    (tmp / "sshd_config").write_text("\n".join([
        *(f"Port {port}" for port in SSH_PORTS.values()),
        f"ListenAddress {lab.addresses['server']}",
        f"HostKey {tmp / 'host_key'}", f"PidFile {tmp / 'sshd.pid'}",
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}", "StrictModes no", "UsePAM no",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", "AllowTcpForwarding yes", ""]))
    return tmp / "user_key"


def setup_ssh(lab: NetLab, path: Daemons, row: Row, key: Path, compress: bool) -> tuple[str, int]:
    forward = FORWARD_PORTS[row.key]
    cmd = ["ssh", "-v", "-N", "-F", "/dev/null", *(["-C"] if compress else []),
           "-L", f"127.0.0.1:{forward}:127.0.0.1:{HTTP_PORT}",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
           "-i", str(key), "-p", str(SSH_PORTS[row.key]), f"root@{lab.addresses['server']}"]
    path.start("mobile", row.key, cmd)
    path.wait_log(row.key, "Entering interactive session")
    log = (path.tmp / f"{row.key}.log").read_text(errors="replace")
    cipher = next((line.split("cipher:")[1].split()[0] for line in log.splitlines()
                   if "kex: server->client cipher:" in line), "unknown")
    row.notes["setup"] = (f"ssh {'-C ' if compress else ''}-L (cipher {cipher}"
                          f"{', zlib compression' if compress else ''})")
    return "127.0.0.1", forward


def wait_serves(lab: NetLab, path: Daemons, key: str, host: str, port: int, served: Path,
                tmp: Path) -> None:
    deadline = time.monotonic() + READY_LIMIT
    last = ""
    while time.monotonic() < deadline:
        path.check_alive()
        try:
            fetch(lab, key, port, host, ["probe.txt"], served, tmp)
            return
        except RuntimeError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise RuntimeError(f"path does not carry HTTP after {READY_LIMIT:g} s ({last})")


# -- the section ------------------------------------------------------------------

def raw_size(served: Path, names: list[str]) -> int:
    return sum((served / n).stat().st_size for n in names)


def render(rows: list[Row], raw: dict[str, int], facts: dict[str, str],
           args: argparse.Namespace, figures: list[tuple[str, Path]]) -> str:
    lines = ["## Compression on a slow link (network lab, 2 Mbit/s, 100 ms RTT)", "",
             "| workload | path | completion s | on the wire KB | wire / raw size |",
             "|---|---|---:|---:|---:|"]
    for w, label in WORKLOADS.items():
        for r in rows:
            c = r.cells.get(w)
            if r.status == "ok" and c is None and w not in args.workloads:
                lines.append(f"| {label} | {r.path} | not run (--workloads) | — | — |")
                continue
            if r.status != "ok" or c is None or c.status != "ok":
                why = r.error if r.status != "ok" else (c.error if c else "not run")
                lines.append(f"| {label} | {r.path} | {cell('failed: ' + why)} | — | — |")
                continue
            wire = c.median("wire_bytes")
            lines.append(
                f"| {label} | {r.path} | {with_range([x['seconds'] for x in c.runs], 2)} | "
                f"{fmt(wire / 1000 if wire is not None else None)} | "
                f"{fmt(wire / raw[w] if wire is not None else None, 2)} |")
    lines += ["", *verdicts(rows, raw), ""]
    lines += [f"![{title}](img/{p.name})" for title, p in figures]
    if not figures:
        lines.append("(No figures: matplotlib is not installed; `pip install -e '.[bench]'`.)")
    lines += [
        "", f"Every figure is the median of {args.runs} runs (min-max in parentheses). "
        "Raw sizes: " + ", ".join(f"{WORKLOADS[w]} {raw[w]} bytes" for w in WORKLOADS)
        + ". Served by `python3 -m http.server` in the server namespace, one request per "
        "connection, fetched by one `curl --remote-name-all` per workload in the mobile "
        "namespace and checked byte for byte. The lab's wifi link has 50 ms of delay each "
        f"way and a tbf rate of {RATE // 1000} kbit/s each way (about 100 ms of queue). On "
        "the wire: the path's own packets during the fetch, both directions, counted by "
        "nftables in the mobile namespace by the path's server port (IP headers, "
        "acknowledgements and the path's keepalives included), so even direct TCP is above "
        "1.00. Completion: from curl's start to its exit, TCP or channel setup included. "
        "Every path was up from the start and the runs are interleaved.", ""]
    lines += [f"- {r.path}: {r.notes['setup']}" for r in rows if r.notes.get("setup")]
    lines += [f"- Date: {facts['date']}", f"- Machine: {machine_line(facts)}",
              f"- Versions: {facts['versions']}",
              f"- Run as: `{facts['command']}` (as root)", f"- Reproduce: `{facts['reproduce']}`"]
    return "\n".join(lines)


def verdicts(rows: list[Row], raw: dict[str, int]) -> list[str]:
    """The aims, each with what was measured."""
    by = {r.key: r for r in rows if r.status == "ok"}

    def get(key: str, w: str, what: str) -> float | None:
        row = by.get(key)
        c = row.cells.get(w) if row else None
        return c.median(what) if c and c.status == "ok" else None

    out = []
    j_roam, j_ssh = get("roam", "json", "wire_bytes"), get("ssh-c", "json", "wire_bytes")
    t_roam, t_ssh = get("roam", "json", "seconds"), get("ssh-c", "json", "seconds")
    if j_roam is not None:
        share = j_roam / raw["json"]
        out.append(f"- JSON on the wire with roam (auto): **{share:.2f}** of its raw size "
                   f"(aim: 0.25 or less, {'met' if share <= 0.25 else 'not met'}).")
    if j_roam is not None and j_ssh is not None and t_roam is not None and t_ssh is not None:
        ok = j_roam <= j_ssh and t_roam <= t_ssh
        out.append(f"- JSON, roam (auto) against ssh -C -L: {j_roam / 1000:.1f} KB against "
                   f"{j_ssh / 1000:.1f} KB on the wire, {t_roam:.2f} s against {t_ssh:.2f} s "
                   f"(aim: at least as small and as fast, {'met' if ok else 'not met'}).")
    c_on, c_off = get("roam", "compressed", "seconds"), get("roam-off", "compressed", "seconds")
    if c_on is not None and c_off is not None:
        out.append(f"- Already compressed file, roam (auto) against roam --compress off: "
                   f"{c_on:.2f} s against {c_off:.2f} s (aim: no slower; "
                   f"{'met' if c_on <= c_off * 1.02 else 'not met'}, within 2%).")
    return out


def draw(rows: list[Row], raw: dict[str, int], args: argparse.Namespace) -> list[
        tuple[str, Path]]:
    ok = [r for r in rows if r.status == "ok"]
    cats = list(WORKLOADS)

    def series(what: str, scale: dict[str, float]) -> dict[str, list[float | None]]:
        out: dict[str, list[float | None]] = {}
        for r in ok:
            vals: list[float | None] = []
            for w in cats:
                c = r.cells.get(w)
                v = c.median(what) if c and c.status == "ok" else None
                vals.append(v / scale[w] if v is not None else None)
            out[r.path] = vals
        return out

    note = f"median of {args.runs} runs; bench/compression.py; lab wifi 2 Mbit/s, 100 ms RTT"
    names = [WORKLOADS[w] for w in cats]
    figs = [
        ("Bytes on the wire", plots.grouped_bars(
            args.img / "compression-wire.png", "Bytes on the wire / raw size", "share of raw",
            names, series("wire_bytes", {w: float(raw[w]) for w in cats}), note)),
        ("Completion time", plots.grouped_bars(
            args.img / "compression-time.png", "Completion time (s)", "s", names,
            series("seconds", dict.fromkeys(cats, 1.0)), note)),
    ]
    return [(title, p) for title, p in figs if p is not None]


def versions() -> str:
    res = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10, check=False)
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True, timeout=10,
                          check=False)
    import zstandard

    return (f"{(res.stderr or res.stdout).strip()}; {curl.stdout.split(chr(10))[0][:40]}; "
            f"zstd {zstandard.ZSTD_VERSION[0]}.{zstandard.ZSTD_VERSION[1]}."
            f"{zstandard.ZSTD_VERSION[2]} (python-zstandard {zstandard.__version__})")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--only", default=",".join(LABELS), help="comma-separated paths")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated workloads to fetch (the others are reported "
                        "as not run)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--img", type=Path, default=None,
                        help="directory for the PNGs (default: img/ beside --out)")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "bench" / "results" / "compression.json")
    args = parser.parse_args(argv)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    if not only or any(p not in LABELS for p in only):
        parser.error(f"--only takes a subset of {','.join(LABELS)}")
    args.only = [k for k in LABELS if k in only]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not workloads or any(w not in WORKLOADS for w in workloads):
        parser.error(f"--workloads takes a subset of {','.join(WORKLOADS)}")
    args.workloads = [w for w in WORKLOADS if w in workloads]
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be 1..20")
    args.img = args.img or args.out.parent / "img"
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv[1:])
    if os.geteuid() != 0:
        print("bench/compression.py needs root (network namespaces, TUN devices, tc); run "
              "it as root. Nothing was measured.", file=sys.stderr)
        return 2
    if shutil.which("curl") is None:
        print("bench/compression.py needs curl (Debian: curl)", file=sys.stderr)
        return 2
    rows = [Row(k, LABELS[k]) for k in args.only]
    with tempfile.TemporaryDirectory(prefix="roam-compression-") as tmp_name, \
            NetLab(wifi_delay_ms=ONE_WAY_MS, mtu=LAB_MTU) as lab, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        served = tmp / "served"
        served.mkdir()
        workloads = make_workloads(served)
        (served / "probe.txt").write_text("ready\n")
        raw = {w: raw_size(served, names) for w, names in workloads.items()}
        lab.set_rate("wifi", RATE)
        count_wire(lab, tmp)
        facts = {**machine_facts(), "versions": versions(),
                 "command": shlex.join(["python", *argv]),
                 "reproduce": shlex.join(["python", "bench/compression.py", "--runs",
                                          str(args.runs), "--only", ",".join(args.only),
                                          *(["--workloads", ",".join(args.workloads)]
                                            if args.workloads != list(WORKLOADS) else [])])}
        http = Daemons(lab, tmp)
        stack.callback(http.close)
        http.start("server", "http", ["python3", "-m", "http.server", str(HTTP_PORT),
                                      "--bind", "0.0.0.0", "--directory", str(served)])
        live: list[tuple[Row, Daemons, str, int]] = []
        key_file: Path | None = None
        for row in rows:
            work = tmp / row.key
            work.mkdir()
            path = Daemons(lab, work)
            stack.callback(path.close)
            print(f"compression: starting {row.path} ...", file=sys.stderr, flush=True)
            try:
                if row.key == "direct":
                    host, port = lab.addresses["server"], HTTP_PORT
                elif row.key.startswith("roam"):
                    mode = {"roam-off": "off", "roam": "auto", "roam-zstd": "zstd"}[row.key]
                    host, port = setup_roam(lab, path, row, mode)
                else:
                    if key_file is None:
                        sshd_dir = tmp / "sshd"
                        sshd_dir.mkdir()
                        key_file = setup_sshd(lab, sshd_dir)
                        http.start("server", "sshd", [str(SSHD), "-D", "-e", "-f",
                                                      str(sshd_dir / "sshd_config")])
                    host, port = setup_ssh(lab, path, row, key_file, row.key == "ssh-c")
                wait_serves(lab, path, row.key, host, port, served, tmp)
            except NotRunError as exc:
                row.status, row.error = "not measured", str(exc)
                continue
            except Exception as exc:
                row.status, row.error = "failed", f"{type(exc).__name__}: {exc}"
                continue
            live.append((row, path, host, port))
        for run in range(args.runs):
            for w, names in workloads.items():
                if w not in args.workloads:
                    continue
                for row, path, host, port in live:
                    c = row.cells.setdefault(w, Cell())
                    if c.status != "ok":
                        continue
                    try:
                        c.runs.append(fetch(lab, row.key, port, host, names, served, tmp))
                        path.check_alive()
                    except Exception as exc:
                        c.status, c.error = "failed", f"{type(exc).__name__}: {exc}"
                    got = c.runs[-1] if c.status == "ok" else {}
                    print(f"compression: run {run + 1}: {w}: {row.path}: {c.status} "
                          f"{got.get('seconds', 0):.2f} s {got.get('wire_bytes', 0)} B",
                          file=sys.stderr, flush=True)
    if lab.cleanup_errors:
        print(f"compression: lab cleanup: {'; '.join(lab.cleanup_errors)}", file=sys.stderr)
    section = render(rows, raw, facts, args, draw(rows, raw, args))
    print(section)
    write_section(args.out, START, END, section)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"facts": facts, "runs": args.runs, "raw": raw,
                                     "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    print(f"compression: wrote {args.out} and {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
