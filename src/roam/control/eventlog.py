"""The JSON-lines event log: one object per line, each with a time and a kind."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

from roam.errors import ConfigError


class EventLog:
    def __init__(self, path: str | None) -> None:
        self._file: IO[str] | None = None
        if path is not None:
            try:
                # Open for the daemon's lifetime; line-buffered so a crash loses no event.
                self._file = Path(path).open("a", encoding="utf-8", buffering=1)  # noqa: SIM115
            except OSError as exc:
                raise ConfigError(f"--event-log {path}: {exc.strerror or exc}") from None

    def write(self, kind: str, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"time": round(time.time(), 3), "kind": kind, **fields}
        self._file.write(json.dumps(record, default=str) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
