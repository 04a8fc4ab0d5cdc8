"""Pieces shared by the benchmark scripts: processes, CPU accounting, medians, sections.

Nothing here measures anything by itself; bench/run.py and bench/tunnels.py do.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import shlex
import statistics
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30


class NotRunError(Exception):
    """A path that cannot be measured on this machine (a tool or feature is missing)."""


def end(proc: subprocess.Popen[Any]) -> None:
    """End one process we started, by its own Popen: TERM, then KILL after 5 s."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


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
            end(proc)
            if proc.stdout is not None:
                proc.stdout.close()


def tail(log: Path, limit: int = 400) -> str:
    text = log.read_text(errors="replace").strip() if log.exists() else ""
    text = " / ".join(line for line in text.splitlines() if line.strip())
    return (text[-limit:] if text else "(empty)")


def run_ok(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 30) -> str:
    """Run a short command; return its stdout or raise with its stderr."""
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                         stdin=subprocess.DEVNULL, check=False)
    if res.returncode != 0:
        err = " / ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"`{shlex.join(cmd[-3:])}` exited with {res.returncode}: {err}")
    return res.stdout


# -- CPU accounting ------------------------------------------------------------

def parse_stat(text: str) -> int:
    """Clock ticks in /proc/PID/stat: utime + stime + cutime + cstime.

    The command name (field 2) may hold spaces and parentheses, so fields are
    counted from the last ')'. cutime and cstime hold children already reaped, so a
    helper process that ends between two readings is still counted.
    """
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime..cstime are fields 14..17.
    return sum(int(fields[i]) for i in range(11, 15))


def parse_children(text: str) -> list[int]:
    """Pids in a /proc/PID/task/TID/children file."""
    return [int(word) for word in text.split()]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += parse_children((task / "children").read_text())
            except OSError:
                continue
    except OSError:
        pass
    return out


def process_tree(pids: Iterable[int]) -> set[int]:
    """The pids and all their descendants alive now."""
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += _children(pid)
    return seen


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU seconds (user + system) used so far by the processes and their descendants."""
    ticks = 0
    for pid in process_tree(pids):
        try:
            ticks += parse_stat(Path(f"/proc/{pid}/stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # ended in between: its parent's cutime counts it
    return ticks / CLK_TCK


def per_gib(seconds: float, nbytes: int) -> float | None:
    return seconds / (nbytes / GIB) if nbytes > 0 else None


# -- figures -------------------------------------------------------------------

def median_or_none(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def with_range(values: list[float], digits: int = 1) -> str:
    """The median, then min-max in parentheses when there is more than one value."""
    if not values:
        return "—"
    text = f"{statistics.median(values):.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
    return text


def cell(text: str) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= 240 else text[:237] + "..."


def machine_facts() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(len(os.sched_getaffinity(0))), "cpu": cpu.group(1) if cpu else "unknown",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load": f"{os.getloadavg()[0]:.2f}",
    }


def machine_line(facts: dict[str, str]) -> str:
    """The machine, and how busy it was when the run began (other work skews figures)."""
    line = f"{facts['nproc']} CPUs ({facts['cpu']}), {facts['kernel']}, Python {facts['python']}"
    if "load" in facts:
        line += f"; 1-minute load average {facts['load']} when the run began"
    return line


def replace_section(text: str | None, start: str, end: str, section: str) -> str:
    """`text` with the block between the markers replaced (or appended if absent)."""
    block = f"{start}\n{section}\n{end}"
    if text is None:
        return f"# roam benchmarks\n\n{block}\n"
    i = text.find(start)
    j = text.find(end, i) if i != -1 else -1
    if i != -1 and j != -1:
        return text[:i] + block + text[j + len(end):]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_section(out: Path, start: str, end: str, section: str) -> None:
    text = out.read_text() if out.exists() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(replace_section(text, start, end, section))
