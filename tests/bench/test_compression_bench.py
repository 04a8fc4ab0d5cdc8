"""bench/compression.py: its workloads, its verdicts, and one short run in the lab (root)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from tests.conftest import require

from .scripts import load_bench


def test_the_workloads_are_what_they_say(tmp_path: Path) -> None:
    bench = load_bench("compression")
    names = bench.make_workloads(tmp_path)
    assert len(names["json"]) == 24
    raw = {w: b"".join((tmp_path / n).read_bytes() for n in ns) for w, ns in names.items()}
    assert len(raw["json"]) == 24 * 40 * 1024
    assert len(raw["log"]) == 1 << 20
    assert len(raw["compressed"]) == 512 * 1024
    ratio = {w: len(zlib.compress(data, 6)) / len(data) for w, data in raw.items()}
    assert ratio["json"] < 0.25
    assert ratio["log"] < 0.35
    assert ratio["compressed"] > 0.99  # nothing left to gain
    # The same files every time: runs on different days compare.
    again = tmp_path / "again"
    again.mkdir()
    bench.make_workloads(again)
    assert (again / "app.log").read_bytes() == raw["log"]


def _row(bench: object, key: str, cells: dict[str, tuple[float, int]]) -> object:
    row = bench.Row(key, bench.LABELS[key])  # type: ignore[attr-defined]
    for w, (seconds, wire) in cells.items():
        row.cells[w] = bench.Cell(runs=[{"seconds": seconds, "wire_bytes": wire}])  # type: ignore[attr-defined]
    return row


def test_verdicts_name_each_aim_and_whether_it_was_met() -> None:
    bench = load_bench("compression")
    raw = {"json": 1000, "log": 1000, "compressed": 1000}
    rows = [_row(bench, "roam-off", {"compressed": (2.0, 1050)}),
            _row(bench, "roam", {"json": (5.0, 200), "compressed": (2.1, 1050)}),
            _row(bench, "ssh-c", {"json": (5.5, 190)})]
    lines = bench.verdicts(rows, raw)
    assert lines[0] == ("- JSON on the wire with roam (auto): **0.20** of its raw size "
                        "(aim: 0.25 or less, met).")
    assert "0.2 KB against 0.2 KB" in lines[1]
    assert lines[1].endswith("(aim: at least as small and as fast, not met).")
    assert lines[2].endswith("(aim: no slower; not met, within 2%).")


def test_refuses_without_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench("compression")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    out = tmp_path / "b.md"
    assert bench.main(["compression.py", "--out", str(out)]) == 2
    assert "needs root" in capsys.readouterr().err
    assert not out.exists()


def test_one_run_through_roam_in_the_lab(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "the network lab needs root")
    bench = load_bench("compression")
    out, raw = tmp_path / "b.md", tmp_path / "c.json"
    # The JSON workload alone: the aim checked here is JSON's, and the others'
    # transfers at 2 Mbit/s would add seconds without checking more.
    assert bench.main(["compression.py", "--runs", "1", "--only", "direct,roam",
                       "--workloads", "json", "--out", str(out), "--json", str(raw),
                       "--img", str(tmp_path)]) == 0
    text = out.read_text()
    assert "<!-- bench:compression:start -->" in text
    rows = {line.split("|")[2].strip(): line for line in text.splitlines()
            if line.startswith("| JSON API")}
    assert set(rows) == {"direct TCP", "roam (--compress auto)"}
    share = {path: float(line.split("|")[5]) for path, line in rows.items()}
    assert share["direct TCP"] > 1.0  # headers and acknowledgements on top of the data
    assert share["roam (--compress auto)"] < 0.25
    assert "of its raw size (aim: 0.25 or less, met)" in text
    assert "| text log (1 MiB) | direct TCP | not run (--workloads) | — | — |" in text
    assert "--workloads json`" in text
