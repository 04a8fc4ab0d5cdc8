from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key

ROAM = [sys.executable, "-m", "roam"]
QUICK = 10.0  # a command that fails on its input must say so within this many seconds
LISTENING = re.compile(r"^listening 127\.0\.0\.1:(\d+)$")


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str
    elapsed: float


def run_roam(cwd: Path, *args: str, code: int, out: Sequence[str] = (),
             err: Sequence[str] = (), timeout: float = QUICK,
             env: Mapping[str, str] | None = None) -> Result:
    """Run `roam ARGS` to completion; check its exit code and output fragments."""
    start = time.monotonic()
    proc = subprocess.Popen([*ROAM, *args], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"roam {' '.join(args)} still running after {timeout} s\n"
                    f"stdout: {stdout}\nstderr: {stderr}")
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    result = Result(proc.returncode, stdout, stderr, time.monotonic() - start)
    shown = f"roam {' '.join(args)}\nstdout: {stdout}\nstderr: {stderr}"
    assert result.code == code, shown
    for fragment in out:
        assert fragment in stdout, shown
    for fragment in err:
        assert fragment in stderr, shown
    return result


class Daemon:
    """A long-running `roam` process whose stdout is read line by line."""

    def __init__(self, cwd: Path, args: Sequence[str],
                 env: Mapping[str, str] | None = None) -> None:
        self.args = list(args)
        self.proc = subprocess.Popen([*ROAM, *args], cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def next_line(self, timeout: float = QUICK) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"roam {' '.join(self.args)}: no output within {timeout} s\n"
                        f"stderr: {self.stderr}")
        if line is None:
            self.proc.wait(timeout=QUICK)
            pytest.fail(f"roam {' '.join(self.args)} exited {self.proc.returncode} "
                        f"before printing a line\nstderr: {self.stderr}")
        return line

    def wait_listening(self) -> int:
        line = self.next_line()
        match = LISTENING.match(line)
        assert match, f"unexpected first line {line!r}\nstderr: {self.stderr}"
        return int(match.group(1))

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Send `sig`; return the exit code, failing if it takes longer than `timeout`."""
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"roam {' '.join(self.args)} still running {timeout} s after "
                        f"{sig.name}\nstderr: {self.stderr}")
        for reader in self._readers:
            reader.join(timeout=QUICK)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=QUICK)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(*args: str, env: Mapping[str, str] | None = None) -> Daemon:
        daemon = Daemon(tmp_path, args, env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@dataclass(frozen=True)
class Keys:
    server_key: str
    server_pub: str
    client_key: str
    client_pub: str
    authorized: str


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    server, client = generate_private_key(), generate_private_key()
    write_private_key(tmp_path / "server.key", server)
    write_private_key(tmp_path / "client.key", client)
    client_pub = encode_key(public_key(client))
    (tmp_path / "authorized").write_text(f"# clients\n{client_pub} laptop\n")
    return Keys("server.key", encode_key(public_key(server)), "client.key", client_pub,
                "authorized")


def server_args(keys: Keys, *extra: str, listen: str = "127.0.0.1:0") -> list[str]:
    return ["server", "--listen", listen, "--key", keys.server_key,
            "--authorized-keys", keys.authorized, *extra]


def client_args(keys: Keys, *extra: str) -> list[str]:
    return ["client", "--server", "127.0.0.1:9", "--server-key", keys.server_pub,
            "--key", keys.client_key, *extra]


def write_toml(path: Path, settings: dict[str, str | list[str]]) -> str:
    def value(v: str | list[str]) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(f'"{s}"' for s in v) + "]"
        return f'"{v}"'

    path.write_text("".join(f"{k} = {value(v)}\n" for k, v in settings.items()))
    return path.name


# Help


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ([], ["keygen", "pubkey", "server", "client", "--help", "--version"]),
        (["server"], ["--listen", "--key", "--authorized-keys", "--allow", "--config",
                      "--compress"]),
        (["client"], ["--server", "--server-key", "--key", "--forward", "--config",
                      "--compress"]),
    ],
)
def test_help(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    run_roam(tmp_path, *args, "--help", code=0, out=["Usage:", *fragments])


# keygen / pubkey


def test_keygen_and_pubkey(tmp_path: Path) -> None:
    made = run_roam(tmp_path, "keygen", "id.key", code=0)
    lines = made.stdout.splitlines()
    assert len(lines) == 1, made.stdout
    pub = lines[0]
    assert len(pub) == 44
    assert len(base64.b64decode(pub, validate=True)) == 32

    path = tmp_path / "id.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = path.read_text()
    assert pub not in stored

    shown = run_roam(tmp_path, "pubkey", "id.key", code=0)
    assert shown.stdout == pub + "\n"


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    run_roam(tmp_path, "keygen", "id.key", code=0)
    before = (tmp_path / "id.key").read_bytes()
    again = run_roam(tmp_path, "keygen", "id.key", code=1,
                     err=["id.key exists; refusing to overwrite"])
    assert again.stdout == ""
    assert (tmp_path / "id.key").read_bytes() == before


def test_keygen_makes_missing_directories(tmp_path: Path) -> None:
    run_roam(tmp_path, "keygen", "nowhere/id.key", code=0)
    assert stat.S_IMODE((tmp_path / "nowhere").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "nowhere" / "id.key").stat().st_mode) == 0o600


def test_keygen_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    run_roam(tmp_path, "keygen", "file/id.key", code=1,
             err=["cannot create file/id.key: Not a directory"])


def test_pubkey_missing_file(tmp_path: Path) -> None:
    run_roam(tmp_path, "pubkey", "absent.key", code=1,
             err=["private key file absent.key does not exist"])


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("this is not a key\n", "private key in bad.key is not valid base64"),
        (base64.b64encode(bytes(16)).decode() + "\n",
         "private key in bad.key decodes to 16 bytes, expected 32"),
        ("", "private key file bad.key must hold exactly one line, found 0"),
        ("AAAA\nBBBB\n", "private key file bad.key must hold exactly one line, found 2"),
    ],
)
def test_pubkey_malformed_file(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(content)
    path.chmod(0o600)
    run_roam(tmp_path, "pubkey", "bad.key", code=1, err=[problem])


def test_pubkey_refuses_open_permissions(tmp_path: Path) -> None:
    write_private_key(tmp_path / "open.key", generate_private_key())
    (tmp_path / "open.key").chmod(0o644)
    run_roam(tmp_path, "pubkey", "open.key", code=1,
             err=["permissions 0644 for open.key are too open; run chmod 600 open.key"])


# Usage errors


@pytest.mark.parametrize("command", ["server", "client"])
def test_unknown_flag(tmp_path: Path, command: str) -> None:
    run_roam(tmp_path, command, "--bogus", code=2, err=["No such option '--bogus'"])


def test_server_missing_required_flag(tmp_path: Path, keys: Keys) -> None:
    # --listen is not needed when uplinks to relays carry the clients; one of the two is.
    run_roam(tmp_path, "server", "--key", keys.server_key, "--authorized-keys",
             keys.authorized, code=1, err=["give --listen HOST:PORT, or --uplink to relays"])
    run_roam(tmp_path, "server", "--listen", "127.0.0.1:0", "--key", keys.server_key,
             code=2, err=["Missing option '--authorized-keys'"])


def test_client_missing_required_flag(tmp_path: Path, keys: Keys) -> None:
    run_roam(tmp_path, "client", "--server", "127.0.0.1:9", "--key", keys.client_key,
             code=1, err=["--server '127.0.0.1:9': no key: give key=PUBLIC_KEY", "--server-key"])
    run_roam(tmp_path, "client", "--server-key", keys.server_pub, "--key", keys.client_key,
             code=1, err=["--server is needed", "or --server-key with --registrar"])


def test_client_forward_to_a_server_it_does_not_know(tmp_path: Path, keys: Keys) -> None:
    run_roam(tmp_path, "client", "--server", f"office=127.0.0.1:9,key={keys.server_pub}",
             "--server", f"lab=127.0.0.1:10,key={keys.server_pub}", "--key", keys.client_key,
             "--forward", "127.0.0.1:0=home/127.0.0.1:22", code=1,
             err=["--forward 127.0.0.1:0=home/127.0.0.1:22: no server named 'home'; "
                  "the servers are office, lab"])
    run_roam(tmp_path, "client", "--server", "127.0.0.1:9", "--server", "127.0.0.1:10",
             "--server-key", keys.server_pub, "--key", keys.client_key, code=1,
             err=["give each of several servers a name"])


# Server input errors: exit 1 quickly with `roam server: error: ...`


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"--key": "absent.key"}, "private key file absent.key does not exist"),
        ({"--key": "authorized"}, "permissions 0644 for authorized are too open"),
        ({"--authorized-keys": "absent"}, "authorized keys file absent does not exist"),
        ({"--authorized-keys": "bad-authorized"}, "bad-authorized line 3: key is not valid base64"),
        ({"--authorized-keys": "dup-authorized"},
         "dup-authorized line 2: duplicate key (already on line 1)"),
        ({"--listen": "127.0.0.1"}, "--listen '127.0.0.1': expected HOST:PORT"),
        ({"--listen": "127.0.0.1:"}, "--listen '127.0.0.1:': port '' is not a number"),
        ({"--listen": "127.0.0.1:70000"}, "port '70000' is not a number from 1 to 65535"),
        ({"--listen": "::1:0"}, "put an IPv6 address in brackets"),
        ({"--allow": "nonsense"}, "--allow 'nonsense': expected HOST:PORT"),
        ({"--allow": "example.com:http"}, "port 'http' is not a number"),
        ({"--allow": "a*.com:80"}, "a wildcard may only lead a name"),
        ({"--allow": "10.0.0.0/40:80"}, "'10.0.0.0/40' is not a valid CIDR network"),
    ],
)
def test_server_bad_input(tmp_path: Path, keys: Keys, change: dict[str, str],
                          problem: str) -> None:
    (tmp_path / "bad-authorized").write_text(f"# clients\n{keys.client_pub} laptop\nnotakey\n")
    (tmp_path / "dup-authorized").write_text(f"{keys.client_pub} a\n{keys.client_pub} b\n")
    (tmp_path / "authorized").chmod(0o644)
    settings = {"--listen": "127.0.0.1:0", "--key": keys.server_key,
                "--authorized-keys": keys.authorized, "--allow": "*:80"} | change
    args = [part for flag, value in settings.items() for part in (flag, value)]
    result = run_roam(tmp_path, "server", *args, code=1,
                      err=["roam server: error: ", problem])
    assert result.stdout == ""
    assert result.elapsed < QUICK


def test_server_listen_address_in_use(tmp_path: Path, keys: Keys) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        run_roam(tmp_path, *server_args(keys, listen=f"127.0.0.1:{port}"), code=1,
                 err=[f"roam server: error: --listen '127.0.0.1:{port}': "])


# Client input errors


@pytest.mark.parametrize(
    ("server_key", "problem"),
    [
        ("not base64!", "--server-key: public key is not valid base64"),
        (base64.b64encode(bytes(16)).decode(),
         "--server-key: public key decodes to 16 bytes, expected 32"),
        ("AAAA", "--server-key: public key decodes to 3 bytes, expected 32"),
    ],
)
def test_client_bad_server_key(tmp_path: Path, keys: Keys, server_key: str,
                               problem: str) -> None:
    result = run_roam(tmp_path, "client", "--server", "127.0.0.1:9", "--server-key", server_key,
                      "--key", keys.client_key, code=1, err=["roam client: error: ", problem])
    assert result.elapsed < QUICK


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("127.0.0.1:8080", "--forward '127.0.0.1:8080': expected LHOST:LPORT=RHOST:RPORT"),
        ("127.0.0.1=example.com:80", "--forward listen address '127.0.0.1': expected HOST:PORT"),
        ("127.0.0.1:0=example.com", "--forward destination 'example.com': expected HOST:PORT"),
        ("127.0.0.1:0=example.com:0", "port '0' is not a number from 1 to 65535"),
    ],
)
def test_client_bad_forward(tmp_path: Path, keys: Keys, spec: str, problem: str) -> None:
    result = run_roam(tmp_path, *client_args(keys, "--forward", spec), code=1,
                      err=["roam client: error: ", problem])
    assert result.elapsed < QUICK


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        ("127.0.0.1", "--server '127.0.0.1': expected HOST:PORT"),
        ("127.0.0.1:http", "port 'http' is not a number"),
    ],
)
def test_client_bad_server_address(tmp_path: Path, keys: Keys, server: str,
                                   problem: str) -> None:
    run_roam(tmp_path, "client", "--server", server, "--server-key", keys.server_pub,
             "--key", keys.client_key, code=1, err=["roam client: error: ", problem])


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (("--socks-auth", "alice:pw.txt"), "--socks-auth needs --socks HOST:PORT"),
        (("--socks", "127.0.0.1:0", "--socks-auth", "alice"),
         "--socks-auth 'alice': expected USER:PASSFILE"),
        (("--socks", "127.0.0.1:0", "--socks-auth", "alice:absent.txt"),
         "password file absent.txt does not exist"),
        (("--socks", "127.0.0.1"), "--socks '127.0.0.1': expected HOST:PORT"),
        (("--dns-intercept", "*.corp"), "--dns-intercept need --dns HOST:PORT"),
        (("--reverse", "127.0.0.1:8080"),
         "--reverse '127.0.0.1:8080': expected RHOST:RPORT=LHOST:LPORT"),
        (("--reverse", "udp:127.0.0.1:53=127.0.0.1:53"), "a TCP port to listen on"),
        (("--dns", "127.0.0.1:0", "--dns-pool", "10.0.0.0/8"), "is not inside the loopback"),
        (("--dns", "127.0.0.1:0", "--dns-ports", "80,x"), "port 'x' is not a number"),
        (("--dns", "127.0.0.1:0", "--dns-intercept", "bad pattern!"), "bad pattern!"),
    ],
)
def test_client_bad_interface_flags(tmp_path: Path, keys: Keys, flags: tuple[str, ...],
                                problem: str) -> None:
    run_roam(tmp_path, *client_args(keys, *flags), code=1,
             err=["roam client: error: ", problem])


@pytest.mark.parametrize("role", ["server", "client"])
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("zstd:0", "'zstd:0': LEVEL must be a whole number from 1 to 19"),
        ("zstd:22", "'zstd:22': LEVEL must be a whole number from 1 to 19"),
        ("zstd:fast", "'zstd:fast': LEVEL must be a whole number from 1 to 19"),
        ("gzip", "'gzip': expected auto, off, zstd or zstd:LEVEL"),
    ],
)
def test_bad_compress(tmp_path: Path, keys: Keys, role: str, value: str, problem: str) -> None:
    args = (server_args if role == "server" else client_args)(keys, "--compress", value)
    result = run_roam(tmp_path, *args, code=2, err=["Invalid value for '--compress'", problem])
    assert result.stdout == ""


def test_client_missing_key_file(tmp_path: Path, keys: Keys) -> None:
    run_roam(tmp_path, "client", "--server", "127.0.0.1:9", "--server-key", keys.server_pub,
             "--key", "absent.key", code=1,
             err=["roam client: error: private key file absent.key does not exist"])


# Running server and signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_server_stops_on_signal(keys: Keys, start_daemon: Callable[..., Daemon],
                                sig: signal.Signals) -> None:
    daemon = start_daemon(*server_args(keys, "--allow", "127.0.0.1:*"))
    port = daemon.wait_listening()
    with socket.create_connection(("127.0.0.1", port), timeout=QUICK):
        pass
    start = time.monotonic()
    assert daemon.stop(sig, timeout=5.0) == 0, daemon.stderr
    assert time.monotonic() - start < 5.0
    assert "Traceback" not in daemon.stderr


def test_server_warns_without_allow_rules(keys: Keys,
                                          start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(*server_args(keys))
    daemon.wait_listening()
    assert daemon.stop() == 0
    assert "no --allow rule: every destination will be refused" in daemon.stderr


# --config


def test_server_from_config_file(tmp_path: Path, keys: Keys,
                                 start_daemon: Callable[..., Daemon]) -> None:
    config = write_toml(tmp_path / "server.toml", {
        "listen": "127.0.0.1:0",
        "key": keys.server_key,
        "authorized-keys": keys.authorized,
        "allow": ["127.0.0.1:*", "*.example.com:443"],
        "log_level": "warning",
    })
    daemon = start_daemon("server", "--config", config)
    port = daemon.wait_listening()
    assert 0 < port < 65536
    with socket.create_connection(("127.0.0.1", port), timeout=QUICK):
        pass
    assert daemon.stop(signal.SIGTERM, timeout=5.0) == 0, daemon.stderr
    assert "no --allow rule" not in daemon.stderr


def test_config_single_string_for_repeatable(tmp_path: Path, keys: Keys,
                                             start_daemon: Callable[..., Daemon]) -> None:
    config = write_toml(tmp_path / "server.toml", {
        "listen": "127.0.0.1:0", "key": keys.server_key,
        "authorized_keys": keys.authorized, "allow": "127.0.0.1:*",
    })
    daemon = start_daemon("server", "--config", config)
    daemon.wait_listening()
    assert daemon.stop() == 0
    assert "no --allow rule" not in daemon.stderr


def test_config_unknown_key(tmp_path: Path, keys: Keys) -> None:
    config = write_toml(tmp_path / "server.toml", {
        "listen": "127.0.0.1:0", "key": keys.server_key,
        "authorized-keys": keys.authorized, "alow": "*:80",
    })
    run_roam(tmp_path, "server", "--config", config, code=2,
             err=["Invalid value for '--config'", "unknown setting 'alow'", "allow"])


def test_config_missing_file(tmp_path: Path) -> None:
    run_roam(tmp_path, "server", "--config", "absent.toml", code=2,
             err=["config file absent.toml does not exist"])


def test_config_invalid_toml(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text('listen = "127.0.0.1:0"\nkey = \n')
    run_roam(tmp_path, "server", "--config", "broken.toml", code=2,
             err=["config file broken.toml is not valid TOML", "line 2, column 7"])


def test_config_bad_value_reaches_the_daemon_check(tmp_path: Path, keys: Keys) -> None:
    config = write_toml(tmp_path / "server.toml", {
        "listen": "127.0.0.1:0", "key": keys.server_key,
        "authorized-keys": keys.authorized, "allow": ["*:80", "nonsense"],
    })
    run_roam(tmp_path, "server", "--config", config, code=1,
             err=["roam server: error: --allow 'nonsense': expected HOST:PORT"])


def test_flag_overrides_config(tmp_path: Path, keys: Keys,
                               start_daemon: Callable[..., Daemon]) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        config = write_toml(tmp_path / "server.toml", {
            "listen": f"127.0.0.1:{taken}", "key": keys.server_key,
            "authorized-keys": keys.authorized, "allow": "*:80",
        })
        run_roam(tmp_path, "server", "--config", config, code=1,
                 err=[f"--listen '127.0.0.1:{taken}': "])
        for args in (["--config", config, "--listen", "127.0.0.1:0"],
                     ["--listen", "127.0.0.1:0", "--config", config]):
            daemon = start_daemon("server", *args)
            port = daemon.wait_listening()
            assert port != taken
            assert daemon.stop() == 0


def test_flag_overrides_config_list(tmp_path: Path, keys: Keys) -> None:
    config = write_toml(tmp_path / "server.toml", {
        "listen": "127.0.0.1:0", "key": keys.server_key,
        "authorized-keys": keys.authorized, "allow": ["*:80"],
    })
    run_roam(tmp_path, "server", "--config", config, "--allow", "bad-rule", code=1,
             err=["--allow 'bad-rule': expected HOST:PORT"])


def test_client_config_file(tmp_path: Path, keys: Keys) -> None:
    config = write_toml(tmp_path / "client.toml", {
        "server-key": keys.server_pub, "key": keys.client_key,
        "forward": "127.0.0.1:0",
    })
    run_roam(tmp_path, "client", "--config", config, "--server", "127.0.0.1:9", code=1,
             err=["--forward '127.0.0.1:0': expected LHOST:LPORT=RHOST:RPORT"])



# Paths as README.md types them. The shell expands `~` in `--key ~/x`, but not
# in `alice:~/x`, `--key=~/x` or a --config file; these tests pass `~` through
# unexpanded everywhere, with HOME a directory of the test's own.


@dataclass(frozen=True)
class Home:
    dir: Path
    env: dict[str, str]
    server_pub: str


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """HOME with ~/.roam as the README's commands make it, and SOCKS credentials."""
    home = tmp_path / "home"
    (home / ".roam").mkdir(parents=True, mode=0o700)
    server, client = generate_private_key(), generate_private_key()
    write_private_key(home / ".roam" / "server.key", server)
    write_private_key(home / ".roam" / "client.key", client)
    (home / ".roam" / "clients").write_text(encode_key(public_key(client)) + "\n")
    (home / ".roam" / "socks.pass").write_text("s3cret\n")
    return Home(home, {**os.environ, "HOME": str(home)}, encode_key(public_key(server)))


