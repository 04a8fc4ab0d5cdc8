"""`roam server --workers N`: N server processes on one port (docs/workers.md).

The supervisor (the `roam server` process) reserves the port, joins each two
workers with a SOCK_SEQPACKET Unix socket pair, and starts N worker
processes (`python -m roam.workers SPEC`, a fresh interpreter: no fork of a
running event loop). Each worker is an ordinary server (`run_server`)
listening on the port with SO_REUSEPORT, plus a `WorkerRole`: its end of the
pairs (roam.transport.handoff), through which RESUME and STANDBY transports
and UDP packets reach the worker that holds their session.

The supervisor answers the control socket (`roam status --server`) with
every worker's sessions, asking each worker on its own control socket in a
private directory; with `--metrics` it serves the same status, and the
metrics of the server as a whole, on that one address (the workers'
counters added up: roam.observe.metrics). It stops the workers, each by
its own PID, when it is stopped; a worker that dies is not replaced (its
sessions died with it; the others carry on and the kernel gives them its
share of connections), and the supervisor ends once none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import pickle
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roam.connector.allow import format_host_port, parse_port, split_host_port
from roam.control.client import request
from roam.core.workers import Routes
from roam.errors import ConfigError, RoamError
from roam.eventloop import loop_factory
from roam.observe.http import MetricsHttp
from roam.observe.metrics import max_figures, sum_figures
from roam.tasks import Tasks
from roam.transport.handoff import Address, Mesh
from roam.transport.server import Server

log = logging.getLogger("roam")

# A worker starts in a second or two (an interpreter, keys, a listener);
# this bounds a worker stuck before it listens.
WORKER_READY_TIMEOUT = 60.0
# A stopping worker tells its sessions in SHUTDOWN_WAIT (2 s); after this
# it is killed.
WORKER_STOP_TIMEOUT = 10.0
# A worker's answer to the supervisor's status request.
STATUS_TIMEOUT = 10.0
# Where this roam is imported from: the workers import the same one.
IMPORT_PATH = str(Path(__file__).resolve().parent.parent)
# What --workers does not combine with, and why (docs/workers.md).
UNSUPPORTED = {
    "uplinks": ("--uplink", "transports arriving through a relay reach one worker's uplink, "
                            "and a resume could come back through another's"),
    "registrars": ("--registrar", "one registration per server, not per worker"),
    "advertise": ("--advertise", "it goes with --registrar"),
    "paths": ("--path", "the server's moves between networks are made once, not per worker"),
}


def check_settings(workers: int, settings: dict[str, Any]) -> None:
    """ConfigError for what --workers cannot run with."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: at least 1")
    if settings.get("listen") is None:
        raise ConfigError("--workers needs --listen: the port the workers share")
    for name, (flag, why) in UNSUPPORTED.items():
        if settings.get(name):
            raise ConfigError(f"--workers with {flag} is not supported: {why}")


# ---- in a worker --------------------------------------------------------------------


class WorkerRole:
    """What makes a server one worker of several: the shared port, and the
    mesh through which transports and packets reach the worker holding
    their session."""

    def __init__(self, index: int, peers: dict[int, socket.socket]) -> None:
        self.index = index
        self._peers = peers
        self._tasks = Tasks(f"worker {index}")
        self._server: Server | None = None
        self.mesh: Mesh | None = None

    def attach(self, server: Server) -> None:
        """Before `server.start()`: listen with SO_REUSEPORT, route by session."""
        self._server = server
        server.config.reuse_port = True
        self.mesh = Mesh(Routes(self.index), self._peers, self._take_transport,
                         self._take_datagram, server.heard_hello)
        server.router = self.mesh

    def started(self) -> None:
        """After `server.start()`: begin hearing the other workers."""
        if self.mesh is None or self._server is None:
            raise RuntimeError("attach() first")
        if self._server.udp is not None:
            self._server.udp.elsewhere = self.mesh.forward_datagram
        self.mesh.start()

    def _take_transport(self, sock: socket.socket, data: bytes) -> None:
        server = self._server
        if server is None:
            sock.close()
            return

        async def accept() -> None:
            try:
                await server.accept_handed(sock, data)
            except OSError as exc:
                log.debug("handed transport lost before it was opened: %s", exc)
                sock.close()

        self._tasks.spawn(accept(), name="handed-transport")

    def _take_datagram(self, packet: bytes, source: Address) -> None:
        if self._server is not None and self._server.udp is not None:
            self._server.udp.receive(packet, source, handed=True)

    def status(self) -> dict[str, object]:
        return self.mesh.status() if self.mesh is not None else {"index": self.index}

    @property
    def refused_busy(self) -> int:
        """Transports answered BUSY because the worker holding their session
        could not take them then."""
        return self.mesh.refused_busy if self.mesh is not None else 0

    def close(self) -> None:
        self._tasks.cancel()
        if self.mesh is not None:
            self.mesh.close()
        for sock in self._peers.values():
            sock.close()


