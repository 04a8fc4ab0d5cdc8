"""The double jump in the network lab: both units lose their network at once and find
each other again through a registrar, the built-in one and a real Kamailio.

    python bench/doublejump.py [--runs 10] [--only builtin,kamailio] [--no-write]
                               [--out docs/benchmarks.md]
                               [--json bench/results/doublejump.json] [--logs DIR]

Each run builds a fresh lab as tests/system/test_lab_mobile.py does (`NetLab(wifi
2.5 ms, cell 30 ms one way, relays=1, server_links=2, nat=False)`), so every run
starts alike: the registrar in relay1; a mobile roam server with networks net1 (device
srv) and net2 (srv2), on net1; a roam client in mobile that names the server by key
alone (built-in registrar) or by its SIP address of record (Kamailio) and finds it
through the registrar, on wifi with a standby transport joined on cell. The units are
`MobileLab`'s, the test's own, with one more forward and --allow for the stream.

In the server namespace `bench/paced.py send` sends a 1 KiB sequence-numbered
message every 1 ms; in mobile `bench/paced.py recv` reads it through the client's
forward, checks it byte for byte and times every arrival (bench/handover.py's
receiver). After 1 s of clean stream, the double jump: mobile's wifi and the
server's srv go down at the same moment (two threads, one `ip link set down` each).
Measured per run:

- resumed_s: from the jump until the client's status (its control socket, polled
  every POLL_S) shows the session attached at the server's net2 address with a new
  handover recorded; more than RESUME_LIMIT seconds is a failed run, reported;
- stall_ms: that handover's stall as the client recorded it (its last handover);
- the application's longest gap between two arrivals after the jump, and whether the
  stream was byte-exact and in order.

The daemons' log lines after the jump are kept with each run (ms after the jump),
and the milestones of the client's recovery are read from them. Must run as root;
every process is started through the lab (or Kamailio's own class) and ended with it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
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
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the lab's units are the system test's own (tests.system)
sys.path.insert(1, str(ROOT / "src"))  # run from a checkout without installing roam
sys.path.insert(2, str(ROOT / "bench"))

from tests.system.harness import ENV  # noqa: E402
from tests.system.test_lab_mobile import ROAM_PORT, SIP_PORT, MobileLab  # noqa: E402

from benchlib import machine_line, write_section  # noqa: E402
from handover import (  # noqa: E402
    INTERVAL_MS,
    PACED,
    SIZE,
    Receiver,
    machine_facts,
    read_line,
    tail,
)
from roam.control.client import request  # noqa: E402
from roam.errors import RoamError  # noqa: E402
from roam.lab.kamailio import Kamailio, find_kamailio  # noqa: E402
from roam.lab.netlab import NetLab  # noqa: E402

START, END = "<!-- bench:doublejump:start -->", "<!-- bench:doublejump:end -->"
KINDS = ("builtin", "kamailio")
LABELS = {"builtin": "built-in (`roam registrar`)", "kamailio": "Kamailio (SIP)"}

# The lab of tests/system/test_lab_mobile.py.
WIFI_DELAY_MS, CELL_DELAY_MS = 2.5, 30.0
# The stream's own port in the server namespace and the client's forward to it; the
# test's units listen on 7000 (roam), 7007 (echo), 7100 (forward) and 7500 (registrar).
PACE_PORT, PACE_FORWARD = 7200, 7300
STEADY = 1.0  # seconds of clean stream before the jump
AFTER = 1.0  # seconds of stream due after the resume, before stopping
RESUME_LIMIT = 60.0  # seconds after the jump; later is a failed run
POLL_S = 0.02  # the client's status is asked this often while waiting for the resume
READY_LIMIT = 30.0  # seconds for the stream to run cleanly
LOG_LINES = 60  # log lines after the jump kept per daemon and run


class BenchError(Exception):
    """A run could not be measured; the message says why."""


@dataclass
class Settings:
    runs: int = 10
    steady: float = STEADY
    after: float = AFTER
    resume_limit: float = RESUME_LIMIT


@dataclass
class RunResult:
    kind: str
    run: int
    recovered: bool = False  # resumed at the new address within the limit, stream flowing
    resumed_s: float | None = None
    stall_ms: float | None = None  # the client's own figure for the handover
    app_gap_ms: float | None = None  # longest gap between two arrivals after the jump
    exact: bool = False
    error: str | None = None
    jump_spread_ms: float | None = None  # between the two links going down
    handover: dict[str, Any] = field(default_factory=dict)
    server_moves: list[dict[str, Any]] = field(default_factory=list)
    milestones: dict[str, float] = field(default_factory=dict)  # ms after the jump
    resume_failure: str | None = None  # the first failed resume's reason, from the log
    receiver: dict[str, Any] = field(default_factory=dict)  # paced.py's whole result
    log: dict[str, list[str]] = field(default_factory=dict)  # daemon -> lines after the jump


@dataclass
class KindResult:
    kind: str
    runs: list[RunResult] = field(default_factory=list)
    skipped: str | None = None  # why this registrar was not measured


# -- the log -------------------------------------------------------------------

# `%(asctime)s roam-ROLE LEVEL message` (roam.cli): local time, to the millisecond.
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) roam-\w+ \w+ (.*)$")

# What the units do between the jump and the resume, in about the order it happens;
# each milestone is the first line after the jump, in that daemon's log, that matches.
MILESTONES: dict[str, tuple[str, re.Pattern[str]]] = {
    # The server's link driver sees srv go and the server moves to net2, telling its
    # registrar (the built-in one confirms; for SIP the REGISTER starts).
    "server_moved": ("roam-server", re.compile(r"^server network net1 -> net2 ")),
    "server_registered": ("roam-server", re.compile(
        r"^registered .* at registrar|^SIP registration of .* moves to")),
    # The client's link driver sees wifi go: the session moves to the joined standby.
    "standby": ("roam-client", re.compile(r"^handover hard wifi -> cell .*joined standby")),
    # Nothing comes back on the standby (it leads to net1): liveness declares it dead.
    "dead": ("roam-client", re.compile(r"nothing heard for .*: transport declared dead")),
    "resume_failed": ("roam-client", re.compile(r"^resume attempt \d+ failed")),
    "registrar": ("roam-client", re.compile(r"\(its registrar says\)$")),
    "resumed": ("roam-client", re.compile(r"^session \S+: resumed;")),
}


def after_jump(text: str, jump_wall: float) -> list[tuple[float, str]]:
    """(ms after the jump, message) of each log line at or after the jump.

    Log times are to the millisecond and the jump's wall time is taken just before
    the links go down, so a line can precede it by under 1 ms: kept from -1 ms.
    """
    out: list[tuple[float, str]] = []
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        at = (stamp - jump_wall) * 1000
        if at >= -1:
            out.append((round(at, 1), m.group(2)))
    return out


def milestones(logs: dict[str, list[tuple[float, str]]]) -> dict[str, float]:
    """The first line of each kind in MILESTONES, in ms after the jump."""
    found: dict[str, float] = {}
    for name, (daemon, pattern) in MILESTONES.items():
        at = next((at for at, text in logs.get(daemon, []) if pattern.search(text)), None)
        if at is not None:
            found[name] = at
    return found


# -- one run --------------------------------------------------------------------


def start_sender(lab: NetLab, tmp: Path) -> None:
    log = (tmp / "sender.log").open("ab")
    try:
        proc = lab.run("server", [sys.executable, str(PACED), "send", "--listen",
                                  f"127.0.0.1:{PACE_PORT}", "--size", str(SIZE),
                                  "--interval-ms", str(INTERVAL_MS)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=ENV,
                       cwd=ROOT)
    finally:
        log.close()  # the child has its own descriptor
    assert proc.stdout is not None
    if not read_line(proc.stdout, 20).startswith(b"listening"):
        raise BenchError(f"the paced sender did not start: {tail(tmp / 'sender.log')}")


def kamailio_flags(lab: NetLab, tmp: Path) -> tuple[Kamailio, list[str], list[str]]:
    """Kamailio in relay1 with an account per unit, as the system test sets it up."""
    at = lab.addresses["relay1"]
    accounts = {"server": "server-secret", "laptop": "laptop-secret"}
    for user, password in accounts.items():
        path = tmp / f"{user}.pass"
        path.write_text(f"{password}\n")
        os.chmod(path, 0o600)  # roam refuses a password file others can read

    def registrar(user: str) -> list[str]:
        return ["--registrar", f"sip:{user}@roam.test,via={at}:{SIP_PORT},"
                               f"password-file={tmp / (user + '.pass')}"]

    sip = Kamailio(tmp / "kamailio", accounts, port=SIP_PORT, host=at,
                   prefix=("ip", "netns", "exec", lab.relays[0]))
    return sip, registrar("server"), ["--server", "sip:server@roam.test", *registrar("laptop")]


def jump(lab: NetLab) -> float:
    """Both units lose their network: mobile's wifi and the server's srv, each in a
    thread of its own so neither waits for the other's `ip` command. Returns the ms
    between the two links going down."""
    done: dict[str, float] = {}
    errors: list[Exception] = []

    def down(name: str, action: Callable[[str], None]) -> None:
        try:
            action(name)
            done[name] = time.monotonic()
        except Exception as exc:  # reported below, from the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=down, args=("wifi", lab.link_down)),
               threading.Thread(target=down, args=("srv", lab.server_link_down))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    if errors:
        raise BenchError(f"the jump failed: {errors[0]}")
    if len(done) != 2:
        raise BenchError("the jump did not finish within 30 s")
    return round(abs(done["wifi"] - done["srv"]) * 1000, 1)


def status(control: Path) -> dict[str, Any]:
    """What `roam status --json` prints, asked directly: no process start per poll."""
    result: dict[str, Any] = request(str(control), "status", timeout=5)
    return result


def wait_resumed(control: Path, address: str, before: int, jumped: float, jump_wall: float,
                 limit: float) -> tuple[float, dict[str, Any]] | None:
    """Seconds from the jump to the session attached at `address` with the handover
    that took it there recorded, and that status; None if not within `limit` s.

    The switch to the standby right after the jump is a new handover too, and the
    session shows attached at the new address a few ms before the resume's own record
    is added. The resume's record is the one completed (its wall clock `started`)
    after the last status that still showed the old address.
    """
    old_seen = jump_wall
    # Timed at the asking: the answer is the state within a few ms of it, well inside
    # the POLL_S between two asks.
    while (now := time.monotonic()) < jumped + limit:
        asked = time.time()
        with contextlib.suppress(RoamError, OSError, ValueError):
            st = status(control)
            if st.get("address") != address:
                old_seen = asked
            else:
                session = st.get("session") or {}
                new = (st.get("handovers") or [])[before:]
                if (session.get("state") == "attached"
                        and any(h.get("started", 0) >= old_seen for h in new)):
                    return now - jumped, st
        time.sleep(POLL_S)
    return None


def measure_run(kind: str, index: int, tmp: Path, settings: Settings) -> RunResult:
    """One double jump in a lab of its own."""
    run = RunResult(kind, index)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with NetLab(wifi_delay_ms=WIFI_DELAY_MS, cell_delay_ms=CELL_DELAY_MS, relays=1,
                    server_links=2, nat=False) as lab, contextlib.ExitStack() as stack:
            units = MobileLab(lab, tmp)
            start_sender(lab, tmp)
            if kind == "builtin":
                server_flags, client_flags = units.builtin()
            else:
                sip, server_flags, client_flags = kamailio_flags(lab, tmp)
                stack.enter_context(sip)
            units.start_units(
                [*server_flags, "--allow", f"127.0.0.1:{PACE_PORT}"],
                [*client_flags, "--forward", f"127.0.0.1:{PACE_FORWARD}=127.0.0.1:{PACE_PORT}"])
            measure_jump(lab, units, run, settings)
    except (BenchError, RoamError, OSError, subprocess.SubprocessError, KeyError,
            AssertionError) as exc:
        # AssertionError: MobileLab's waits raise it, with the daemons' logs.
        run.error = f"{type(exc).__name__}: {' / '.join(str(exc).splitlines())[:1500]}"
        run.recovered = False
    return run


def measure_jump(lab: NetLab, units: MobileLab, run: RunResult, settings: Settings) -> None:
    net1, net2 = (f"{lab.addresses[n]}:{ROAM_PORT}" for n in ("server", "server2"))
    before = status(units.control)
    if before["address"] != net1:
        raise BenchError(f"the client is at {before['address']}, not the server's net1 {net1}")
    rx = Receiver(lab, ["--connect", f"127.0.0.1:{PACE_FORWARD}"], units.tmp / "receiver.log")
    found: tuple[float, dict[str, Any]] | None = None
    try:
        need = int(settings.steady * 1000 / INTERVAL_MS)
        if not rx.wait(lambda p: p["progress"] >= need and p["exact"],
                       time.monotonic() + READY_LIMIT):
            raise BenchError(f"the stream did not run cleanly for {settings.steady:g} s: "
                             f"{rx.progress or tail(rx.log)}")
        handovers = len(status(units.control)["handovers"])
        jump_wall = time.time()
        jumped = time.monotonic()
        rx.send(f"event {jumped!r}")
        run.jump_spread_ms = jump(lab)
        found = wait_resumed(units.control, net2, handovers, jumped, jump_wall,
                             settings.resume_limit)
        if found is not None:
            resumed_s, st = found
            run.resumed_s = round(resumed_s, 3)
            # The resume's record is the last: nothing else moves the session meanwhile.
            run.handover = dict(st["handovers"][-1])
            run.stall_ms = run.handover.get("stall_ms")
            # Some stream due after the resume, so the gap it ended is complete.
            rx.wait(lambda p: (p["last_due"] or 0) >= jumped + resumed_s + settings.after,
                    jumped + resumed_s + settings.after + 15)
        result = rx.stop()
    finally:
        rx.close()
    run.receiver = result
    run.exact = bool(result["exact"]) and result["first_error"] is None
    if found is not None and result["recovered"]:
        run.recovered = True
        run.app_gap_ms = result["stall_ms"]
    with contextlib.suppress(RoamError, OSError, ValueError, KeyError):
        run.server_moves = list(units.server_status()["networks"]["moves"])
    logs: dict[str, list[tuple[float, str]]] = {}
    for name in ("roam-client", "roam-server"):
        path = units.tmp / f"{name}.log"
        logs[name] = after_jump(path.read_text(errors="replace"), jump_wall) \
            if path.exists() else []
        run.log[name] = [f"+{at:.0f} ms {text}" for at, text in logs[name][:LOG_LINES]]
    run.milestones = milestones(logs)
    # Why the first resume failed: the reading says what the runs met.
    run.resume_failure = next((text.split(": ", 1)[-1] for _, text in logs["roam-client"]
                               if MILESTONES["resume_failed"][1].search(text)), None)
    if found is None:
        run.error = (f"not resumed at the server's net2 address {net2} within "
                     f"{settings.resume_limit:g} s")
    elif not run.recovered:
        run.error = (f"the session resumed after {run.resumed_s:.2f} s, but no message due "
                     "after the jump reached the application")


def progress_line(run: RunResult) -> str:
    head = f"bench: {run.kind} run {run.run}: "
    if run.error:
        return head + f"error: {run.error}"
    gap = "—" if run.app_gap_ms is None else f"{run.app_gap_ms:.0f} ms"
    return (head + f"resumed after {run.resumed_s:.2f} s, handover stall {run.stall_ms} ms, "
            f"application gap {gap}{'' if run.exact else ', NOT BYTE-EXACT'}; "
            f"milestones (ms) {run.milestones}")


@contextlib.contextmanager
def work_dir(logs: Path | None) -> Iterator[Path]:
    """Where the runs' keys, sockets and logs go: kept under `logs` if given."""
    if logs is None:
        with tempfile.TemporaryDirectory(prefix="roam-doublejump-") as tmp:
            yield Path(tmp)
        return
    logs.mkdir(parents=True, exist_ok=False)
    yield logs


