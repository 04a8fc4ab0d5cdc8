"""Handover stalls in the network lab, as an application sees them: roam, MPTCP, plain TCP.

    python bench/handover.py [--runs 10] [--only roam,mptcp,mptcp-stale1,tcp]
                             [--out docs/benchmarks.md] [--json bench/results/handover.json]

Each system gets a lab of its own (`roam.lab.netlab.NetLab`, wifi RTT about 5 ms,
cell RTT about 60 ms behind NAT). In the server namespace `bench/paced.py send`
sends a 1 KiB sequence-numbered message every 1 ms; in the mobile namespace
`bench/paced.py recv` receives it, checks that it is byte-exact, and times every
arrival. Three events happen while the stream runs on wifi:

- link down: mobile's wifi device goes down (the radio went away);
- black hole: wifi drops everything both ways while the link stays up;
- soft: a planned move to cell while both paths work.

The stall is the longest gap between two arrivals that ends after the event. A run
that has not delivered a message due after the network was back within
RECOVER_LIMIT seconds of the event did not recover, and is reported as such.

Systems:
- roam: roam server in `server`, roam client in `mobile` with paths wifi (priority 10)
  and cell (priority 20) and the linux link driver; the stream goes through a forward.
  A fresh client for each run (see `RoamSystem`).
- mptcp: IPPROTO_MPTCP sockets on both sides; the in-kernel path manager opens a
  backup subflow on cell. mptcp-stale1 is the same with net.mptcp.stale_loss_cnt=1.
- tcp: a plain TCP connection on wifi, which cannot move: the outage lasts
  TCP_OUTAGE seconds, then the network is put back.

Must run as root (network namespaces). Every process is started through the lab and
ended by its own Popen; the lab is always torn down.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing roam
sys.path.insert(0, str(ROOT / "bench"))

import benchlib  # noqa: E402
from benchlib import end  # noqa: E402
from roam.control.client import request  # noqa: E402
from roam.crypto.keys import (  # noqa: E402
    encode_key,
    generate_private_key,
    public_key,
    write_private_key,
)
from roam.errors import RoamError  # noqa: E402
from roam.lab.netlab import NetLab  # noqa: E402

PACED = ROOT / "bench" / "paced.py"
START, END = "<!-- bench:handover:start -->", "<!-- bench:handover:end -->"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}

WIFI_DELAY_MS, CELL_DELAY_MS = 2.5, 30.0  # one way, each direction
INTERVAL_MS, SIZE = 1.0, 1024  # the paced stream: 1 KiB every 1 ms
SCENARIOS = ("link_down", "blackhole", "soft")
SCENARIO_LABELS = {"link_down": "hard, wifi link down",
                   "blackhole": "hard, silent black hole on wifi",
                   "soft": "soft, planned move wifi to cell"}
SYSTEMS = ("roam", "mptcp", "mptcp-stale1", "tcp")
RECOVER_LIMIT = 20.0  # seconds after the event; later is "did not recover"
TCP_OUTAGE = 3.0  # seconds the plain TCP connection is cut off before the link is back
STEADY = 1.0  # seconds of clean stream before the event
AFTER = 1.0  # seconds of stream due after the network was back, before stopping
LONG_GAP_MS = 50.0  # gaps at least this long after the event are summed as "time stalled"
READY_LIMIT = 30.0  # seconds for daemons, sessions, subflows and the stream to be ready

# Fixed addresses and ports: each lab is private, so nothing else can hold them.
ROAM_PORT, FORWARD_PORT, PACE_PORT = 7000, 7100, 7200
WIFI_TABLE, CELL_TABLE = 101, 102  # mobile's per-source routing tables for MPTCP
UNREACHABLE_METRIC = "4278198272"  # the last resort in those tables: never fall through
WIFI_ENDPOINT, CELL_ENDPOINT = "1", "2"


class BenchError(Exception):
    """A run or a system could not be measured; the message says why."""


@dataclass
class Settings:
    runs: int = 10
    steady: float = STEADY
    after: float = AFTER
    recover_limit: float = RECOVER_LIMIT
    tcp_outage: float = TCP_OUTAGE


@dataclass
class RunResult:
    system: str
    scenario: str
    run: int
    recovered: bool = False
    stall_ms: float | None = None  # longest gap at the application; None: not measured
    stalled_ms: float | None = None  # sum of the gaps of LONG_GAP_MS or more after the event
    exact: bool = False
    error: str | None = None
    receiver: dict[str, Any] = field(default_factory=dict)  # paced.py's whole result
    roam_handovers: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class SystemResult:
    system: str
    runs: list[RunResult] = field(default_factory=list)
    error: str | None = None  # the system could not be set up
    facts: dict[str, Any] = field(default_factory=dict)


# -- the receiver ---------------------------------------------------------------


class Receiver:
    """paced.py recv in mobile: commands in through stdin, JSON lines out."""

    def __init__(self, lab: NetLab, argv: list[str], log: Path) -> None:
        self.log = log
        with log.open("ab") as err:
            self.proc: subprocess.Popen[str] = lab.run(
                "mobile", [sys.executable, str(PACED), "recv", *argv, "--size", str(SIZE),
                           "--interval-ms", str(INTERVAL_MS)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=ENV)
        self.progress: dict[str, Any] = {}
        self.result: dict[str, Any] | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                with contextlib.suppress(ValueError):
                    msg = json.loads(line)
                    if "result" in msg:
                        self.result = msg["result"]
                    elif "progress" in msg:
                        self.progress = msg
        finally:
            self._done.set()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def wait(self, ready: Callable[[dict[str, Any]], bool], until: float) -> bool:
        while time.monotonic() < until:
            if self.progress and ready(self.progress):
                return True
            if self._done.is_set():
                return False
            time.sleep(0.02)
        return False

    def stop(self) -> dict[str, Any]:
        self.send("stop")
        self._done.wait(15)
        self.close()
        if self.result is None:
            raise BenchError(f"the receiver gave no result: {tail(self.log)}")
        return self.result

    def close(self) -> None:
        end(self.proc)
        self._thread.join(5)



def tail(log: Path, limit: int = 600) -> str:
    text = log.read_text(errors="replace").strip() if log.exists() else ""
    return " / ".join(text.splitlines())[-limit:] or "(empty log)"


# -- the systems ----------------------------------------------------------------


class System:
    """One way to carry the stream; the lab, the sender and the receiver are shared code."""

    key = ""
    label = ""
    scenarios: tuple[str, ...] = SCENARIOS

    def __init__(self, lab: NetLab, tmp: Path, settings: Settings) -> None:
        self.lab, self.tmp, self.settings = lab, tmp, settings

    def setup(self) -> dict[str, Any]:
        """Start what lives as long as the lab; returns facts worth recording."""
        return {}

    def before_run(self, run: RunResult) -> None:
        pass

    def receiver_args(self) -> list[str]:
        raise NotImplementedError

    def check_ready(self, progress: dict[str, Any], run: RunResult) -> None:
        pass

    def act(self, scenario: str) -> float | None:
        """Make the event happen; the time the network was back if that is part of it."""
        if scenario == "link_down":
            self.lab.link_down("wifi")
        elif scenario == "blackhole":
            self.lab.blackhole("wifi", True)
        else:
            raise BenchError(f"{self.key} has no soft handover")
        return None

    def after_run(self, run: RunResult) -> None:
        pass

    def undo(self, scenario: str) -> None:
        if scenario == "link_down":
            self.lab.link_up("wifi")
            time.sleep(0.5)  # the link driver and routes see it before the next run
        elif scenario == "blackhole":
            self.lab.blackhole("wifi", False)

    def start(self, ns: str, name: str, argv: list[str],
              stdout: int | IO[Any] | None = None) -> subprocess.Popen[Any]:
        log = (self.tmp / f"{name}.log").open("ab")
        try:
            return self.lab.run(ns, argv, stdin=subprocess.DEVNULL,
                                stdout=log if stdout is None else stdout, stderr=log, env=ENV,
                                cwd=ROOT)
        finally:
            log.close()  # the child has its own descriptor

    def start_sender(self, host: str, mptcp: bool) -> None:
        argv = [sys.executable, str(PACED), "send", "--listen", f"{host}:{PACE_PORT}",
                "--size", str(SIZE), "--interval-ms", str(INTERVAL_MS),
                *(["--mptcp"] if mptcp else [])]
        proc = self.start("server", "sender", argv, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        line = read_line(proc.stdout, 20)
        if not line.startswith(b"listening"):
            raise BenchError(f"the paced sender did not start: {tail(self.tmp / 'sender.log')}")


def read_line(stream: IO[bytes], timeout: float) -> bytes:
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return out[0] if out else b""


class RoamSystem(System):
    """roam server in `server`, a roam client with two paths in `mobile`, as LabRoam does.

    Each run starts a fresh client: after a hard handover roam avoids the old path for
    a while, doubling up to a minute, so runs on one client would wait ever longer for
    wifi and would not be alike. The server runs for the whole lab.
    """

    key, label = "roam", "roam"

    def __init__(self, lab: NetLab, tmp: Path, settings: Settings) -> None:
        super().__init__(lab, tmp, settings)
        self.client: subprocess.Popen[Any] | None = None
        self.control = ""
        self.server_pub = ""
        self.keys = tmp / "keys"

    def setup(self) -> dict[str, Any]:
        keys = self.keys
        keys.mkdir()
        skey, ckey = generate_private_key(), generate_private_key()
        write_private_key(keys / "server.key", skey)
        write_private_key(keys / "client.key", ckey)
        (keys / "authorized_keys").write_text(f"{encode_key(public_key(ckey))} bench\n")
        self.server_pub = encode_key(public_key(skey))
        self.start_sender("127.0.0.1", mptcp=False)
        server = self.lab.addresses["server"]
        self.start("server", "roam-server", [
            sys.executable, "-m", "roam", "server", "--listen", f"{server}:{ROAM_PORT}",
            "--key", str(keys / "server.key"), "--authorized-keys", str(keys / "authorized_keys"),
            "--allow", f"127.0.0.1:{PACE_PORT}", "--control", str(self.tmp / "server.sock")])
        return {}

    def before_run(self, run: RunResult) -> None:
        run.notes["roam_src"] = src_digest()
        name = f"roam-client-{run.scenario}-{run.run}"
        self.control = str(self.tmp / f"{name}.sock")
        server = self.lab.addresses["server"]
        self.client = self.start("mobile", name, [
            sys.executable, "-m", "roam", "client", "--server", f"{server}:{ROAM_PORT}",
            "--server-key", self.server_pub, "--key", str(self.keys / "client.key"),
            "--forward", f"127.0.0.1:{FORWARD_PORT}=127.0.0.1:{PACE_PORT}",
            "--links", "linux", "--path", "wifi:dev=wifi,priority=10,kind=wifi",
            "--path", "cell:dev=cell,priority=20,kind=cellular", "--dwell", "2",
            "--control", self.control, "--event-log", str(self.tmp / f"{name}.events.jsonl")])
        deadline = time.monotonic() + READY_LIMIT
        while time.monotonic() < deadline:
            if self.client.poll() is not None:
                raise BenchError(f"roam client exited: {tail(self.tmp / f'{name}.log')}")
            with contextlib.suppress(RoamError, OSError, ValueError):
                status = request(self.control, "status", timeout=5)
                # On wifi, with the standby transport joined on cell: what the
                # client keeps whenever two paths work (as MPTCP's backup subflow).
                if (status["active_path"] == "wifi" and status["session"]
                        and status.get("standby") == "cell"):
                    return
            time.sleep(0.1)
        raise BenchError(f"no roam session on wifi after {READY_LIMIT:g} s: "
                         f"{tail(self.tmp / f'{name}.log')}")

    def receiver_args(self) -> list[str]:
        return ["--connect", f"127.0.0.1:{FORWARD_PORT}"]

    def act(self, scenario: str) -> float | None:
        if scenario != "soft":
            return super().act(scenario)
        # The request `roam switch cell` sends; it answers once the handover is done.
        request(self.control, "switch", {"path": "cell"}, timeout=30)
        return time.monotonic()

    def after_run(self, run: RunResult) -> None:
        try:
            status = request(self.control, "status", timeout=10)
            run.roam_handovers = list(status["handovers"])
            run.notes["active_path_after"] = status["active_path"]
            if "event_wall" in run.notes:
                # Records carry the wall clock of their completion: where in the
                # application's gap roam considered the handover done.
                run.notes["handovers_done_after_event_ms"] = [
                    round((h["started"] - run.notes["event_wall"]) * 1000, 1)
                    for h in run.roam_handovers]
        finally:
            if self.client is not None:
                end(self.client)
                self.client = None


class MptcpSystem(System):
    """IPPROTO_MPTCP on both sides, a backup subflow on cell from the in-kernel PM.

    mobile gets per-source routing tables, as a multihomed MPTCP host needs: without
    them, packets of the wifi subflow would leave by cell once wifi is down (the
    lab's router forwards them), keeping that subflow looking alive to the sender.
    """

    key, label = "mptcp", "MPTCP"

    def __init__(self, lab: NetLab, tmp: Path, settings: Settings,
                 stale_loss_cnt: int | None = None) -> None:
        super().__init__(lab, tmp, settings)
        self.stale_loss_cnt = stale_loss_cnt
        self.first = ""  # the current run's first subflow, as the server sees its peer
        if stale_loss_cnt is not None:
            self.key, self.label = (f"mptcp-stale{stale_loss_cnt}",
                                    f"MPTCP, stale_loss_cnt={stale_loss_cnt}")

    def setup(self) -> dict[str, Any]:
        lab, addr = self.lab, self.lab.addresses
        for ns in ("mobile", "server"):
            if lab.check(ns, ["sysctl", "-n", "net.mptcp.enabled"]).strip() != "1":
                raise BenchError(f"MPTCP is disabled in {ns} (net.mptcp.enabled)")
            lab.check(ns, ["ip", "mptcp", "limits", "set", "subflows", "2",
                           "add_addr_accepted", "2"])
            if self.stale_loss_cnt is not None:
                lab.check(ns, ["sysctl", "-q", "-w",
                               f"net.mptcp.stale_loss_cnt={self.stale_loss_cnt}"])
        for name, table in (("wifi", WIFI_TABLE), ("cell", CELL_TABLE)):
            lab.check("mobile", ["ip", "rule", "add", "from", addr[f"mobile_{name}"],
                                 "table", str(table), "priority", str(table)])
            lab.check("mobile", ["ip", "route", "add", "unreachable", "default", "metric",
                                 UNREACHABLE_METRIC, "table", str(table)])
            self.source_route(name)
        # The wifi endpoint has no flags: the path manager opens nothing from it, but
        # its backup flag can be changed, which sends MP_PRIO for the first subflow.
        lab.check("mobile", ["ip", "mptcp", "endpoint", "add", addr["mobile_wifi"], "dev",
                             "wifi", "id", WIFI_ENDPOINT])
        lab.check("mobile", ["ip", "mptcp", "endpoint", "add", addr["mobile_cell"], "dev",
                             "cell", "id", CELL_ENDPOINT, "subflow", "backup"])
        self.start_sender(addr["server"], mptcp=True)
        facts: dict[str, Any] = {ns: {k: lab.check(ns, ["sysctl", "-n", f"net.mptcp.{k}"]).strip()
                      for k in ("stale_loss_cnt", "scheduler", "path_manager")}
                 for ns in ("mobile", "server")}
        facts["endpoints"] = lab.check("mobile", ["ip", "mptcp", "endpoint", "show"]).strip()
        facts["limits"] = lab.check("mobile", ["ip", "mptcp", "limits", "show"]).strip()
        return facts

    def source_route(self, name: str) -> None:
        table = WIFI_TABLE if name == "wifi" else CELL_TABLE
        gateway = self.lab.addresses[f"router_{name}"]
        self.lab.check("mobile", ["ip", "route", "replace", "default", "via", gateway, "dev",
                                  name, "table", str(table)])

    def receiver_args(self) -> list[str]:
        return ["--connect", f"{self.lab.addresses['server']}:{PACE_PORT}", "--mptcp"]

    def subflows(self) -> list[dict[str, str]]:
        """Established subflows as the server sees them: peer, ss flags, MPTCP token."""
        out = self.lab.check("server", ["ss", "-tniH", "state", "established", "sport",
                                        "=", f":{PACE_PORT}"])
        flows: list[dict[str, str]] = []
        peer = ""
        for line in out.splitlines():
            words = line.split()
            if len(words) >= 4 and not line[0].isspace():
                peer = words[3]
            elif m := re.search(r"tcp-ulp-mptcp flags:(\S+) token:\S*/(\w+)", line):
                # token:REMOTE(id)/LOCAL(id): the local token names the connection.
                flows.append({"peer": peer, "flags": m.group(1), "token": m.group(2)})
        return flows

    def connection(self, first: str) -> list[dict[str, str]]:
        """The subflows of the connection whose first subflow comes from `first`."""
        flows = self.subflows()
        token = next((f["token"] for f in flows if f["peer"] == first), None)
        return [f for f in flows if token is not None and f["token"] == token]

    def check_ready(self, progress: dict[str, Any], run: RunResult) -> None:
        # Both subflows must be up, cell's as a backup: the server sees it from the
        # router's NAT address, with B (the peer asked for backup). Subflows of earlier
        # runs' connections may still linger; the token tells them apart.
        self.first = str(progress["local"])
        nat = self.lab.addresses["router_server"]
        deadline = time.monotonic() + 10
        flows: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            flows = self.connection(self.first)
            wifi = [f["flags"] for f in flows if f["peer"] == self.first]
            cell = [f["flags"] for f in flows if f["peer"].rsplit(":", 1)[0] == nat]
            if (len(flows) == 2 and wifi and cell and "B" not in wifi[0] and "B" in cell[0]
                    and "e" in cell[0]):
                break
            time.sleep(0.05)
        else:
            raise BenchError(f"MPTCP subflows not ready (server sees {self.subflows()})")
        info = progress.get("mptcp") or {}
        if info.get("fallback") or not info.get("extra_subflows"):
            raise BenchError(f"the receiver's MPTCP socket is not multipath: {info}")
        run.notes["subflows_before"] = flows
        run.notes["other_subflows"] = len(self.subflows()) - len(flows)

    def act(self, scenario: str) -> float | None:
        if scenario != "soft":
            return super().act(scenario)
        # Make before break: cell becomes a regular subflow, then wifi a backup one.
        # Each change sends MP_PRIO, and the sender's scheduler follows it.
        self.endpoint(CELL_ENDPOINT, backup=False)
        self.endpoint(WIFI_ENDPOINT, backup=True)
        return time.monotonic()

    def endpoint(self, ident: str, backup: bool) -> None:
        self.lab.check("mobile", ["ip", "mptcp", "endpoint", "change", "id", ident,
                                  "backup" if backup else "nobackup"])

    def after_run(self, run: RunResult) -> None:
        run.notes["subflows_after"] = self.connection(self.first)

    def undo(self, scenario: str) -> None:
        if scenario == "soft":
            self.endpoint(WIFI_ENDPOINT, backup=False)
            self.endpoint(CELL_ENDPOINT, backup=True)
            return
        super().undo(scenario)
        if scenario == "link_down":
            self.source_route("wifi")  # the kernel dropped it with the link


class TcpSystem(System):
    """A plain TCP connection bound to wifi: it cannot move, so the network comes back."""

    key, label = "tcp", "plain TCP"
    scenarios = ("link_down", "blackhole")

    def setup(self) -> dict[str, Any]:
        self.start_sender(self.lab.addresses["server"], mptcp=False)
        return {"congestion_control": self.lab.check(
            "server", ["sysctl", "-n", "net.ipv4.tcp_congestion_control"]).strip()}

    def receiver_args(self) -> list[str]:
        return ["--connect", f"{self.lab.addresses['server']}:{PACE_PORT}",
                "--bind-dev", "wifi"]

    def act(self, scenario: str) -> float | None:
        super().act(scenario)
        time.sleep(self.settings.tcp_outage)
        super().undo(scenario)
        return time.monotonic()

    def undo(self, scenario: str) -> None:
        pass  # act() already put the network back


def make_system(key: str, lab: NetLab, tmp: Path, settings: Settings) -> System:
    if key == "roam":
        return RoamSystem(lab, tmp, settings)
    if key == "mptcp":
        return MptcpSystem(lab, tmp, settings)
    if key == "mptcp-stale1":
        return MptcpSystem(lab, tmp, settings, stale_loss_cnt=1)
    if key == "tcp":
        return TcpSystem(lab, tmp, settings)
    raise BenchError(f"unknown system {key!r}")


# -- runs -----------------------------------------------------------------------


def ping_rtt(lab: NetLab, dev: str) -> float | None:
    """Average RTT (ms) from mobile to the server over one uplink, 10 pings."""
    out = lab.check("mobile", ["ping", "-n", "-q", "-c", "10", "-i", "0.1", "-W", "2", "-I",
                               dev, lab.addresses["server"]], timeout=30)
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    return float(m.group(1)) if m else None


def measure_run(system: System, scenario: str, index: int) -> RunResult:
    run = RunResult(system.key, scenario, index)
    settings = system.settings
    undone = True
    rx: Receiver | None = None
    try:
        system.before_run(run)
        rx = Receiver(system.lab, system.receiver_args(),
                      system.tmp / f"receiver-{scenario}-{index}.log")
        need = int(settings.steady * 1000 / INTERVAL_MS)
        if not rx.wait(lambda p: p["progress"] >= need and p["exact"],
                       time.monotonic() + READY_LIMIT):
            raise BenchError(f"the stream did not run cleanly for {settings.steady:g} s: "
                             f"{rx.progress or tail(rx.log)}")
        system.check_ready(rx.progress, run)
        undone = False
        run.notes["event_wall"] = time.time()  # to place roam's handover records in the run
        event = time.monotonic()
        rx.send(f"event {event!r}")
        back = system.act(scenario)
        if back is not None:
            rx.send(f"restore {back!r}")
        back = event if back is None else back
        rx.wait(lambda p: (p["last_due"] or 0) >= back + settings.after,
                event + settings.recover_limit)
        result = rx.stop()
        rx = None
        system.after_run(run)
        run.receiver = result
        run.exact = bool(result["exact"]) and result["first_error"] is None
        run.recovered = bool(result["recovered"])
        if run.recovered:
            run.stall_ms = result["stall_ms"]
            run.stalled_ms = float(round(sum(g for _, g in result["long_gaps"]
                                             if g >= LONG_GAP_MS), 3))
    except (BenchError, RoamError, OSError, subprocess.SubprocessError, KeyError) as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        run.recovered, run.stall_ms = False, None
    finally:
        if rx is not None:
            rx.close()
        if not undone:
            try:
                system.undo(scenario)
            except (RoamError, OSError) as exc:
                run.error = (run.error or "") + f"; undo failed: {exc}"
        if isinstance(system, RoamSystem) and system.client is not None:
            end(system.client)  # after_run was not reached
            system.client = None
    return run


def progress_line(run: RunResult) -> str:
    if run.error:
        what = f"error: {run.error}"
    elif not run.recovered:
        what = "did not recover"
    else:
        what = f"stall {run.stall_ms:.1f} ms, stalled {run.stalled_ms:.0f} ms"
        what += "".join(f"; roam: {h['kind']} {h['origin']}->{h['target']} "
                        f"{h['stall_ms']:.0f} ms ({h['reason']})" for h in run.roam_handovers)
    if run.recovered and not run.exact:
        what += " NOT BYTE-EXACT"
    return f"bench: {run.system} {run.scenario} run {run.run}: {what}"


@contextlib.contextmanager
def work_dir(key: str, logs: Path | None) -> Iterator[Path]:
    """Where one system's keys, sockets and logs go: kept under `logs` if given."""
    if logs is None:
        with tempfile.TemporaryDirectory(prefix=f"roam-handover-{key}-") as tmp:
            yield Path(tmp)
        return
    path = logs / key
    path.mkdir(parents=True, exist_ok=False)
    yield path


def run_system(key: str, settings: Settings, scenarios: tuple[str, ...] = SCENARIOS,
               log: Callable[[str], None] | None = None,
               logs: Path | None = None) -> SystemResult:
    """Build a lab, set the system up, and measure settings.runs runs of each scenario."""
    out = SystemResult(key)
    say = log or (lambda text: None)
    with work_dir(key, logs) as tmp, \
            NetLab(wifi_delay_ms=WIFI_DELAY_MS, cell_delay_ms=CELL_DELAY_MS) as lab:
        system = make_system(key, lab, tmp, settings)
        try:
            out.facts = {"rtt_ms": {dev: ping_rtt(lab, dev) for dev in ("wifi", "cell")},
                         **system.setup()}
        except (BenchError, RoamError, OSError, subprocess.SubprocessError) as exc:
            out.error = f"{type(exc).__name__}: {exc}"
            say(f"bench: {key}: setup failed: {out.error}")
            return out
        for scenario in (s for s in scenarios if s in system.scenarios):
            for i in range(settings.runs):
                run = measure_run(system, scenario, i + 1)
                out.runs.append(run)
                say(progress_line(run))
        if lab.cleanup_errors:
            out.facts["cleanup_errors"] = list(lab.cleanup_errors)
    return out


# -- the report -----------------------------------------------------------------


def machine_facts(argv: list[str]) -> dict[str, str]:
    return {
        **benchlib.machine_facts(),
        "command": shlex.join(["python", "bench/handover.py", *argv]),
        "json": "bench/results/handover.json",
        "roam": roam_version(),
    }


def roam_version() -> str:
    """The commit roam ran from, and whether its sources differed from it."""
    def git(*args: str) -> str:
        res = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                             timeout=30, check=False)
        return res.stdout.strip() if res.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    changed = git("status", "--porcelain", "--", "src").splitlines()
    return (commit + (f" with uncommitted changes in {len(changed)} files under src/"
                      if changed else "") + f" (src/ digest {src_digest()})")


