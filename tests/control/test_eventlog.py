"""The JSON-lines event log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roam.control.eventlog import EventLog
from roam.errors import ConfigError


def test_one_json_object_per_line(tmp_path: Path) -> None:
    log = EventLog(str(tmp_path / "events.jsonl"))
    log.write("handover", type="soft", reason="wifi preferred", stall_ms=12.5)
    log.write("path", name="cell", usable=False)
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in lines] == ["handover", "path"]
    assert lines[0]["stall_ms"] == 12.5
    assert all(isinstance(x["time"], float) for x in lines)


def test_no_path_logs_nothing() -> None:
    EventLog(None).write("handover")


def test_unwritable_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--event-log"):
        EventLog(str(tmp_path / "missing-dir" / "e.jsonl"))