def run_kind(kind: str, settings: Settings, base: Path,
             log: Callable[[str], None] = lambda text: None) -> KindResult:
    out = KindResult(kind)
    if kind == "kamailio" and find_kamailio() is None:
        out.skipped = "kamailio is not installed (scripts/setup-env installs it)"
        log(f"bench: kamailio: skipped: {out.skipped}")
        return out
    for i in range(1, settings.runs + 1):
        run = measure_run(kind, i, base / f"{kind}-{i}", settings)
        out.runs.append(run)
        log(progress_line(run))
    return out


# -- the report -----------------------------------------------------------------


def figure(values: list[float], digits: int = 0) -> str:
    """'median (min-max)'; the range only where the values differ as printed."""
    if not values:
        return "—"
    text = f"{statistics.median(values):.{digits}f}"
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return text if low == high else f"{text} ({low}-{high})"


def column(res: KindResult) -> list[str]:
    """One registrar's cells, in the order of ROWS."""
    if res.skipped:
        return [f"not run: {res.skipped}"] + ["—"] * (len(ROWS) - 1)
    good = [r for r in res.runs if r.recovered]
    exact = sum(1 for r in res.runs if r.recovered and r.exact)
    return [
        figure([r.resumed_s for r in good if r.resumed_s is not None], 2),
        figure([r.stall_ms for r in good if r.stall_ms is not None]),
        figure([r.app_gap_ms for r in good if r.app_gap_ms is not None]),
        f"{len(good)}/{len(res.runs)}",
        f"{exact}/{len(good)}" if good else "—",
    ]