def src_digest() -> str:
    """Each roam client loads src/ afresh: this shows whether it changed between runs."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "src").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def figures(runs: list[RunResult], attr: str = "stall_ms", counts: bool = True) -> str:
    """'median (min-max), recovered/runs' over the runs of one cell of the table."""
    if not runs:
        return "not run"
    good: list[float] = [v for r in runs if r.recovered and r.exact
                         and (v := getattr(r, attr)) is not None]
    errors = sum(1 for r in runs if r.error)
    inexact = sum(1 for r in runs if r.recovered and not r.exact)
    recovered = sum(1 for r in runs if r.recovered)
    text = (f"{statistics.median(good):.0f} ({min(good):.0f}-{max(good):.0f})"
            if good else "did not recover")
    if not counts:
        return text
    text += f", {recovered}/{len(runs)}"
    if inexact:
        text += f", **{inexact} not byte-exact**"
    if errors:
        text += f", {errors} failed"
    return text


def roam_own(runs: list[RunResult]) -> str:
    """roam's figure for the handover the event caused: each run's client starts fresh,
    so that is its first one; any further handover in the run is counted."""
    own = [r.roam_handovers[0]["stall_ms"] for r in runs if r.roam_handovers]
    if not own:
        return "—"
    kinds = sorted({f"{r.roam_handovers[0]['kind']}" for r in runs if r.roam_handovers})
    text = f"{statistics.median(own):.0f} ({min(own):.0f}-{max(own):.0f}), {'/'.join(kinds)}"
    if extra := sum(len(r.roam_handovers) - 1 for r in runs if r.roam_handovers):
        text += f"; {extra} more handover{'s' if extra > 1 else ''} in these runs"
    if missing := sum(1 for r in runs if not r.roam_handovers and not r.error):
        text += f"; none recorded in {missing} runs"
    return text


def aims(rtt: dict[str, float | None]) -> dict[str, float]:
    """The issue's aims, from the RTTs measured in the lab (the configured ones if none)."""
    cell = rtt.get("cell") or 2 * CELL_DELAY_MS
    return {"link_down": 50.0 + cell, "soft": max(cell, rtt.get("wifi") or 0.0)}


