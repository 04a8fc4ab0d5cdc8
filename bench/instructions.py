"""Machine instructions per 64-byte round trip or per 64 KiB upload, counted, not timed.

    python bench/instructions.py [--workload latency|bulk|daemons] [--tree DIR]...
                                 [--rounds N]

Runs roam's record path in one process, without system calls (bench/crossing.py's
client and server drivers joined by fake transports), under valgrind's callgrind,
twice for each source tree: with a few rounds and with --rounds more, and prints the
difference divided by --rounds, so that start-up and warm-up cancel out. `latency`
is crossing.py's 64-byte round trip; `bulk` is one 64 KiB write of the client's
application carried to the server's (with the ACKs and WINDOWs it causes). `daemons`
runs a roam server and a roam client (compression off), each under callgrind, with
a forward to an echo server on loopback, and counts each daemon's instructions per
64-byte round trip through it: the event loop and the system call wrappers included,
the kernel not. Unlike a
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
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
# Rounds of the shorter run, and the default number of rounds the longer adds.
BASE_ROUNDS = {"latency": 1000, "bulk": 100, "daemons": 200}
DEFAULT_ROUNDS = {"latency": 2000, "bulk": 1000, "daemons": 1000}
HOST = "127.0.0.1"
# The daemons start in about 10 s under callgrind here; this bounds a stuck one.
DAEMON_READY_S = 120.0
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


VALGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


def collected(stderr: str, what: str) -> int:
    found = re.search(r"Collected : (\d+)", stderr)
    if found is None:
        raise RuntimeError(f"callgrind counted nothing for {what}: {stderr[-500:]}")
    return int(found.group(1))


def count(tree: Path, rounds: int, workload: str = "latency") -> int:
    """Instructions callgrind collected for one whole run of the workload."""
    done = subprocess.run([*VALGRIND, *command(tree, workload, rounds)],
                          capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"callgrind run failed ({done.returncode}): {done.stderr[-500:]}")
    return collected(done.stderr, workload)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def count_daemons(tree: Path, rounds: int) -> tuple[int, int]:
    """(client, server) instructions for a whole run with `rounds` round trips."""
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    roam = [sys.executable, "-m", "roam"]
    with tempfile.TemporaryDirectory(prefix="roam-instructions-") as name:
        tmp = Path(name)
        procs: list[subprocess.Popen[bytes]] = []
        logs: dict[str, IO[str]] = {}
        try:
            echo = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "servers.py"), "echo", "--port", "0"],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            procs.append(echo)
            assert echo.stdout is not None
            echo_port = int(echo.stdout.readline())
            keys = {}
            for who in ("server", "client"):
                keys[who] = subprocess.run(
                    [*roam, "keygen", str(tmp / f"{who}.key")], env=env, check=True,
                    capture_output=True, text=True, timeout=60).stdout.strip()
            (tmp / "authorized").write_text(keys["client"] + "\n")
            port, local = free_port(), free_port()
            for who in ("client", "server"):
                logs[who] = (tmp / f"{who}.err").open("w+")
            procs.append(subprocess.Popen([
                *VALGRIND, *roam, "server", "--listen", f"{HOST}:{port}",
                "--key", str(tmp / "server.key"), "--authorized-keys", str(tmp / "authorized"),
                "--allow", f"{HOST}:{echo_port}", "--compress", "off",
                "--control", str(tmp / "server.sock")],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=logs["server"]))
            procs.append(subprocess.Popen([
                *VALGRIND, *roam, "client", "--server", f"{HOST}:{port}",
                "--server-key", keys["server"], "--key", str(tmp / "client.key"),
                "--forward", f"{HOST}:{local}={HOST}:{echo_port}", "--compress", "off",
                "--control", str(tmp / "client.sock")],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=logs["client"]))
            conn = connect(local)
            with conn:
                message = b"y" * 64
                for _ in range(rounds):
                    conn.sendall(message)
                    got = 0
                    while got < len(message):
                        piece = conn.recv(len(message) - got)
                        if not piece:
                            raise RuntimeError("the echo through roam ended early")
                        got += len(piece)
            daemons = procs[1:]
            for proc in daemons:
                proc.terminate()  # a clean exit: callgrind reports on it
            for proc in daemons:
                proc.wait(DAEMON_READY_S)
            out = []
            for who in ("client", "server"):
                logs[who].seek(0)
                out.append(collected(logs[who].read(), f"the roam {who}"))
            return out[0], out[1]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for log in logs.values():
                log.close()


def connect(port: int) -> socket.socket:
    """A connection through the forward once it answers: one byte echoed."""
    deadline = time.monotonic() + DAEMON_READY_S
    while True:
        try:
            conn = socket.create_connection((HOST, port), timeout=30)
            conn.sendall(b"x")
            if conn.recv(1) == b"x":
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return conn
            conn.close()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the forward did not answer within {DAEMON_READY_S:g} s")
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(BASE_ROUNDS), default="latency")
    parser.add_argument("--tree", type=Path, action="append",
                        help="a roam checkout to measure (repeatable; default: this one)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="round trips (latency, default 2000; daemons, 1000) or "
                        "64 KiB writes (bulk, default 1000) counted")
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
    for tree in trees:
        if args.workload == "daemons":
            (c0, s0), (c1, s1) = count_daemons(tree, base), count_daemons(tree, base + rounds)
            print(f"{(c1 - c0) / rounds / 1000:.1f}k instructions per round trip in the client, "
                  f"{(s1 - s0) / rounds / 1000:.1f}k in the server ({tree})")
            continue
        unit = "round trip" if args.workload == "latency" else "64 KiB written"
        per = (count(tree, base + rounds, args.workload) - count(tree, base, args.workload))
        print(f"{per / rounds / 1000:.1f}k instructions per {unit} ({tree})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
