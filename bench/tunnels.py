"""Throughput through tunnels in the network lab: direct, roam, wireguard-go, OpenVPN.

    python bench/tunnels.py [--bytes N] [--runs N] [--streams K]
                            [--only direct,roam,wireguard,openvpn]
                            [--out docs/benchmarks.md] [--json bench/results/tunnels.json]

One lab (`roam.lab.netlab.NetLab(mtu=1500)`, no added delay) for all paths, each measured in turn
between the mobile and server namespaces over the wifi link: the sender
(`bench/load.py tput`, the same code bench/run.py uses) runs in `mobile`, the sink
(`bench/servers.py sink`) in `server`.

- direct: plain TCP to the server's address.
- roam: roam client in `mobile`, roam server in `server`, the sink reached by a forward.
- wireguard: `wireguard-go -f` on both sides (Debian's wireguard-go, configured with
  `wg`), tunnel addresses 198.18.10.1 and .2, UDP over wifi.
- openvpn: OpenVPN point-to-point over UDP in TLS mode, with a throwaway PKI made in a
  temporary directory, tunnel addresses 198.18.11.1 and .2, userspace data channel
  (--disable-dco).

The lab's links are userspace TUN forwarders (roam.lab.tunlink): the direct row is the
ceiling every tunnel stays under. CPU s/GiB adds user + system time of both daemons of
the path (not the lab's forwarders). A tool that is missing or cannot start is reported
as not measured, with the reason. Must run as root; every process is started through
the lab and ended by its own Popen; the lab is always torn down. Rewrites the
`bench:tunnels` section of docs/benchmarks.md and draws docs/img/tunnels-*.png.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
    cpu_seconds,
    end,
    fmt,
    machine_facts,
    machine_line,
    median_or_none,
    per_gib,
    run_ok,
    tail,
    with_range,
    write_section,
)
from roam.lab.netlab import NetLab

START, END = "<!-- bench:tunnels:start -->", "<!-- bench:tunnels:end -->"
LOAD, SERVERS = ROOT / "bench" / "load.py", ROOT / "bench" / "servers.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
LABELS = {"direct": "direct TCP", "roam": "roam", "wireguard": "wireguard-go",
          "openvpn": "OpenVPN"}
SINK_PORT, ROAM_PORT, FORWARD_PORT, WG_PORT, OVPN_PORT = 5201, 7000, 7100, 51820, 1194
WG_NET, OVPN_NET = "198.18.10", "198.18.11"  # tunnel addresses: .1 mobile, .2 server
READY_LIMIT = 30.0  # seconds for a path to carry its first byte
RUN_LIMIT = 30.0  # seconds of sending per run
LAB_MTU = 1500  # an Internet-sized MTU for every path (the lab's default is 9000)
TUNNEL_MTU_HEADROOM = 80  # bytes of the lab MTU left for a tunnel's own headers (wg: 1420)


@dataclass
class Row:
    key: str
    path: str
    status: str = "ok"  # ok | failed | not measured
    error: str = ""
    mbps: float | None = None
    mbps_par: float | None = None
    cpu_gib: float | None = None
    cpu_gib_par: float | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    par_runs: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)


class Daemons:
    """The processes of one path in the lab, ended by their own Popen on close()."""

    def __init__(self, lab: NetLab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.procs: list[tuple[str, subprocess.Popen[Any], Path]] = []

    def start(self, ns: str, name: str, argv: list[str]) -> subprocess.Popen[Any]:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as fh:
            proc = self.lab.run(ns, argv, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, env=ENV)
        self.procs.append((name, proc, log))
        return proc

    def check_alive(self) -> None:
        for name, proc, log in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {tail(log)}")

    def wait_log(self, name: str, text: str) -> None:
        log = next(log for n, _, log in self.procs if n == name)
        deadline = time.monotonic() + READY_LIMIT
        while time.monotonic() < deadline:
            self.check_alive()
            if text in log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name}: no {text!r} after {READY_LIMIT:g} s: {tail(log)}")

    def close(self) -> None:
        for _, proc, _ in reversed(self.procs):
            end(proc)


def send(lab: NetLab, host: str, port: int, nbytes: int, streams: int,
         limit: float = RUN_LIMIT) -> dict[str, Any]:
    """One run of bench/load.py in the mobile namespace; its JSON result."""
    proc = lab.run("mobile", [sys.executable, str(LOAD), "tput", "--host", host,
                              "--port", str(port), "--bytes", str(nbytes),
                              "--streams", str(streams), "--limit", str(limit)],
                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   env=ENV)
    try:
        out, err = proc.communicate(timeout=limit + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"sender did not finish within {limit + 60:g} s") from None
    try:
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"sender printed no result: {err.decode(errors='replace')[-300:]}")\
            from None
    if "error" in result:
        raise RuntimeError(f"sender: {result['error']}")
    return result


def wait_carries(lab: NetLab, path: Daemons, host: str, port: int) -> None:
    """Wait until an empty stream reaches the sink through the path."""
    deadline = time.monotonic() + READY_LIMIT
    last = ""
    while time.monotonic() < deadline:
        path.check_alive()
        try:
            send(lab, host, port, 0, 1, 5)
            return
        except RuntimeError as exc:
            last = str(exc)
        time.sleep(0.3)
    logs = "; ".join(f"{name}: {tail(log)}" for name, _, log in path.procs)
    raise RuntimeError(f"path not carrying data after {READY_LIMIT:g} s ({last}); {logs}")


# -- the paths: each returns (host, port) for the sender and the daemons' pids ----

def setup_direct(lab: NetLab, path: Daemons, row: Row) -> tuple[str, int, list[int]]:
    return lab.addresses["server"], SINK_PORT, []


def setup_roam(lab: NetLab, path: Daemons, row: Row) -> tuple[str, int, list[int]]:
    roam = [sys.executable, "-m", "roam"]
    tmp = path.tmp
    server_pub = run_ok([*roam, "keygen", str(tmp / "server.key")], ENV).strip()
    client_pub = run_ok([*roam, "keygen", str(tmp / "client.key")], ENV).strip()
    (tmp / "authorized_keys").write_text(client_pub + "\n")
    server = lab.addresses["server"]
    srv = path.start("server", "roam-server", [
        *roam, "server", "--listen", f"{server}:{ROAM_PORT}", "--key", str(tmp / "server.key"),
        "--authorized-keys", str(tmp / "authorized_keys"), "--allow", f"127.0.0.1:{SINK_PORT}",
        "--control", str(tmp / "server.sock")])
    cli = path.start("mobile", "roam-client", [
        *roam, "client", "--server", f"{server}:{ROAM_PORT}", "--server-key", server_pub,
        "--key", str(tmp / "client.key"), "--control", str(tmp / "client.sock"),
        "--forward", f"127.0.0.1:{FORWARD_PORT}=127.0.0.1:{SINK_PORT}"])
    row.notes["setup"] = (f"roam server --listen {server}:{ROAM_PORT}; roam client --server "
                          f"{server}:{ROAM_PORT} --forward 127.0.0.1:{FORWARD_PORT}="
                          f"127.0.0.1:{SINK_PORT}; default cipher")
    return "127.0.0.1", FORWARD_PORT, [srv.pid, cli.pid]


def _wg_key(tmp: Path, name: str) -> str:
    private = run_ok(["wg", "genkey"]).strip()
    (tmp / f"{name}.key").write_text(private + "\n")
    (tmp / f"{name}.key").chmod(0o600)
    res = subprocess.run(["wg", "pubkey"], input=private + "\n", capture_output=True,
                         text=True, timeout=10, check=True)
    return res.stdout.strip()


def setup_wireguard(lab: NetLab, path: Daemons, row: Row) -> tuple[str, int, list[int]]:
    for tool in ("wireguard-go", "wg"):
        if shutil.which(tool) is None:
            raise NotRunError(f"{tool} is not installed (Debian: wireguard-go, wireguard-tools)")
    if not Path("/dev/net/tun").exists():
        raise NotRunError("/dev/net/tun is missing")
    tmp = path.tmp
    # UAPI sockets live in /var/run/wireguard, shared by all namespaces: unique names.
    names = {"mobile": f"wgm{os.getpid() % 10**8}", "server": f"wgs{os.getpid() % 10**8}"}
    pubs = {ns: _wg_key(tmp, ns) for ns in names}
    ends = {"mobile": (lab.addresses["mobile_wifi"], "server", lab.addresses["server"], 1),
            "server": (lab.addresses["server"], "mobile", lab.addresses["mobile_wifi"], 2)}
    pids = []
    env = {"WG_PROCESS_FOREGROUND": "1"}
    for ns, dev in names.items():
        proc = path.start(ns, f"wireguard-go-{ns}", ["env", *(f"{k}={v}" for k, v in env.items()),
                                                      "wireguard-go", "-f", dev])
        pids.append(proc.pid)
    for ns, dev in names.items():
        sock = Path(f"/var/run/wireguard/{dev}.sock")
        deadline = time.monotonic() + READY_LIMIT
        while not sock.exists():
            path.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"wireguard-go made no {sock} in {READY_LIMIT:g} s")
            time.sleep(0.05)
        _, peer, peer_addr, host = ends[ns]
        peer_host = 3 - host
        lab.check(ns, ["wg", "set", dev, "listen-port", str(WG_PORT), "private-key",
                       str(tmp / f"{ns}.key"), "peer", pubs[peer], "endpoint",
                       f"{peer_addr}:{WG_PORT}", "allowed-ips", f"{WG_NET}.{peer_host}/32"])
        lab.check(ns, ["ip", "addr", "add", f"{WG_NET}.{host}/24", "dev", dev])
        lab.check(ns, ["ip", "link", "set", "dev", dev, "mtu",
                       str(lab.mtu - TUNNEL_MTU_HEADROOM), "up"])
    row.notes["setup"] = (f"wireguard-go -f on both sides, `wg set DEV listen-port {WG_PORT} "
                          "private-key K peer P endpoint ADDR allowed-ips IP/32`, MTU "
                          f"{lab.mtu - TUNNEL_MTU_HEADROOM}")
    # ip netns exec execs env, env execs wireguard-go: the Popen pid is the daemon's.
    return f"{WG_NET}.2", SINK_PORT, pids


def make_pki(tmp: Path) -> None:
    """A throwaway CA and a server and a client certificate (EC P-256), PEM files in tmp."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(cn: str, key: Any, issuer: str, signer: Any, ca: bool,
             usage: list[Any]) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(issuer))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=not ca, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=not ca, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    (tmp / "ca.crt").write_bytes(cert("bench-ca", ca_key, "bench-ca", ca_key, True, [])
                                 .public_bytes(pem))
    for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                        ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        (tmp / f"{role}.crt").write_bytes(
            cert(f"bench-{role}", key, "bench-ca", ca_key, False, [usage]).public_bytes(pem))
        (tmp / f"{role}.key").write_bytes(key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (tmp / f"{role}.key").chmod(0o600)


def setup_openvpn(lab: NetLab, path: Daemons, row: Row) -> tuple[str, int, list[int]]:
    if shutil.which("openvpn") is None:
        raise NotRunError("openvpn is not installed (Debian: openvpn)")
    tmp = path.tmp
    make_pki(tmp)
    mtu = lab.mtu - TUNNEL_MTU_HEADROOM
    common = ["openvpn", "--dev-type", "tun", "--proto", "udp", "--disable-dco",
              "--data-ciphers", "AES-256-GCM:CHACHA20-POLY1305", "--tun-mtu", str(mtu),
              "--mssfix", "0", "--ca", str(tmp / "ca.crt"), "--verb", "3",
              "--ping", "5", "--ping-exit", "60"]
    server = lab.addresses["server"]
    srv = path.start("server", "openvpn-server", [
        *common, "--dev", "ovs0", "--tls-server", "--dh", "none", "--local", server,
        "--lport", str(OVPN_PORT), "--cert", str(tmp / "server.crt"),
        "--key", str(tmp / "server.key"), "--ifconfig", f"{OVPN_NET}.2", f"{OVPN_NET}.1"])
    cli = path.start("mobile", "openvpn-client", [
        *common, "--dev", "ovm0", "--tls-client", "--remote", server, str(OVPN_PORT),
        "--nobind", "--remote-cert-tls", "server", "--cert", str(tmp / "client.crt"),
        "--key", str(tmp / "client.key"), "--ifconfig", f"{OVPN_NET}.1", f"{OVPN_NET}.2"])
    path.wait_log("openvpn-client", "Initialization Sequence Completed")
    log = (tmp / "openvpn-client.log").read_text(errors="replace")
    cipher = next((line.split("Data Channel: cipher")[1].split(",")[0].strip(" '")
                   for line in log.splitlines() if "Data Channel: cipher" in line), "unknown")
    row.notes["cipher"] = cipher
    row.notes["setup"] = (f"openvpn point-to-point over UDP, TLS mode (EC P-256 throwaway PKI), "
                          f"--disable-dco, --tun-mtu {mtu} --mssfix 0, data channel {cipher}")
    return f"{OVPN_NET}.2", SINK_PORT, [srv.pid, cli.pid]


SETUPS = {"direct": setup_direct, "roam": setup_roam, "wireguard": setup_wireguard,
          "openvpn": setup_openvpn}


def timed(lab: NetLab, host: str, port: int, nbytes: int, streams: int,
          pids: list[int]) -> dict[str, Any]:
    before = cpu_seconds(pids) if pids else 0.0
    run = send(lab, host, port, nbytes, streams)
    if pids:
        run["cpu_s"] = cpu_seconds(pids) - before
        run["cpu_s_per_gib"] = per_gib(run["cpu_s"], run["bytes"])
    return run


@contextlib.contextmanager
def work_dir(key: str, logs: Path | None) -> Iterator[Path]:
    """A temporary directory for one path's keys and logs, kept under --logs if given."""
    if logs is not None:
        (logs / key).mkdir(parents=True, exist_ok=True)
        yield logs / key
        return
    with tempfile.TemporaryDirectory(prefix=f"roam-tunnels-{key}-") as tmp:
        yield Path(tmp)


def measure(key: str, lab: NetLab, args: argparse.Namespace) -> Row:
    row = Row(key, LABELS[key])
    try:
        with work_dir(key, args.logs) as tmp:
            path = Daemons(lab, tmp)
            try:
                host, port, pids = SETUPS[key](lab, path, row)
                wait_carries(lab, path, host, port)
                for _ in range(args.runs):
                    row.runs.append(timed(lab, host, port, args.bytes, 1, pids))
                    row.par_runs.append(timed(lab, host, port, args.bytes, args.streams, pids))
                    path.check_alive()
            finally:
                path.close()
    except NotRunError as exc:
        row.status, row.error = "not measured", str(exc)
    except Exception as exc:
        row.status, row.error = "failed", f"{type(exc).__name__}: {exc}"
    row.mbps = median_or_none(r["mbps"] for r in row.runs)
    row.mbps_par = median_or_none(r["mbps"] for r in row.par_runs)
    row.cpu_gib = median_or_none(r.get("cpu_s_per_gib") for r in row.runs)
    row.cpu_gib_par = median_or_none(r.get("cpu_s_per_gib") for r in row.par_runs)
    return row


def start_sink(lab: NetLab, tmp: Path) -> None:
    log = tmp / "sink.log"
    with log.open("wb") as fh:
        lab.run("server", [sys.executable, str(SERVERS), "sink", "--host", "0.0.0.0",
                           "--port", str(SINK_PORT)], stdin=subprocess.DEVNULL, stdout=fh,
                stderr=subprocess.STDOUT, env=ENV)
    deadline = time.monotonic() + 10
    while log.read_text().strip() != str(SINK_PORT):
        if time.monotonic() > deadline:
            raise RuntimeError(f"sink did not start: {tail(log)}")
        time.sleep(0.05)


def render(rows: list[Row], facts: dict[str, str], args: argparse.Namespace,
           figures: list[tuple[str, Path]]) -> str:
    k = args.streams
    by = {r.key: r for r in rows}
    ceiling = by["direct"].mbps if "direct" in by and by["direct"].status == "ok" else None
    lines = ["## Throughput through tunnels (network lab, wifi link)", "",
             f"| path | 1 stream MB/s | {k} streams MB/s | 1 stream, share of direct | "
             f"CPU s/GiB, 1 stream | CPU s/GiB, {k} streams |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.path} | {cell(r.status + ': ' + r.error)} |" + " — |" * 4)
            continue
        late = " (hit the time limit)" if any(x["timed_out"] for x in r.runs + r.par_runs) else ""
        share = fmt(r.mbps / ceiling, 2) if r.mbps and ceiling else "—"
        lines.append(f"| {r.path} | {with_range([x['mbps'] for x in r.runs])}{late} | "
                     f"{with_range([x['mbps'] for x in r.par_runs])} | {share} | "
                     f"{fmt(r.cpu_gib, 2)} | {fmt(r.cpu_gib_par, 2)} |")
    lines += ["", *(f"![{title}](img/{p.name})" for title, p in figures)]
    if not figures:
        lines.append("(No figures: matplotlib is not installed; `pip install -e '.[bench]'`.)")
    lines += [
        "", f"Every figure is the median of {args.runs} runs (min-max in parentheses); each "
        f"run sends {args.bytes} bytes on one TCP connection, then {args.bytes} bytes shared "
        f"by {k} connections at once (at most {RUN_LIMIT:g} s of sending), from "
        "`bench/load.py tput` in the mobile namespace to `bench/servers.py sink` in the "
        f"server namespace, over the lab's wifi link (no added delay, MTU {facts['lab mtu']}). "
        "The link is a userspace TUN forwarder (roam.lab.tunlink) in "
        "Python and caps every path: the direct row is what it lets one plain TCP connection "
        "through, and these figures compare the tunnels with each other under that cap, not "
        "with the loopback table. The paths are measured one after another, so load that "
        "changes during the run (see the load average below) shifts rows differently; "
        "the min-max ranges show how much. CPU s/GiB: user + system time of both daemons of "
        "the path, without the lab's forwarders. All of it shares the machine's CPUs.", ""]
    lines += [f"- {r.path}: {r.notes['setup']}" for r in rows if r.notes.get("setup")]
    lines += [
        f"- Date: {facts['date']}", f"- Machine: {machine_line(facts)}",
        f"- Versions: {facts['versions']}",
        f"- Run as: `{facts['command']}` (as root)", f"- Reproduce: `{facts['reproduce']}`"]
    return "\n".join(lines)


def draw(rows: list[Row], args: argparse.Namespace) -> list[tuple[str, Path]]:
    ok = [r for r in rows if r.status == "ok"]
    note = f"median of {args.runs} runs; bench/tunnels.py; lab wifi link (userspace forwarder)"
    figs = [
        ("Throughput through tunnels", plots.grouped_bars(
            args.img / "tunnels-throughput.png", "Throughput over the lab's wifi link (MB/s)",
            "MB/s", [r.path for r in ok],
            {"1 stream": [r.mbps for r in ok], f"{args.streams} streams":
             [r.mbps_par for r in ok]}, note)),
        ("CPU per GiB through tunnels", plots.grouped_bars(
            args.img / "tunnels-cpu.png", "CPU seconds per GiB, both daemons together",
            "CPU s/GiB", [r.path for r in ok if r.cpu_gib is not None],
            {"1 stream": [r.cpu_gib for r in ok if r.cpu_gib is not None],
             f"{args.streams} streams": [r.cpu_gib_par for r in ok if r.cpu_gib is not None]},
            note)),
    ]
    return [(title, p) for title, p in figs if p is not None]


def versions() -> str:
    out = []
    for cmd in (["wireguard-go", "--version"], ["openvpn", "--version"], ["wg", "--version"]):
        if shutil.which(cmd[0]) is None:
            out.append(f"{cmd[0]} not installed")
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
            first = (res.stdout or res.stderr).strip().splitlines()
            out.append(" ".join(first[0].split()[:2]) if first else cmd[0])
    return ", ".join(out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=256 << 20, help="bytes per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--streams", type=int, default=8, help="parallel streams")
    parser.add_argument("--only", default=",".join(LABELS), help="comma-separated paths")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--img", type=Path, default=None,
                        help="directory for the PNGs (default: img/ beside --out)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "tunnels.json")
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep each path's keys and daemon logs in this directory")
    args = parser.parse_args(argv)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    if not only or any(p not in LABELS for p in only):
        parser.error(f"--only takes a subset of {','.join(LABELS)}")
    args.only = [k for k in LABELS if k in only]
    if min(args.bytes, args.runs, args.streams) <= 0 or args.streams > 64 or args.runs > 20:
        parser.error("--bytes, --runs, --streams must be positive (at most 64 streams, 20 runs)")
    args.img = args.img or args.out.parent / "img"
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv[1:])
    if os.geteuid() != 0:
        print("bench/tunnels.py needs root (it builds network namespaces and TUN devices); "
              "run it as root. Nothing was measured.", file=sys.stderr)
        return 2
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="roam-tunnels-") as tmp, NetLab(mtu=LAB_MTU) as lab:
        facts = {**machine_facts(), "lab mtu": str(lab.mtu), "versions": versions(),
                 "command": shlex.join(["python", *argv]),
                 "reproduce": shlex.join(["python", "bench/tunnels.py", "--bytes",
                                          str(args.bytes), "--runs", str(args.runs),
                                          "--streams", str(args.streams), "--only",
                                          ",".join(args.only)])}
        start_sink(lab, Path(tmp))
        for key in args.only:
            print(f"tunnels: measuring {LABELS[key]} ...", file=sys.stderr, flush=True)
            rows.append(measure(key, lab, args))
            print(f"tunnels: {LABELS[key]}: {rows[-1].status} {rows[-1].error} "
                  f"{fmt(rows[-1].mbps)} / {fmt(rows[-1].mbps_par)} MB/s",
                  file=sys.stderr, flush=True)
    if lab.cleanup_errors:
        print(f"tunnels: lab cleanup: {'; '.join(lab.cleanup_errors)}", file=sys.stderr)
    section = render(rows, facts, args, draw(rows, args))
    print(section)
    write_section(args.out, START, END, section)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"facts": facts, "bytes": args.bytes, "runs": args.runs,
                                     "streams": args.streams,
                                     "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    print(f"tunnels: wrote {args.out} and {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
