"""Profile roam's record path: a bulk upload or round trips, both daemons sampled.

    python bench/hotspots.py [--workload bulk|latency] [--seconds 8] [--rate 250]
                            [--top 25] [--out DIR]

Starts a sink and an echo server (bench/servers.py), a roam server and a roam client
on loopback as bench/run.py does, then for --seconds either sends 1 MiB writes
through the forward to the sink (bulk) or makes 64-byte round trips through the echo
forward one after another (latency), and samples both daemons with py-spy
(`py-spy record --format raw`). It prints, for each daemon, the functions with the
most own time and the roam functions with the most inclusive time, and keeps the raw
stacks in --out. The upload's MB/s (or the round trips' p50) is printed too; the
samplers take CPU of their own, so both are slower than bench/run.py's figures.

py-spy comes from PyPI (`pip install py-spy`); sampling another process needs root or
ptrace permission.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Procs, end
from load import percentile
from run import HOST, Row, setup_roam, start_server

CHUNK = 1 << 20


def upload(port: int, seconds: float) -> float:
    """Send CHUNK-sized writes for `seconds`; MB/s the sink confirmed."""
    # Random bytes, as bench/run.py sends: nothing for compression to gain.
    payload = memoryview(os.urandom(CHUNK))
    sent = 0
    with socket.create_connection((HOST, port), timeout=30) as sock:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            sock.sendall(payload)
            sent += CHUNK
        sock.shutdown(socket.SHUT_WR)
        reply = sock.recv(64)
        took = time.perf_counter() - start
    if int(reply) != sent:
        raise RuntimeError(f"sink counted {reply!r}, {sent} were sent")
    return sent / took / 1e6


def _short(frame: str, line: bool = True) -> str:
    """`func (pkg/dir/file.py:12)` as `func (file.py:12)`, or `func (file.py)`."""
    func, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit("/", 1)[-1]
    if not line:
        where = where.rsplit(":", 1)[0]
    return f"{func} ({where})"


def round_trips(port: int, seconds: float) -> float:
    """64-byte round trips for `seconds`; their p50 in microseconds."""
    message = os.urandom(64)
    samples: list[float] = []
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        end = time.perf_counter() + seconds
        while (start := time.perf_counter()) < end:
            sock.sendall(message)
            got = b""
            while len(got) < len(message):
                data = sock.recv(len(message) - len(got))
                if not data:
                    raise RuntimeError("the echo forward closed")
                got += data
            samples.append((time.perf_counter() - start) * 1e6)
            if got != message:
                raise RuntimeError("the echo came back different")
    return percentile(sorted(samples), 50)


def summarize(raw: Path, top: int) -> str:
    """Own and inclusive shares per function from py-spy's raw (collapsed) stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[_short(frames[-1])] += n
        # Inclusive: each roam function once per sample, whatever the line.
        for name in {_short(f, line=False) for f in frames if " (roam/" in f}:
            incl[name] += n
    if total == 0:
        return "  no samples\n"
    lines = [f"  {total} samples; own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("  inclusive time, roam functions:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("bulk", "latency"), default="bulk")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--cipher", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="keep the raw stacks here")
    args = parser.parse_args(argv[1:])
    if not 0 < args.seconds <= 60:
        parser.error("--seconds must be in (0, 60]")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        parser.error("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="roam-profile-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        procs = Procs(Path(tmp))
        samplers: list[subprocess.Popen[bytes]] = []
        try:
            sink = start_server(procs, "sink")
            echo = start_server(procs, "echo")
            lsink, lecho, pids = setup_roam(sink, echo, procs, Row("roam", "roam"),
                                            args.cipher)
            for name, pid in zip(("server", "client"), pids, strict=True):
                samplers.append(subprocess.Popen(
                    [spy, "record", "-r", str(args.rate), "-d", str(int(args.seconds) + 1),
                     "-f", "raw", "-o", str(out / f"{name}.raw"), "-p", str(pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.5)
            if args.workload == "bulk":
                print(f"upload: {upload(lsink, args.seconds):.1f} MB/s with both samplers "
                      "attached")
            else:
                print(f"64-byte round trips: p50 {round_trips(lecho, args.seconds):.0f} us "
                      "with both samplers attached")
            for sampler in samplers:
                sampler.wait(30)
            for name in ("client", "server"):
                print(f"{name} (raw stacks: {out / (name + '.raw')}):")
                print(summarize(out / f"{name}.raw", args.top))
        finally:
            for sampler in samplers:
                end(sampler)
            procs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
