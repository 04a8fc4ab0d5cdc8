"""The benchmark harness: smoke runs of bench/run.py with small loads on loopback, and its
pure pieces (parsing, medians, section rewriting, CPU accounting, plots). No timing is
asserted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import all as bench_all  # noqa: E402
import benchlib  # noqa: E402
import load  # noqa: E402
import plots  # noqa: E402
import run as bench_run  # noqa: E402
import tunnels  # noqa: E402

RUN = ROOT / "bench" / "run.py"
SSHD = Path("/usr/sbin/sshd")
HEADER = ("| path | 1 stream MB/s | 2 streams MB/s | 1 stream, ratio to ssh -L aes128-gcm "
          "| CPU s/GiB, 1 stream | CPU s/GiB, 2 streams | p50 µs | p99 µs "
          "| CPU µs per round trip |")
RUNS = 2


def run_bench(tmp_path: Path, only: str, nbytes: int, rounds: int) -> tuple[str, dict]:
    out, raw = tmp_path / "b.md", tmp_path / "session.json"
    cmd = [sys.executable, str(RUN), "--only", only, "--bytes", str(nbytes),
           "--rounds", str(rounds), "--runs", str(RUNS), "--streams", "2",
           "--out", str(out), "--json", str(raw)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    return out.read_text(), json.loads(raw.read_text())


def table_row(text: str, path: str) -> list[str]:
    """The cells of the table row for one path."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == path:
            return cells
    raise AssertionError(f"no table row for {path!r} in:\n{text}")


def assert_measured(text: str, raw: dict, path: str) -> None:
    cells = table_row(text, path)
    for i in (1, 2, 6, 7):  # MB/s with 1 and 2 streams, p50 and p99 µs
        assert re.fullmatch(r"\d+\.\d", cells[i]), cells
        assert float(cells[i]) > 0
    row = next(r for r in raw["rows"] if r["path"] == path)
    assert row["status"] == "ok", row
    assert len(row["runs"]) == len(row["par_runs"]) == len(row["latency_runs"]) == RUNS
    assert all(r["streams"] == 2 for r in row["par_runs"])


def test_direct_row(tmp_path: Path) -> None:
    text, raw = run_bench(tmp_path, "direct", 8_000_000, 200)
    assert text.startswith("# roam benchmarks")
    assert "<!-- bench:session:start -->" in text
    assert "<!-- bench:session:end -->" in text
    assert HEADER in text
    assert_measured(text, raw, "direct")
    row = raw["rows"][0]
    assert all(r["bytes"] == 8_000_000 for r in row["runs"] + row["par_runs"])
    assert table_row(text, "direct")[4] == "—"  # no daemons, no CPU figure
    assert table_row(text, "direct")[8] == "—"
    assert "Reproduce: `python bench/run.py" in text

    # A second run replaces the section and keeps what lies outside the markers.
    out = tmp_path / "b.md"
    out.write_text(out.read_text() + "\nkept line\n")
    text, _ = run_bench(tmp_path, "direct", 1_000_000, 50)
    assert text.count("<!-- bench:session:start -->") == 1
    assert text.count(HEADER) == 1
    assert "kept line" in text


def test_python_forwarder_row(tmp_path: Path) -> None:
    """Two plain forwarders chained, the floor under any Python tunnel: measured
    like a tunnel, with the CPU of both processes."""
    text, raw = run_bench(tmp_path, "pyforward", 4_000_000, 100)
    assert_measured(text, raw, "2 plain Python forwarders (uvloop)")
    cells = table_row(text, "2 plain Python forwarders (uvloop)")
    assert re.fullmatch(r"\d+\.\d\d", cells[4]), cells
    assert re.fullmatch(r"\d+\.\d", cells[8]), cells


