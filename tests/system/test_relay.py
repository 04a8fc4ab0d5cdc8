"""A relay between real daemons on loopback: splicing, admission, and a relay restart."""

from __future__ import annotations

import base64
import os
import socket
import sys
from pathlib import Path

from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key

from .harness import EchoResult, Keys, Proc, Procs, echo_conversation

SECRET = b"relay-otp-secret-for-tests!"  # 27 bytes: above the 128-bit floor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def relay_keys(d: Path) -> tuple[Path, str]:
    key = generate_private_key()
    write_private_key(d / "relay.key", key)
    return d / "relay.key", encode_key(public_key(key))


def start_relay(procs: Procs, key: Path, port: int, *admission: str,
                name: str = "relay") -> Proc:
    return procs.start(name, [sys.executable, "-m", "roam", "relay", "--listen",
                              f"127.0.0.1:{port}", "--key", str(key), *admission],
                       ready="listening")


def start_client(procs: Procs, keys: Keys, server_port: int, relay_port: int, relay_pub: str,
                 echo: int, *extra: str, key: Path | None = None, name: str = "client",
                 ready: str | None = "forward") -> tuple[Proc, int]:
    argv = [sys.executable, "-m", "roam", "client", "--server", f"127.0.0.1:{server_port}",
            "--server-key", keys.server_pub, "--key", str(key or keys.client_key),
            "--relay", f"r1=127.0.0.1:{relay_port},key={relay_pub}",
            "--path", "relayed:dev=lo,via=r1", "--links", "static",
            "--forward", f"127.0.0.1:0=127.0.0.1:{echo}", "--no-udp", *extra]
    proc = procs.start(name, argv, ready=ready)
    port = int(proc.ready.split("=")[0].rsplit(":", 1)[1]) if ready else 0
    return proc, port


