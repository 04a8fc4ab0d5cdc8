"""Every benchmark in turn, each rewriting its own section of docs/benchmarks.md.

    python bench/all.py [--runs 3] [--handover-runs 10] [--quick] [--skip tunnels,handover]

1. bench/run.py          loopback: direct, roam, ssh -L (throughput, CPU s/GiB, latency)
2. bench/tunnels.py      network lab: direct, roam, wireguard-go, OpenVPN over the wifi link
3. bench/compression.py  network lab, 2 Mbit/s and 100 ms: roam and ssh -C, bytes and time
4. bench/scale.py        loopback: 10,000 sessions on one server, 1,000 resuming at once
5. bench/relayscale.py   loopback: 10,000 spliced sessions on one relay, memory and descriptors
6. bench/registrar.py    loopback: registrations and lookups per second of one registrar
7. bench/handover.py     network lab: handover stalls, roam against MPTCP and plain TCP
8. bench/doublejump.py   network lab: both units lose their network at once, found again
                         through the built-in registrar and through Kamailio
9. bench/workers.py      loopback: 8 sessions in parallel, one server process and --workers 2

The lab benchmarks need root; without it they are skipped with a message and their
sections are left as they are. Each step runs with a time limit and its own process;
the exit status is 1 if any step failed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("run", "tunnels", "compression", "scale", "relayscale", "registrar", "handover",
         "doublejump", "workers")
# seconds per step
LIMITS = {"run": 40 * 60, "tunnels": 30 * 60, "compression": 30 * 60, "scale": 30 * 60,
          "relayscale": 15 * 60, "registrar": 10 * 60, "handover": 120 * 60,
          "doublejump": 20 * 60, "workers": 15 * 60}
ROOT_ONLY = {"tunnels", "compression", "handover", "doublejump"}


def commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """The command line of each step, as they run (and as the sections print them)."""
    py = sys.executable
    run = [py, "bench/run.py", "--runs", str(args.runs)]
    tunnels = [py, "bench/tunnels.py", "--runs", str(args.runs)]
    compression = [py, "bench/compression.py", "--runs", str(args.runs)]
    # Two generator processes: one holds the sessions that hand over, the other the
    # idle ones, so the generator is not what is measured.
    scale = [py, "bench/scale.py", "--workers", "2"]
    relayscale = [py, "bench/relayscale.py"]
    registrar = [py, "bench/registrar.py"]
    handover = [py, "bench/handover.py", "--runs", str(args.handover_runs)]
    doublejump = [py, "bench/doublejump.py"]  # 10 runs per registrar, a fresh lab each
    workers = [py, "bench/workers.py"]
    if args.quick:
        relayscale += ["--sessions", "2000"]
        run += ["--bytes", str(256 << 20), "--rounds", "1000"]
        tunnels += ["--bytes", str(64 << 20)]
        scale += ["--sessions", "2000", "--handover", "500"]
        doublejump += ["--runs", "3"]
        workers += ["--runs", "3"]
    return {"run": run, "tunnels": tunnels, "compression": compression, "scale": scale,
            "relayscale": relayscale, "registrar": registrar, "handover": handover,
            "doublejump": doublejump, "workers": workers}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3,
                        help="runs per figure for run.py and tunnels.py (median)")
    parser.add_argument("--handover-runs", type=int, default=10,
                        help="runs of each event per system for handover.py")
    parser.add_argument("--quick", action="store_true",
                        help="smaller loads (256 MiB loopback, 64 MiB lab, 1000 rounds, "
                        "3 double jumps per registrar)")
    parser.add_argument("--skip", default="", help=f"comma-separated steps of {','.join(STEPS)}")
    args = parser.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.skip - set(STEPS):
        parser.error(f"--skip takes steps of {','.join(STEPS)}")
    if not 1 <= args.runs <= 20 or not 1 <= args.handover_runs <= 50:
        parser.error("--runs must be 1..20 and --handover-runs 1..50")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv[1:])
    load, cpus = os.getloadavg()[0], len(os.sched_getaffinity(0))
    if load > cpus / 2:
        print(f"all: warning: 1-minute load average {load:.2f} on {cpus} CPUs: other work "
              "will skew the figures (each section records the load it began with)",
              file=sys.stderr)
    failed: list[str] = []
    for step, cmd in commands(args).items():
        if step in args.skip:
            print(f"all: {step}: skipped (--skip)", file=sys.stderr)
            continue
        if step in ROOT_ONLY and os.geteuid() != 0:
            print(f"all: {step}: skipped: needs root (network namespaces); its section of "
                  "docs/benchmarks.md is left as it was", file=sys.stderr)
            continue
        print(f"all: {step}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            res = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=LIMITS[step],
                                 check=False)
            status = res.returncode
        except subprocess.TimeoutExpired:  # subprocess.run kills the step's process
            status = -1
            print(f"all: {step}: no result within {LIMITS[step]} s", file=sys.stderr)
        print(f"all: {step}: exit {status} after {time.monotonic() - t0:.0f} s",
              file=sys.stderr, flush=True)
        if status != 0:
            failed.append(step)
    if failed:
        print(f"all: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("all: done; see docs/benchmarks.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
