"""An application that stops reading costs bounded memory and stalls no one else."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from .harness import EchoResult, Keys, Procs, echo_conversation
from .test_survival import _report

MIB = 1 << 20
ECHO_BYTES = 64 * MIB
# What the stalled channels may cost both daemons together, well above the
# designed bound (replay buffer 8 MiB, per channel 1 MiB window + 256 KiB send
# buffer + 256 KiB socket buffer) and far below an unbounded buffer, which
# would grow by hundreds of MiB per second here.
RSS_BUDGET_KIB = 64 * 1024


def _timed_echo(port: int, seed: int) -> tuple[EchoResult, float]:
    r = EchoResult()
    t0 = time.monotonic()
    echo_conversation(port, ECHO_BYTES, seed, r, deadline=120)
    return r, time.monotonic() - t0


def test_non_reading_applications_bounded_memory_others_flow(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    with Procs(tmp_path) as procs:
        echo, source, stuck = (procs.service(k) for k in ("echo", "source", "stuck"))
        server, sport = procs.server(keys, f"127.0.0.1:{echo}", f"127.0.0.1:{source}",
                                     f"127.0.0.1:{stuck}")
        client, (eport, dport, uport) = procs.client(
            keys, sport, f"127.0.0.1:0=127.0.0.1:{echo}", f"127.0.0.1:0=127.0.0.1:{source}",
            f"127.0.0.1:0=127.0.0.1:{stuck}")
        base, base_time = _timed_echo(eport, 1)
        assert base.received == ECHO_BYTES
        rss0 = client.rss_kib() + server.rss_kib()

        # Download: the service sends without end, the application never reads.
        down = socket.create_connection(("127.0.0.1", dport), timeout=10)
        # Upload: the application sends without end, the service never reads.
        up = socket.create_connection(("127.0.0.1", uport), timeout=10)
        pushed = [0]
        stop = threading.Event()

        def push() -> None:
            up.settimeout(0.2)
            block = b"u" * 65536
            while not stop.is_set():
                try:
                    pushed[0] += up.send(block)
                except TimeoutError:
                    continue
                except OSError:
                    return

        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        time.sleep(2.0)  # both stalled channels fill every buffer they can
        rss1 = client.rss_kib() + server.rss_kib()
        stalled, stalled_time = _timed_echo(eport, 2)
        time.sleep(1.0)
        rss2 = client.rss_kib() + server.rss_kib()
        pushed_mid = pushed[0]
        time.sleep(1.0)
        stop.set()
        pusher.join(5)
        down.close()
        up.close()

        _report("backpressure", {
            "echo_mb_s_alone": round(ECHO_BYTES / base_time / 1e6, 1),
            "echo_mb_s_beside_stalled": round(ECHO_BYTES / stalled_time / 1e6, 1),
            "rss_growth_kib": rss2 - rss0, "upload_accepted_mib": round(pushed_mid / MIB, 1),
        })
        assert stalled.error is None
        assert stalled.mismatch_at is None
        assert stalled.received == ECHO_BYTES
        assert rss2 - rss0 < RSS_BUDGET_KIB, f"daemons grew by {rss2 - rss0} KiB"
        # Stalled, not still filling: no growth once the buffers are full.
        assert rss2 - rss1 < 8 * 1024
        # The uploading application was stopped by backpressure after a few MiB.
        assert pushed_mid < 32 * MIB
        assert server.popen.poll() is None
        assert client.popen.poll() is None
