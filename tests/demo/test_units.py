"""The demo's units: daemons ended by their own handles, the event log read as it grows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from roam.demo.units import EventLog, Units


def test_handovers_are_read_as_the_log_grows_and_a_half_written_line_waits(
        tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = EventLog(path)
    assert events.poll() == []
    hard = {"time": 1.0, "kind": "handover", "type": "hard", "from": "wifi", "to": "cell"}
    line = json.dumps(hard) + "\n"
    with path.open("w") as f:
        f.write(json.dumps({"time": 0.5, "kind": "path", "name": "cell"}) + "\n")
        f.write(line[:20])
    assert events.poll() == []
    with path.open("a") as f:
        f.write(line[20:])
    assert events.poll() == [hard]
    assert events.poll() == []
    assert events.handovers == [hard]


def test_a_daemon_that_does_not_start_says_why_and_is_ended(tmp_path: Path) -> None:
    async def main() -> None:
        units = Units(tmp_path)
        try:
            with pytest.raises(RuntimeError,
                               match=r"(?s)roam relay did not start.*--listen .nowhere."):
                await units.start("relay", ["--listen", "nowhere", "--key",
                                            units.key_file("relay")], "listening")
        finally:
            await units.close()
        assert all(d.proc.returncode is not None for d in units.daemons)

    asyncio.run(main())


def test_close_ends_a_running_daemon_and_the_networks(tmp_path: Path) -> None:
    async def main() -> None:
        units = Units(tmp_path)
        try:
            relay = await units.start("relay", ["--listen", "127.0.0.1:0", "--key",
                                                units.key_file("relay"), "--admit", "any"],
                                      "listening")
            network = await units.network("cell", 40.0, relay.ready[0])
            _, writer = await asyncio.open_connection(*network.emulator.address)
        finally:
            await units.close()
        assert relay.proc.returncode is not None
        assert network.emulator.statistics().connections_open == 0
        writer.close()

    asyncio.run(main())