def test_relay_row(tmp_path: Path) -> None:
    """roam through one relay on loopback: measured like any path, with the CPU
    of the three daemons a byte crosses, and set against roam in the same run."""
    text, raw = run_bench(tmp_path, "roam,roam-relay", 4_000_000, 100)
    assert_measured(text, raw, "roam")
    assert_measured(text, raw, "roam through one relay")
    line = next(x for x in text.splitlines() if x.startswith("- One roam relay"))
    assert "(roam through one relay against roam): single stream **" in line
    assert re.search(r"\*\*\d+%\*\* of the throughput without it", line), line
    assert re.search(r"p50 \*\*[+-]\d+\.\d µs\*\*", line), line
    assert "aim: at least 90%" in line
    assert "aim: under 30 µs" in line
    assert "One ssh jump host" not in text  # neither of its rows was selected


def require_sshd() -> None:
    if not SSHD.exists():
        reason = f"{SSHD} missing (scripts/setup-env installs openssh-server as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def test_ssh_rows(tmp_path: Path) -> None:
    """ssh -L, and ssh -L through a jump host (a second sshd, ProxyJump), in one run:
    both hops on aes128-gcm, CPU of both sshds and of both ssh processes."""
    require_sshd()
    text, raw = run_bench(tmp_path, "ssh-aes,ssh-jump", 4_000_000, 100)
    assert_measured(text, raw, "ssh -L aes128-gcm")
    cells = table_row(text, "ssh -L aes128-gcm")
    assert cells[3] == "1.00"
    assert re.fullmatch(r"\d+\.\d\d", cells[4]), cells  # CPU s/GiB of ssh and sshd
    assert re.fullmatch(r"\d+\.\d", cells[8]), cells  # CPU µs per round trip
    assert float(cells[8]) > 0
    assert "OpenSSH_" in text
    assert "ssh -L aes128-gcm: aes128-gcm@openssh.com" in text

    jump = bench_run.LABELS["ssh-jump"]
    assert_measured(text, raw, jump)
    cells = table_row(text, jump)
    assert re.fullmatch(r"\d+\.\d\d", cells[3]), cells  # against ssh -L aes128-gcm
    assert re.fullmatch(r"\d+\.\d\d", cells[4]), cells
    assert float(cells[8]) > 0
    row = next(r for r in raw["rows"] if r["key"] == "ssh-jump")
    assert row["notes"]["cipher"] == "aes128-gcm@openssh.com / aes128-gcm@openssh.com"
    assert " -J roam-bench-jump " in row["notes"]["command"]
    # ProxyJump's second ssh is counted: the tree of the first ssh holds it.
    assert sum(r["cpu_s"] for r in row["runs"] + row["par_runs"]) > 0
    line = next(x for x in text.splitlines() if x.startswith("- One ssh jump host"))
    assert f"({jump} against ssh -L aes128-gcm): single stream **" in line
    assert re.search(r"p50 \*\*[+-]\d+\.\d µs\*\*", line), line
    assert "aim" not in line


# -- pure pieces -----------------------------------------------------------------------

def test_split_bytes() -> None:
    assert load.split_bytes(10, 3) == [4, 3, 3]
    assert load.split_bytes(0, 2) == [0, 0]
    assert sum(load.split_bytes(1 << 30, 8)) == 1 << 30
    with pytest.raises(ValueError, match="streams must be positive"):
        load.split_bytes(10, 0)


def test_percentile_nearest_rank() -> None:
    samples = [float(i) for i in range(1, 101)]
    assert load.percentile(samples, 50) == 50.0
    assert load.percentile(samples, 99) == 99.0
    assert load.percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no samples"):
        load.percentile([], 50)


def test_parse_stat_counts_from_the_last_parenthesis() -> None:
    # pid (comm) state ppid ... utime(14) stime(15) cutime(16) cstime(17) ...
    fields = ["S"] + ["0"] * 10 + ["100", "20", "3", "4"] + ["0"] * 30
    text = "1234 (a) b (c)) " + " ".join(fields)
    assert benchlib.parse_stat(text) == 127
    assert benchlib.parse_children("12 34 \n") == [12, 34]
    assert benchlib.parse_children("") == []


def test_cpu_seconds_of_a_process_tree() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in benchlib.process_tree([os.getpid()])
        assert benchlib.cpu_seconds([os.getpid()]) > 0
    finally:
        child.terminate()
        child.wait(10)
    assert benchlib.per_gib(2.0, 1 << 29) == 4.0
    assert benchlib.per_gib(1.0, 0) is None


