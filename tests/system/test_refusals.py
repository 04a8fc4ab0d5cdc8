"""Refusals with real daemons: unknown clients, wrong server keys, disallowed destinations."""

from __future__ import annotations

import re
import select
import socket
import threading
from pathlib import Path

from roam.core.preamble import Preamble, Status, Suite, TransportKind
from roam.transport.server import MAX_HANDSHAKES_PER_SOURCE

from .harness import EchoResult, Keys, Procs, _read_line, echo_conversation


def test_unauthorized_client_refused_and_others_served(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    stranger_key, stranger_pub = keys.extra_client("stranger")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        server, sport = procs.server(keys, f"127.0.0.1:{echo}")
        _good, (gport,) = procs.client(keys, sport, f"127.0.0.1:0=127.0.0.1:{echo}", name="good")
        bad, _ = procs.client(keys, sport, f"127.0.0.1:0=127.0.0.1:{echo}", name="stranger",
                              key=stranger_key, ready=None)
        assert bad.popen.wait(15) == 1
        text = bad.log_text()
        assert "refused this client" in text
        assert "not authorized" in text
        assert stranger_pub in text  # the key to add, so the operator can act
        # Escaped: a base64 key id may hold '+' or '/' (the one-in-eight flake).
        server.wait_log(rf"refused client {re.escape(stranger_pub[:8])}.*not in the authorized "
                        "keys")
        # The authorized client keeps working after the refusal.
        r = EchoResult()
        echo_conversation(gport, 1 << 20, 7, r, deadline=30)
        assert r.error is None
        assert r.received == 1 << 20
        assert server.popen.poll() is None


def test_client_pinning_wrong_server_key_refuses_to_proceed(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    other = Keys.make(tmp_path / "other")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        server, sport = procs.server(keys, f"127.0.0.1:{echo}")
        client, _ = procs.client(keys, sport, f"127.0.0.1:0=127.0.0.1:{echo}",
                                 server_pub=other.server_pub, ready=None)
        assert client.popen.wait(15) == 1
        text = client.log_text()
        assert "refused the handshake" in text
        assert "--server-key is not this server's public key" in text
        assert "forward" not in (client.popen.stdout.read().decode()
                                 if client.popen.stdout else "")
        server.wait_log("cannot decrypt the client's handshake")
        assert server.popen.poll() is None


def test_destination_outside_allow_fails_alone(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        forbidden = procs.service("echo")
        server, sport = procs.server(keys, f"127.0.0.1:{echo}")
        _client, (ok_port, bad_port) = procs.client(
            keys, sport, f"127.0.0.1:0=127.0.0.1:{echo}",
            f"127.0.0.1:0=127.0.0.1:{forbidden}")
        # A long conversation on the allowed destination runs throughout.
        r = EchoResult()
        t = threading.Thread(target=echo_conversation, args=(ok_port, 32 << 20, 3, r),
                             daemon=True)
        t.start()
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", bad_port), timeout=10) as s:
                s.settimeout(10)
                s.sendall(b"hello?")
                try:
                    data = s.recv(100)
                except ConnectionResetError:
                    data = b""
                assert data == b"", "a refused destination must close the connection"
        server.wait_log(rf"refused channel \d+: 127\.0\.0\.1:{forbidden} is not allowed by "
                        "--allow")
        t.join(120)
        assert r.error is None
        assert r.mismatch_at is None
        assert r.received == 32 << 20
        assert server.log_text().count("new session") == 1


def test_a_client_answered_busy_waits_and_then_starts(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    raw = Preamble(TransportKind.NEW, Suite.AESGCM_SHA256).encode()
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        server, sport = procs.server(keys, f"127.0.0.1:{echo}")
        # Handshakes that send a preamble and then nothing, from the client's
        # own address: as many as one address may have in progress.
        flood = []
        try:
            for _ in range(MAX_HANDSHAKES_PER_SOURCE + 8):
                sock = socket.create_connection(("127.0.0.1", sport))
                sock.sendall(raw)
                flood.append(sock)
            # Once one of them is answered (BUSY), the slots are all taken by
            # the others, which never finish: the client cannot slip in first.
            answered, _, _ = select.select(flood, [], [], 20)
            assert answered, "the server answered none of them"
            assert answered[0].recv(1) == bytes([Status.BUSY])
            client, _ = procs.client(keys, sport, f"127.0.0.1:0=127.0.0.1:{echo}", ready=None)
            client.wait_log(r"is busy .*waiting [0-9.]+ s before trying again", timeout=20)
            assert client.popen.poll() is None
        finally:
            for sock in flood:
                sock.close()
        line = _read_line(client.popen, 30)
        assert line.startswith("forward"), client.log_text()[-3000:]
        port = int(line.split("=")[0].rsplit(":", 1)[1])
        r = EchoResult()
        echo_conversation(port, 1 << 16, 3, r, deadline=30)
        assert r.error is None
        server.wait_log("answered BUSY")
