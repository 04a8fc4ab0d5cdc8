"""Fuzz the control protocol: the daemon answers every request line with one
JSON answer line, and `roam status` and friends turn every answer (or its
absence) into a result or a ControlError."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given

from roam.control.client import ControlError, request
from roam.control.server import MAX_LINE, ControlServer
from roam.errors import ConfigError, RoamError
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.fakes import FakeWriter
from tests.fuzz.mutate import apply_mutations, cut
from tests.fuzz.provider import Provider, built


async def _echo(req: dict[str, Any]) -> Any:
    return {"you said": req}


async def _refuses(req: dict[str, Any]) -> Any:
    raise ConfigError(f"no such path {req.get('path')!r}")


async def _careless(req: dict[str, Any]) -> Any:
    # A handler that trusts its request's fields, as the daemon's do.
    return {"up": bool(req["up"]), "signal": int(req["signal"]), "name": req["path"].lower()}


async def _odd_result(req: dict[str, Any]) -> Any:
    return {"path": Path("/x"), "set": {1}, "bytes": b"\xff"}  # not JSON: default=str


HANDLERS = {"echo": _echo, "refuses": _refuses, "link": _careless, "odd": _odd_result}
COMMANDS = [*HANDLERS, "status", "", "ECHO", "\u00e9cho"]


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # One loop for every input: a new one per input would cost more than the input.
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def json_value(p: Provider, depth: int = 0) -> Any:
    match p.below(9 if depth < 3 else 6):
        case 0:
            return None
        case 1:
            return p.flag()
        case 2:
            return p.choice([0, -1, 2**63, 1.5, float("inf"), float("nan"), p.uint(64)])
        case 3 | 4:
            return p.text(10)
        case 5:
            return p.choice(["wifi", "cell", "up", "down", ""])
        case 6:
            return [json_value(p, depth + 1) for _ in range(p.below(3))]
        case _:
            return {p.choice(["cmd", "path", "up", "signal", "x", p.text(4)]):
                    json_value(p, depth + 1) for _ in range(p.below(4))}


def build_request(p: Provider) -> bytes:
    """A request line as `roam` writes it, with wrong fields, or not JSON at all."""
    match p.below(4):
        case 0:
            return p.blob(100).replace(b"\n", b" ")
        case 1:
            return json.dumps(json_value(p)).encode()
        case _:
            fields = {p.choice(["path", "up", "signal", "x"]): json_value(p)
                      for _ in range(p.below(4))}
            if p.below(8):
                fields["cmd"] = p.choice(COMMANDS)
            line = json.dumps(fields, ensure_ascii=p.flag()).encode("utf-8", "surrogatepass")
            if p.below(4) == 0:
                line = apply_mutations(line, p.blob(12)).replace(b"\n", b" ")
            return line


def check_answer(raw: bytes) -> dict[str, Any]:
    assert raw.endswith(b"\n")
    assert raw.count(b"\n") == 1  # one line per request
    answer: dict[str, Any] = json.loads(raw)
    assert isinstance(answer, dict)
    assert answer["ok"] in (True, False)
    assert ("result" if answer["ok"] else "error") in answer
    return answer


@fuzz_settings(0.5)
@given(built(build_request))
def test_every_request_line_gets_one_answer(loop: asyncio.AbstractEventLoop,
                                            line: bytes) -> None:
    server = ControlServer("/nonexistent/c.sock", HANDLERS)
    answer = check_answer(loop.run_until_complete(server._handle(line + b"\n")))
    if not answer["ok"]:
        assert isinstance(answer["error"], str)


def build_connection(p: Provider) -> list[bytes]:
    """What a client writes on one connection, in the pieces reads give."""
    lines = [build_request(p) for _ in range(p.below(4))]
    stream = b"\n".join(lines) + p.choice([b"\n", b"", b"\r\n"])
    if p.below(16) == 0:
        stream = b"x" * (MAX_LINE + p.below(3) - 1) + b"\n" + stream  # at the line limit
    return cut(stream, p.blob(6))


@fuzz_settings(0.3)
@given(built(build_connection, max_size=600))
def test_a_connection_gets_an_answer_per_line(loop: asyncio.AbstractEventLoop,
                                              pieces: list[bytes]) -> None:
    server = ControlServer("/nonexistent/c.sock", HANDLERS)
    reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
    for piece in pieces:
        reader.feed_data(piece)
    reader.feed_eof()
    writer = FakeWriter()
    loop.run_until_complete(server._client(reader, writer))  # type: ignore[arg-type]
    assert writer.closed
    answers = [line + b"\n" for line in bytes(writer.data).split(b"\n")[:-1]]
    assert b"".join(answers) == writer.data
    for raw in answers:
        check_answer(raw)
    # Lines as readline() cuts them: at b"\n" only, the last maybe unended.
    lines = b"".join(pieces).split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if all(len(line) < MAX_LINE for line in lines):
        assert len(answers) == len(lines)


# json.loads' own limits: RecursionError (nesting deeper than the
# interpreter's recursion limit) and a bare ValueError (an integer of more
# than 4300 digits, int()'s limit) escaped `_handle` once, closing the
# connection without an answer. Each input is within MAX_LINE.
DEEP_REQUEST = b"[" * 2000
LONG_INTEGER_REQUEST = b'{"cmd": "echo", "x": ' + b"1" * 4301 + b"}"


def test_a_deeply_nested_request_gets_an_answer(loop: asyncio.AbstractEventLoop) -> None:
    server = ControlServer("/nonexistent/c.sock", HANDLERS)
    check_answer(loop.run_until_complete(server._handle(DEEP_REQUEST + b"\n")))


def test_a_request_with_a_long_integer_gets_an_answer(loop: asyncio.AbstractEventLoop) -> None:
    server = ControlServer("/nonexistent/c.sock", HANDLERS)
    check_answer(loop.run_until_complete(server._handle(LONG_INTEGER_REQUEST + b"\n")))


# The client side, over a real unix socket: a stand-in daemon answers each
# request with whatever bytes the input says.


class FakeDaemon:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.reply = b""
        # A daemon that closes with the request unread (one refusing an
        # over-long line, or dying) resets the connection instead.
        self.reads_request = True
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(4)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed: the module is done
            # A client that gave up early must not stop the daemon for the next one.
            with conn, contextlib.suppress(OSError):
                data = b"" if self.reads_request else b"\n"
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if not self.reads_request:
                    time.sleep(0.001)  # let the request arrive, to lie there unread
                conn.sendall(self.reply)

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(tmp_path_factory.mktemp("control") / "c.sock")
    yield fake
    fake.close()


def build_answer(p: Provider) -> bytes:
    """An answer as a daemon may send it, or garbage, mostly ending its line."""
    match p.below(5):
        case 0:
            body = p.blob(80)
        case 1:
            body = json.dumps(json_value(p)).encode()
        case _:
            answer = {p.choice(["ok", "result", "error", "x"]): json_value(p)
                      for _ in range(p.below(3))}
            answer["ok"] = p.choice([True, False, None, 1, "yes"])
            body = json.dumps(answer).encode()
            if p.below(4) == 0:
                body = apply_mutations(body, p.blob(12))
    return body.replace(b"\n", b" ") + p.choice([b"\n", b"\n", b"\n", b"", b"\n\n"])


def expect(answer: bytes) -> Any:
    """The result `request` must return for `answer`; raises ControlError otherwise."""
    try:
        parsed = json.loads(answer)
    except (ValueError, RecursionError):
        raise ControlError("not JSON") from None
    if not isinstance(parsed, dict) or not parsed.get("ok"):
        raise ControlError("refused")
    return parsed.get("result")


@fuzz_settings(0.3)
@given(built(lambda p: (build_answer(p), p.below(8) != 0)))
# Answers that are not JSON objects once raised JSONDecodeError,
# UnicodeDecodeError or AttributeError instead of ControlError.
@example((b"not json\n", True))
@example((b"\xff\n", True))
@example((b"[1, 2]\n", True))
@example((b'"ok"\n', True))
# A daemon closing with the request unread: ConnectionResetError escaped.
@example((b'{"ok": true, "result": 1}', False))
def test_every_answer_gives_a_result_or_control_error(daemon: FakeDaemon,
                                                      case: tuple[bytes, bool]) -> None:
    daemon.reply, daemon.reads_request = case
    reply = daemon.reply
    try:
        result = request(str(daemon.path), "status", timeout=5)
    except ControlError as exc:
        message = str(exc)
    else:
        assert reply.endswith(b"\n")
        # Compared as JSON text: a NaN in the result is not equal to itself.
        assert json.dumps(result) == json.dumps(expect(reply))
        return
    # A complete, well-formed, successful answer to a request the daemon
    # read is never refused.
    if reply.endswith(b"\n") and daemon.reads_request:
        try:
            expect(reply)
        except ControlError:
            return
        pytest.fail(f"answer refused: {message}")


@pytest.mark.parametrize("reply", [b"\n", b"{}\n", b'{"ok": false}\n'])
def test_refusals_are_control_errors(daemon: FakeDaemon, reply: bytes) -> None:
    daemon.reply, daemon.reads_request = reply, True
    with pytest.raises(RoamError):
        request(str(daemon.path), "status", timeout=5)