ROWS = ("resumed after the jump, s", "the client's handover stall_ms",
        "the application's longest gap, ms", "runs recovered / runs",
        "byte-exact and in order / recovered")


def _between(first: str, then: str) -> Callable[[dict[str, float]], float | None]:
    def span(m: dict[str, float]) -> float | None:
        return m[then] - m[first] if first in m and then in m else None
    return span


def _milestone(name: str) -> Callable[[dict[str, float]], float | None]:
    return lambda m: m.get(name)


# Phases of the recovery, each from a run's milestones (ms after the jump); None when
# a milestone it needs was not seen.
PHASES: dict[str, Callable[[dict[str, float]], float | None]] = {
    **{name: _milestone(name) for name in MILESTONES},
    # From the standby found dead to the failed resume at the old address.
    "retry": _between("dead", "resume_failed"),
    # From the failed resume to the registrar's answer.
    "lookup": _between("resume_failed", "registrar"),
    # From the registrar's answer to the session resumed at the new address.
    "resume": _between("registrar", "resumed"),
}


def phase(res: KindResult, name: str) -> list[float]:
    return [v for r in res.runs if r.recovered and (v := PHASES[name](r.milestones)) is not None]


def per_registrar(results: list[KindResult], name: str, seconds: bool = False) -> str:
    """A phase's median (and range) for each registrar measured: '1.93 s built-in, ...'."""
    parts = []
    for res in results:
        values = phase(res, name)
        if not values:
            continue
        text = (figure([v / 1000 for v in values], 2) + " s") if seconds \
            else figure(values) + " ms"
        parts.append(text + (f" {SHORT[res.kind]}" if len(results) > 1 else ""))
    return ", ".join(parts) or "not seen"