@dataclass
class WorkerSpec:
    """What the supervisor tells a worker process, in a file only its user reads."""

    index: int
    settings: dict[str, Any]
    peers: dict[int, int]  # the other worker's index: this worker's end of their pair
    log_level: int
    event_loop: str


def worker_main(argv: Sequence[str]) -> int:
    """`python -m roam.workers SPEC`: run one worker until told to stop."""
    from roam.daemons import run_server

    if len(argv) != 1:
        print("usage: python -m roam.workers SPEC (started by roam server --workers)",
              file=sys.stderr)
        return 2
    spec: WorkerSpec = pickle.loads(Path(argv[0]).read_bytes())
    logging.basicConfig(level=spec.log_level, stream=sys.stderr,
                        format=f"%(asctime)s roam-server/{spec.index} %(levelname)s %(message)s")
    role = WorkerRole(spec.index, {j: socket.socket(fileno=fd) for j, fd in spec.peers.items()})

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("no task")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)

        def supervisor_gone() -> None:
            # Our stdin is the supervisor's pipe: at its end the supervisor
            # is gone (even by SIGKILL), and so is this worker.
            if not os.read(0, 4096):
                loop.remove_reader(0)
                log.warning("the supervisor is gone: stopping")
                task.cancel()

        loop.add_reader(0, supervisor_gone)
        try:
            return await run_server(**spec.settings, worker=role)
        except asyncio.CancelledError:
            return 0

    try:
        with asyncio.Runner(loop_factory=loop_factory(spec.event_loop)) as loop_runner:
            return loop_runner.run(runner())
    except RoamError as exc:
        print(f"roam server (worker {spec.index}): error: {exc}", file=sys.stderr)
        return 1


# ---- the supervisor -------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process
    control: str
    ready: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # The latest `refused` and `counters` it reported: kept after it ends.
    figures: dict[str, Any] = field(default_factory=dict)


def _reserve(host: str, port: int, udp: bool) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket: the port for the workers
    (port 0: the kernel picks one), held until they listen on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if port:
            # First without SO_REUSEPORT: a server of workers already on
            # this port would take this one's workers into its group, and
            # the kernel would share connections between the two servers.
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,):
                with socket.socket(family, kind) as probe:
                    probe.bind((host, port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--listen {format_host_port(host, port)}: "
                          f"{exc.strerror or exc}") from None
    return sock


def _event_loop_name() -> str:
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") \
        else "asyncio"


async def supervise(workers: int, settings: dict[str, Any]) -> int:
    """Run `workers` worker processes with run_server's `settings` until cancelled."""
    from roam.daemons import run_server

    params = inspect.signature(run_server).parameters
    settings = {k: v for k, v in settings.items()
                if k in params and k not in ("workers", "worker")}
    check_settings(workers, settings)
    host, port_text = split_host_port(settings["listen"], "--listen")
    port = 0 if port_text == "0" else parse_port(port_text, "--listen")
    if port is None:
        raise ConfigError("--listen: a port is needed")
    control: str | None = settings.get("control")
    metrics: str | None = settings.get("metrics")
    with tempfile.TemporaryDirectory(prefix="roam-workers-") as tmp:
        reserved = _reserve(host, port, bool(settings.get("udp", True)))
        port = reserved.getsockname()[1]
        where = format_host_port(host, port)
        started: list[_Worker] = []
        web: MetricsHttp | None = None
        try:
            if metrics is not None:
                # Only the supervisor listens there, for the whole server;
                # its line comes first, as a single server prints it.
                web = await MetricsHttp.open(metrics, "supervisor")
                print(f"metrics {web.url}", flush=True)
            started = await _start(workers, {**settings, "listen": where, "metrics": None},
                                   Path(tmp))
            reserved.close()
            log.info("%d workers listening on %s: %s", workers, where,
                     ", ".join(f"{w.index} (pid {w.proc.pid})" for w in started))
            print(f"listening {where}", flush=True)

            async def status(_: dict[str, object]) -> dict[str, Any]:
                return await aggregate_status(started, where)

            from roam.daemons import _control  # roam.daemons imports this module

            ctl = await _control(control, "server", {"status": status})
            if web is not None:
                web.serve(status)
            try:
                return await _watch(started)
            finally:
                if ctl is not None:
                    await ctl.close()
        finally:
            reserved.close()
            if web is not None:
                await web.close()
            await _stop(started)


async def _start(workers: int, settings: dict[str, Any], tmp: Path) -> list[_Worker]:
    """Every worker, listening; ConfigError (the workers stopped) when one cannot."""
    ends: dict[int, dict[int, socket.socket]] = {i: {} for i in range(workers)}
    for i in range(workers):
        for j in range(i + 1, workers):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ends[i][j], ends[j][i] = a, b
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (IMPORT_PATH, env.get("PYTHONPATH")) if p)
    started: list[_Worker] = []
    try:
        for i in range(workers):
            control = str(tmp / f"worker-{i}.sock")
            spec = WorkerSpec(i, {**settings, "control": control},
                              {j: s.fileno() for j, s in ends[i].items()},
                              logging.getLogger().getEffectiveLevel(), _event_loop_name())
            path = tmp / f"worker-{i}.spec"
            path.write_bytes(pickle.dumps(spec))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "roam.workers", str(path), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, pass_fds=[s.fileno() for s in ends[i].values()],
                env=env)
            started.append(_Worker(i, proc, control))
        for w in started:
            w.ready = await _ready_line(w)
    except BaseException:
        await _stop(started)
        raise
    finally:
        for peers in ends.values():
            for s in peers.values():
                s.close()
    return started