def aim_cell(scenario: str, runs: list[RunResult], aim: dict[str, float]) -> str:
    if scenario not in aim:
        return "—"
    limit = aim[scenario]
    met = sum(1 for r in runs if r.recovered and r.exact and r.stall_ms is not None
              and r.stall_ms < limit)
    return f"< {limit:.0f}: met in {met}/{len(runs)}"


def render(results: list[SystemResult], settings: Settings, facts: dict[str, str]) -> str:
    by = {r.system: r for r in results}
    rtt: dict[str, float | None] = next(
        (r.facts["rtt_ms"] for r in results if r.facts.get("rtt_ms")), {})
    aim = aims(rtt)
    labels = {"roam": "roam", "mptcp": "MPTCP", "mptcp-stale1": "MPTCP, stale_loss_cnt=1",
              "tcp": "plain TCP"}
    shown = [k for k in SYSTEMS if k in by]

    def cell(key: str, scenario: str, attr: str = "stall_ms", counts: bool = True) -> str:
        res = by[key]
        if res.error:
            return "setup failed"
        if key == "tcp" and scenario == "soft":
            return "n/a (cannot move)"
        return figures([r for r in res.runs if r.scenario == scenario], attr, counts)

    head = ["event"]
    for key in shown:
        head.append(labels[key])
        if key == "roam":
            head += ["aim for roam", "roam's own stall_ms"]
    lines = ["## Handover stalls against MPTCP and plain TCP (network lab)", "",
             "Longest gap between two arrivals at the application after the event, in ms: "
             "median (min-max), then runs that recovered / runs.", "",
             "| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for scenario in SCENARIOS:
        row = [SCENARIO_LABELS[scenario]]
        for key in shown:
            row.append(cell(key, scenario))
            if key == "roam":
                runs = [r for r in by[key].runs if r.scenario == scenario]
                row += [aim_cell(scenario, runs, aim), roam_own(runs) if runs else "—"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Time stalled: the sum of all gaps of {LONG_GAP_MS:.0f} ms or more after "
              "the event (a stall that comes in several pieces counts whole), median "
              "(min-max):", "",
              "| event | " + " | ".join(labels[k] for k in shown) + " |",
              "|---" + "|---:" * len(shown) + "|"]
    for scenario in SCENARIOS:
        lines.append(f"| {SCENARIO_LABELS[scenario]} | "
                     + " | ".join(cell(k, scenario, "stalled_ms", counts=False)
                                  for k in shown) + " |")
    problems = [f"{r.system} {r.scenario} run {r.run}: "
                f"{r.error or ('not byte-exact: ' + str(r.receiver.get('first_error')))}"
                for res in results for r in res.runs if r.error or (r.recovered and not r.exact)]
    problems += [f"{res.system}: setup failed: {res.error}" for res in results if res.error]
    exact_runs = sum(1 for res in results for r in res.runs if r.recovered and r.exact)
    all_runs = sum(len(res.runs) for res in results)
    lines += ["", f"Byte-exact: {exact_runs} of {all_runs} runs delivered every message once, "
              "in order and intact" + ("; the others:" if problems else "."), ""]
    if problems:
        lines += [*(f"- {p}" for p in problems[:20]), ""]
    mptcp_facts = next((by[k].facts for k in ("mptcp", "mptcp-stale1") if k in by
                        and not by[k].error), None)
    stale = (mptcp_facts or {}).get("server", {}).get("stale_loss_cnt", "?")
    tcp_cc = by["tcp"].facts.get("congestion_control", "?") if "tcp" in by else "?"
    rtt_text = ", ".join(f"{dev} {v:.1f} ms" for dev, v in rtt.items() if v is not None)
    lines += [
        f"- Stream: {SIZE} bytes every {INTERVAL_MS:g} ms "
        "from `bench/paced.py send` in the server namespace to `bench/paced.py recv` in the "
        f"mobile namespace; {settings.runs} run{'s' if settings.runs != 1 else ''} of each "
        "event for each system, "
        f"{settings.steady:g} s of clean stream before each event. A run recovers when a "
        f"message due after the network was back arrives within {settings.recover_limit:g} s "
        "of the event.",
        f"- Lab: `NetLab(wifi_delay_ms={WIFI_DELAY_MS:g}, cell_delay_ms={CELL_DELAY_MS:g})`, "
        f"measured ping RTT {rtt_text}; a lab of its own for each system.",
        f"- Aims for roam (from the issue): hard handover on link down under 50 ms + one RTT "
        f"of cell = {aim['link_down']:.0f} ms; soft handover under one RTT of the slower path "
        f"= {aim['soft']:.0f} ms.",
        f"- Date: {facts['date']}",
        f"- Machine: {facts['nproc']} CPUs ({facts['cpu']}), {facts['kernel']}, "
        f"Python {facts['python']}; net.mptcp.stale_loss_cnt default {stale}; "
        f"TCP congestion control {tcp_cc}",
        f"- roam: commit {facts['roam']}",
        f"- Command: `{facts['command']}` (as root); raw results in `{facts['json']}`",
    ]
    return "\n".join(lines + reading(results, settings, facts))


def reading(results: list[SystemResult], settings: Settings, facts: dict[str, str]) -> list[str]:
    """How to read the tables: what each system did, so the figures can be judged."""
    baseline = [r.receiver["baseline_longest_gap_ms"] for res in results for r in res.runs
                if r.receiver.get("baseline_longest_gap_ms") is not None]
    floor = (f"the longest gap in the second before the event was "
             f"{statistics.median(baseline):.0f} ms (median; at most {max(baseline):.0f} ms)"
             if baseline else "gaps of a few ms happen")
    return [
        "", "### Reading the handover figures", "",
        f"- **What is measured.** The receiving application's longest wait between two "
        f"messages after the event. A message is due every {INTERVAL_MS:g} ms, so a gap of "
        f"g ms held back about g messages, which then arrive together. Without any event "
        f"{floor}: every process here (the lab's userspace links, the daemons, sender and "
        f"receiver) is Python on {facts['nproc']} CPUs, so differences of that size mean "
        "nothing. The second table adds up every gap of "
        f"{LONG_GAP_MS:.0f} ms or more, for stalls that come in pieces: a stall that ends "
        "in a trickle (a few messages, then another round trip of silence while the new "
        "path's congestion window opens) has a short longest gap and a longer time "
        "stalled. Read both.",
        "- **roam.** Its own `stall_ms` (`roam status --json`) runs from the last record "
        "heard on the old transport to the switch (or to RESUMED after a resume); the "
        "application's gap adds what that leaves out: the resend of what was lost in "
        "flight and its delivery over the new path. Each run begins with the standby "
        "transport joined to the session on cell (docs/protocol.md 5.2). On link down the"
        " linux link driver reports the link at once and the client switches to the "
        "standby, resending what was not acknowledged: one cell round trip for the server"
        " to hear it and resend, then the new path's congestion window opens, which is "
        "the rest of the time stalled. A silent black hole is found by the stall detector"
        " on either side: nothing acknowledged for max(150 ms, 4 RTTs) while the standby "
        "answers (bench/stall.py measured 24 ms as the worst ACK gap of a healthy loaded "
        "path), then the same switch. Soft is SWITCH on the standby: the next frames go "
        "there at once and, for one cell round trip, on wifi too, so the only gap is the "
        "paths' one-way delay difference (27.5 ms), with nothing resent. Soft is `roam "
        "switch cell` (the bench sends the same control request over the client's control"
        " socket). Each run starts a fresh client: after a hard handover roam avoids the "
        "old path for a while, doubling each time up to a minute, so later runs on one "
        "client would not be alike.",
        "- **MPTCP.** The sender is on the server side and hears nothing when the mobile's "
        "wifi goes down, so link down and black hole look the same to it: it reinjects "
        "unacknowledged data on the backup subflow when its retransmission timer fires, "
        "but goes on scheduling new data on the wifi subflow until that subflow is stale, "
        "after `net.mptcp.stale_loss_cnt` retransmission intervals without progress (4 by "
        "default). The stall therefore comes in several pieces. With stale_loss_cnt=1, "
        "the documented setting for a fast active-backup switch, it moves after the first. "
        "Setup: `ip mptcp limits set subflows 2 add_addr_accepted 2` in mobile and server; "
        "in mobile the endpoints `<wifi address> id 1 dev wifi` (no flags) and `<cell "
        "address> id 2 dev cell subflow backup`, and a routing table per source address "
        "(each ending in an unreachable default), as a multihomed MPTCP host needs: "
        "without it the wifi subflow's packets leave by cell once wifi is down, and the "
        "sender keeps that subflow alive. Before each event the bench checks with `ss -tni` "
        "in the server namespace that both subflows are established and that the cell one "
        "carries the peer's backup flag, and with MPTCP_INFO that the receiver's socket "
        "did not fall back to TCP. Soft: `ip mptcp endpoint change id 2 nobackup`, then "
        "`id 1 backup`; each sends MP_PRIO, and the sender's scheduler moves to cell. "
        f"The first data it sends there take {CELL_DELAY_MS - WIFI_DELAY_MS:g} ms longer "
        "one way than the last sent on wifi, and that is most of its soft figure.",
        "- **Plain TCP**, for reference: one connection bound to wifi. It cannot move, so "
        f"the outage lasts {settings.tcp_outage:g} s and then the network is back; the stall "
        "is that outage plus the wait for TCP's next retransmission, whose timeout doubles "
        "at each try. It is not a handover.",
    ]


def write_section(out: Path, section: str) -> None:
    """Replace only the text between this benchmark's markers (add them at the end)."""
    block = f"{START}\n{section}\n{END}"
    text = out.read_text() if out.exists() else "# roam benchmarks\n"
    start = text.find(START)
    stop = text.find(END, start)
    if start != -1 and stop != -1:
        text = text[:start] + block + text[stop + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each event per system")
    parser.add_argument("--only", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "handover.json",
                        help="raw results (default bench/results/handover.json)")
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep each system's daemon logs and event logs in this new "
                        "directory (by default they go with a temporary one)")
    parser.add_argument("--tcp-outage", type=float, default=TCP_OUTAGE,
                        help="seconds plain TCP is cut off before the network is back")
    args = parser.parse_args(argv)
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in args.only if p not in SYSTEMS]
    if unknown or not args.only:
        parser.error(f"--only takes a subset of {','.join(SYSTEMS)}, got {unknown or 'nothing'}")
    if not 1 <= args.runs <= 100 or not 0 < args.tcp_outage <= 10:
        parser.error("--runs must be 1..100 and --tcp-outage 0..10 s")
    return args


