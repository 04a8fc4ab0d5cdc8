"""A child server process: ready by its probe, reported with its log when
it fails, ended with everything it forked, by its own process id."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from roam.errors import RoamError
from roam.lab.child import ChildServer


class _Error(RoamError):
    pass


class _Shell(ChildServer):
    """`sh -c SCRIPT`, ready once the file `ready` exists."""

    program = "the shell"
    error = _Error

    def __init__(self, workdir: Path, script: str, timeout_s: float = 5.0) -> None:
        super().__init__(workdir / "shell.log")
        self.workdir, self.script, self.timeout_s = workdir, script, timeout_s

    def _ready(self) -> bool:
        return (self.workdir / "ready").exists()

    def start(self) -> None:
        self._spawn(["sh", "-c", self.script], self.workdir, self.timeout_s, log_output=True)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_ready_then_stopped_with_what_it_forked(tmp_path: Path) -> None:
    # The shell forks a sleeper and waits: stopping ends both.
    script = "sleep 60 & echo $! > child; touch ready; wait"
    with _Shell(tmp_path, script) as shell:
        assert shell.running
        pid = shell.pid
        assert pid is not None
        child = int((tmp_path / "child").read_text())
    assert not shell.running
    assert shell.pid is None
    assert _gone(pid)
    for _ in range(100):  # the kernel reaps the orphan shortly after the kill
        if _gone(child) or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        os.sched_yield()
    else:
        pytest.fail("the forked sleeper outlived its server")


def test_an_early_exit_is_reported_with_its_log(tmp_path: Path) -> None:
    shell = _Shell(tmp_path, "echo cannot bind the port; exit 3")
    with pytest.raises(_Error, match=r"(?s)exited with status 3 .*cannot bind the port"):
        shell.start()
    assert not shell.running


def test_never_ready_is_stopped_and_said(tmp_path: Path) -> None:
    shell = _Shell(tmp_path, "echo waiting; exec sleep 60", timeout_s=0.5)
    with pytest.raises(_Error, match=r"(?s)did not answer within 0.5 s.*waiting"):
        shell.start()
    assert not shell.running


def test_started_twice_is_refused(tmp_path: Path) -> None:
    with _Shell(tmp_path, "touch ready; exec sleep 60") as shell, \
            pytest.raises(_Error, match="already running"):
        shell._spawn([sys.executable, "-c", "pass"], tmp_path, 1, log_output=False)
