"""`roam server --workers 2` as a real process: sessions spread over both
workers, every transport reset at once, every session resumed on the worker
that holds it, byte-exact (docs/workers.md).

The load is bench/scale.py's own generator (one `Client` per session, each
with a key of its own) and its mass handover: a channel per session to an
echo service, bytes echoed byte-exact, then more bytes sent and, in the same
instant, every client's transport reset (RST). Each client's reconnect loop
opens a new connection, which the kernel gives either worker; the one that
does not hold the session hands the socket to the one that does.

`ROAM_WORKERS_SESSIONS` changes the number of sessions (default 1000).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from roam.control.client import request

from ..bench.scripts import load_bench

SESSIONS = int(os.environ.get("ROAM_WORKERS_SESSIONS", "1000"))
HOST = "127.0.0.1"
NBYTES = 4096


async def _status(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = await asyncio.to_thread(request, str(path), "status", None, 30.0)
    return result


def _sockname(client: Any) -> str:
    proto = client.driver.proto
    host, port = proto.transport.get_extra_info("sockname")[:2]
    return f"{host}:{port}"


async def _scenario(tmp: Path, sessions: int) -> list[int]:
    """The run; the workers' PIDs, once the supervisor has been stopped."""
    scale = load_bench("scale")
    scale.raise_nofile(4 * sessions + 200)
    procs = scale.Procs(tmp)
    gen = None
    try:
        keys = scale.Keys.make(tmp, sessions)
        echo_port = scale.start_echo(procs)
        control = tmp / "server.sock"
        server = procs.start("server", [
            sys.executable, "-m", "roam", "server", "--listen", f"{HOST}:0", "--workers", "2",
            "--key", str(keys.server), "--authorized-keys", str(keys.authorized),
            "--allow", f"{HOST}:{echo_port}", "--control", str(control),
            "--log-level", "warning"])
        line = procs.line("server", server, 60)
        m = re.match(r"listening .*:(\d+)$", line)
        assert m is not None, line
        gen = scale.Generator(HOST, int(m.group(1)), keys.server_pub,
                              scale.load_client_keys(keys.clients, 0, sessions), batch=100)
        await gen.open()
        assert len(gen.clients) == sessions, gen.failures

        before = await _status(control)
        holder = {s["id"]: s["worker"] for s in before["sessions"]}
        assert len(holder) == sessions
        spread = Counter(holder.values())
        # Connections spread by a hash of their addresses: both hold a share.
        assert sorted(spread) == [0, 1], spread
        assert min(spread.values()) >= sessions // 10, spread

        res = await scale.mass_handover(gen.clients, echo_port, NBYTES, timeout=40.0)
        assert res.ok, res
        assert not res.errors, res.errors

        after = await _status(control)
        now = {s["id"]: s for s in after["sessions"]}
        for client in gen.clients:
            sid = client.session_id.hex()
            s = now[sid]
            # Still held by the worker that made it, which holds the new
            # transport: the one this client has now.
            assert s["worker"] == holder[sid], (sid, s["worker"], holder[sid])
            assert s["resumes"] >= 1, s
            assert s["transport"] == _sockname(client), (s["transport"], _sockname(client))
        workers = {w["index"]: w for w in after["workers"]}
        handed_in = [workers[i]["handed_in"] for i in (0, 1)]
        handed_out = [workers[i]["handed_out"] for i in (0, 1)]
        # About half the new connections land on the other worker.
        assert min(handed_in) > 0, workers
        assert sum(handed_in) == sum(handed_out) >= sessions // 10, workers
        assert sum(workers[i]["refused_busy"] for i in (0, 1)) == 0, workers
        # Stopped, the supervisor ends its workers (each by its PID) and waits for them.
        gen.stop()
        procs.close()
        assert server.returncode == 0
        return [w["pid"] for w in workers.values()]
    finally:
        if gen is not None:
            gen.stop()
        procs.close()


@pytest.mark.timeout(120)
def test_sessions_over_two_workers_resume_on_their_own_worker(tmp_path: Path) -> None:
    pids = asyncio.run(_scenario(tmp_path, SESSIONS))
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived its supervisor"

