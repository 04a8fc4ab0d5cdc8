"""Machine instructions per 64-byte round trip, counted, not timed.

    python bench/instructions.py [--tree DIR]... [--rounds 2000]

Runs `bench/crossing.py` (one process, no system calls) under valgrind's
callgrind twice for each source tree, with 1,000 rounds and with 1,000 +
--rounds, and prints the difference divided by --rounds: the instructions one
round trip costs, with start-up and warm-up subtracted. Unlike a timing on a
shared virtual machine (where two runs a minute apart differ by tens of
percent) the count is the same from run to run within a few hundred, so a
change of 1% shows. `--tree` names a checkout (default: this one), measured
with its own bench/crossing.py; give it twice to compare, for example with a
`git worktree` of an older revision. The count includes the AEAD in OpenSSL and the interpreter's
own work; it leaves out the event loop and the system calls (bench/run.py
measures those).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_ROUNDS = 1000
# Bounded: a round trip under callgrind takes about 5 ms here.
MAX_ROUNDS = 20000


def count(tree: Path, rounds: int) -> int:
    """Instructions callgrind collected for the tree's crossing.py's whole run."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, str(tree / "bench" / "crossing.py"), "--rounds", str(rounds)],
        capture_output=True, text=True, timeout=900, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed ({done.returncode}): {done.stderr[-500:]}")
    return int(found.group(1))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, action="append",
                        help="a roam checkout to measure (repeatable; default: this one)")
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args(argv[1:])
    if not 0 < args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds must be 1..{MAX_ROUNDS}")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is missing (Debian package valgrind)")
    trees = [tree.expanduser().resolve() for tree in args.tree or [ROOT]]
    for tree in trees:
        if not (tree / "bench" / "crossing.py").is_file():
            parser.error(f"{tree} is not a roam checkout (no bench/crossing.py)")
    for tree in trees:
        per = (count(tree, BASE_ROUNDS + args.rounds) - count(tree, BASE_ROUNDS)) / args.rounds
        print(f"{per / 1000:.1f}k instructions per round trip ({tree})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
