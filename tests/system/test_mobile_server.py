"""A mobile server on loopback, with real daemons: two emulated networks
(127.0.0.2 and 127.0.0.3), a planned move that every client follows without
losing a byte, and a network that fails while the other still works."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .harness import ENV, EchoResult, Keys, Proc, Procs, echo_conversation

TOTAL = 24 * 1024 * 1024


def roam(*args: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "roam", *args], env=ENV, capture_output=True,
                         text=True, timeout=30, check=True)
    return json.loads(out.stdout) if out.stdout.startswith("{") else {"text": out.stdout}


def status(sock: Path, *flags: str) -> dict[str, object]:
    return roam("status", "--json", "--control", str(sock), *flags)


def peers(client_sock: Path) -> set[str]:
    return {str(t["peer"]) for t in status(client_sock)["transports"]  # type: ignore[attr-defined]
            if t["state"] != "gone"}


def check(result: EchoResult) -> None:
    assert result.done, result
    assert result.error is None, result
    assert result.mismatch_at is None, result
    assert result.received == TOTAL, result


def wait_for(what: str, check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


@dataclass
class Units:
    """A mobile server on 127.0.0.2 (net1) and 127.0.0.3 (net2), a client on
    net1's address, and an echo conversation running through them."""

    server: Proc
    client: Proc
    port: int
    server_sock: Path
    client_sock: Path
    result: EchoResult
    conversation: threading.Thread


@contextlib.contextmanager
def units(tmp_path: Path, seed: int) -> Iterator[Units]:
    keys = Keys.make(tmp_path / "keys")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        server_sock, client_sock = tmp_path / "server.sock", tmp_path / "client.sock"
        server = procs.start("server", [
            sys.executable, "-m", "roam", "server", "--listen", "0.0.0.0:0", "--key",
            str(keys.server_key), "--authorized-keys", str(keys.authorized), "--allow",
            f"127.0.0.1:{echo}", "--links", "emulated", "--path", "net1:dev=127.0.0.2",
            "--path", "net2:dev=127.0.0.3,priority=200", "--control", str(server_sock)],
            ready="listening")
        port = int(server.ready.rsplit(":", 1)[1])
        client = procs.start("client", [
            sys.executable, "-m", "roam", "client", "--server", f"127.0.0.2:{port}",
            "--server-key", keys.server_pub, "--key", str(keys.client_key), "--forward",
            f"127.0.0.1:0=127.0.0.1:{echo}", "--control", str(client_sock)], ready="forward")
        forward = int(client.ready.split("=")[0].rsplit(":", 1)[1])
        result = EchoResult()
        conversation = threading.Thread(target=echo_conversation,
                                        args=(forward, TOTAL, seed, result), daemon=True)
        conversation.start()
        wait_for("the stream runs", lambda: result.received > TOTAL // 8)
        yield Units(server, client, port, server_sock, client_sock, result, conversation)


def test_clients_follow_a_server_that_moves_to_another_network(tmp_path: Path) -> None:
    with units(tmp_path, 7) as u:
        server_sock, client_sock, port, client = u.server_sock, u.client_sock, u.port, u.client
        assert peers(client_sock) == {f"127.0.0.2:{port}"}

        moved = roam("switch", "net2", "--server", "--control", str(server_sock))
        assert "soft move net1 -> net2" in str(moved["text"]), moved
        assert f"127.0.0.3:{port}" in str(moved["text"])
        wait_for("the client follows to 127.0.0.3",
                 lambda: peers(client_sock) == {f"127.0.0.3:{port}"})
        client.wait_log("the server moved: 127.0.0.2")
        u.conversation.join(120)
        check(u.result)
        networks = status(server_sock, "--server")["networks"]
        assert networks["current"] == "net2"  # type: ignore[index]
        assert networks["moves"][-1]["sessions"] == 1  # type: ignore[index]
        # Soft: nothing was resent on either side.
        assert status(client_sock)["session"]["frames_resent"] == 0  # type: ignore[index]
        history = status(client_sock)["handovers"]
        assert history[-1]["kind"] == "soft", history  # type: ignore[index]
        assert "the server moved" in history[-1]["reason"]  # type: ignore[index]


def test_a_server_network_that_fails_moves_it_to_the_other_one(tmp_path: Path) -> None:
    with units(tmp_path, 8) as u:
        server_sock, client_sock, port, server = u.server_sock, u.client_sock, u.port, u.server
        # The link is emulated: the loopback address still answers, so the
        # old transport goes on working; what the test shows is the policy's
        # hard move and the MOVE it sends.
        roam("link", "net1", "down", "--server", "--control", str(server_sock))
        wait_for("the client follows to 127.0.0.3",
                 lambda: peers(client_sock) == {f"127.0.0.3:{port}"})
        u.conversation.join(120)
        check(u.result)
        moves = status(server_sock, "--server")["networks"]["moves"]  # type: ignore[index]
        assert (moves[-1]["type"], moves[-1]["to"]) == ("hard", "net2"), moves
        server.wait_log("server network net1 -> net2")
