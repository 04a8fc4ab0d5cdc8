"""What the demo prints: timed lines as things happen, and the summary at the end."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from roam.demo.app import AppStatistics


class Screen:
    """Lines stamped with the seconds since the demo began."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.began = time.time()

    def at(self, text: str, when: float | None = None) -> None:
        """`when` is a wall-clock time (an event log's); now if not given."""
        self.line(f"{stamp((time.time() if when is None else when) - self.began)}  {text}")

    def line(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)


def stamp(seconds: float) -> str:
    return f"{seconds:6.1f} s"


def handover_line(h: dict[str, Any]) -> str:
    """One handover record of the client's event log, as a person reads it."""
    return (f"{h['type']} handover {h['from']} -> {h['to']} ({h['reason']}): "
            f"stall {h['stall_ms']:.0f} ms")


def wait_line(seconds: float, noted: float) -> str:
    """The application's own view of a handover: how long its echo stopped.
    Waits under `noted` are the stream's pace, not a stall."""
    if seconds < noted:
        return f"{'':10}the application's echo never stopped for over {noted * 1000:.0f} ms"
    return f"{'':10}the application's echo stopped for {seconds * 1000:.0f} ms"


def summary(app: AppStatistics, handovers: list[dict[str, Any]], problems: list[str],
            began: float) -> tuple[list[str], int]:
    """The closing lines and the exit status: 0 only when every byte came back
    unchanged and everything the scenario waited for happened."""
    lines = ["summary",
             f"  bytes sent by the application   {app.bytes_sent:>12,}",
             f"  bytes echoed back to it         {app.bytes_echoed:>12,}",
             f"  byte-exact                      {'yes' if app.intact else 'NO':>12}",
             f"  longest wait for the echo       {app.longest_wait * 1000:>9,.0f} ms",
             f"  handovers                       {len(handovers):>12}"]
    lines += [f"    {stamp(h['time'] - began)}  {handover_line(h)}" for h in handovers]
    problems = list(problems)
    if app.error is not None:
        problems.append(app.error)
    if app.mismatch_at is not None:
        problems.append(f"echoed byte {app.mismatch_at:,} differs from the byte sent there")
    elif app.error is None and app.bytes_sent != app.bytes_echoed:
        problems.append(f"{app.bytes_echoed:,} bytes echoed of {app.bytes_sent:,} sent")
    if problems:
        return [*lines, *(f"FAILED: {p}" for p in problems)], 1
    return [*lines, "every byte came back, in order, over one application connection that "
                    "never broke"], 0