SHORT = {"builtin": "built-in", "kamailio": "Kamailio"}


def render(results: list[KindResult], settings: Settings, facts: dict[str, str]) -> str:
    lines = ["## The double jump: both units lose their network at once (network lab)", "",
             "Both the client's wifi and the server's network net1 go down at the same "
             "moment; the client finds the server again at its net2 address through the "
             "registrar. Median (min-max) over the runs that recovered.", "",
             "| | " + " | ".join(LABELS[r.kind] for r in results) + " |",
             "|---" + "|---:" * len(results) + "|"]
    cols = [column(r) for r in results]
    spreads = [r.jump_spread_ms for res in results for r in res.runs
               if r.jump_spread_ms is not None]
    for i, row in enumerate(ROWS):
        lines.append(f"| {row} | " + " | ".join(c[i] for c in cols) + " |")
    problems = [f"{r.kind} run {r.run}: "
                + (r.error or f"not byte-exact: {r.receiver.get('first_error')}")
                for res in results for r in res.runs if r.error or not r.exact]
    if problems:
        lines += ["", "Runs that failed or were not byte-exact:", "",
                  *(f"- {p[:400]}" for p in problems[:20])]
    lines += [
        "",
        f"- Each run: a fresh `NetLab(wifi_delay_ms={WIFI_DELAY_MS:g}, cell_delay_ms="
        f"{CELL_DELAY_MS:g}, relays=1, server_links=2, nat=False)` with the units of "
        "tests/system/test_lab_mobile.py (`MobileLab`): the registrar in relay1, the server "
        "on net1 with net2 as its second network, the client on wifi with a standby "
        "transport joined on cell, both `--dwell 1`. "
        f"{settings.runs} run{'s' if settings.runs != 1 else ''} per registrar; the jump's "
        "two `ip link set down` (one in each thread) completed "
        f"{figure(spreads, 1)} ms apart.",
        f"- Stream: {SIZE} bytes every {INTERVAL_MS:g} ms from `bench/paced.py send` in the "
        "server namespace through the client's forward to `bench/paced.py recv` in mobile, "
        f"{settings.steady:g} s clean before the jump. Resumed: the client's status shows "
        "the session attached at net2's address with a new handover (polled every "
        f"{POLL_S * 1000:.0f} ms); a run that has not within {settings.resume_limit:g} s "
        "failed.",
        f"- Date: {facts['date']}; {machine_line(facts)}",
        f"- roam: commit {facts['roam']}",
        f"- Command: `{facts['command']}` (as root); raw results, with each run's daemon "
        f"log lines after the jump, in `{facts['json']}`",
    ]
    return "\n".join(lines + reading(results))


