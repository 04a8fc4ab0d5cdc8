"""bench/instructions.py: a round trip's instructions, counted under callgrind."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .scripts import ROOT, load_bench

needs_valgrind = pytest.mark.skipif(
    shutil.which("valgrind") is None and not os.environ.get("CI"),
    reason="valgrind is not installed (scripts/setup-env installs it as root)")


def counts(workload: str, *rounds: int) -> list[int]:
    """bench.count for each number of rounds, the runs side by side: each is
    mostly the interpreter starting under callgrind, and counts do not depend
    on what else the machine runs."""
    bench = load_bench("instructions")
    with ThreadPoolExecutor(len(rounds)) as pool:
        return list(pool.map(lambda n: int(bench.count(ROOT, n, workload)), rounds))


@needs_valgrind
def test_a_round_trip_costs_a_plausible_count_of_instructions() -> None:
    small, large = counts("latency", 20, 120)
    per = (large - small) / 100
    # Measured 351k: a count far off means the subtraction broke.
    assert 100_000 < per < 2_000_000


@needs_valgrind
def test_a_64_kib_upload_arrives_whole_and_is_counted() -> None:
    small, large = counts("bulk", 5, 25)
    per = (large - small) / 20
    # Measured 1,112k; the run itself checks that every byte arrived.
    assert 300_000 < per < 5_000_000


def test_a_directory_that_is_not_a_checkout_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench("instructions")
    if shutil.which("valgrind") is None:
        pytest.skip("the tree is checked after valgrind")
    with pytest.raises(SystemExit) as exit_:
        bench.main(["instructions.py", "--tree", str(tmp_path)])
    assert exit_.value.code == 2
    assert f"{tmp_path} is not a roam checkout" in capsys.readouterr().err


def test_rounds_are_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench("instructions")
    with pytest.raises(SystemExit):
        bench.main(["instructions.py", "--rounds", "0"])
    assert "--rounds must be 1..20000" in capsys.readouterr().err


@needs_valgrind
def test_both_daemons_are_counted_through_a_real_forward() -> None:
    bench = load_bench("instructions")
    client, server = bench.count_daemons(ROOT, 20)
    # Start-up alone (imports, the handshake) is over a billion instructions:
    # a small count means callgrind did not see the daemon's own exit.
    assert client > 500_000_000
    assert server > 500_000_000
