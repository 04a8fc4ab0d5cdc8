"""What a link driver reports about one local attachment (the patent's drive routines)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class LinkKind(Enum):
    ETHERNET = "ethernet"
    WIFI = "wifi"
    CELLULAR = "cellular"
    CIRCUIT = "circuit"


class Billing(Enum):
    BYTE = "byte"  # pay per byte moved: idle costs nothing
    TIME = "time"  # pay per connected minute: idle still costs


@dataclass(frozen=True, slots=True)
class LinkState:
    """One attachment as its driver sees it now.

    `signal` is None when the driver cannot know it (a wired link, or a
    driver with no way to ask); the policy then ignores signal thresholds.
    """

    name: str
    present: bool
    up: bool
    addresses: tuple[str, ...] = ()
    signal: int | None = None