def test_a_session_through_a_relay_is_byte_exact_and_the_relay_sees_only_ciphertext(
        tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    rkey, rpub = relay_keys(keys.dir)
    admitted = keys.dir / "admitted"
    admitted.write_text(f"{keys.client_pub} laptop\n")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        server, sport = procs.server(keys, f"127.0.0.1:{echo}")
        relay = start_relay(procs, rkey, 0, "--admit-keys", str(admitted))
        rport = int(relay.ready.rsplit(":", 1)[1])
        _client, fport = start_client(procs, keys, sport, rport, rpub, echo)
        result = EchoResult()
        echo_conversation(fport, 4 << 20, 11, result, deadline=60)
        assert result.error is None, result.error
        assert result.received == 4 << 20
        relay.wait_log(r"spliced to 127\.0\.0\.1:\d+")
        relay.wait_log(r"laptop\) is admitted")
        # The server saw the relay's address, not the client's own connection.
        server.wait_log(r"new session from 127\.0\.0\.1")


def test_a_client_the_relay_does_not_admit_is_told_why(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    rkey, rpub = relay_keys(keys.dir)
    admitted = keys.dir / "admitted"
    admitted.write_text(f"{encode_key(public_key(generate_private_key()))} someone-else\n")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        _server, sport = procs.server(keys, f"127.0.0.1:{echo}")
        relay = start_relay(procs, rkey, 0, "--admit-keys", str(admitted))
        rport = int(relay.ready.rsplit(":", 1)[1])
        client, _ = start_client(procs, keys, sport, rport, rpub, echo, ready=None)
        client.wait_log(r"relay r1 refused the transport \(NOT_ADMITTED\): .* is not among "
                        r"the relay's admitted keys", timeout=20)
        relay.wait_log(r"refused .*not among the relay's admitted keys")
        assert relay.popen.poll() is None


def test_a_one_time_code_admits_once_and_the_ticket_carries_the_session_over_a_restart(
        tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    rkey, rpub = relay_keys(keys.dir)
    secret32 = base64.b32encode(SECRET).decode().rstrip("=")
    totp = keys.dir / "totp"
    totp.write_text(f"{keys.client_pub} {secret32} laptop\n")
    os.chmod(totp, 0o600)
    otp = keys.dir / "otp-secret"
    otp.write_text(secret32 + "\n")
    os.chmod(otp, 0o600)
    rport = free_port()
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        _server, sport = procs.server(keys, f"127.0.0.1:{echo}")
        relay = start_relay(procs, rkey, rport, "--admit-totp", str(totp))
        client, fport = start_client(procs, keys, sport, rport, rpub, echo,
                                     "--relay-otp-secret", str(otp))
        first = EchoResult()
        echo_conversation(fport, 1 << 20, 12, first, deadline=60)
        assert first.error is None, first.error
        relay.wait_log("admitted by one-time code")
        # The relay dies and comes back on the same address: to the session a
        # failed path. The code of this 30 s step is used up; the ticket the
        # relay gave admits the resume (the ticket key comes from its key).
        relay.popen.kill()
        relay.popen.wait(5)
        again = start_relay(procs, rkey, rport, "--admit-totp", str(totp), name="relay-again")
        after = EchoResult()
        echo_conversation(fport, 1 << 20, 13, after, deadline=60)
        assert after.error is None, after.error
        assert after.received == 1 << 20
        again.wait_log("admitted by ticket")
        client.wait_log("resum")


def test_a_server_that_accepts_no_connection_is_reached_through_its_uplink(
        tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    rkey, rpub = relay_keys(keys.dir)
    admitted = keys.dir / "admitted"
    admitted.write_text(f"{keys.client_pub} laptop\n")
    servers = keys.dir / "servers"
    servers.write_text(f"{keys.server_pub} db-server\n")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        relay = start_relay(procs, rkey, 0, "--admit-keys",
                            str(both(keys.dir, admitted, servers)))
        rport = int(relay.ready.rsplit(":", 1)[1])
        server = procs.start("server", [
            sys.executable, "-m", "roam", "server", "--uplink",
            f"127.0.0.1:{rport},key={rpub}", "--key", str(keys.server_key),
            "--authorized-keys", str(keys.authorized), "--allow", f"127.0.0.1:{echo}"],
            ready="uplinks")
        relay.wait_log("relay: uplink of")
        # The client is given an address where nothing listens: only the
        # uplink can carry it.
        client, fport = start_client(procs, keys, free_port(), rport, rpub, echo)
        result = EchoResult()
        echo_conversation(fport, 2 << 20, 14, result, deadline=60)
        assert result.error is None, result.error
        assert result.received == 2 << 20
        relay.wait_log("spliced to the uplink of")
        server.wait_log("new session from")
        assert client.popen.poll() is None


def both(d: Path, *files: Path) -> Path:
    out = d / "admitted-all"
    out.write_text("".join(f.read_text() for f in files))
    return out


def test_a_wrong_one_time_code_is_refused_with_the_reason_on_both_sides(
        tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    rkey, rpub = relay_keys(keys.dir)
    totp = keys.dir / "totp"
    totp.write_text(f"{keys.client_pub} {base64.b32encode(SECRET).decode()} laptop\n")
    os.chmod(totp, 0o600)
    wrong = keys.dir / "wrong-secret"
    wrong.write_text(base64.b32encode(b"another secret, 20B!").decode() + "\n")
    os.chmod(wrong, 0o600)
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        _server, sport = procs.server(keys, f"127.0.0.1:{echo}")
        relay = start_relay(procs, rkey, 0, "--admit-totp", str(totp))
        rport = int(relay.ready.rsplit(":", 1)[1])
        client, _ = start_client(procs, keys, sport, rport, rpub, echo,
                                 "--relay-otp-secret", str(wrong), ready=None)
        client.wait_log(r"relay r1 refused the transport \(NOT_ADMITTED\): .*wrong or expired "
                        r"one-time code", timeout=20)
        relay.wait_log(r"refused .*wrong or expired one-time code")