def test_medians_and_formatting() -> None:
    assert benchlib.median_or_none([3.0, None, 1.0, 2.0]) == 2.0
    assert benchlib.median_or_none([None]) is None
    assert benchlib.fmt(None) == "—"
    assert benchlib.fmt(1.234, 2) == "1.23"
    assert benchlib.with_range([3.0, 1.0, 2.0]) == "2.0 (1.0-3.0)"
    assert benchlib.with_range([5.0]) == "5.0"
    assert benchlib.with_range([]) == "—"


def test_replace_section() -> None:
    start, end = "<!-- x:start -->", "<!-- x:end -->"
    assert benchlib.replace_section(None, start, end, "new") == (
        f"# roam benchmarks\n\n{start}\nnew\n{end}\n")
    text = f"head\n{start}\nold\n{end}\ntail\n<!-- y:start -->\nother\n<!-- y:end -->\n"
    out = benchlib.replace_section(text, start, end, "new")
    assert out == text.replace("old", "new")
    # Without its markers the section is appended; an end marker alone is not trusted.
    out = benchlib.replace_section(f"head\n{end}\n", start, end, "new")
    assert out == f"head\n{end}\n\n{start}\nnew\n{end}\n"


def test_parse_only() -> None:
    assert bench_run.parse_only("ssh,direct") == ["direct", "ssh-aes", "ssh-chacha"]
    assert bench_run.parse_only("roam-chacha, roam") == ["roam", "roam-chacha"]
    assert bench_run.parse_only("ssh-jump,roam-relay,ssh-aes") == [
        "roam-relay", "ssh-aes", "ssh-jump"]
    with pytest.raises(ValueError, match="telnet"):
        bench_run.parse_only("telnet")
    with pytest.raises(ValueError, match="nothing"):
        bench_run.parse_only(" , ")


def test_render_reports_the_ratio_to_ssh_aes() -> None:
    args = bench_run.parse_args(["--runs", "1", "--streams", "8", "--rounds", "10"])
    rows = []
    for key, mbps, p50 in (("direct", 5000.0, 20.0), ("roam", 600.0, 150.0),
                           ("ssh-aes", 500.0, 100.0)):
        row = bench_run.Row(key, bench_run.LABELS[key])
        row.runs = [{"mbps": mbps, "bytes": 1, "timed_out": False, "cpu_s_per_gib": 2.0}]
        row.par_runs = [{"mbps": mbps * 2, "bytes": 1, "timed_out": False}]
        row.latency_runs = [{"p50_us": p50, "p99_us": 200.0, "rounds": 10,
                             "cpu_us_per_round": 90.0}]
        bench_run.summarize(row)
        rows.append(row)
    failed = bench_run.Row("ssh-chacha", bench_run.LABELS["ssh-chacha"], "failed", "boom")
    facts = {"date": "d", "nproc": "2", "cpu": "c", "kernel": "k", "python": "p",
             "openssh": "o", "ssh cipher": "s", "command": "c", "reproduce": "r"}
    text = bench_run.render([*rows, failed], facts, args, [])
    assert "throughput ratio: **1.20**" in text
    assert "aim: at least 1.0, met" in text
    assert "with 8 streams 1.20" in text
    assert table_row(text, "roam")[1:4] == ["600.0", "1200.0", "1.20"]
    assert table_row(text, "ssh -L chacha20-poly1305")[1] == "failed: boom"
    assert ("Latency added to a direct connection's p50: roam **130.0 µs**, ssh -L 80.0 µs "
            "(aim: roam adds no more than ssh -L, not met)") in text
    assert table_row(text, "roam")[8] == "90.0"


