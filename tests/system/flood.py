"""A flood of openings from one source address, as a process of its own.

    python tests/system/flood.py PORT SOURCE SILENT HALF [SESSION_ID_HEX]

Opens SILENT connections that send nothing, then HALF that send a RESUME
preamble for the session (its id travels in cleartext) and the start of a
first record they never finish, all from SOURCE to 127.0.0.1:PORT. Prints
"ready N" (N connections still open) and holds them until stdin closes.
Connections the server closes are not reopened: the count says how many
it let a stranger hold. Blocking sockets, no event loop: the process only
opens and holds.
"""

from __future__ import annotations

import socket
import sys

from roam.core.preamble import Preamble, Suite, TransportKind
from roam.crypto.records import HEADER


def _open(port: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def main(argv: list[str]) -> int:
    port, source, silent, half = int(argv[0]), argv[1], int(argv[2]), int(argv[3])
    sid = bytes.fromhex(argv[4]) if len(argv) > 4 else bytes(range(1, 17))
    held: list[socket.socket] = []
    for _ in range(silent):
        held.append(_open(port, source))
    preamble = Preamble(TransportKind.RESUME, Suite.AESGCM_SHA256, sid).encode()
    # A first record that claims 1 KiB (the most a resume's first record may
    # be) and sends half of it: the server must hold what came, and no more.
    start = preamble + HEADER.pack(1024, 1) + bytes(500)
    for _ in range(half):
        sock = _open(port, source)
        sock.sendall(start)
        held.append(sock)
    alive = 0
    for sock in held:
        sock.setblocking(False)
        try:
            sock.recv(1)  # EOF, or a refusal the server sent before closing
        except BlockingIOError:
            alive += 1  # nothing to read: the server still holds it
        except OSError:
            pass  # reset by the server
    print(f"ready {alive}", flush=True)
    sys.stdin.read()
    for sock in held:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
