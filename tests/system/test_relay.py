"""A relay between real daemons on loopback: splicing, admission, and a relay restart."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import sys
import threading
from pathlib import Path

from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key
from roam.relay.hop import Status, decode_reply, header_size

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


class Recorder:
    """A TCP hop between the client and the relay that keeps the first hop
    header it carries: what anyone on the path could record."""

    def __init__(self, relay_port: int) -> None:
        self.relay_port = relay_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.header: bytes | None = None
        self.seen = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._carry, args=(conn,), daemon=True).start()

    def _carry(self, conn: socket.socket) -> None:
        relay = socket.create_connection(("127.0.0.1", self.relay_port))
        first = b""
        while self.header is None:
            data = conn.recv(65536)
            if not data:
                break
            first += data
            size = header_size(first)
            if size is not None and len(first) >= size:
                self.header = first[:size]
                self.seen.set()
        relay.sendall(first)

        def pump(a: socket.socket, b: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := a.recv(65536):
                    b.sendall(data)
            with contextlib.suppress(OSError):
                b.shutdown(socket.SHUT_WR)

        threading.Thread(target=pump, args=(relay, conn), daemon=True).start()
        pump(conn, relay)

    def close(self) -> None:
        self.listener.close()


def test_a_recorded_admission_replayed_to_the_relay_is_refused(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    rkey, rpub = relay_keys(keys.dir)
    admitted = keys.dir / "admitted"
    admitted.write_text(f"{keys.client_pub} laptop\n")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        _server, sport = procs.server(keys, f"127.0.0.1:{echo}")
        relay = start_relay(procs, rkey, 0, "--admit-keys", str(admitted))
        recorder = Recorder(int(relay.ready.rsplit(":", 1)[1]))
        try:
            _client, fport = start_client(procs, keys, sport, recorder.port, rpub, echo)
            result = EchoResult()
            echo_conversation(fport, 1 << 20, 15, result, deadline=60)
            assert result.error is None, result.error
            assert recorder.seen.wait(10)
            assert recorder.header is not None
            # Whoever recorded it sends the same header again, at once.
            with socket.create_connection(("127.0.0.1", recorder.relay_port),
                                          timeout=10) as thief:
                thief.sendall(recorder.header)
                answer = b""
                while (decoded := decode_reply(answer)) is None:
                    data = thief.recv(4096)
                    assert data, "the relay closed without an answer"
                    answer += data
            status, body, _ = decoded
            assert status is Status.NOT_ADMITTED
            assert "this header was seen before (replayed)" in body.decode()
            relay.wait_log(r"refused 127\.0\.0\.1:\d+: .*this header was seen before \(replayed\)")
            # The session it was recorded from goes on.
            again = EchoResult()
            echo_conversation(fport, 1 << 20, 16, again, deadline=60)
            assert again.error is None, again.error
        finally:
            recorder.close()


def test_a_relay_dials_only_what_its_dial_allow_names(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    rkey, rpub = relay_keys(keys.dir)
    admitted = keys.dir / "admitted"
    admitted.write_text(f"{keys.client_pub} laptop\n")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        _server, sport = procs.server(keys, f"127.0.0.1:{echo}")
        # This relay may reach the server's port on loopback, nothing else.
        open_relay = start_relay(procs, rkey, 0, "--admit-keys", str(admitted),
                                 "--dial-allow", f"127.0.0.0/8:{sport}", name="allowed")
        _client, fport = start_client(procs, keys, sport,
                                      int(open_relay.ready.rsplit(":", 1)[1]), rpub, echo)
        result = EchoResult()
        echo_conversation(fport, 1 << 20, 17, result, deadline=60)
        assert result.error is None, result.error
        closed = start_relay(procs, rkey, 0, "--admit-keys", str(admitted),
                             "--dial-allow", "127.0.0.1:1", name="closed")
        client, _ = start_client(procs, keys, sport, int(closed.ready.rsplit(":", 1)[1]), rpub,
                                 echo, name="refused-client", ready=None)
        client.wait_log(rf"relay r1 refused the transport \(NOT_ADMITTED\): this relay does "
                        rf"not dial 127\.0\.0\.1:{sport} \(not in its --dial-allow\)", timeout=20)
        closed.wait_log(r"refused: this relay does not dial")


def test_a_chain_of_four_relays_carries_a_session_and_each_relay_splices_it(
        tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    admitted = keys.dir / "admitted"
    admitted.write_text(f"{keys.client_pub} laptop\n")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        _server, sport = procs.server(keys, f"127.0.0.1:{echo}")
        hops: list[str] = []
        relays: list[Proc] = []
        for i in range(1, 5):
            d = keys.dir / f"r{i}"
            d.mkdir()
            rkey, rpub = relay_keys(d)
            relay = start_relay(procs, rkey, 0, "--admit-keys", str(admitted), name=f"r{i}")
            relays.append(relay)
            hops += ["--relay", f"r{i}=127.0.0.1:{relay.ready.rsplit(':', 1)[1]},key={rpub}"]
        client = procs.start("client", [
            sys.executable, "-m", "roam", "client", "--server", f"127.0.0.1:{sport}",
            "--server-key", keys.server_pub, "--key", str(keys.client_key), *hops,
            "--path", "chain:dev=lo,via=r1+r2+r3+r4", "--links", "static", "--no-udp",
            "--forward", f"127.0.0.1:0=127.0.0.1:{echo}"], ready="forward")
        fport = int(client.ready.split("=")[0].rsplit(":", 1)[1])
        result = EchoResult()
        echo_conversation(fport, 4 << 20, 18, result, deadline=60)
        assert result.error is None, result.error
        assert result.received == 4 << 20
        for i, relay in enumerate(relays, 1):
            onward = (rf"127\.0\.0\.1:{relays[i].ready.rsplit(':', 1)[1]}" if i < 4
                      else rf"127\.0\.0\.1:{sport}")
            relay.wait_log(rf"laptop\) is admitted\) spliced to {onward}")
