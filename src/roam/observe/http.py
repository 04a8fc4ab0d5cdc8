"""The daemon's HTTP server for `--metrics HOST:PORT`: /metrics, /status.json, /.

A few hundred lines of HTTP/1.1 on asyncio streams rather than a framework:
one request per connection (`Connection: close`), GET and HEAD only, every
read and write under a deadline, a bounded request head and a bounded number
of connections. Whatever a client sends, the worst it gets is an error
status and a closed connection; the daemon never sees the exception.

The socket is bound first (`MetricsHttp.open`, so the daemon can print the
real port before anything else) and serves once the daemon hands it its
status (`serve`, the handler `roam status` asks); until then /metrics and
/status.json answer 503. Each scrape asks that handler and renders the
daemon's `DaemonMetrics` from its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from importlib import resources

from roam.connector.allow import format_host_port, parse_port, split_host_port
from roam.control.server import Handler
from roam.errors import ConfigError
from roam.observe.metrics import DaemonMetrics

log = logging.getLogger("roam")

# The request line and headers together. A browser's GET with its usual
# headers is 400-700 bytes and Prometheus's scrape about 300; 8 KiB is what
# nginx allows per header line by default (large_client_header_buffers).
MAX_HEAD = 8 * 1024
# A client that has not sent its whole request head by then is dropped: a
# local browser or Prometheus sends it in one segment, well within a second.
HEAD_TIMEOUT = 5.0
# Writing the answer (the page is about 10 KiB, /metrics a few KiB) to a
# client that stopped reading.
WRITE_TIMEOUT = 10.0
# Connections at once: a browser polling and a scraper or two need a handful;
# beyond this, a new one is closed at once so a flood costs no memory.
MAX_CONNECTIONS = 32

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format 0.0.4
# The page loads nothing from elsewhere: its own script and style, and
# /status.json from this server.
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
               "connect-src 'self'; img-src 'self' data:")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def page() -> bytes:
    """The status page, shipped as package data beside this module."""
    return (resources.files("roam.observe") / "page.html").read_bytes()


def parse_metrics_address(text: str) -> tuple[str, int]:
    """`--metrics HOST:PORT` (port 0: any free port)."""
    host, port_text = split_host_port(text, "--metrics")
    port = 0 if port_text == "0" else parse_port(port_text, f"--metrics {text!r}")
    if port is None:
        raise ConfigError(f"--metrics {text!r}: a port is needed")
    return host, port


class MetricsHttp:
    """The HTTP server of one daemon."""

    def __init__(self, role: str) -> None:
        self.metrics = DaemonMetrics(role)
        self._server: asyncio.Server | None = None
        self._status: Handler | None = None
        self._page = page()
        self._handlers: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] = ("", 0)

    @property
    def url(self) -> str:
        return f"http://{format_host_port(*self.address)}/"

    @classmethod
    async def open(cls, text: str, role: str) -> MetricsHttp:
        """Bind `--metrics HOST:PORT` for a daemon of `role`; a port that is
        taken is a ConfigError."""
        host, port = parse_metrics_address(text)
        http = cls(role)
        try:
            http._server = await asyncio.start_server(http._connection, host, port,
                                                      limit=MAX_HEAD)
        except OSError as exc:
            raise ConfigError(f"--metrics {text!r}: cannot listen there: "
                              f"{exc.strerror or exc}") from None
        sock = http._server.sockets[0].getsockname()
        http.address = (str(sock[0]), int(sock[1]))
        return http

    def serve(self, status: Handler) -> None:
        """From now on, answer from `status`: the daemon is up."""
        self._status = status

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # ---- one connection ------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._handlers) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._handlers.add(task)
        try:
            method, response = await self._answer(reader)
            await self._send(writer, response, head_only=method == "HEAD")
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or stalled: nothing to tell it
        except Exception:  # a bug here must not take the daemon down
            log.exception("metrics: answering %s failed", writer.get_extra_info("peername"))
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                # Closing a socket whose peer vanished may fail; nothing to do.
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, Response]:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return "GET", _error(408, "the request head did not arrive in time")
        except asyncio.LimitOverrunError:
            return "GET", _error(431, f"the request head is over {MAX_HEAD} bytes")
        line = head.split(b"\r\n", 1)[0]
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return "GET", _error(400, "expected METHOD PATH HTTP/1.x")
        method = parts[0].decode("ascii", "replace")
        path = parts[1].split(b"?", 1)[0].decode("ascii", "replace")
        if method not in ("GET", "HEAD"):
            return "GET", Response(405, b"only GET and HEAD\n", headers=(("Allow", "GET, HEAD"),))
        return method, await self._route(path)

    async def _route(self, path: str) -> Response:
        if path not in ("/", "/index.html", "/metrics", "/status.json"):
            return _error(404, f"no {path}: try /, /metrics or /status.json")
        if path in ("/", "/index.html"):
            return Response(200, self._page, "text/html; charset=utf-8",
                            (("Content-Security-Policy", PAGE_POLICY),))
        status = self._status
        if status is None:
            return Response(503, b"starting\n", headers=(("Retry-After", "1"),))
        try:
            now = await status({})
            if path == "/metrics":
                return Response(200, self.metrics.render(now), METRICS_TYPE)
            body = json.dumps(now, default=str).encode()
        except Exception:  # a bug in a source: the scrape fails, the daemon goes on
            log.exception("metrics: %s failed", path)
            return _error(500, "the daemon could not say; see its log")
        return Response(200, body, "application/json")

    async def _send(self, writer: asyncio.StreamWriter, response: Response, *,
                    head_only: bool) -> None:
        lines = [f"HTTP/1.1 {response.status} {REASONS[response.status]}",
                 f"Content-Type: {response.content_type}",
                 f"Content-Length: {len(response.body)}",
                 "Cache-Control: no-store", "X-Content-Type-Options: nosniff",
                 "Connection: close",
                 *(f"{name}: {value}" for name, value in response.headers)]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        if not head_only:
            writer.write(response.body)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()


def _error(status: int, text: str) -> Response:
    return Response(status, text.encode() + b"\n")


__all__ = ["MAX_HEAD", "MetricsHttp", "page", "parse_metrics_address"]
