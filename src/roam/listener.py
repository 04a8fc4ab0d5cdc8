"""A daemon's listening TCP socket, bound before its loop runs so the caller
learns the port (port 0 picks one) and a busy address is an error at start."""

from __future__ import annotations

import socket

# Connections the kernel queues before the daemon accepts them: a mass
# reconnect after a network change arrives all at once.
BACKLOG = 1024


def listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking socket listening on host:port; OSError names the address."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock
