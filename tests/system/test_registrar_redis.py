"""Two registrar processes on one real Redis serve one set of registrations:
a real `roam server` registers at the first, `roam lookup` at the second
finds it. Redis stopped under them: lookups are refused as UNAVAILABLE and
the registrars keep running; Redis back: they serve again, each seeing what
the other took. A Redis unreachable at start ends the start, naming --db."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key
from roam.lab.redis import RedisServer, find_redis
from roam.lab.redis import free_port as redis_port
from roam.registrar.messages import Code, Found, Lookup, Refused, Register, Registered
from roam.registrar.unit import RegistrarSpec, ask
from tests.conftest import require

from .harness import ENV, Keys, Procs
from .test_relay import free_port

UNIT = generate_private_key()


def registrar(procs: Procs, tmp: Path, name: str, db: str) -> tuple[RegistrarSpec, str]:
    """Start one registrar with a key of its own: its spec and --registrar text."""
    key, port = generate_private_key(), free_port()
    write_private_key(tmp / f"{name}.key", key)
    procs.start(name, [sys.executable, "-m", "roam", "registrar", "--listen",
                       f"127.0.0.1:{port}", "--key", str(tmp / f"{name}.key"), "--db", db,
                       "--control", str(tmp / f"{name}.sock")], ready="listening")
    return (RegistrarSpec("127.0.0.1", port, public_key(key)),
            f"127.0.0.1:{port},key={encode_key(public_key(key))}")


def roam_lookup(keys: Keys, target: str, at: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roam", "lookup", target, "--key",
                           str(keys.client_key), "--registrar", at],
                          capture_output=True, text=True, env=ENV, timeout=30)


def test_two_registrars_on_one_redis_serve_one_set_of_registrations_and_outlive_it(
        tmp_path: Path) -> None:
    require(find_redis() is not None, "redis-server is missing (scripts/setup-env installs it)")
    keys = Keys.make(tmp_path / "keys")
    redis = RedisServer(tmp_path / "redis", port=redis_port())
    with redis, Procs(tmp_path) as procs:
        spec_a, at_a = registrar(procs, tmp_path, "registrar-a", redis.url)
        spec_b, at_b = registrar(procs, tmp_path, "registrar-b", redis.url)
        echo = procs.service("echo")
        server = procs.start("server", [
            sys.executable, "-m", "roam", "server", "--listen", "127.0.0.1:0", "--key",
            str(keys.server_key), "--authorized-keys", str(keys.authorized),
            "--allow", f"127.0.0.1:{echo}", "--registrar", at_a], ready="listening")
        listening = server.ready.split()[1]
        server.wait_log(r"registered 127\.0\.0\.1:\d+ at registrar")

        found = roam_lookup(keys, keys.server_pub, at_b)
        assert found.returncode == 0, found.stderr
        assert found.stdout.splitlines()[0] == listening

        # Redis goes: the registrars refuse (the unit would ask its next
        # registrar) and keep running.
        redis.stop()
        refused = roam_lookup(keys, keys.server_pub, at_b)
        assert refused.returncode == 2
        assert "cannot reach its records" in refused.stderr
        procs.procs[1].wait_log(r"refusing requests until its store answers: Redis at "
                                rf"{redis.url}")
        (unavailable,) = asyncio.run(ask(spec_a, UNIT, [Register(
            time.time_ns(), 600, ("198.18.1.2:7000",)).encode()]))
        assert isinstance(unavailable, Refused)
        assert unavailable.code is Code.UNAVAILABLE
        assert all(p.popen.poll() is None for p in procs.procs)

        # Redis is back (empty: no persistence): both serve again, each
        # seeing what the other took.
        redis.start()
        registration = Register(time.time_ns(), 600, ("198.18.1.2:7000",), (),
                                frozenset({public_key(UNIT)}))
        (registered,) = asyncio.run(ask(spec_b, UNIT, [registration.encode()]))
        assert isinstance(registered, Registered)
        (seen,) = asyncio.run(ask(spec_a, UNIT, [Lookup(public_key(UNIT)).encode()]))
        assert isinstance(seen, Found)
        assert seen.addresses == ("198.18.1.2:7000",)
        # The same registration at the other registrar is a replay there too.
        (replayed,) = asyncio.run(ask(spec_a, UNIT, [registration.encode()]))
        assert isinstance(replayed, Refused)
        assert replayed.code is Code.REPLAYED
        procs.procs[1].wait_log(r"its store redis://\S+ answers again")


def test_a_redis_unreachable_at_start_ends_the_start_naming_db(tmp_path: Path) -> None:
    write_private_key(tmp_path / "registrar.key", generate_private_key())
    url = f"redis://127.0.0.1:{redis_port()}/0"  # nothing listens there
    out = subprocess.run([sys.executable, "-m", "roam", "registrar", "--listen",
                          f"127.0.0.1:{free_port()}", "--key", str(tmp_path / "registrar.key"),
                          "--db", url], capture_output=True, text=True, env=ENV, timeout=30)
    assert out.returncode != 0
    assert f"--db {url}: cannot reach Redis" in out.stderr
    assert "listening" not in out.stdout
