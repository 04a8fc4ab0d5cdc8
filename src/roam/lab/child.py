"""A real server program as a child process, for tests, the lab and the demo.

Kamailio and redis-server are run the same way: in the foreground, in a
session of their own (so what they signal on shutdown is never our process
group), ready once a probe of theirs answers, reported with the end of
their log when they exit first or do not answer in time, and ended by
their own process id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from roam.errors import RoamError

PROBE_INTERVAL_S = 0.05
STOP_GRACE_S = 5.0
_LOG_TAIL = 2000


class ChildServer:
    """One server process; subclasses say how to run it and how to tell it is ready."""

    program = "the server"
    error: type[RoamError] = RoamError

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self, argv: list[str], cwd: Path, timeout_s: float, *,
               log_output: bool) -> None:
        """Run `argv` and wait until `_ready()`; `log_output`: its stdout and
        stderr go to the log file (else the program writes the log itself)."""
        if self._proc is not None:
            raise self.error(f"{self.program} is already running (pid {self._proc.pid})")
        with contextlib.ExitStack() as stack:
            out = (stack.enter_context(open(self.log_path, "wb")) if log_output
                   else subprocess.DEVNULL)
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT if log_output else out,
                                          cwd=cwd, start_new_session=True)
        try:
            self._wait_ready(time.monotonic() + timeout_s, timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, deadline: float, timeout_s: float) -> None:
        proc = self._proc
        if proc is None:
            raise self.error(f"{self.program} is not running")
        while True:
            status = proc.poll()
            if status is not None:
                raise self.error(f"{self.program} exited with status {status} before it was "
                                 f"ready{self.log_tail()}")
            if self._ready():
                return
            if time.monotonic() >= deadline:
                raise self.error(f"{self.program} did not answer within {timeout_s} s"
                                 f"{self.log_tail()}")
            time.sleep(PROBE_INTERVAL_S)

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return f"; its log ({self.log_path}) ends:\n{text[-_LOG_TAIL:]}" if text else ""

    def stop(self) -> None:
        """SIGTERM by its process id, then SIGKILL to its process group (its
        own session, so only its processes) if it does not go."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_GRACE_S)
        # Workers it forked leave with it; any left behind share its process
        # group, which is its own.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
