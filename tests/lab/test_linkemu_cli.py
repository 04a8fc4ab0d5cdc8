from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import pytest

from roam.lab.linkemu import LinkEmulator
from roam.lab.linkemu_cli import execute, main, parse_host_port

LOOPBACK = "127.0.0.1"
SRC = Path(__file__).resolve().parents[2] / "src"
TEST_TIMEOUT = 60.0
# Interpreter start-up on a loaded machine can take a while.
STARTUP_TIMEOUT = 20.0
SILENCE = 0.5


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, TEST_TIMEOUT)

    asyncio.run(bounded())


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="linkemu-") as name:
        yield Path(name)


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, LOOPBACK, 0)
    try:
        host, port = server.sockets[0].getsockname()[:2]
        yield host, port
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def linkemu(
    target: tuple[str, int], *extra: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, tuple[str, int]]]:
    """Run the command-line emulator towards `target`; yields the process and its address."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roam.lab.linkemu",
        "--listen",
        f"{LOOPBACK}:0",
        "--target",
        f"{target[0]}:{target[1]}",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)).decode()
        word, _, address = line.strip().partition(" ")
        assert word == "listening", line
        yield proc, parse_host_port(address)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


@contextlib.asynccontextmanager
async def connection(
    address: tuple[str, int],
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), 10)
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    start = time.monotonic()
    writer.write(b"ping")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
    return time.monotonic() - start


async def assert_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"hello?")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(100), SILENCE)
    assert not reader.at_eof()


class Control:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, line: bytes | str) -> str:
        raw = line.encode() if isinstance(line, str) else line
        self.writer.write(raw + b"\n")
        await self.writer.drain()
        answer = await asyncio.wait_for(self.reader.readline(), 10)
        assert answer.endswith(b"\n"), answer
        return answer.decode().rstrip("\n")

    async def stats(self) -> dict[str, object]:
        answer = json.loads(await self.send("stats"))
        assert isinstance(answer, dict)
        return answer


@contextlib.asynccontextmanager
async def control(path: Path) -> AsyncIterator[Control]:
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 10)
    try:
        yield Control(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def test_cli_prints_port_forwards_and_obeys_control_commands(short_dir: Path) -> None:
    path = short_dir / "ctl"

    async def main_() -> None:
        async with (
            echo_server() as target,
            linkemu(target, "--control", str(path)) as (proc, address),
            control(path) as ctl,
        ):
            assert address[0] == LOOPBACK
            assert address[1] != 0
            async with connection(address) as (r1, w1):
                await ping(r1, w1)
                stats = await ctl.stats()
                assert stats["connections_total"] == 1
                assert stats["bytes_to_target"] == 4
                assert stats["mode"] == "pass"

                assert await ctl.send("delay 80") == "ok"
                assert await ping(r1, w1) >= 2 * 0.080 * 0.9
                assert await ctl.send("delay 0") == "ok"
                assert await ctl.send("rate 1000000") == "ok"
                assert await ctl.send("RATE none") == "ok"
                await ping(r1, w1)

                assert await ctl.send("blackhole") == "ok"
                await assert_silent(r1, w1)
                assert (await ctl.stats())["mode"] == "blackhole"

                assert await ctl.send("restore") == "ok"
                async with connection(address) as (r2, w2):
                    await ping(r2, w2)
                    assert await ctl.send("cut") == "ok"
                    with contextlib.suppress(ConnectionResetError):
                        assert await asyncio.wait_for(r2.read(100), 10) == b""
                    with contextlib.suppress(ConnectionResetError):
                        assert await asyncio.wait_for(r1.read(100), 10) == b""

                stats = await ctl.stats()
                assert stats["cuts"] == 1
                assert stats["blackholes"] == 1
                assert stats["connections_open"] == 0

            assert proc.returncode is None
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            assert not path.exists()

    run(main_())


def test_cli_answers_garbage_with_errors_and_keeps_running(short_dir: Path) -> None:
    path = short_dir / "ctl"

    async def main_() -> None:
        async with (
            echo_server() as target,
            linkemu(target, "--control", str(path)) as (proc, address),
        ):
            async with control(path) as ctl:
                for garbage in (
                    b"frobnicate",
                    b"",
                    b"delay",
                    b"delay soon",
                    b"delay -3",
                    b"rate 0",
                    b"rate 1.5",
                    b"cut now",
                    b"\xff\xfe",
                ):
                    answer = await ctl.send(garbage)
                    assert answer.startswith("error: "), (garbage, answer)
                assert (await ctl.stats())["mode"] == "pass"

            # An over-long line ends that control connection, not the emulator.
            async with control(path) as ctl:
                answer = await ctl.send(b"x" * 10_000)
                assert answer == "error: line too long"
            async with control(path) as ctl:
                assert await ctl.send("restore") == "ok"

            assert proc.returncode is None
            async with connection(address) as (r, w):
                await ping(r, w)

    run(main_())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_exits_cleanly_on_signal(signum: int) -> None:
    async def main_() -> None:
        async with (
            echo_server() as target,
            linkemu(target, "--delay-ms", "5", "--rate", "10000000") as (proc, address),
            connection(address) as (r, w),
        ):
            assert await ping(r, w) >= 2 * 0.005 * 0.9
            proc.send_signal(signum)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(r.read(100), 10) == b""

    run(main_())


def test_cli_rejects_bad_flag_with_exit_code_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roam.lab.linkemu", "--listen", "nowhere", "--target", "x:1"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=STARTUP_TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    assert "--listen" in result.stderr
    assert "expected HOST:PORT" in result.stderr
    assert result.stdout == ""


def test_cli_reports_a_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        host, port = busy.getsockname()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "roam.lab.linkemu",
                "--listen",
                f"{host}:{port}",
                "--target",
                f"{LOOPBACK}:9",
            ],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=STARTUP_TIMEOUT,
            check=False,
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


GOOD = ["--listen", f"{LOOPBACK}:0", "--target", f"{LOOPBACK}:9"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "localhost", "--target", "localhost:9"], "expected HOST:PORT"),
        (["--listen", ":80", "--target", "localhost:9"], "expected HOST:PORT"),
        (["--listen", "localhost:http", "--target", "localhost:9"], "port must be a number"),
        (["--listen", "localhost:65536", "--target", "localhost:9"], "between 0 and 65535"),
        (["--listen", "::1:80", "--target", "localhost:9"], "[ADDRESS]:PORT"),
        (["--listen", "localhost:0"], "--target"),
        ([*GOOD, "--delay-ms", "-1"], ">= 0"),
        ([*GOOD, "--delay-ms", "soon"], "number of milliseconds"),
        ([*GOOD, "--delay-ms", "nan"], ">= 0"),
        ([*GOOD, "--rate", "0"], "> 0"),
        ([*GOOD, "--rate", "fast"], "whole number"),
        ([*GOOD, "--frobnicate"], "unrecognized arguments"),
        ([*GOOD, "--control", "/" + "x" * 200], "longer than"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_control_path_that_is_not_a_socket_is_refused(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "ctl"
    path.write_text("precious")
    with pytest.raises(SystemExit) as exited:
        main([*GOOD, "--control", str(path)])
    assert exited.value.code == 2
    assert "not a socket" in capsys.readouterr().err
    assert path.read_text() == "precious"


def test_control_socket_in_use_is_refused(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "ctl"
    with socket.socket(socket.AF_UNIX) as owner:
        owner.bind(str(path))
        owner.listen()
        with pytest.raises(SystemExit) as exited:
            main([*GOOD, "--control", str(path)])
    assert exited.value.code == 2
    assert "in use" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[::1]:443", ("::1", 443)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("localhost:8080", ("localhost", 8080)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


def test_execute_commands_directly() -> None:
    emulator = LinkEmulator((LOOPBACK, 0), (LOOPBACK, 9))
    assert execute(emulator, b"delay 12.5\n") == "ok"
    assert execute(emulator, b"rate 4096") == "ok"
    assert (emulator.delay_ms, emulator.rate_bps) == (12.5, 4096)
    assert execute(emulator, b"rate none") == "ok"
    assert (emulator.delay_ms, emulator.rate_bps) == (12.5, None)
    assert execute(emulator, b"blackhole") == "ok"
    assert emulator.statistics().mode == "blackhole"
    assert execute(emulator, b"restore") == "ok"
    assert emulator.statistics().mode == "pass"
    assert execute(emulator, b"cut") == "ok"
    stats = json.loads(execute(emulator, b"stats"))
    assert stats["cuts"] == 1
    assert stats["blackholes"] == 1
    assert execute(emulator, b"delay 1 2").startswith("error: ")
    assert execute(emulator, b"stats please").startswith("error: ")
    assert "unknown command" in execute(emulator, b"explode")
