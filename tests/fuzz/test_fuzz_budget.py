"""The fuzz budget cannot shrink silently: every fuzz test takes its inputs
from the profile, and the fuzz profile adds up to over a million."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

from hypothesis import is_hypothesis_test

from tests.fuzz.conftest import ACTIVE, FUZZ, MIN_FUZZ_TOTAL, QUICK, SHARES, examples

# The quick profile's inputs over all fuzz tests: enough to run every path,
# few enough that the normal run stays fast (about 30 s at 1-2 ms an input).
MAX_QUICK_TOTAL = 20_000


def fuzz_modules() -> list[ModuleType]:
    # Imported here as well, so the sums below see every module even when
    # only this file was collected.
    here = Path(__file__).parent
    return [importlib.import_module(f"{__package__}.{path.stem}")
            for path in sorted(here.glob("test_fuzz_*.py"))]


def hypothesis_tests() -> Iterator[tuple[str, Callable[..., object]]]:
    for module in fuzz_modules():
        for name, value in vars(module).items():
            if name.startswith("test_") and callable(value) and is_hypothesis_test(value):
                yield f"{module.__name__}.{value.__name__}", value


def test_every_fuzz_test_takes_its_inputs_from_the_profile() -> None:
    found = dict(hypothesis_tests())
    assert len(found) >= 10
    # A Hypothesis test without fuzz_settings would run the default 100
    # inputs in both profiles and be left out of the sum.
    assert set(found) == set(SHARES)
    for key, test in found.items():
        # Nothing applied after fuzz_settings changed the count either.
        applied = test._hypothesis_internal_use_settings  # type: ignore[attr-defined]
        assert applied.max_examples == examples(ACTIVE, SHARES[key]), key


def test_the_fuzz_profile_tries_a_million_inputs() -> None:
    fuzz_modules()
    total = sum(examples(FUZZ, share) for share in SHARES.values())
    assert total >= MIN_FUZZ_TOTAL, f"the fuzz profile tries {total} inputs"


def test_the_quick_profile_stays_quick() -> None:
    fuzz_modules()
    total = sum(examples(QUICK, share) for share in SHARES.values())
    assert total <= MAX_QUICK_TOTAL, f"the quick profile tries {total} inputs"