def _stdout(w: _Worker) -> asyncio.StreamReader:
    if w.proc.stdout is None:  # _start always asks for the pipe
        raise RuntimeError(f"worker {w.index} was started without a stdout pipe")
    return w.proc.stdout


async def _ready_line(w: _Worker) -> str:
    try:
        line = await asyncio.wait_for(_stdout(w).readline(), WORKER_READY_TIMEOUT)
    except TimeoutError:
        raise ConfigError(f"worker {w.index} did not listen within "
                          f"{WORKER_READY_TIMEOUT:g} s") from None
    text = line.decode(errors="replace").strip()
    if not text.startswith("listening "):
        code = await w.proc.wait()
        raise ConfigError(f"worker {w.index} ended (exit status {code}) before it listened; "
                          "its error is above")
    return text


async def _watch(started: list[_Worker]) -> int:
    """Until every worker has ended (or the supervisor is cancelled)."""

    async def one(w: _Worker) -> None:
        while await _stdout(w).read(4096):
            pass  # workers print their ready lines only; keep the pipe from filling
        code = await w.proc.wait()
        w.done.set()
        log.error("worker %d (pid %d) ended with exit status %s: its sessions are gone; "
                  "the other workers carry on", w.index, w.proc.pid, code)

    async with asyncio.TaskGroup() as tasks:
        for w in started:
            tasks.create_task(one(w), name=f"worker-{w.index}")
    log.error("every worker has ended")
    return 1


async def _stop(started: list[_Worker]) -> None:
    """SIGTERM to each live worker by its PID; SIGKILL to any still there after
    WORKER_STOP_TIMEOUT."""
    live = [w for w in started if w.proc.returncode is None]
    for w in live:
        with contextlib.suppress(ProcessLookupError):
            w.proc.send_signal(signal.SIGTERM)

    async def wait(w: _Worker) -> None:
        try:
            await asyncio.wait_for(w.proc.wait(), WORKER_STOP_TIMEOUT)
        except TimeoutError:
            log.warning("worker %d (pid %d) did not stop in %g s: killed", w.index,
                        w.proc.pid, WORKER_STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                w.proc.kill()
            await w.proc.wait()

    await asyncio.gather(*(wait(w) for w in live))
    for w in started:
        if w.proc.stdin is not None:
            w.proc.stdin.close()


async def aggregate_status(started: list[_Worker], where: str) -> dict[str, Any]:
    """The server's status as one server's, every worker's sessions in it
    (each with "worker": its index), and "workers": each worker's own.

    `refused` and `counters` are the sums of each worker's latest figures,
    dead workers' included: each worker's only grow, so neither do the
    sums, even when a session or a worker ends (Prometheus counters)."""
    live = [w for w in started if not w.done.is_set()]
    answers = await asyncio.gather(
        *(asyncio.to_thread(request, w.control, "status", None, STATUS_TIMEOUT) for w in live),
        return_exceptions=True)
    sessions: list[dict[str, Any]] = []
    per: list[dict[str, Any]] = []
    for w in started:
        per.append({"index": w.index, "pid": w.proc.pid, "alive": not w.done.is_set()})
    for w, answer in zip(live, answers, strict=True):
        entry = per[w.index]
        if isinstance(answer, BaseException):
            entry["error"] = str(answer)
            continue
        own = answer.get("sessions", [])
        for s in own:
            s["worker"] = w.index
        sessions.extend(own)
        entry.update({"sessions": len(own), **(answer.get("worker") or {})})
        # Two requests at once (a scrape and `roam status`) may be answered
        # in either order: the larger figures are the later ones.
        w.figures = max_figures([w.figures, {"refused": answer.get("refused") or {},
                                             "counters": answer.get("counters") or {}}])
    total = sum_figures(w.figures for w in started)
    return {"listening": where, "uplinks": {}, "networks": None, "workers": per,
            "sessions": sessions, "refused": total.get("refused", {}),
            "counters": total.get("counters", {})}


if __name__ == "__main__":
    # Run as a script this file is __main__; the worker uses the module
    # roam.workers itself, so that there is one of each class.
    from roam.workers import worker_main as _main

    sys.exit(_main(sys.argv[1:]))