@contextlib.contextmanager
def timed(log: Callable[[str], None], what: str) -> Iterator[None]:
    t0 = time.monotonic()
    yield
    log(f"bench: {what} took {time.monotonic() - t0:.0f} s")


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("bench/handover.py: must run as root (it builds network namespaces)",
              file=sys.stderr)
        return 2
    args = parse_args(argv)
    facts = machine_facts(argv)
    json_path = args.json.resolve()
    facts["json"] = str(json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT)
                        else json_path)
    settings = Settings(runs=args.runs, tcp_outage=args.tcp_outage)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    results: list[SystemResult] = []
    with timed(log, "the whole benchmark"):
        for key in (k for k in SYSTEMS if k in args.only):
            log(f"bench: measuring {key} ...")
            with timed(log, key):
                results.append(run_system(key, settings, log=log, logs=args.logs))
    seen = {r.notes["roam_src"] for res in results for r in res.runs if "roam_src" in r.notes}
    if len(seen) > 1 or (seen and f"digest {seen.pop()})" not in facts["roam"]):
        # Figures of runs on either side of a change are not comparable.
        facts["roam"] += "; **roam's sources changed during its runs**: re-run"
        log("bench: warning: roam's sources changed during its runs; the figures mix versions")
    section = render(results, settings, facts)
    print(section)
    write_section(args.out, section)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"facts": facts, "settings": asdict(settings),
                                     "systems": [asdict(r) for r in results]}, indent=1) + "\n")
    log(f"bench: wrote {args.out} and {args.json}")
    failed = [r.system for r in results if r.error]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