def failure_note(results: list[KindResult]) -> str:
    """How the first resume failed, as the runs' logs say: ' (in 9 of 10 runs: ...)'."""
    reasons = Counter(r.resume_failure for res in results for r in res.runs
                      if r.recovered and r.resume_failure)
    if not reasons:
        return ""
    reason, count = reasons.most_common(1)[0]
    runs = sum(1 for res in results for r in res.runs if r.recovered)
    return f" (in {count} of {runs} runs: `{reason}`)"


def reading(results: list[KindResult]) -> list[str]:
    """What the time is made of, from the daemons' log lines after the jump."""
    measured = [res for res in results if any(r.recovered for r in res.runs)]
    if not measured:
        return []

    def at(name: str) -> str:
        return per_registrar(measured, name, seconds=True)

    def took(name: str) -> str:
        return per_registrar(measured, name)

    shares = [f"{statistics.median(dead) / statistics.median(whole) * 100:.0f}%"
              + (f" {SHORT[res.kind]}" if len(measured) > 1 else "")
              for res in measured
              if (dead := phase(res, "dead")) and (whole := phase(res, "resumed"))]
    rtt = 2 * CELL_DELAY_MS
    return [
        "", "### Reading the double jump figures", "",
        "Each run's daemon logs give the milestones below, as time after the jump "
        "(median, min-max over the runs that recovered).", "",
        f"- **The server** sees srv go and moves to net2 at once ({took('server_moved')}),"
        f" telling its registrar the new address ({took('server_registered')}: the "
        "built-in registrar's confirmation, Kamailio's REGISTER sent) and its client by "
        "MOVE, which cannot arrive: every transport of the session runs to its old net1 "
        "address.",
        f"- **The client** sees wifi go and moves the session to its standby on cell at "
        f"once ({took('standby')}). That standby also leads to the server's old address, "
        "so nothing comes back on it. Being the client's only transport now, it is "
        "declared dead once nothing came on it and TCP beneath delivered nothing of what "
        "it had in flight for `alone_dead_after` (0.6 s, and at least four of its RTTs; "
        "without TCP's word it would be the 2 s liveness floor), counted from the switch: "
        f"found dead {at('dead')} after the jump, "
        f"{' and '.join(shares)} of the time to resume.",
        "- **Then the registrar.** The client resumes at once: its first attempt goes to "
        f"the server's old address and fails within {took('retry')}{failure_note(measured)}."
        f" It then asks the registrar, which answers in {took('lookup')}; a cell round "
        f"trip is {rtt:.0f} ms, and the built-in registrar takes two (a TCP connect, then "
        "the lookup carried in the handshake's first message), Kamailio three (a TCP "
        "connect, the REGISTER query challenged for its digest, the query again with it). "
        f"The resume at net2 takes {took('resume')} more (a TCP connect and the resume "
        f"handshake over cell, about three round trips); resumed at {at('resumed')}.",
        "- The client's `stall_ms` runs from the last record heard to the resume, so it "
        "is about the time to resume; the application's longest gap ends when the server "
        "resends, on the new transport, what the jump left unacknowledged, so it is about "
        "the same figure. What the registrar itself costs is its lookup, two or three cell "
        "round trips; the double jump would be shorter only if the dead standby were "
        "found sooner.",
    ]


