"""The registrar daemon with real processes on loopback: registrations that
survive a restart, replays and wrong keys refused, lookups only for those
allowed, garbage on its port."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key
from roam.registrar.messages import Code, Found, Lookup, Refused, Register, Registered
from roam.registrar.unit import RegistrarError, RegistrarSpec, ask
from tests.conftest import require

from .harness import ENV, Procs
from .test_relay import free_port

REG = generate_private_key()
SERVER = generate_private_key()
CLIENT = generate_private_key()
STRANGER = generate_private_key()


def start(procs: Procs, tmp: Path, port: int, name: str = "registrar") -> None:
    key = tmp / "registrar.key"
    if not key.exists():
        write_private_key(key, REG)
    procs.start(name, [sys.executable, "-m", "roam", "registrar", "--listen",
                       f"127.0.0.1:{port}", "--key", str(key), "--db", str(tmp / "reg.db"),
                       "--control", str(tmp / f"{name}.sock")], ready="listening")


def run(spec: RegistrarSpec, key: bytes, *requests: bytes) -> list[object]:
    return list(asyncio.run(ask(spec, key, list(requests))))


def test_registrations_survive_a_restart_and_only_allowed_units_see_them(
        tmp_path: Path) -> None:
    port = free_port()
    spec = RegistrarSpec("127.0.0.1", port, public_key(REG))
    stamp = time.time_ns()
    registration = Register(stamp, 600, ("198.18.1.2:7000", "[2001:db8::2]:7000"),
                            (f"dmz=198.18.9.1:4434,key={encode_key(public_key(REG))}",),
                            frozenset({public_key(CLIENT)})).encode()
    with Procs(tmp_path) as procs:
        start(procs, tmp_path, port)
        (answer,) = run(spec, SERVER, registration)
        assert answer == Registered(600)
        procs.procs[-1].popen.kill()
        procs.procs[-1].popen.wait(10)
        start(procs, tmp_path, port, name="registrar-again")
        # After the restart: the client the server listed finds it, on the
        # same connection as a second question; a stranger finds nothing.
        found, again = run(spec, CLIENT, Lookup(public_key(SERVER)).encode(),
                           Lookup(public_key(SERVER)).encode())
        assert isinstance(found, Found)
        assert found.addresses == ("198.18.1.2:7000", "[2001:db8::2]:7000")
        assert found.relays[0].startswith("dmz=198.18.9.1:4434")
        assert isinstance(again, Found)
        assert again.addresses == found.addresses
        (hidden,) = run(spec, STRANGER, Lookup(public_key(SERVER)).encode())
        (unknown,) = run(spec, STRANGER, Lookup(public_key(STRANGER)).encode())
        assert isinstance(hidden, Refused)
        assert isinstance(unknown, Refused)
        assert hidden.code is unknown.code is Code.NOT_FOUND  # not told it exists
        # The same registration recorded and played again, even to the
        # restarted registrar, is refused: its stamp is not newer.
        (replayed,) = run(spec, SERVER, registration)
        assert isinstance(replayed, Refused)
        assert replayed.code is Code.REPLAYED
        procs.procs[-1].wait_log(r"refused .*no newer than the last \(replayed\)")


def test_a_unit_that_pins_another_registrar_key_is_refused_and_garbage_leaves_it_serving(
        tmp_path: Path) -> None:
    port = free_port()
    with Procs(tmp_path) as procs:
        start(procs, tmp_path, port)
        wrong = RegistrarSpec("127.0.0.1", port, public_key(generate_private_key()))
        with pytest.raises(RegistrarError, match="closed the connection"):
            run(wrong, SERVER, Register(time.time_ns(), 60, ("198.18.1.2:7000",)).encode())
        procs.procs[-1].wait_log(r"does not open with this registrar's key")
        for junk in (b"GET / HTTP/1.1\r\n\r\n", b"RRG1\x00\x00", b"RRG1\xff\xff" + b"x" * 100,
                     bytes(range(256))):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                assert s.recv(100) == b""
        spec = RegistrarSpec("127.0.0.1", port, public_key(REG))
        (answer,) = run(spec, SERVER, Register(time.time_ns(), 60, ("198.18.1.2:7000",)).encode())
        assert isinstance(answer, Registered)
        out = subprocess.run([sys.executable, "-m", "roam", "status", "--registrar",
                              "--control", str(tmp_path / "registrar.sock")],
                             capture_output=True, text=True, env=ENV, timeout=30, check=True)
        assert "1 unit(s) on record" in out.stdout
        assert "BAD_REQUEST" in out.stdout


def test_roam_lookup_prints_what_the_registrar_knows(tmp_path: Path) -> None:
    port = free_port()
    write_private_key(tmp_path / "client.key", CLIENT)
    spec = RegistrarSpec("127.0.0.1", port, public_key(REG))
    registrar = f"127.0.0.1:{port},key={encode_key(public_key(REG))}"
    with Procs(tmp_path) as procs:
        start(procs, tmp_path, port)
        run(spec, SERVER, Register(time.time_ns(), 600, ("198.18.1.2:7000",), (),
                                   frozenset({public_key(CLIENT)})).encode())
        argv = [sys.executable, "-m", "roam", "lookup", "--key", str(tmp_path / "client.key"),
                "--registrar", registrar]
        out = subprocess.run([*argv, encode_key(public_key(SERVER))], capture_output=True,
                             text=True, env=ENV, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0] == "198.18.1.2:7000"
        missing = subprocess.run([*argv, encode_key(public_key(STRANGER))],
                                 capture_output=True, text=True, env=ENV, timeout=30)
        assert missing.returncode == 2
        assert "no current address of" in missing.stderr


def test_a_client_named_only_by_key_finds_its_server_and_finds_it_again_after_it_moved(
        tmp_path: Path) -> None:
    from .harness import EchoResult, Keys, echo_conversation

    keys = Keys.make(tmp_path / "keys")
    port = free_port()
    registrar = f"127.0.0.1:{port},key={encode_key(public_key(REG))}"
    with Procs(tmp_path) as procs:
        start(procs, tmp_path, port)
        echo = procs.service("echo")

        def server(name: str) -> None:
            procs.start(name, [
                sys.executable, "-m", "roam", "server", "--listen", "127.0.0.1:0", "--key",
                str(keys.server_key), "--authorized-keys", str(keys.authorized),
                "--allow", f"127.0.0.1:{echo}", "--registrar", registrar], ready="listening")
            procs.procs[-1].wait_log(r"registered 127\.0\.0\.1:\d+ at registrar")

        server("server")
        client = procs.start("client", [
            sys.executable, "-m", "roam", "client", "--server-key", keys.server_pub,
            "--key", str(keys.client_key), "--registrar", registrar, "--no-udp",
            "--forward", f"127.0.0.1:0=127.0.0.1:{echo}"], ready="forward")
        fport = int(client.ready.split("=")[0].rsplit(":", 1)[1])
        first = EchoResult()
        echo_conversation(fport, 1 << 20, 41, first, deadline=60)
        assert first.error is None, first.error
        client.wait_log(r"the registrar has the server at 127\.0\.0\.1:\d+")
        # The server goes, and comes back elsewhere (another port): the
        # client's resume fails where it was, and the registrar says where.
        next(p for p in procs.procs if p.name == "server").popen.kill()
        server("server-moved")
        client.wait_log(r"the server moved: 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+", timeout=30)
        # A restarted server knows no session: the client starts a new one there.
        client.wait_log(r"new session with[\s\S]*new session with", timeout=30)
        after = EchoResult()
        echo_conversation(fport, 1 << 20, 42, after, deadline=60)
        assert after.error is None, after.error
        assert after.received == 1 << 20


def test_a_client_finds_its_server_by_sip_address_of_record_through_kamailio(
        tmp_path: Path) -> None:
    """The server registers its roam address at a real Kamailio as sip:server@roam.test;
    the client, with an account of its own, reads the contact; the server comes
    back on another port and the client finds it there."""
    import os

    from roam.lab.kamailio import Kamailio, find_kamailio
    from roam.lab.kamailio import free_port as sip_port
    from tests.conftest import require

    from .harness import EchoResult, Keys, echo_conversation

    require(find_kamailio() is not None, "kamailio is missing (scripts/setup-env installs it)")
    keys = Keys.make(tmp_path / "keys")
    for user in ("server", "laptop"):
        (tmp_path / f"{user}.pass").write_text(f"{user}-secret\n")
        os.chmod(tmp_path / f"{user}.pass", 0o600)
    port = sip_port()

    def registrar(user: str) -> str:
        return (f"sip:{user}@roam.test,via=127.0.0.1:{port},"
                f"password-file={tmp_path / (user + '.pass')}")

    with Kamailio(tmp_path / "kamailio", {"server": "server-secret", "laptop": "laptop-secret"},
                  port=port) as _sip, Procs(tmp_path) as procs:
        echo = procs.service("echo")

        def server(name: str) -> None:
            procs.start(name, [
                sys.executable, "-m", "roam", "server", "--listen", "127.0.0.1:0", "--key",
                str(keys.server_key), "--authorized-keys", str(keys.authorized),
                "--allow", f"127.0.0.1:{echo}", "--registrar", registrar("server")],
                ready="listening")

        server("server")
        client = procs.start("client", [
            sys.executable, "-m", "roam", "client", "--server", "sip:server@roam.test",
            "--server-key", keys.server_pub, "--key", str(keys.client_key),
            "--registrar", registrar("laptop"), "--no-udp",
            "--forward", f"127.0.0.1:0=127.0.0.1:{echo}"], ready="forward", timeout=40)
        fport = int(client.ready.split("=")[0].rsplit(":", 1)[1])
        first = EchoResult()
        echo_conversation(fport, 1 << 20, 43, first, deadline=60)
        assert first.error is None, first.error
        next(p for p in procs.procs if p.name == "server").popen.kill()
        server("server-moved")
        client.wait_log(r"the server moved: 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+", timeout=40)
        client.wait_log(r"new session with[\s\S]*new session with", timeout=30)
        after = EchoResult()
        echo_conversation(fport, 1 << 20, 44, after, deadline=60)
        assert after.error is None, after.error
        assert after.received == 1 << 20


@pytest.mark.root
def test_a_server_on_every_interface_registers_a_new_address_at_once(tmp_path: Path) -> None:
    """Without --path, a server listening on 0.0.0.0 sees its address change
    (here: in a namespace of its own, one interface renumbered) and
    registers the new one within seconds, not at half its expiry (300 s)."""
    require(os.geteuid() == 0, "network namespaces need root")
    ns = f"roamreg{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)

    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", ns, *args], check=True)

    try:
        ip("link", "set", "lo", "up")
        # A veth pair, both ends inside: this kernel has no dummy links.
        ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
        ip("link", "set", "d0", "up")
        ip("link", "set", "d1", "up")
        ip("addr", "add", "198.18.200.1/24", "dev", "d0")
        inside = ["ip", "netns", "exec", ns, sys.executable, "-m", "roam"]
        write_private_key(tmp_path / "server.key", SERVER)
        write_private_key(tmp_path / "client.key", CLIENT)
        write_private_key(tmp_path / "registrar.key", REG)
        (tmp_path / "authorized").write_text(f"{encode_key(public_key(CLIENT))} c\n")
        registrar = f"127.0.0.1:4440,key={encode_key(public_key(REG))}"
        lookup = [*inside, "lookup", encode_key(public_key(SERVER)), "--key",
                  str(tmp_path / "client.key"), "--registrar", registrar]

        def found() -> list[str]:
            out = subprocess.run(lookup, capture_output=True, text=True, env=ENV, timeout=30)
            return [ln for ln in out.stdout.splitlines() if ln.startswith("198.18.")]

        def wait_for(addresses: list[str], timeout: float) -> None:
            deadline = time.monotonic() + timeout
            last = found()
            while last != addresses:
                assert time.monotonic() < deadline, f"the registrar has {last}, not {addresses}"
                time.sleep(0.2)
                last = found()

        with Procs(tmp_path) as procs:
            procs.start("registrar", [*inside, "registrar", "--listen", "127.0.0.1:4440",
                                      "--key", str(tmp_path / "registrar.key"),
                                      "--control", str(tmp_path / "registrar.sock")],
                        ready="listening")
            procs.start("server", [*inside, "server", "--listen", "0.0.0.0:7000",
                                   "--key", str(tmp_path / "server.key"), "--authorized-keys",
                                   str(tmp_path / "authorized"), "--registrar", registrar,
                                   "--control", str(tmp_path / "server.sock")],
                        ready="listening")
            wait_for(["198.18.200.1:7000"], 30)
            # Another subnet: a second address in .1's would be its secondary,
            # which the kernel deletes with it.
            ip("addr", "add", "198.18.201.2/24", "dev", "d0")
            ip("addr", "del", "198.18.200.1/24", "dev", "d0")
            # The watch reads every 2 s; its registration is one round trip.
            wait_for(["198.18.201.2:7000"], 30)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
