"""`iontodrive deliver` as a person sees it: the real command in a pseudo-terminal of 60, 80 and 120 columns,
against the simulator at high speed, its screen read back through a terminal emulator (pyte); and the
operator keys typed into the same terminal, with the simulator's ground-truth trace checked for ramps.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from terminal import TerminalRun, run_in_terminal
from trace_tools import load_trace, max_slew_ua_per_s

from iontodrive.cli.display import DeviceRate, fold, status_fields
from iontodrive.cli.keys import ComfortControl, split_keys, step_ma
from iontodrive.errors import SafetyRefusal
from iontodrive.record import SessionRecord

pytest.importorskip("pyte", reason="the terminal tests read the screen with pyte (pip install pyte)")

ENV = {"IONTODRIVE_TIMEOUT_S": "1.0"}
CLINIC_SLEW_UA_PER_S = 5_000
CLINIC_COMPLIANCE_MV = 80_000


def deliver_in_terminal(
    tmp_path: Path, columns: int, url: str, *extra: str, on_output: Any = None
) -> tuple[TerminalRun, Path]:
    record = tmp_path / f"session-{columns}.jsonl"
    argv = [
        sys.executable, "-m", "iontodrive.cli", "deliver", url, "--current-ma", "2", "--ramp-up-s", "5",
        "--ramp-down-s", "5", "--polarity", "cathode", "--area-cm2", "10", "--record", str(record), *extra,
    ]  # fmt: skip
    return run_in_terminal(argv, columns=columns, rows=40, env=ENV, on_output=on_output), record


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_the_live_view_fits_the_terminal_and_shows_everything(tmp_path: Path, columns: int) -> None:
    # An electrode lift 30 s into the session (device time): the alarm must be seen, whatever the width.
    url = "sim://clinic-4?speed=40&seed=7&lift_at_s=30"
    run, record_path = deliver_in_terminal(tmp_path, columns, url, "--dose-ma-min", "4")
    seen = run.seen
    assert run.returncode == 4, run.text  # the device ended the session on its own (exit code 4)
    # While holding: state, dose, elapsed, time left, the finish time, I, U against compliance, Z - whole.
    assert any(re.search(r"^HOLD\b", ln) for ln in seen), seen
    fields = [
        r"\d+\.\d\d/4\.00 mA·min",
        r"elapsed \d+:\d\d",
        r"left \d+:\d\d",
        r"ends \d\d:\d\d:\d\d",
        r"I \d\.\d{3} mA \(set \d\.\d{3}\)",
        r"U \d+\.\d V of 80 V",
        r"Z \d\.\d\d kΩ",
    ]
    for pattern in fields:
        assert any(re.search(pattern, ln) for ln in seen), (pattern, seen)
    # The alarm has its own line, highlighted, the width of the terminal.
    alarm = [ln for ln in seen if "ALARM: ELECTRODE LIFT" in ln]
    assert alarm, seen
    # Nothing is cut: every status line is at most the width, and the bar line ends with its percentage.
    bars = [ln for ln in seen if "━" in ln]
    assert bars and all(re.search(r"\d+\.\d %$", ln) for ln in bars)
    # Events carry the time since the session started, as report shows them.
    assert any(re.match(r"\[0:00\] SESSION_STARTED", ln) for ln in seen)
    assert any(re.match(r"\[0:(2\d|3\d)\] ELECTRODE_LIFT", ln) for ln in seen)
    assert not any(re.search(r"TELEMETRY_CHANGED .* -> ", ln) for ln in seen)
    # The last line says what the device did, in words.
    assert "ELECTRODE LIFT" in run.text or "electrode lift" in run.text
    assert "Error" not in run.text and "Traceback" not in run.text
    record = SessionRecord.load(record_path)
    assert record.summary is not None and record.summary["end_reason"] == "electrode_lift"


def test_keys_lower_pause_resume_and_stop_with_ramps(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.csv"
    url = f"sim://clinic-4?speed=20&seed=8&trace={trace_path}&trace_rate=200"
    script = [
        # (what must be on the screen, keys to type)
        (re.compile(r"^HOLD .*I 2\.0\d\d mA \(set 2\.000\)", re.M), b"---"),
        (re.compile(r"^HOLD .*\(set 1\.700\)", re.M), b"p"),
        (re.compile(r"^PAUSED\b", re.M), b"r"),
        (re.compile(r"^HOLD .*\(set 1\.700\)", re.M), b"+"),
        (re.compile(r"^HOLD .*\(set 1\.800\)", re.M), b"s"),
    ]
    done: list[bytes] = []

    def drive(run: TerminalRun, type_keys: Any) -> None:
        if len(done) == len(script):
            return
        pattern, keys = script[len(done)]
        if pattern.search(run.text):
            type_keys(keys)
            done.append(keys)

    run, record_path = deliver_in_terminal(tmp_path, 100, url, "--dose-ma-min", "20", on_output=drive)
    assert len(done) == len(script), (done, run.text)
    assert run.returncode == 0, run.text
    assert any("keys:" in ln and "p pause" in ln for ln in run.seen)
    assert any("lowering the current to 1.9 mA (ramped)" in ln for ln in run.seen)
    assert any("pause: ramping the output to zero" in ln for ln in run.seen)
    # After the stop the time left gives way to the ramp-down's own countdown.
    assert any(re.search(r"^RAMP_DOWN .*ramp-down \d+:\d\d left", ln) for ln in run.seen), run.seen
    record = SessionRecord.load(record_path)
    assert record.summary is not None and record.summary["end_reason"] == "stopped"
    codes = [e["code"] for e in record.events]
    assert {"SETPOINT_CHANGED", "PAUSED", "RESUMED", "STOPPED"} <= set(codes)
    trace = load_trace(trace_path)
    # Ground truth: never a step beyond the slew limit, the comfort control reached 1.7 mA and 1.8 mA,
    # the pause went to zero, and the output ends at zero.
    assert max_slew_ua_per_s(trace, CLINIC_COMPLIANCE_MV) <= CLINIC_SLEW_UA_PER_S
    held = trace.setpoint_ua[trace.state == "HOLD"]
    assert {1700, 1800, 2000} <= set(np.unique(held).tolist())
    assert float(trace.output_ua[-1]) < 1.0
    assert "PAUSED" in set(trace.state)


# --------------------------------------------------------------------------------------- the pieces


class FakeSession:
    def __init__(self, refuse_above_ma: float = 99.0) -> None:
        self.calls: list[tuple[str, float | None]] = []
        self.refuse_above_ma = refuse_above_ma

    def set_current(self, current_ma: float) -> None:
        if current_ma > self.refuse_above_ma:
            raise SafetyRefusal("current_ma", current_ma, 0.001, self.refuse_above_ma, reason="test limit")
        self.calls.append(("set_current", current_ma))

    def pause(self) -> None:
        self.calls.append(("pause", None))

    def resume(self) -> None:
        self.calls.append(("resume", None))

    def stop(self) -> None:
        self.calls.append(("stop", None))


def test_comfort_control_stays_within_the_prescription() -> None:
    notes: list[str] = []
    session = FakeSession()
    control = ComfortControl(session, 2.0, notes.append)
    control.press("+")  # already at the prescribed current: nothing sent
    assert session.calls == [] and "already at the prescribed current" in notes[-1]
    for key in ("-", "\x1b[B", "_"):
        control.press(key)
    assert session.calls == [("set_current", 1.9), ("set_current", 1.8), ("set_current", 1.7)]
    for _ in range(30):
        control.press("-")
    assert control.target_ma == step_ma(2.0) == 0.1  # never below one step (pause is for zero)
    control.press("\x1b[A")
    assert session.calls[-1] == ("set_current", 0.2)
    for key in ("p", "r", "s", "x"):
        control.press(key)
    assert [c[0] for c in session.calls[-3:]] == ["pause", "resume", "stop"]
    assert step_ma(15.0) == 0.5


def test_a_refused_change_is_a_notice_and_changes_nothing() -> None:
    notes: list[str] = []
    session = FakeSession()
    control = ComfortControl(session, 2.0, notes.append)
    control.press("-")
    control.press("-")
    assert control.target_ma == 1.8
    session.refuse_above_ma = 0.0
    control.press("-")
    assert control.target_ma == 1.8 and notes[-1].startswith("set current not done: --current-ma 1.7 mA")


def test_arrow_keys_stay_whole() -> None:
    assert split_keys("+\x1b[A-\x1bOBp") == ["+", "\x1b[A", "-", "\x1bOB", "p"]


def test_fields_fold_onto_lines_and_are_never_cut() -> None:
    fields = [("HOLD", ""), ("12.34/40.00 mA·min", ""), ("I 4.000 mA (set 4.000)", ""), ("x" * 70, "")]
    lines = fold(fields, 30)
    assert [[t for t, _ in ln] for ln in lines] == [
        ["HOLD", "12.34/40.00 mA·min"],
        ["I 4.000 mA (set 4.000)"],
        ["x" * 70],
    ]


def test_ramp_down_countdown_replaces_the_time_left() -> None:
    from iontodrive.protocol import DeviceState, StatusFlags
    from iontodrive.sessions import Progress

    p = Progress(
        session_id="s", state=DeviceState.RAMP_DOWN, flags=StatusFlags(0), device_time_s=100.0,
        elapsed_s=50.0,
        delivered_uas=60_000, delivered_ma_min=1.0, target_ma_min=4.0, target_s=None, fraction=0.25,
        time_left_s=200.0, ramp_down_left_s=12.0, setpoint_ma=1.0, current_ma=1.0, pulse_amplitude_ma=None,
        average_current_ma=None, voltage_v=5.0, compliance_v=80.0, impedance_ohm=5000, alarms=(),
        record_error=None,
    )  # fmt: skip
    rate = DeviceRate()
    rate.add(0.0, 0.0)
    rate.add(1.0, 50.0)  # device time at 50x
    texts = [t for t, _ in status_fields(p, rate)]
    assert "ramp-down 0:12 left" in texts and not any(t.startswith("left ") for t in texts)
    ends = [t for t in texts if t.startswith("ends ")]
    assert ends  # 12 s of device time at 50x: the finish is a quarter second of wall time away
    assert rate.rate == 50.0
