"""Log lines that a peer can cause, at a rate the operator can read.

Every refusal of a stranger's transport used to write one WARNING line: a
flood of 50,000 attempts wrote 9.6 MB of log, and the writing cost the CPU
the flood already took. A `RateLimitedLog` writes the first line of a kind
at once, folds the next ones into a count, and writes that count with the
latest example at most once per interval.
"""

from __future__ import annotations

import logging
import time

# One line per kind per second: enough to see a flood begin and end.
INTERVAL = 1.0


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, level: int = logging.WARNING,
                 interval: float = INTERVAL) -> None:
        self.logger = logger
        self.level = level
        self.interval = interval
        self._last = float("-inf")
        self._folded = 0
        self.total = 0  # every event, written or folded

    def __call__(self, message: str) -> None:
        self.total += 1
        now = time.monotonic()
        if now - self._last < self.interval:
            self._folded += 1
            return
        if self._folded:
            message = (f"{message} (and {self._folded} more like it in the last "
                       f"{now - self._last:.0f} s)")
        self.logger.log(self.level, "%s", message)
        self._last, self._folded = now, 0
