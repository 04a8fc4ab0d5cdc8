"""One registrar process: registrations and lookups per second, on loopback.

    python bench/registrar.py [--units 200] [--per-unit 50] [--concurrency 50]
                              [--json bench/results/registrar.json] [--out docs/benchmarks.md]

Rewrites the `bench:registrar` section of --out.

The registrar is a real `roam registrar` process (its own process, --db a SQLite file
in a temporary directory, so every registration is written to disk before it is
answered). The load generator is this process (asyncio), with --units keys of its
own, as that many units would have, and at most --concurrency connections at once:

1. registrations: each unit registers --per-unit times in turn on one connection (a
   Noise IK handshake, then AEAD frames), each with a newer stamp;
2. lookups on a kept connection: each unit looks up another unit that lists it
   (visible_to), --per-unit times on one connection, as a unit that keeps its
   connection to the registrar does;
3. lookups each on a new connection: one TCP connect and one IK handshake per lookup,
   as a unit that asks once after a failed resume does.

Every answer is checked (Registered; Found with the looked-up unit's address).
Rates are answers over the wall time of the phase; the registrar's CPU seconds per
thousand answers are read from /proc. Connections only to 127.0.0.1, bounded in
count and time, and the registrar is ended through its own Popen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from benchlib import Procs, cpu_seconds, machine_facts, machine_line, write_section
from roam.crypto.keys import generate_private_key, public_key, write_private_key
from roam.registrar.messages import Found, Lookup, Register, Registered
from roam.registrar.unit import RegistrarSpec, ask

START, END = "<!-- bench:registrar:start -->", "<!-- bench:registrar:end -->"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Phase:
    answers: int
    correct: int
    seconds: float
    cpu_s: float

    @property
    def per_second(self) -> float:
        return self.answers / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_thousand(self) -> float:
        return self.cpu_s * 1e6 / self.answers if self.answers else 0.0


@dataclass
class Result:
    units: int
    per_unit: int
    concurrency: int
    register: Phase
    lookup_kept: Phase
    lookup_new: Phase
    machine: dict[str, str]


async def _start(procs: Procs, tmp: Path) -> tuple[RegistrarSpec, int]:
    key = generate_private_key()
    write_private_key(tmp / "registrar.key", key)
    proc = procs.start("registrar", [sys.executable, "-m", "roam", "registrar", "--listen",
                                     "127.0.0.1:0", "--key", str(tmp / "registrar.key"),
                                     "--db", str(tmp / "registrar.db"), "--control",
                                     str(tmp / "registrar.sock"), "--log-level", "warning"],
                       stdout=-1)
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    if not line.startswith(b"listening "):
        raise RuntimeError(f"the registrar did not start: {line!r}")
    port = int(line.split()[1].rsplit(b":", 1)[1])
    return RegistrarSpec("127.0.0.1", port, public_key(key)), proc.pid


async def _phase(jobs: list[tuple[bytes, list[bytes], object]], spec: RegistrarSpec,
                 concurrency: int, pid: int, check: object) -> Phase:
    gate = asyncio.Semaphore(concurrency)
    correct = answers = 0

    async def one(key: bytes, requests: list[bytes], want: object) -> None:
        nonlocal correct, answers
        async with gate:
            got = await ask(spec, key, requests, timeout=60)
        answers += len(got)
        correct += sum(1 for a in got if check(a, want))  # type: ignore[operator]

    cpu0, t0 = cpu_seconds([pid]), time.perf_counter()
    await asyncio.gather(*(one(k, r, w) for k, r, w in jobs))
    return Phase(answers, correct, time.perf_counter() - t0, cpu_seconds([pid]) - cpu0)


def _address(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 1}:7000"


async def run(units: int, per_unit: int, concurrency: int, tmp: Path) -> Result:
    keys = [generate_private_key() for _ in range(units)]
    pubs = [public_key(k) for k in keys]
    procs = Procs(tmp)
    try:
        spec, pid = await _start(procs, tmp)
        stamp = time.time_ns()

        def registrations(i: int) -> list[bytes]:
            # Unit i lets unit i+1 look it up.
            seen = frozenset({pubs[(i + 1) % units]})
            return [Register(stamp + n, 600, (_address(i),), (), seen).encode()
                    for n in range(per_unit)]

        register = await _phase([(keys[i], registrations(i), None) for i in range(units)],
                                spec, concurrency, pid,
                                lambda a, _: isinstance(a, Registered))

        def found(answer: object, want: object) -> bool:
            return isinstance(answer, Found) and answer.addresses == (want,)

        kept = await _phase(
            [(keys[(i + 1) % units], [Lookup(pubs[i]).encode()] * per_unit, _address(i))
             for i in range(units)], spec, concurrency, pid, found)
        new = await _phase(
            [(keys[(i + 1) % units], [Lookup(pubs[i]).encode()], _address(i))
             for i in range(units) for _ in range(per_unit)], spec, concurrency, pid, found)
    finally:
        procs.close()
    return Result(units, per_unit, concurrency, register, kept, new, machine_facts())


def render(res: Result, argv: list[str]) -> str:
    rows = [("registrations (on disk before each answer)", res.register),
            ("lookups on a kept connection", res.lookup_kept),
            ("lookups, each on a new connection (connect + IK handshake)", res.lookup_new)]
    lines = ["## One registrar: registrations and lookups per second (loopback)", "",
             "| what | answers | correct | per second | registrar CPU ms per 1,000 |",
             "|---|---:|---:|---:|---:|"]
    for name, p in rows:
        lines.append(f"| {name} | {p.answers} | {p.correct} | {p.per_second:,.0f} | "
                     f"{p.cpu_ms_per_thousand:,.0f} |")
    aim = res.lookup_kept.per_second >= 5000
    lines += ["", f"Lookups per second on a kept connection: **{res.lookup_kept.per_second:,.0f}**"
              f" (aim: 5,000, {'met' if aim else 'not met'}); each on a new connection "
              f"**{res.lookup_new.per_second:,.0f}**.", "",
              f"{res.units} units with keys of their own, {res.per_unit} requests each, at "
              f"most {res.concurrency} connections at once; the registrar is one `roam "
              "registrar` process with --db on a local file, the generator one asyncio "
              "process on the same 2 CPUs. Every answer is checked.", "",
              f"- Date: {res.machine['date']}; {machine_line(res.machine)}",
              f"- Command: `python bench/registrar.py{' ' if argv else ''}{' '.join(argv)}`"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=200)
    parser.add_argument("--per-unit", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/registrar.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks.md")
    args = parser.parse_args(argv)
    if not 2 <= args.units <= 10_000 or not 1 <= args.per_unit <= 1000 \
            or not 1 <= args.concurrency <= 1000:
        parser.error("--units 2..10000, --per-unit 1..1000, --concurrency 1..1000")
    with tempfile.TemporaryDirectory(prefix="roam-registrar-bench-") as tmp:
        res = asyncio.run(asyncio.wait_for(run(args.units, args.per_unit, args.concurrency,
                                               Path(tmp)), 600))
    print(render(res, argv))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(asdict(res), indent=2))
    write_section(args.out, START, END, render(res, argv))
    ok = all(p.correct == p.answers for p in (res.register, res.lookup_kept, res.lookup_new))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
