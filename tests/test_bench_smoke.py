"""Smoke tests for ``bench/``: each benchmark runs in ``--quick --no-check`` mode and reports what it must.

These check that the scripts run end to end against the real simulator over a pty and print their
figures and verdict lines in the documented format, with figures that are consistent with each other.
They deliberately assert nothing about performance: that is what the benches themselves report.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
FLOAT = r"([0-9]+(?:\.[0-9]+)?)"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the pty benches need a POSIX pty")


def run_bench(script: str, *args: str, timeout_s: float = 90.0) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--no-check", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def latency_line(out: str, label: str) -> tuple[int, float, float, float]:
    pattern = re.escape(label) + rf"\s+n=(\d+)\s+median\s+{FLOAT} us\s+p90\s+{FLOAT} us\s+p99\s+{FLOAT} us"
    match = re.search(pattern, out)
    assert match, f"no latency line for {label!r} in:\n{out}"
    return int(match[1]), float(match[2]), float(match[3]), float(match[4])


def verdict_of_printed(printed: float, target: float, said: str) -> str:
    """The verdict a ratio printed to two decimals must carry: the bench judges the unrounded ratio, so a
    printed value within rounding (0.005) of the target may carry either verdict."""
    if abs(printed - target) <= 0.005:
        return said
    return "PASS" if printed <= target else "FAIL"


def test_rtt_quick_reports_every_case_and_both_ratios() -> None:
    out = run_bench("rtt.py", "--requests", "40", "--warmup", "5")
    labels = (
        "raw-fd echo (16 B)",
        "pyserial echo (16 B)",
        "pymodbus async RTU (read 0x03)",
        "pymodbus sync RTU (read 0x03)",
        "iontodrive status() (sim, pty)",
    )
    medians = {}
    for label in labels:
        n, median, p90, p99 = latency_line(out, label)
        assert n == 40
        assert 0 < median <= p90 <= p99
        medians[label] = median
    ours = medians["iontodrive status() (sim, pty)"]

    match = re.search(rf"ratio ours/pyserial-echo = {FLOAT} \(target <= 2\.5\) (PASS|FAIL)", out)
    assert match, out
    assert float(match[1]) == pytest.approx(ours / medians["pyserial echo (16 B)"], rel=0.01, abs=0.006)
    assert match[2] == verdict_of_printed(float(match[1]), 2.5, match[2])

    match = re.search(rf"ratio ours/pymodbus-async = {FLOAT} \(target <= 0\.5\) (PASS|FAIL)", out)
    assert match, out
    assert float(match[1]) == pytest.approx(
        ours / medians["pymodbus async RTU (read 0x03)"], rel=0.01, abs=0.006
    )
    assert match[2] == verdict_of_printed(float(match[1]), 0.5, match[2])

    link = re.search(r"iontodrive link: requests (\d+), retries (\d+), timeouts (\d+)", out)
    assert link, out
    assert int(link[1]) >= 45  # warm-up + measured status() calls, plus the opening requests
    assert re.search(r"^rtt: (PASS|FAIL)$", out, re.MULTILINE), out


def test_rtt_quick_with_process_peers_sim_floor_and_no_sync() -> None:
    out = run_bench(
        "rtt.py", "--requests", "20", "--warmup", "2", "--peer", "process", "--no-sync", "--sim-floor"
    )
    assert "pymodbus sync RTU" not in out
    assert "peers in process" in out
    medians = {}
    for label in (
        "raw-fd echo (16 B)",
        "pyserial echo (16 B)",
        "pymodbus async RTU (read 0x03)",
        "raw-fd GetStatus (sim floor)",
        "iontodrive status() (sim, pty)",
    ):
        n, medians[label], _, _ = latency_line(out, label)
        assert n == 20
    match = re.search(rf"ratio sim-floor/pyserial-echo = {FLOAT} .* ratio ours/sim-floor = {FLOAT}", out)
    assert match, out
    floor = medians["raw-fd GetStatus (sim floor)"]
    assert float(match[1]) == pytest.approx(floor / medians["pyserial echo (16 B)"], rel=0.01, abs=0.006)
    assert float(match[2]) == pytest.approx(
        medians["iontodrive status() (sim, pty)"] / floor, rel=0.01, abs=0.006
    )
    assert re.search(r"^rtt: (PASS|FAIL)$", out, re.MULTILINE), out


def test_telemetry_quick_counts_samples_and_reports_verdicts() -> None:
    out = run_bench("telemetry.py")
    window = re.search(rf"samples in window: (\d+) in {FLOAT} s wall = {FLOAT} samples/s", out)
    assert window, out
    count, wall, rate = int(window[1]), float(window[2]), float(window[3])
    assert wall >= 3.0
    assert count > 0
    assert rate == pytest.approx(count / wall, rel=0.01)

    client = re.search(r"client stats: received (\d+), lost (\d+), gaps (\d+), decode errors (\d+)", out)
    listener = re.search(
        rf"listener check: received (\d+), lost (\d+), gaps (\d+), repeats/reordered (\d+), "
        rf"longest wait between samples {FLOAT} ms",
        out,
    )
    assert client and listener, out
    # Both counters see every sample of the whole run, which contains the measured window.
    assert int(client[1]) >= count
    assert int(listener[1]) >= count
    assert re.search(rf"host CPU: {FLOAT} % of one core", out), out
    for name in ("lost", "cpu", "rate"):
        assert re.search(rf"^{name} = .* (PASS|FAIL)$", out, re.MULTILINE), f"no {name} verdict in:\n{out}"
    assert re.search(r"^telemetry: (PASS|FAIL)$", out, re.MULTILINE), out


def test_driver_overhead_reports_both_cases_and_their_difference() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "driver_overhead.py"), "--number", "200", "--repeat", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90.0,
    )
    assert proc.returncode == 0, f"exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    figures = {
        name: float(m[1])
        for name in ("floor (write, read, decode)", "DeviceClient.status()", "the driver's own work")
        if (m := re.search(re.escape(name) + rf"\s+{FLOAT} us per call", proc.stdout))
    }
    assert len(figures) == 3, proc.stdout
    floor, status = figures["floor (write, read, decode)"], figures["DeviceClient.status()"]
    assert floor > 0 and status > 0
    assert abs(figures["the driver's own work"] - (status - floor)) <= 0.011
    ratio = re.search(rf"ratio status\(\)/floor = {FLOAT}", proc.stdout)
    assert ratio and abs(float(ratio[1]) - status / floor) <= 0.01 + 0.01 * status / floor


def test_record_durability_quick_reports_both_writers_and_the_ratios(tmp_path: Path) -> None:
    out = run_bench("record_durability.py", "--seconds", "0.5", "--dir", str(tmp_path))
    for label in ("session (create..close), median", "event until on disk, median", "process CPU at 5,000"):
        match = re.search(re.escape(label) + rf".*?\s{FLOAT}\s+{FLOAT}\s+\S+\s+{FLOAT}x", out)
        assert match, f"no line for {label!r} in:\n{out}"
        plain, durable, ratio = (float(g) for g in match.groups())
        assert plain > 0 and durable > 0 and ratio == pytest.approx(durable / plain, rel=0.15, abs=0.06)
    assert re.search(r"telemetry durable : 2500 lines in 0\.5 s, dropped 0", out), out
    assert "PASS" in out or "FAIL" in out
