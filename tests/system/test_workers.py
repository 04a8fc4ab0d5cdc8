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

With `--metrics`, the supervisor serves the server's metrics as a whole: a
few sessions on both workers, each reset once so that it resumes, a client
whose key is not authorized, and every session ended; the one `/metrics`
counts them all, and its counters never fall.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from roam.control.client import request
from roam.core.session import SessionConfig
from roam.crypto.keys import generate_private_key
from roam.errors import ClientRefused
from roam.transport.client import Client, ClientConfig

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


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(url: str) -> Samples:
    with urllib.request.urlopen(url + "metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def _metrics_when(url: str, what: str, check: Callable[[Samples], bool],
                        timeout: float = 30.0) -> Samples:
    """The first scrape that passes `check`; polled, since the workers' events
    reach the supervisor only when it asks them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        samples = await asyncio.to_thread(_scrape, url)
        if check(samples):
            return samples
        if loop.time() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}: {samples}")
        await asyncio.sleep(0.1)


COUNTERS = [("roam_resumes_total", ()),
            ("roam_bytes_total", (("direction", "sent"), ("path", "all"))),
            ("roam_bytes_total", (("direction", "received"), ("path", "all"))),
            ("roam_handovers_total", (("kind", "hard"),)),
            ("roam_handover_stall_seconds_count", (("kind", "hard"),)),
            ("roam_refusals_total", (("reason", "NOT_AUTHORIZED"),))]


async def _metrics_scenario(tmp: Path, sessions: int) -> None:
    scale = load_bench("scale")
    procs = scale.Procs(tmp)
    clients: list[Client] = []
    try:
        keys = scale.Keys.make(tmp, sessions)
        echo_port = scale.start_echo(procs)
        server = procs.start("server", [
            sys.executable, "-m", "roam", "server", "--listen", f"{HOST}:0", "--workers", "2",
            "--metrics", f"{HOST}:0", "--key", str(keys.server),
            "--authorized-keys", str(keys.authorized), "--allow", f"{HOST}:{echo_port}",
            "--control", str(tmp / "server.sock"), "--no-udp", "--log-level", "warning"])
        first = procs.line("server", server, 60)  # before `listening`, as one server prints it
        assert first.startswith(f"metrics http://{HOST}:"), first
        url = first.split(" ", 1)[1]
        m = re.match(r"listening .*:(\d+)$", procs.line("server", server, 60))
        assert m is not None
        port = int(m.group(1))
        gen = scale.Generator(HOST, port, keys.server_pub,
                              scale.load_client_keys(keys.clients, 0, sessions), batch=20)
        await gen.open()
        clients = gen.clients
        assert len(clients) == sessions, gen.failures

        s = await asyncio.to_thread(_scrape, url)
        assert s[("roam_sessions", ())] == sessions
        held = [s[("roam_worker_sessions", (("worker", str(i)),))] for i in (0, 1)]
        assert sum(held) == sessions
        assert min(held) > 0, held  # a hash of the addresses spreads them
        assert s[("roam_resumes_total", ())] == 0

        # Every transport reset: each session resumes on the worker holding it.
        res = await scale.mass_handover(clients, echo_port, NBYTES, timeout=40.0)
        assert res.ok, res
        # The server counts a resume as a hard handover (docs/operations.md).
        s = await _metrics_when(url, "every resume and handover counted", lambda s: (
            s[("roam_resumes_total", ())] >= sessions
            and s[("roam_handovers_total", (("kind", "hard"),))] >= sessions))
        assert s[("roam_handover_stall_seconds_count", (("kind", "hard"),))] == \
            s[("roam_handovers_total", (("kind", "hard"),))]
        # Three rounds of NBYTES echoed on each session's channel.
        for direction in ("sent", "received"):
            assert s[("roam_bytes_total", (("direction", direction), ("path", "all")))] >= \
                3 * NBYTES * sessions, direction
        assert s[("roam_channels", ())] == sessions

        # A client whose key is not authorized: refused, and counted.
        stranger = Client(ClientConfig(HOST, port, keys.server_pub, generate_private_key(),
                                       SessionConfig(), udp=False))
        with pytest.raises(ClientRefused):
            await stranger.handshake(timeout=10)
        stranger.stop()
        s = await _metrics_when(url, "the refusal", lambda s: s.get(
            ("roam_refusals_total", (("reason", "NOT_AUTHORIZED"),)), 0) == 1)

        # Sessions end; then a worker dies. Counters keep what they counted.
        await asyncio.gather(*(c.shutdown() for c in clients))
        ended = await _metrics_when(url, "every session ended",
                                    lambda s: s[("roam_sessions", ())] == 0)
        for key in COUNTERS:
            assert ended[key] >= s[key], key
        status = await _status(tmp / "server.sock")
        gone = next(w for w in status["workers"] if w["index"] == 1)
        os.kill(gone["pid"], signal.SIGKILL)
        dead = await _metrics_when(url, "worker 1 seen dead", lambda s: s[
            ("roam_worker_up", (("worker", "1"),))] == 0)
        for key in COUNTERS:
            assert dead[key] == ended[key], key
        assert dead[("roam_worker_up", (("worker", "0"),))] == 1
        procs.close()
        assert server.returncode == 0
    finally:
        for client in clients:
            client.stop()
        procs.close()


@pytest.mark.timeout(120)
def test_metrics_of_two_workers_count_for_the_whole_server(tmp_path: Path) -> None:
    asyncio.run(_metrics_scenario(tmp_path, 24))
