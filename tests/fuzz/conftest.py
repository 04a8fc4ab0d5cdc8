"""Hypothesis profiles for the parser fuzz tests, and each test's share of the budget.

Two profiles:

- `fuzz-quick` (the default): 400 inputs for a test of share 1, so all the
  fuzz tests add about ten seconds to the normal run.
- `fuzz` (`ROAM_FUZZ=1`, which `scripts/test --fuzz` sets): 50,000 inputs for
  a test of share 1, over a million in all (`test_fuzz_budget.py` checks the
  sum), in about half an hour.

A test's share says how many of its profile's inputs it takes: 1 for cheap
inputs (about a millisecond each, most of it Hypothesis's own work), less
for dearer ones (a handshake, a file, a socket).

The profiles are applied per test through `fuzz_settings`, never with
`settings.load_profile`: loading one would change the defaults of every
other Hypothesis test in the same pytest run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from hypothesis import HealthCheck, settings

QUICK = "fuzz-quick"
FUZZ = "fuzz"
FUZZ_ENV = "ROAM_FUZZ"
# What the budget test holds the fuzz profile to: inputs over all fuzz tests.
MIN_FUZZ_TOTAL = 1_000_000

# A fuzz input may be slow to run (a handshake, a file, a socket) and large
# (built from up to 800 drawn bytes): neither is a fault of the test.
_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

settings.register_profile(
    QUICK,
    max_examples=400,
    deadline=None,
    suppress_health_check=_SUPPRESS,
)
# Not derandomized: each fuzz run should explore inputs the last one did not.
settings.register_profile(
    FUZZ,
    max_examples=50_000,
    deadline=None,
    suppress_health_check=_SUPPRESS,
    derandomize=False,
)

ACTIVE = FUZZ if os.environ.get(FUZZ_ENV) == "1" else QUICK

# "module.function" -> share of the profile's max_examples, filled in as the
# test modules are imported.
SHARES: dict[str, float] = {}

T = TypeVar("T", bound=Callable[..., object])


def examples(profile: str, share: float) -> int:
    """max_examples for a test with `share` under `profile` (at least one)."""
    return max(1, round(settings.get_profile(profile).max_examples * share))


def fuzz_settings(share: float = 1.0) -> Callable[[T], T]:
    """The active profile's settings for one fuzz test, with `share` of its inputs."""

    def apply(test: T) -> T:
        SHARES[f"{test.__module__}.{test.__name__}"] = share
        chosen = settings(settings.get_profile(ACTIVE), max_examples=examples(ACTIVE, share))
        return chosen(test)

    return apply


def pytest_report_header() -> str:
    return f"fuzz profile: {ACTIVE} ({FUZZ_ENV}=1 selects {FUZZ})"
