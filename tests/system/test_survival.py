"""Real daemons on loopback: application connections survive broken transports."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from .harness import EchoResult, Keys, Procs, echo_conversation

MIB = 1 << 20
# The acceptance figure; ROAM_TEST_MIB shrinks it for a quick local run.
TRANSFER = int(os.environ.get("ROAM_TEST_MIB", "96")) * MIB
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def _report(name: str, data: dict[str, object]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in data.items()))


@pytest.mark.slow
def test_four_conversations_survive_three_resets_and_two_black_holes(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        server, sport = procs.server(keys, f"127.0.0.1:{echo}")
        link = procs.link(sport)
        _client, (fport,) = procs.client(keys, link.port, f"127.0.0.1:0=127.0.0.1:{echo}")
        results = [EchoResult() for _ in range(4)]
        threads = [threading.Thread(target=echo_conversation, args=(fport, TRANSFER, i, r),
                                    daemon=True) for i, r in enumerate(results)]
        for t in threads:
            t.start()
        # Breaks happen at these fractions of the whole transfer, so every one
        # of them hits data in flight in both directions.
        plan = [(0.10, "cut"), (0.22, "blackhole"), (0.40, "cut"), (0.58, "blackhole"),
                (0.75, "cut")]
        done_breaks: list[str] = []
        deadline = time.monotonic() + 540
        while plan and time.monotonic() < deadline:
            progress = sum(r.received for r in results) / (4 * TRANSFER)
            if progress >= plan[0][0]:
                _, action = plan.pop(0)
                link.command(action)
                done_breaks.append(action)
                if action == "blackhole":
                    # Silent for long enough that only RTT-based liveness finds it.
                    time.sleep(2.5)
                    link.command("restore")
            if all(r.done for r in results):
                break
            time.sleep(0.02)
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic()))
        stats = link.stats()
        stall = max(r.longest_stall for r in results)
        _report("survival", {"mib_per_connection": TRANSFER // MIB, "connections": 4,
                             "breaks": done_breaks, "longest_stall_ms": round(stall * 1000),
                             "transports": stats.get("connections_total")})
        for i, r in enumerate(results):
            assert r.error is None, f"connection {i}: {r.error}"
            assert r.mismatch_at is None, f"connection {i}: wrong byte at {r.mismatch_at}"
            assert r.received == TRANSFER, f"connection {i}: {r.received} of {TRANSFER}"
        assert done_breaks == ["cut", "blackhole", "cut", "blackhole", "cut"]
        assert stats["cuts"] == 3
        assert stats["blackholes"] == 2
        # Each break was a new transport resumed without a new handshake.
        assert server.log_text().count("resumed on a new transport") >= 5
        assert server.log_text().count("new session") == 1


def test_fifty_concurrent_connections_through_one_session(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        server, sport = procs.server(keys, f"127.0.0.1:{echo}")
        _client, (fport,) = procs.client(keys, sport, f"127.0.0.1:0=127.0.0.1:{echo}")
        results = [EchoResult() for _ in range(50)]
        threads = [threading.Thread(target=echo_conversation,
                                    args=(fport, 2 * MIB, 100 + i, r, 64 * 1024, 120.0),
                                    daemon=True) for i, r in enumerate(results)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        for i, r in enumerate(results):
            assert r.error is None, f"connection {i}: {r.error}"
            assert r.mismatch_at is None, f"connection {i}: wrong byte at {r.mismatch_at}"
            assert r.received == 2 * MIB
        assert server.log_text().count("new session") == 1
        assert server.log_text().count("channel") >= 50
