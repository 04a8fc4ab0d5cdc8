"""A real Kamailio as roam's SIP registrar, for tests and the lab (claim 19).

    with Kamailio(workdir, accounts={"alice": "secret"}, port=free_port()) as registrar:
        ...  # REGISTER to 127.0.0.1:registrar.port over UDP or TCP, domain roam.test

`start()` copies `scripts/kamailio/kamailio.cfg` into `workdir`, writes
`accounts.cfg` beside it (each user's HA1, never the password), and runs
Kamailio in the foreground as a child process of its own session, its log
in `workdir/kamailio.log`. It returns once an OPTIONS has been answered over
UDP and over TCP, so both listeners are serving; a Kamailio that exits
first, or does not answer in time, is reported with the end of its log.
`stop()` ends it by its process id.

`prefix` runs it (and the readiness probe) inside something, such as
`("ip", "netns", "exec", NAMESPACE)` for a lab namespace.

    python -m roam.lab.kamailio --port 5060 --account alice:secret [--accounts FILE]
        [--listen 127.0.0.1] [--domain roam.test] [--sha256] [--dir DIR]

runs one until SIGINT or SIGTERM (`scripts/kamailio/run` is this).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from roam.errors import RoamError
from roam.lab.child import ChildServer

__all__ = ["CONFIG", "Kamailio", "KamailioError", "find_kamailio", "free_port",
           "read_accounts"]

CONFIG = Path(__file__).resolve().parents[3] / "scripts" / "kamailio" / "kamailio.cfg"
ALGORITHMS = ("MD5", "SHA-256")
READY_TIMEOUT_S = 15.0
# Kamailio's shared and private memory, in MiB: a registrar for a few units
# needs little, and the machine is shared (its defaults are 64 and 8).
SHM_MB = 32
PKG_MB = 8
# What an account's user name and the domain may hold: they are written
# into the configuration as they are, so nothing that could end a string
# or a pseudo-variable name there.
_USER = re.compile(r"[A-Za-z0-9._~-]{1,64}")
_DOMAIN = re.compile(r"[A-Za-z0-9.-]{1,253}")
_PROBES = itertools.count(1)  # each probe its own Call-ID and branch


class KamailioError(RoamError):
    """Kamailio is missing, could not start, or did not become ready; the
    message says which, with the end of its log."""


def find_kamailio() -> str | None:
    """The kamailio binary (Debian puts it in /usr/sbin), or None."""
    found = shutil.which("kamailio")
    if found:
        return found
    return "/usr/sbin/kamailio" if os.access("/usr/sbin/kamailio", os.X_OK) else None


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` right now (Kamailio listens
    on both with one number)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise KamailioError(f"no port free for both UDP and TCP on {host}")


def read_accounts(path: Path) -> dict[str, str]:
    """`user:password` per line; blank lines and lines starting with # are skipped."""
    accounts: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError as exc:
        raise KamailioError(f"cannot read accounts file {path}: {exc.strerror}") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.strip().partition(":")
        if not sep or not password:
            raise KamailioError(f"{path} line {number}: expected user:password")
        accounts[user] = password
    return accounts


