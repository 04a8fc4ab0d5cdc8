"""Machine instructions per 64-byte round trip or per 64 KiB upload, counted, not timed.

    python bench/instructions.py [--workload latency|bulk] [--tree DIR]... [--rounds N]

Runs roam's record path in one process, without system calls (bench/crossing.py's
client and server drivers joined by fake transports), under valgrind's callgrind,
twice for each source tree: with a few rounds and with --rounds more, and prints the
difference divided by --rounds, so that start-up and warm-up cancel out. `latency`
is crossing.py's 64-byte round trip; `bulk` is one 64 KiB write of the client's
application carried to the server's (with the ACKs and WINDOWs it causes). Unlike a
timing on a shared virtual machine, where two runs a minute apart differ by tens of
percent, the count is the same from run to run within a few hundred instructions, so
a change of 1% shows. `--tree` names a checkout (default: this one), measured with
its own bench/crossing.py; give it twice to compare, for example with a `git
worktree` of an older revision. The count includes the AEAD in OpenSSL and the
interpreter's own work; it leaves out the event loop and the system calls
(bench/run.py measures those).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Rounds of the shorter run, and the default number of rounds the longer adds.
BASE_ROUNDS = {"latency": 1000, "bulk": 100}
DEFAULT_ROUNDS = {"latency": 2000, "bulk": 1000}
# Bounded: under callgrind a round trip takes about 5 ms here, a 64 KiB upload 15 ms.
MAX_ROUNDS = 20000

# One 64 KiB write after another through a crossing.Pair, byte-counted at the far end.
BULK = """
import asyncio, sys
sys.path.insert(0, {bench!r})
import crossing  # puts its own tree's src first on sys.path

async def main(n: int) -> None:
    pair = crossing.Pair(None)
    chunk = b"x" * 65536
    got = 0
    for _ in range(n):
        pair.app.data_received(chunk)
        for _ in range(3):
            pair.pump()
        out = pair.echo.transport.out
        got += sum(len(x) for x in out)
        out.clear()
    if got != n * len(chunk):
        raise SystemExit(f"{{got}} bytes arrived of {{n * len(chunk)}}")

asyncio.run(main({rounds}))
"""


def command(tree: Path, workload: str, rounds: int) -> list[str]:
    if workload == "latency":
        return [sys.executable, str(tree / "bench" / "crossing.py"), "--rounds", str(rounds)]
    return [sys.executable, "-c", BULK.format(bench=str(tree / "bench"), rounds=rounds)]


def count(tree: Path, rounds: int, workload: str = "latency") -> int:
    """Instructions callgrind collected for one whole run of the workload."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         *command(tree, workload, rounds)],
        capture_output=True, text=True, timeout=900, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed ({done.returncode}): {done.stderr[-500:]}")
    return int(found.group(1))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(BASE_ROUNDS), default="latency")
    parser.add_argument("--tree", type=Path, action="append",
                        help="a roam checkout to measure (repeatable; default: this one)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="round trips (latency, default 2000) or 64 KiB writes "
                        "(bulk, default 1000) counted")
    args = parser.parse_args(argv[1:])
    rounds = DEFAULT_ROUNDS[args.workload] if args.rounds is None else args.rounds
    if not 0 < rounds <= MAX_ROUNDS:
        parser.error(f"--rounds must be 1..{MAX_ROUNDS}")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is missing (Debian package valgrind)")
    trees = [tree.expanduser().resolve() for tree in args.tree or [ROOT]]
    for tree in trees:
        if not (tree / "bench" / "crossing.py").is_file():
            parser.error(f"{tree} is not a roam checkout (no bench/crossing.py)")
    base = BASE_ROUNDS[args.workload]
    unit = "round trip" if args.workload == "latency" else "64 KiB written"
    for tree in trees:
        per = (count(tree, base + rounds, args.workload) - count(tree, base, args.workload))
        print(f"{per / rounds / 1000:.1f}k instructions per {unit} ({tree})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
