"""`iontodrive report` (summary, --json, --plot) and `iontodrive demo`, end to end."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from iontodrive.cli.simproc import SimulatorProcess
from iontodrive.plotting import OPEN_CIRCUIT_OHM, figure_data
from iontodrive.record import SessionRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# The suite shares two cores with other work: give each request a 1 s reply deadline (the CLI's
# --timeout-s, via its environment variable) so that a busy host is not mistaken for a dead link.
LOADED_HOST_ENV = {"IONTODRIVE_TIMEOUT_S": "1.0"}


def cli(*args: str, timeout: float = 60.0, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iontodrive.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **LOADED_HOST_ENV},
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def record_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real session record: 2 mA, 3 mA·min, delivered by the CLI to a simulator subprocess."""
    directory = tmp_path_factory.mktemp("report")
    path = directory / "session.jsonl"
    with SimulatorProcess("--tcp", "127.0.0.1:0", "--speed", "50", log_path=directory / "sim.log") as sim:
        result = cli(
            "deliver", sim.url, "--current-ma", "2", "--dose-ma-min", "3", "--ramp-up-s", "5",
            "--ramp-down-s", "5", "--polarity", "cathode", "--record", str(path),
            "--label", "sample=franz-cell-3", "--quiet",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_text_summary(record_path: Path) -> None:
    result = cli("report", str(record_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    record = SessionRecord.load(record_path)
    delivered = record.delivered_uas / 60_000
    assert f"delivered     {delivered:.3f} mA·min of 3.000 mA·min prescribed dose" in out
    assert "outcome       completed" in out
    assert "labels        sample=franz-cell-3" in out
    assert "2 mA cathode DC, 3 mA·min, ramps 5/5 s" in out
    assert "clinic-4" in out
    for event in record.events:
        assert f"#{event['event_no']:<4} {event['code']}" in out


def test_report_json_matches_the_record(record_path: Path) -> None:
    result = cli("report", str(record_path), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    record = SessionRecord.load(record_path)
    assert summary["delivered_ma_min"] == pytest.approx(record.delivered_uas / 60_000)
    assert summary["target_ma_min"] == 3.0
    expected_error = 100 * (record.delivered_uas / 60_000 - 3.0) / 3.0
    assert summary["dose_error_percent"] == pytest.approx(expected_error)
    assert abs(summary["dose_error_percent"]) <= 1.0
    assert [e["event_no"] for e in summary["events"]] == [e["event_no"] for e in record.events]
    assert summary["complete"] is True and summary["outcome"] == "completed"
    assert summary["telemetry_samples"] == len(record.telemetry)


def test_plot_is_a_png_whose_data_match_the_record(record_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "figure.png"
    result = cli("report", str(record_path), "--plot", str(out))
    assert result.returncode == 0, result.stderr
    assert f"plot          {out}" in result.stdout
    width, height = png_size(out)
    assert width >= 800 and height >= 600
    assert out.stat().st_size > 20_000  # four panels of real data, not an empty canvas

    record = SessionRecord.load(record_path)
    arrays = record.telemetry_arrays()
    data = figure_data(record)
    assert len(data.t_s) == len(record.telemetry) > 10
    np.testing.assert_allclose(data.t_s + data.t0_s, arrays["t_s"], rtol=0, atol=1e-9)  # shifted and back
    exact = {"rtol": 1e-12, "atol": 1e-9}  # the same numbers, up to float rounding of the unit change
    np.testing.assert_allclose(data.current_ma * 1000, arrays["measured_ua"], **exact)
    np.testing.assert_allclose(data.setpoint_ma * 1000, arrays["setpoint_ua"], **exact)
    np.testing.assert_allclose(data.voltage_v * 1000, arrays["voltage_mv"], **exact)
    np.testing.assert_allclose(data.dose_ma_min * 60_000, arrays["charge_uas"], **exact)
    closed = arrays["impedance_ohm"] != OPEN_CIRCUIT_OHM
    np.testing.assert_allclose(data.impedance_kohm[closed] * 1000, arrays["impedance_ohm"][closed])
    assert np.isnan(data.impedance_kohm[~closed]).all()
    assert data.target_ma_min == 3.0
    started = next(e for e in record.events if e["code"] == "SESSION_STARTED")
    assert data.t0_s == started["device_time_ms"] / 1000
    assert ("SESSION_STARTED", 0.0) in [(code, t) for t, code in data.events]
    assert "2 mA cathode DC, 3 mA·min" in data.title


def test_report_of_an_incomplete_record(record_path: Path, tmp_path: Path) -> None:
    # A host killed mid-session leaves no summary line (and maybe half a line): report says so.
    lines = record_path.read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[: len(lines) // 2]) + lines[len(lines) // 2][:10])
    result = cli("report", str(cut), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["complete"] is False and summary["outcome"] == "incomplete"
    assert summary["truncated_last_line"] is True
    partial = SessionRecord.load(cut)
    assert summary["delivered_ma_min"] == pytest.approx(partial.telemetry[-1]["charge_uas"] / 60_000)


def test_report_errors_are_one_line(tmp_path: Path) -> None:
    missing = cli("report", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 1 and missing.stderr.startswith("iontodrive: error:")
    assert "Traceback" not in missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "telemetry"}\n')
    broken = cli("report", str(bad))
    assert broken.returncode == 1 and "bad.jsonl:1" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1


def test_demo_writes_record_plot_and_trace_and_says_where(tmp_path: Path) -> None:
    outdir = tmp_path / "demo"
    result = cli("demo", "--outdir", str(outdir), timeout=60)  # as `make demo` runs it
    assert result.returncode == 0, result.stderr + result.stdout
    record = SessionRecord.load(outdir / "session.jsonl")
    assert record.summary is not None and record.summary["end_reason"] == "completed"
    assert record.delivered_uas == pytest.approx(40 * 60_000, rel=0.01)
    png_size(outdir / "session.png")
    assert 0 < (outdir / "trace.csv").stat().st_size < 500_000  # 5 Hz of device time: small (it was 4 MB)
    log = (outdir / "simulator.log").read_text(encoding="utf-8")
    assert "serving clinic-4" in log and "client connected" in log  # it was always empty
    for name in ("session.jsonl", "session.png", "trace.csv"):
        assert str(outdir / name) in result.stdout
    assert "delivered     " in result.stdout and "outcome       completed" in result.stdout
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text(encoding="utf-8").split()
    assert "/demo-output/" in ignored