def roam_facts(argv: list[str]) -> dict[str, str]:
    # `git status` may refresh the index as it reads it; a benchmark only reads, while
    # others may be working in the same checkout.
    os.environ.setdefault("GIT_OPTIONAL_LOCKS", "0")
    facts = machine_facts(argv)  # bench/handover.py's: machine, commit and src/ digest
    facts["command"] = shlex.join(["python", "bench/doublejump.py", *argv])
    facts["json"] = "bench/results/doublejump.json"
    return facts


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per registrar")
    parser.add_argument("--only", default=",".join(KINDS),
                        help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--no-write", action="store_true",
                        help="print the section; write neither --out nor --json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" /
                        "doublejump.json", help="raw results")
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep every run's keys and daemon logs in this new directory")
    args = parser.parse_args(argv)
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in args.only if k not in KINDS]
    if unknown or not args.only:
        parser.error(f"--only takes a subset of {','.join(KINDS)}, got {unknown or 'nothing'}")
    if not 1 <= args.runs <= 100:
        parser.error("--runs must be 1..100")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/doublejump.py: must run as root (it builds network namespaces)",
              file=sys.stderr)
        return 2
    facts = roam_facts(argv)
    settings = Settings(runs=args.runs)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    results: list[KindResult] = []
    with work_dir(args.logs) as base:
        for kind in (k for k in KINDS if k in args.only):
            log(f"bench: {kind}: {settings.runs} run(s) ...")
            results.append(run_kind(kind, settings, base, log))
    section = render(results, settings, facts)
    print(section)
    if not args.no_write:
        write_section(args.out, START, END, section)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"facts": facts, "settings": asdict(settings),
                                         "registrars": [asdict(r) for r in results]},
                                        indent=1) + "\n")
        log(f"bench: wrote {args.out} and {args.json}")
    failed = any(r.error or not r.exact for res in results for r in res.runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
