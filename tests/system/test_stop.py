"""Stopping a daemon tells its peer: every application connection on the other
side closes now, not after the server's linger (15 minutes by default)."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path

from .harness import Keys, Procs


class _Service:
    """A TCP service beside the server that notes when its connection ends."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        self.accepted.set()
        with conn:
            try:
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:
                pass
        self.ended.set()

    def close(self) -> None:
        self.sock.close()


def _app(port: int) -> socket.socket:
    """An application connection through the client's forward, shown to work."""
    app = socket.create_connection(("127.0.0.1", port), timeout=20)
    app.sendall(b"ping")
    assert app.recv(4) == b"ping"
    return app


def test_sigterm_to_the_client_closes_the_servers_connections_at_once(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    service = _Service()
    try:
        with Procs(tmp_path) as procs:
            server, sport = procs.server(keys, f"127.0.0.1:{service.port}")
            client, (fport,) = procs.client(keys, sport, f"127.0.0.1:0=127.0.0.1:{service.port}")
            app = _app(fport)
            assert service.accepted.wait(10)
            client.popen.send_signal(signal.SIGTERM)
            assert client.popen.wait(10) == 0
            # Bounded only so that a hang fails; the linger is 900 s.
            assert service.ended.wait(20), server.log_text()[-2000:]
            server.wait_log("session closed by peer")
            app.close()
    finally:
        service.close()


def test_sigterm_to_the_server_closes_the_clients_connections_at_once(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    service = _Service()
    try:
        with Procs(tmp_path) as procs:
            server, sport = procs.server(keys, f"127.0.0.1:{service.port}")
            client, (fport,) = procs.client(keys, sport, f"127.0.0.1:0=127.0.0.1:{service.port}")
            app = _app(fport)
            server.popen.send_signal(signal.SIGTERM)
            assert server.popen.wait(10) == 0
            # The application sees its connection end, not a stall while
            # the client tries to resume a session the server ended.
            app.settimeout(20)
            assert app.recv(4) == b""
            client.wait_log("closed the session")
            assert client.popen.poll() is None  # it waits for a new session
            app.close()
    finally:
        service.close()
