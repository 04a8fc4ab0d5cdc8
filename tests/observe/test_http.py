"""The --metrics HTTP server over real loopback sockets: good and bad requests."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from roam.errors import ConfigError
from roam.observe.http import HEAD_TIMEOUT, MAX_HEAD, MetricsHttp, page, parse_metrics_address

STATUS = {"role": "registrar", "identity": "abcd", "units": 2, "registrations": 5,
          "lookups": 1, "found": 1, "refused": {"NOT_ALLOWED": 3}, "connections": 0}


async def _status(_: dict[str, Any]) -> object:
    return STATUS


async def _ask(port: int, raw: bytes, *, close_write: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    if close_write:
        writer.write_eof()
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), HEAD_TIMEOUT + 5)
    writer.close()
    return answer


def _with_server(body: Callable[[MetricsHttp], Awaitable[None]], serve: bool = True) -> None:
    async def main() -> None:
        web = await MetricsHttp.open("127.0.0.1:0", "registrar")
        if serve:
            web.serve(_status)
        try:
            await body(web)
        finally:
            await web.close()
    asyncio.run(main())


def test_metrics_status_and_page() -> None:
    async def body(web: MetricsHttp) -> None:
        port = web.address[1]
        assert web.url == f"http://127.0.0.1:{port}/"
        metrics = await _ask(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert metrics.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"roam_registrar_registrations_total 5.0" in metrics
        assert b"text/plain; version=0.0.4" in metrics
        status = await _ask(port, b"GET /status.json?x=1 HTTP/1.0\r\n\r\n")
        assert b'"registrations": 5' in status
        html = await _ask(port, b"GET / HTTP/1.1\r\n\r\n")
        assert html.endswith(page())
        assert b"Content-Security-Policy" in html
    _with_server(body)


def test_head_has_headers_only() -> None:
    async def body(web: MetricsHttp) -> None:
        answer = await _ask(web.address[1], b"HEAD / HTTP/1.1\r\n\r\n")
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert f"Content-Length: {len(page())}".encode() in head
        assert rest == b""
    _with_server(body)


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /nope HTTP/1.1\r\n\r\n", b"404"),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
    (b"DELETE / HTTP/1.1\r\n\r\n", b"405"),
    (b"\x00\xff garbage\r\n\r\n", b"400"),
    (b"GET /\r\n\r\n", b"400"),
    (b"GET / SPDY/3\r\n\r\n", b"400"),
    (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n", b"431"),
])
def test_bad_requests_get_an_error_and_the_server_goes_on(raw: bytes, status: bytes) -> None:
    async def body(web: MetricsHttp) -> None:
        answer = await _ask(web.address[1], raw)
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
        if status == b"405":
            assert b"Allow: GET, HEAD" in answer
        ok = await _ask(web.address[1], b"GET /metrics HTTP/1.1\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
    _with_server(body)


def test_half_a_request_then_eof_is_dropped_quietly() -> None:
    async def body(web: MetricsHttp) -> None:
        assert await _ask(web.address[1], b"GET /met", close_write=True) == b""
        ok = await _ask(web.address[1], b"GET /metrics HTTP/1.1\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
    _with_server(body)


def test_slow_client_times_out_while_others_are_served() -> None:
    async def body(web: MetricsHttp) -> None:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(*web.address)
        writer.write(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
        await writer.drain()
        started = loop.time()
        ok = await _ask(web.address[1], b"GET /metrics HTTP/1.1\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
        answer = await asyncio.wait_for(reader.read(), HEAD_TIMEOUT + 5)
        assert answer.startswith(b"HTTP/1.1 408")
        assert loop.time() - started >= HEAD_TIMEOUT - 0.5
        writer.close()
    _with_server(body)


def test_before_serve_answers_503_but_the_page() -> None:
    async def body(web: MetricsHttp) -> None:
        answer = await _ask(web.address[1], b"GET /metrics HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503")
        assert b"Retry-After: 1" in answer
        page_answer = await _ask(web.address[1], b"GET / HTTP/1.1\r\n\r\n")
        assert page_answer.startswith(b"HTTP/1.1 200")
    _with_server(body, serve=False)


def test_a_failing_status_is_a_500() -> None:
    async def broken(_: dict[str, Any]) -> object:
        raise RuntimeError("a bug")

    async def body(web: MetricsHttp) -> None:
        web.serve(broken)
        answer = await _ask(web.address[1], b"GET /status.json HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 500")
    _with_server(body, serve=False)


def test_taken_port_is_a_config_error_naming_the_flag() -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            with pytest.raises(ConfigError, match="--metrics"):
                await MetricsHttp.open(f"127.0.0.1:{port}", "relay")
    asyncio.run(main())


@pytest.mark.parametrize("text", ["nohost", "127.0.0.1:http", "127.0.0.1:70000", "::1:80"])
def test_bad_address_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--metrics"):
        parse_metrics_address(text)


def test_ipv6_address_in_brackets() -> None:
    assert parse_metrics_address("[::1]:0") == ("::1", 0)
