"""The client daemon's own parts: a session per server, the first to stop ends it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from roam.client_daemon import ServerSession, _first_to_stop, run_client
from roam.control.eventlog import EventLog
from roam.core.session import SessionConfig
from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key
from roam.errors import ConfigError
from roam.servers import parse_servers
from roam.transport.client import Client, ClientConfig

PRIVATE = generate_private_key()
SERVER = encode_key(public_key(generate_private_key()))


def _sessions(*names: str) -> list[ServerSession]:
    specs = parse_servers([f"{n}=127.0.0.1:{9 + i},key={SERVER}" for i, n in enumerate(names)],
                          None)
    return [ServerSession(s, Client(ClientConfig(s.host, s.port, s.key, PRIVATE,
                                                 SessionConfig())), EventLog(None))
            for s in specs]


def test_the_session_that_stops_first_is_named() -> None:
    office, lab = _sessions("office", "lab")

    async def main() -> str:
        asyncio.get_running_loop().call_later(0.01, lab.client.stopped.set)
        return await _first_to_stop([office, lab])

    assert asyncio.run(main()) == "lab"


def test_a_session_without_paths_reports_its_server() -> None:
    (office,) = _sessions("office")
    status = office.status()
    assert (status["server"], status["address"], status["session"], status["paths"]) == (
        "office", "127.0.0.1:9", None, [])


def test_a_forward_naming_no_such_server_stops_the_daemon_before_it_starts(
        tmp_path: Path) -> None:
    write_private_key(tmp_path / "c.key", PRIVATE)
    with pytest.raises(ConfigError, match="no server named 'lab'; the servers are office"):
        asyncio.run(run_client([f"office=127.0.0.1:9,key={SERVER}"], None,
                               str(tmp_path / "c.key"), ["127.0.0.1:0=lab/127.0.0.1:22"],
                               "auto"))
