"""`iontodrive deliver` end to end, as a user runs it: the CLI as a subprocess against the simulator
(also a subprocess), with the simulator's ground-truth trace checked.

Covers: a dose session with --json and a record, plain progress lines when not on a terminal, presets with
overrides, refused prescriptions (exit 3, nothing sent), link errors (exit 5), the pty and in-process
routes, and Ctrl-C: a ramped stop (never a step) that a second Ctrl-C does not skip (exit 130).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from trace_tools import Trace, load_trace, max_slew_ua_per_s, wait_for_trace

from iontodrive.cli import exitcodes
from iontodrive.cli.simproc import SimulatorProcess
from iontodrive.record import SessionRecord

CLINIC_SLEW_UA_PER_S = 5_000
CLINIC_COMPLIANCE_MV = 80_000
FAST = 50  # simulator speed for sessions that run to the end
TRACE_RATE = "200"  # trace rows per second of device time (5 ms apart)


# The suite shares two cores with other work: give each request a 1 s reply deadline (the CLI's
# --timeout-s, via its environment variable) so that a busy host is not mistaken for a dead link.
LOADED_HOST_ENV = {"IONTODRIVE_TIMEOUT_S": "1.0"}


def cli(
    *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `iontodrive ARGS` as a user would (a new process); never hangs past ``timeout``."""
    return subprocess.run(
        [sys.executable, "-m", "iontodrive.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **LOADED_HOST_ENV, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A clinic-4 simulator on TCP at FAST speed; yields (url, trace path)."""
    trace = tmp_path / "trace.csv"
    with SimulatorProcess(
        "--tcp",
        "127.0.0.1:0",
        "--speed",
        str(FAST),
        "--seed",
        "5",
        "--trace",
        str(trace),
        "--trace-rate",
        TRACE_RATE,
        log_path=tmp_path / "sim.log",
    ) as proc:
        yield proc.url, trace


def session_rows(trace: Trace) -> Trace:
    """The rows from the start of the ramp-up to the end (the contact check's probe comes before)."""
    first = int(np.flatnonzero(trace.state == "RAMP_UP")[0])
    return Trace(*(getattr(trace, f)[first:] for f in Trace.__dataclass_fields__))


def settled(trace_path: Path) -> Trace:
    return wait_for_trace(
        trace_path, lambda t: t.output_ua[-1] < 1.0 and t.state[-1] in ("DONE", "IDLE", "PAUSED", "FAULT")
    )


def test_dose_session_with_json_result_record_and_labels(sim: tuple[str, Path], tmp_path: Path) -> None:
    url, trace_path = sim
    record_path = tmp_path / "records" / "s1.jsonl"
    record_path.parent.mkdir()  # a missing parent is refused (--record), not created
    result = cli(
        "deliver", url, "--current-ma", "2", "--dose-ma-min", "4", "--ramp-up-s", "5", "--ramp-down-s", "5",
        "--polarity", "cathode", "--area-cm2", "8", "--record", str(record_path),
        "--label", "patient=P-017", "--label", "site=left forearm", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert out["ok"] is True and out["exit_code"] == 0 and out["error"] is None
    session = out["session"]
    assert session["outcome"] == "completed"
    assert session["labels"] == {"patient": "P-017", "site": "left forearm"}
    assert abs(session["dose_error_percent"]) <= 1.0  # S11 within 1 %
    record = SessionRecord.load(record_path)
    assert out["record"] == str(record_path)
    assert session["delivered_ma_min"] == pytest.approx(record.delivered_uas / 60_000)
    assert record.prescription["current_ma"] == 2.0 and record.prescription["polarity"] == "cathode"
    trace = settled(trace_path)
    assert trace.output_ua[-1] == pytest.approx(0, abs=1.0)
    assert max_slew_ua_per_s(trace, CLINIC_COMPLIANCE_MV) <= CLINIC_SLEW_UA_PER_S  # S2, probe included
    assert (
        max_slew_ua_per_s(session_rows(trace), CLINIC_COMPLIANCE_MV) <= 2000 / 5 * 1.05
    )  # the prescribed ramps
    assert trace.charge_uas[-1] == pytest.approx(4 * 60_000, rel=0.01)


def test_progress_lines_and_events_when_not_a_terminal(sim: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = sim
    result = cli(
        "deliver", url, "--current-ma", "1", "--duration-s", "60", "--ramp-up-s", "5", "--ramp-down-s", "5",
        "--polarity", "anode", "--record", str(tmp_path / "r.jsonl"), "--interval-s", "0.05",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "\x1b[" not in result.stdout  # no terminal control codes in a pipe
    progress = [ln for ln in lines if "mA·min" in ln and " I " in ln and " U " in ln and " Z " in ln]
    assert len(progress) >= 3, result.stdout
    states = {ln.split("]")[1].split()[0] for ln in progress}
    assert {"RAMP_UP", "HOLD"} <= states | {"RAMP_DOWN"} and "HOLD" in states
    events = [ln for ln in lines if "event:" in ln]
    assert any("SESSION_STARTED" in ln for ln in events)
    assert any("SESSION_ENDED" in ln or "DONE" in ln for ln in events)
    assert any(ln.startswith("outcome: completed") for ln in lines)
    assert any(ln.startswith("record: ") for ln in lines)


def test_preset_with_override(sim: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = sim
    record_path = tmp_path / "p.jsonl"
    result = cli(
        "deliver", url, "--preset", "dexamethasone-40", "--dose-ma-min", "3", "--ramp-up-s", "5",
        "--ramp-down-s", "5", "--record", str(record_path), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    p = SessionRecord.load(record_path).prescription
    assert (p["current_ma"], p["dose_ma_min"], p["polarity"], p["ramp_up_s"]) == (4.0, 3.0, "cathode", 5.0)


def test_refused_prescription_exits_3_with_one_line_and_sends_nothing(
    sim: tuple[str, Path], tmp_path: Path
) -> None:
    url, trace_path = sim
    result = cli(
        "deliver", url, "--current-ma", "5", "--dose-ma-min", "10", "--polarity", "cathode",
        "--record", str(tmp_path / "never.jsonl"),
    )  # fmt: skip
    assert result.returncode == exitcodes.REFUSED
    err = [ln for ln in result.stderr.splitlines() if ln.startswith("iontodrive: error:")]
    assert len(err) == 1 and "current_ma" in err[0] and "allowed" in err[0] and "4" in err[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "never.jsonl").exists()
    # Density refusal (S13): 4 mA on 1 cm² is 4 mA/cm² > 2 mA/cm².
    dense = cli("deliver", url, "--preset", "dexamethasone-40", "--area-cm2", "1", "--json")
    assert dense.returncode == exitcodes.REFUSED
    body = json.loads(dense.stdout)
    assert body["error_type"] == "SafetyRefusal" and "mA/cm²" in body["error"]
    time.sleep(0.3)
    trace = load_trace(trace_path)
    assert len(trace) and float(np.max(trace.setpoint_ua)) == 0.0  # nothing ever started


def test_link_error_exits_5_and_debug_adds_the_traceback() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = cli("info", f"socket://127.0.0.1:{port}")
    assert result.returncode == exitcodes.LINK_ERROR
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith(
        "iontodrive: error: cannot open"
    )
    debug = cli("--debug", "info", f"socket://127.0.0.1:{port}")
    assert debug.returncode == exitcodes.LINK_ERROR
    assert "Traceback" in debug.stderr and "LinkClosedError" in debug.stderr


def test_deliver_over_a_pty_from_the_sim_subcommand(tmp_path: Path) -> None:
    trace = tmp_path / "pty.csv"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iontodrive.cli",
            "sim",
            "--pty",
            "--speed",
            str(FAST),
            "--trace",
            str(trace),
            "--trace-rate",
            TRACE_RATE,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("PORT /"), line
        port = line.split(" ", 1)[1]
        result = cli(
            "deliver", port, "--current-ma", "1", "--dose-ma-min", "1", "--ramp-up-s", "5",
            "--ramp-down-s", "5", "--polarity", "cathode", "--record", str(tmp_path / "pty.jsonl"), "--json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["session"]["outcome"] == "completed"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0  # the simulator exits cleanly on Ctrl-C


def test_in_process_sim_url(tmp_path: Path) -> None:
    trace = tmp_path / "inproc.csv"
    url = f"sim://clinic-4?speed={FAST}&trace={trace}&trace_rate={TRACE_RATE}"
    result = cli(
        "deliver", url, "--current-ma", "1", "--dose-ma-min", "1",
        "--ramp-up-s", "5", "--ramp-down-s", "5", "--polarity", "cathode",
        "--record", str(tmp_path / "inproc.jsonl"), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["session"]["outcome"] == "completed"
    assert load_trace(trace).charge_uas[-1] == pytest.approx(60_000, rel=0.01)


# ----------------------------------------------------------------------------------------------- Ctrl-C


def _ramp_down_rows(trace: Trace) -> np.ndarray:
    return np.flatnonzero(trace.state == "RAMP_DOWN")


def _rows(trace: Trace, start: int, stop: int) -> Trace:
    return Trace(*(getattr(trace, f)[start:stop] for f in Trace.__dataclass_fields__))


def test_ctrl_c_ramps_down_and_a_second_ctrl_c_does_not_skip_it(tmp_path: Path) -> None:
    speed = 20
    ramp_down_s = 60.0  # 3 s of wall time: the second Ctrl-C lands inside it even on a busy host
    trace_path = tmp_path / "sigint.csv"
    record_path = tmp_path / "sigint.jsonl"
    with SimulatorProcess(
        "--tcp",
        "127.0.0.1:0",
        "--speed",
        str(speed),
        "--trace",
        str(trace_path),
        "--trace-rate",
        TRACE_RATE,
        log_path=tmp_path / "s.log",
    ) as sim:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "iontodrive.cli", "deliver", sim.url, "--current-ma", "4",
                "--dose-ma-min", "40", "--ramp-up-s", "5", "--ramp-down-s", str(ramp_down_s),
                "--polarity", "cathode", "--record", str(record_path), "--interval-s", "0.1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **LOADED_HOST_ENV, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            wait_for_trace(trace_path, lambda t: t.state[-1] == "HOLD", timeout_s=30)
            proc.send_signal(signal.SIGINT)
            wait_for_trace(trace_path, lambda t: t.state[-1] == "RAMP_DOWN", timeout_s=10)
            time.sleep(0.3)  # well inside the 3 s (wall) ramp-down
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        trace = settled(trace_path)
    assert proc.returncode == exitcodes.INTERRUPTED, err
    assert "Ctrl-C: stopping. Ramping the output down to 0 mA over 60 s" in err
    assert "Ctrl-C again: still ramping down" in err
    assert err.strip().splitlines()[-1].startswith("iontodrive: interrupted:")
    assert "Traceback" not in err
    # Ground truth: never faster than the model's slew limit, the ramp-down at the prescribed rate and
    # for its full length (the second Ctrl-C did not shorten it), output at zero at the end.
    assert trace.output_ua[-1] == pytest.approx(0, abs=1.0)
    assert max_slew_ua_per_s(trace, CLINIC_COMPLIANCE_MV) <= CLINIC_SLEW_UA_PER_S
    rows = _ramp_down_rows(trace)
    assert rows.size > 10
    down = _rows(trace, rows[0], rows[-1] + 2)
    assert max_slew_ua_per_s(down, CLINIC_COMPLIANCE_MV) <= 4000 / ramp_down_s * 1.05
    start_t = trace.t_s[rows[0]]
    zero_after = trace.t_s[rows[0] :][trace.output_ua[rows[0] :] < 1.0][0]
    assert zero_after - start_t >= 0.9 * ramp_down_s
    record = SessionRecord.load(record_path)
    assert record.summary is not None and record.summary["end_reason"] == "interrupted"
    assert 0 < record.delivered_uas < 40 * 60_000
    assert "outcome: interrupted" in out


# ------------------------------------------------------------------------------- host killed mid-session


def test_a_killed_cli_is_ramped_down_by_the_watchdog_and_a_new_polarity_is_refused(tmp_path: Path) -> None:
    """SIGKILL the CLI mid-session (no chance to ramp down): the device's watchdog does it (S10), the record
    on disk is readable, and a new session with the other polarity is refused while the device still holds
    the paused one (S8 in the driver), with nothing sent."""
    speed = 20
    trace_path = tmp_path / "kill.csv"
    record_path = tmp_path / "kill.jsonl"
    with SimulatorProcess(
        "--tcp", "127.0.0.1:0", "--speed", str(speed), "--trace", str(trace_path), "--trace-rate", TRACE_RATE,
        log_path=tmp_path / "s.log",
    ) as sim:  # fmt: skip
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "iontodrive.cli", "deliver", sim.url, "--current-ma", "3",
                "--dose-ma-min", "40", "--ramp-up-s", "5", "--ramp-down-s", "5", "--polarity", "cathode",
                "--record", str(record_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **LOADED_HOST_ENV},
        )  # fmt: skip
        try:
            wait_for_trace(trace_path, lambda t: t.state[-1] == "HOLD", timeout_s=30)
        finally:
            proc.kill()
            proc.wait(10)
        trace = wait_for_trace(
            trace_path, lambda t: t.state[-1] == "PAUSED" and t.output_ua[-1] < 1.0, timeout_s=30
        )
        other = cli(
            "deliver", sim.url, "--current-ma", "1", "--dose-ma-min", "1", "--ramp-up-s", "5",
            "--ramp-down-s", "5", "--polarity", "anode", "--record", str(tmp_path / "other.jsonl"),
        )  # fmt: skip
        time.sleep(0.3)
        after = load_trace(trace_path)
    # The watchdog's ramp-down: never faster than the slew limit, output ends at zero, dose kept.
    assert max_slew_ua_per_s(trace, CLINIC_COMPLIANCE_MV) <= CLINIC_SLEW_UA_PER_S
    assert "PAUSING" in set(trace.state)
    # The record of the killed host is readable up to its last line, and reported as incomplete.
    record = SessionRecord.load(record_path)
    assert not record.complete and record.telemetry and record.delivered_uas > 0
    report = cli("report", str(record_path), "--json")
    assert report.returncode == 0 and json.loads(report.stdout)["outcome"] == "incomplete"
    # A new session (other polarity) is refused by the driver before anything is sent.
    assert other.returncode == exitcodes.REFUSED, other.stderr
    assert "busy" in other.stderr and "Traceback" not in other.stderr
    assert not (tmp_path / "other.jsonl").exists()
    assert float(np.max(after.output_ua[len(trace) :], initial=0.0)) < 1.0


def test_live_display_on_a_terminal(sim: tuple[str, Path], tmp_path: Path) -> None:
    """On a terminal: one status line redrawn in place (dose bar, dose, time left, I, U, Z, state), with
    events printed above it."""
    import pty

    url, _ = sim
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "iontodrive.cli", "deliver", url, "--current-ma", "2", "--dose-ma-min", "2",
            "--ramp-up-s", "5", "--ramp-down-s", "5", "--polarity", "cathode", "--area-cm2", "10",
            "--record", str(tmp_path / "tty.jsonl"),
        ],
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **LOADED_HOST_ENV, "COLUMNS": "200"},
    )  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = b"".join(chunks).decode("utf-8", errors="replace")
    assert proc.returncode == 0, text
    redraws = text.split("\r\x1b[2K")
    assert len(redraws) > 5  # the status line is redrawn in place
    bars = [r for r in redraws if r.startswith("[#") or r.startswith("[.")]
    assert bars, text
    assert any("HOLD" in b and "mA·min" in b and "left " in b and " U " in b and " Z " in b for b in bars)
    assert any(b.startswith("[" + "#" * 24 + "]") and "100.0%" in b and "DONE" in b for b in bars)
    assert "event: SESSION_STARTED" in text and "outcome: completed" in text