def ha1(user: str, realm: str, password: str, algorithm: str) -> str:
    """H(user:realm:password), what Kamailio checks a digest against (RFC
    7616 section 3.4.2), with the hash the registrar challenges with."""
    data = f"{user}:{realm}:{password}".encode()
    if algorithm == "SHA-256":
        return hashlib.sha256(data).hexdigest()
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def accounts_cfg(accounts: Mapping[str, str], domain: str, algorithm: str) -> str:
    """The `accounts.cfg` that kamailio.cfg includes: the users' HA1 put into
    its `users` table when the htable module starts."""
    lines = ["# Written by roam.lab.kamailio: user -> HA1 for the digest realm "
             f"{domain} ({algorithm}).", "event_route[htable:mod-init] {"]
    for user, password in sorted(accounts.items()):
        if not _USER.fullmatch(user):
            raise KamailioError(f"account user name {user!r}: use 1 to 64 of A-Z a-z 0-9 . _ ~ -")
        if not password:
            raise KamailioError(f"account {user!r} has an empty password")
        lines.append(f'\t$sht(users=>{user}) = "{ha1(user, domain, password, algorithm)}";')
    lines.append(f'\txlog("L_INFO", "roam: {len(accounts)} accounts for {domain}\\n");')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _options(host: str, port: int, transport: str, n: int) -> bytes:
    """An OPTIONS request (RFC 3261 section 11) for the readiness probe."""
    target = f"[{host}]" if ":" in host else host
    return (f"OPTIONS sip:{target}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {target}:9;rport"
            f";branch=z9hG4bKroamprobe{os.getpid()}x{n}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{target}>;tag=probe\r\n"
            f"To: <sip:{target}:{port}>\r\n"
            f"Call-ID: roam-probe-{os.getpid()}-{n}\r\n"
            f"CSeq: {n} OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def probe(host: str, port: int, transport: str, timeout_s: float = 0.2) -> bool:
    """True once Kamailio answers an OPTIONS with 200 over `transport`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if transport == "UDP" else socket.SOCK_STREAM
    request = _options(host, port, transport, next(_PROBES))
    try:
        with socket.socket(family, kind) as sock:
            sock.settimeout(timeout_s)
            sock.connect((host, port))
            sock.sendall(request)
            answer = b""
            while b"\r\n" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    return False
                answer += chunk
    except OSError:  # refused, reset or timed out: not ready yet
        return False
    return answer.startswith(b"SIP/2.0 200 ")


class Kamailio(ChildServer):
    """One Kamailio registrar process; see the module's docstring."""

    program = "kamailio"
    error = KamailioError

    def __init__(self, workdir: Path, accounts: Mapping[str, str], *, port: int,
                 host: str = "127.0.0.1", domain: str = "roam.test", algorithm: str = "MD5",
                 min_expires: int = 60, nonce_expire_s: int = 300, prefix: Sequence[str] = (),
                 binary: str | None = None, config: Path = CONFIG) -> None:
        if algorithm not in ALGORITHMS:
            raise KamailioError(f"digest algorithm {algorithm!r} is not one of "
                                f"{', '.join(ALGORITHMS)}")
        if not _DOMAIN.fullmatch(domain):
            raise KamailioError(f"domain {domain!r} is not a host name")
        if not 0 < port < 65536:
            raise KamailioError(f"port {port} is not 1 to 65535")
        if min_expires < 1 or nonce_expire_s < 1:
            raise KamailioError(f"min_expires {min_expires} and nonce_expire_s "
                                f"{nonce_expire_s} must be at least 1 s")
        super().__init__(Path(workdir) / "kamailio.log")
        self.workdir = Path(workdir)
        self.accounts = dict(accounts)
        self.host, self.port, self.domain = host, port, domain
        self.algorithm, self.min_expires = algorithm, min_expires
        self.nonce_expire_s = nonce_expire_s
        self.prefix = tuple(prefix)
        self.binary = binary
        self.config = config

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def argv(self) -> list[str]:
        binary = self.binary or find_kamailio()
        if binary is None:
            raise KamailioError("kamailio is not installed (Debian package kamailio)")
        listen = f"[{self.host}]" if ":" in self.host else self.host
        defines = [f'SIP_DOMAIN="{self.domain}"', f"MIN_EXPIRES={self.min_expires}",
                   f"NONCE_EXPIRE={self.nonce_expire_s}"]
        if self.algorithm == "SHA-256":
            defines.append("DIGEST_SHA256")
        argv = [*self.prefix, binary, "-f", str(self.workdir / "kamailio.cfg"),
                # -DD: the main process stays in the foreground, our child;
                # -E: log to stderr, which goes to the log file.
                "-DD", "-E",
                "-l", f"udp:{listen}:{self.port}", "-l", f"tcp:{listen}:{self.port}",
                "-Y", str(self.workdir), "-w", str(self.workdir),
                "-m", str(SHM_MB), "-M", str(PKG_MB)]
        for define in defines:
            argv += ["-A", define]
        return argv

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        if self._proc is not None:
            raise KamailioError(f"kamailio is already running (pid {self._proc.pid})")
        argv = self.argv()
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.config, self.workdir / "kamailio.cfg")
            (self.workdir / "accounts.cfg").write_text(
                accounts_cfg(self.accounts, self.domain, self.algorithm))
        except OSError as exc:
            raise KamailioError(f"cannot prepare {self.workdir}: {exc}") from None
        # A session of its own: Kamailio's main process signals its whole
        # process group when it shuts down, which must not be ours.
        self._spawn(argv, self.workdir, timeout_s, log_output=True)

    def _ready(self) -> bool:
        """An OPTIONS answered over UDP and over TCP: both listeners serve."""
        if not self.prefix:
            return probe(self.host, self.port, "UDP") and probe(self.host, self.port, "TCP")
        # Inside a namespace the probe must run there too.
        done = subprocess.run([*self.prefix, sys.executable, "-m", "roam.lab.kamailio",
                               "--probe", "--listen", self.host, "--port", str(self.port)],
                              capture_output=True, timeout=10, check=False)
        return done.returncode == 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m roam.lab.kamailio",
                                     description="Run Kamailio as roam's SIP registrar.")
    parser.add_argument("--listen", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5060)
    parser.add_argument("--domain", default="roam.test", help="AOR domain and digest realm")
    parser.add_argument("--account", action="append", default=[], metavar="USER:PASSWORD")
    parser.add_argument("--accounts", type=Path, metavar="FILE", help="user:password lines")
    parser.add_argument("--sha256", action="store_true", help="challenge with SHA-256")
    parser.add_argument("--min-expires", type=int, default=60)
    parser.add_argument("--dir", type=Path, help="run directory (default: a new one in /tmp)")
    parser.add_argument("--probe", action="store_true",
                        help="only check that a Kamailio answers there (exit 0 if so)")
    args = parser.parse_args(argv)
    if args.probe:
        ok = probe(args.listen, args.port, "UDP") and probe(args.listen, args.port, "TCP")
        return 0 if ok else 1
    try:
        accounts = read_accounts(args.accounts) if args.accounts else {}
        for item in args.account:
            user, sep, password = item.partition(":")
            if not sep:
                raise KamailioError(f"--account {item!r}: expected USER:PASSWORD")
            accounts[user] = password
        workdir = args.dir or Path(tempfile.mkdtemp(prefix="roam-kamailio-"))
        registrar = Kamailio(workdir, accounts, port=args.port, host=args.listen,
                             domain=args.domain, min_expires=args.min_expires,
                             algorithm="SHA-256" if args.sha256 else "MD5")
        registrar.start()
    except KamailioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"kamailio pid {registrar.pid} on udp+tcp {args.listen}:{args.port}, "
          f"{len(accounts)} accounts in {args.domain}, log {registrar.log_path}", flush=True)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            if not registrar.running:
                print(f"kamailio exited{registrar.log_tail()}", file=sys.stderr)
                return 1
            time.sleep(0.2)
    finally:
        registrar.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