def test_render_reports_one_hop_for_each_kind_of_path() -> None:
    args = bench_run.parse_args(["--runs", "1", "--streams", "8", "--rounds", "10"])
    rows = []
    for key, mbps, p50, cpu in (("roam", 500.0, 250.0, 3.0), ("roam-relay", 460.0, 270.0, 3.5),
                                ("ssh-aes", 600.0, 180.0, 2.5), ("ssh-jump", 300.0, 300.0, 6.0)):
        row = bench_run.Row(key, bench_run.LABELS[key])
        row.runs = [{"mbps": mbps, "bytes": 1, "timed_out": False, "cpu_s_per_gib": cpu}]
        row.par_runs = [{"mbps": mbps / 2, "bytes": 1, "timed_out": False}]
        row.latency_runs = [{"p50_us": p50, "p99_us": 900.0, "rounds": 10,
                             "cpu_us_per_round": p50 / 2}]
        bench_run.summarize(row)
        rows.append(row)
    facts = {"date": "d", "nproc": "2", "cpu": "c", "kernel": "k", "python": "p",
             "openssh": "o", "ssh cipher": "s", "command": "c", "reproduce": "r"}
    text = bench_run.render(rows, facts, args, [])
    assert ("- One roam relay (roam through one relay against roam): single stream **92%** of "
            "the throughput without it (460.0 against 500.0 MB/s; aim: at least 90%, met), "
            "8 streams 92%; p50 **+20.0 µs** (270.0 against 250.0 µs; aim: under 30 µs, met); "
            "CPU +0.50 s/GiB and +10.0 µs per round trip.") in text
    assert ("- One ssh jump host (ssh -L aes128-gcm through a jump host (ssh -J) against "
            "ssh -L aes128-gcm): single stream **50%** of the throughput without it (300.0 "
            "against 600.0 MB/s), 8 streams 50%; p50 **+120.0 µs** (300.0 against 180.0 µs); "
            "CPU +3.50 s/GiB and +60.0 µs per round trip.") in text
    assert table_row(text, bench_run.LABELS["ssh-jump"])[3] == "0.50"
    # A hop whose other row failed or was not selected says so instead of a figure.
    rows[0].status, rows[0].error = "failed", "boom"
    text = bench_run.render(rows[:2] + rows[3:], facts, args, [])
    assert ("- One roam relay (roam through one relay against roam): not available (roam "
            "through one relay ok, roam failed).") in text
    assert ("- One ssh jump host (ssh -L aes128-gcm through a jump host (ssh -J) against ssh -L "
            "aes128-gcm): not available (ssh -L aes128-gcm through a jump host (ssh -J) ok, "
            "ssh -L aes128-gcm not selected).") in text
    only_direct = bench_run.render(rows[:0], facts, args, [])
    assert "One hop" not in only_direct


def test_tunnels_refuses_without_root(monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    out = tmp_path / "b.md"
    assert tunnels.main(["tunnels.py", "--out", str(out)]) == 2
    assert "needs root" in capsys.readouterr().err
    assert not out.exists()


def test_all_commands() -> None:
    args = bench_all.parse_args(["--quick", "--runs", "5", "--skip", "handover"])
    cmds = bench_all.commands(args)
    assert list(cmds) == ["run", "tunnels", "compression", "scale", "relayscale", "registrar",
                          "handover", "doublejump", "workers"]
    assert cmds["workers"][1:] == ["bench/workers.py", "--runs", "3"]
    assert cmds["relayscale"][1:] == ["bench/relayscale.py", "--sessions", "2000"]
    assert cmds["scale"][1:] == ["bench/scale.py", "--workers", "2", "--sessions", "2000",
                                 "--handover", "500"]
    assert cmds["compression"][1:4] == ["bench/compression.py", "--runs", "5"]
    assert cmds["run"][1:4] == ["bench/run.py", "--runs", "5"]
    assert "--bytes" in cmds["tunnels"]
    assert args.skip == {"handover"}
    with pytest.raises(SystemExit):
        bench_all.parse_args(["--skip", "nothing"])


def test_grouped_bars(tmp_path: Path) -> None:
    if not plots.have_matplotlib():
        pytest.skip("matplotlib missing (pip install -e '.[bench]')")
    out = plots.grouped_bars(tmp_path / "f.png", "t", "MB/s", ["a", "b"],
                             {"1 stream": [1.0, None], "8 streams": [2.0, 3.0]}, "note")
    assert out == tmp_path / "f.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