def test_keygen_expands_tilde_and_makes_the_directory(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    made = run_roam(tmp_path, "keygen", "~/.roam/client.key", code=0, env=env)
    key = home / ".roam" / "client.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert not (tmp_path / "~").exists()
    run_roam(tmp_path, "pubkey", "~/.roam/client.key", code=0, out=[made.stdout], env=env)


def _socks_login(port: int, user: bytes, password: bytes) -> bytes:
    """RFC 1929 username/password negotiation; the server's status reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=QUICK) as sock:
        sock.sendall(b"\x05\x01\x02")
        assert sock.recv(2) == b"\x05\x02"
        sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        return sock.recv(2)


def _check_running(tmp_path: Path, home: Home, client: Daemon) -> None:
    line = client.next_line()
    assert line.startswith("socks 127.0.0.1:"), f"{line}\nstderr: {client.stderr}"
    port = int(line.rsplit(":", 1)[1])
    assert _socks_login(port, b"alice", b"s3cret") == b"\x01\x00"  # the file's password
    assert _socks_login(port, b"alice", b"wrong") == b"\x01\x01"
    assert (home.dir / ".roam" / "events.jsonl").exists()
    for args in (["status", "--json", "--control", "~/.roam/client.sock"],
                 ["status", "--server", "--json", "--control", "~/.roam/server.sock"]):
        run_roam(tmp_path, *args, code=0, env=home.env)
    assert (home.dir / ".roam" / "client.sock").is_socket()
    assert (home.dir / ".roam" / "server.sock").is_socket()


def test_tilde_paths_on_the_command_line(tmp_path: Path, home: Home,
                                        start_daemon: Callable[..., Daemon]) -> None:
    server = start_daemon("server", "--listen", "127.0.0.1:0", "--key", "~/.roam/server.key",
                          "--authorized-keys=~/.roam/clients",
                          "--control", "~/.roam/server.sock", env=home.env)
    port = server.wait_listening()
    client = start_daemon("client", "--server", f"127.0.0.1:{port}", "--server-key",
                          home.server_pub, "--key=~/.roam/client.key",
                          "--socks", "127.0.0.1:0", "--socks-auth", "alice:~/.roam/socks.pass",
                          "--event-log", "~/.roam/events.jsonl",
                          "--control", "~/.roam/client.sock", env=home.env)
    _check_running(tmp_path, home, client)
    assert client.stop() == 0, client.stderr
    assert server.stop() == 0, server.stderr


def test_tilde_paths_in_config_files(tmp_path: Path, home: Home,
                                     start_daemon: Callable[..., Daemon]) -> None:
    write_toml(home.dir / ".roam" / "server.toml", {
        "listen": "127.0.0.1:0", "key": "~/.roam/server.key",
        "authorized-keys": "~/.roam/clients", "control": "~/.roam/server.sock",
    })
    # The server's file named in full, so that only the paths inside it need expanding.
    server = start_daemon("server", "--config", str(home.dir / ".roam" / "server.toml"),
                          env=home.env)
    port = server.wait_listening()
    write_toml(home.dir / ".roam" / "client.toml", {
        "server": f"127.0.0.1:{port}", "server-key": home.server_pub,
        "key": "~/.roam/client.key", "socks": "127.0.0.1:0",
        "socks-auth": "alice:~/.roam/socks.pass", "event-log": "~/.roam/events.jsonl",
        "control": "~/.roam/client.sock",
    })
    client = start_daemon("client", "--config", "~/.roam/client.toml", env=home.env)
    _check_running(tmp_path, home, client)
    assert client.stop() == 0, client.stderr
    assert server.stop() == 0, server.stderr


# Link drivers: each one README.md documents starts under the default event
# loop (uvloop, where pyroute2 cannot open its netlink sockets).


@pytest.mark.parametrize("links", ["static", "linux", "emulated"])
def test_client_starts_with_each_link_driver(tmp_path: Path, keys: Keys,
                                             start_daemon: Callable[..., Daemon],
                                             links: str) -> None:
    server = start_daemon(*server_args(keys, "--allow", "127.0.0.1:*",
                                       "--control", "server.sock"))
    port = server.wait_listening()
    client = start_daemon("client", "--server", f"127.0.0.1:{port}", "--server-key",
                          keys.server_pub, "--key", keys.client_key,
                          "--forward", "127.0.0.1:0=127.0.0.1:9",
                          "--links", links, "--path", "a:dev=lo", "--control", "client.sock")
    line = client.next_line()
    assert line.startswith("forward 127.0.0.1:"), f"{line}\nstderr: {client.stderr}"
    status = json.loads(run_roam(tmp_path, "status", "--json", "--control", "client.sock",
                                 code=0).stdout)
    assert status["links"] == links
    assert status["active_path"] == "a"
    (path,) = status["paths"]
    assert path["present"], path
    assert path["up"], path
    if links != "emulated":  # emulated links have the addresses `roam link` gives them
        assert "127.0.0.1" in path["addresses"], path
    assert client.stop() == 0, client.stderr
    assert "Traceback" not in client.stderr
    assert server.stop() == 0, server.stderr


def test_every_commands_help_ends_with_an_example() -> None:
    from click.testing import CliRunner

    from roam.cli import EXAMPLES, main

    assert set(main.commands) == set(EXAMPLES)
    runner = CliRunner()
    for name in main.commands:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Example:\n" in result.output, name
        assert f"roam {name}" in result.output.split("Example:")[1], name


def test_bash_completes_a_command_and_its_options(tmp_path: Path) -> None:
    """The script `roam completion bash` prints, loaded in a real bash,
    completes `roam sw` to switch and lists switch's options."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is missing")
    script = run_roam(tmp_path, "completion", "bash", code=0).stdout
    assert "_roam_completion" in script
    shim = tmp_path / "roam"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m roam \"$@\"\n")
    shim.chmod(0o755)
    probe = tmp_path / "probe.sh"
    probe.write_text(script + "\n"
                     "COMP_WORDS=(roam sw); COMP_CWORD=1; _roam_completion roam sw roam; "
                     "echo \"words: ${COMPREPLY[*]}\"\n"
                     "COMP_WORDS=(roam switch --); COMP_CWORD=2; _roam_completion roam -- switch; "
                     "echo \"options: ${COMPREPLY[*]}\"\n")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([bash, str(probe)], capture_output=True, text=True, env=env,
                         timeout=60, check=True).stdout
    assert "words: switch" in out, out
    options = out.split("options: ")[1].split()
    assert {"--control", "--server", "--help"} <= set(options), out


def test_completion_refuses_an_unknown_shell(tmp_path: Path) -> None:
    run_roam(tmp_path, "completion", "tcsh", code=2, err=["'tcsh' is not one of"])
