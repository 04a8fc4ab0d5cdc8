"""Strangers' openings against a real server process: bounded memory, and
legitimate clients served while a flood from one address goes on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from roam.core.session import SessionConfig
from roam.crypto.keys import decode_public_key, load_private_key
from roam.transport.client import Client, ClientConfig, HandoverRecord

from ..transport.proxy import Proxy
from .harness import ENV, ROOT, Keys, Procs

FLOODER = ROOT / "tests" / "system" / "flood.py"
SILENT, HALF = 2000, 4000
MIB = 1024


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_flood_from_one_address_neither_blocks_others_nor_takes_memory(
        tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        server, sport = procs.server(keys, f"127.0.0.1:{echo}")
        pid = server.popen.pid

        async def main() -> None:
            proxy = Proxy(sport)
            pport = await proxy.start()
            config = ClientConfig("127.0.0.1", pport, decode_public_key(keys.server_pub),
                                  load_private_key(keys.client_key), SessionConfig())
            client = Client(config)
            handovers: list[HandoverRecord] = []
            client.on_handover = handovers.append
            await client.handshake()
            assert client.session_id is not None
            start = _rss_kib(pid)
            flood = subprocess.Popen(  # noqa: ASYNC220 (a pipe to hold it, not a wait)
                [sys.executable, str(FLOODER), str(sport), "127.0.0.2", str(SILENT), str(HALF),
                 client.session_id.hex()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env=ENV)
            try:
                assert flood.stdout is not None
                ready = await asyncio.to_thread(flood.stdout.readline)
                assert ready.startswith(b"ready"), ready
                held = int(ready.split()[1])
                peak = _rss_kib(pid)
                # A new session, from another address, during the flood.
                other = Client(config)
                t0 = time.monotonic()
                await other.handshake()
                new_session = time.monotonic() - t0
                other.stop()
                # A resume of the first session, whose id the flood uses.
                t0 = time.monotonic()
                proxy.cut()
                async with asyncio.timeout(10):
                    while not handovers:  # noqa: ASYNC110 (no event for it)
                        await asyncio.sleep(0.005)
                resumed = time.monotonic() - t0
                peak = max(peak, _rss_kib(pid))
            finally:
                if flood.stdin is not None:
                    flood.stdin.close()
                flood.wait(30)
            # The server lets go of what the flood made it hold.
            after = _rss_kib(pid)
            deadline = time.monotonic() + 30
            while after > start + 20 * MIB and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                after = _rss_kib(pid)
            client.stop()
            await proxy.close()
            print(f"held by the flood {held} of {SILENT + HALF}; new session {new_session:.3f} s;"
                  f" resume {resumed:.3f} s; RSS start {start // MIB} MiB, peak {peak // MIB} "
                  f"MiB, after {after // MIB} MiB")
            assert new_session < 1.0
            assert resumed < 1.0
            assert peak < 150 * MIB
            assert after <= start + 20 * MIB
            assert server.popen.poll() is None

        asyncio.run(main())
