"""`iontodrive monitor` in text mode: one live status view on a terminal, rate-limited lines on a pipe (it
printed every sample before: 590 lines in 3 s at 10 Hz and 100x)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from types import SimpleNamespace

from terminal import run_in_terminal

from iontodrive.cli.monitor_view import MonitorView
from iontodrive.protocol import DeviceState, StatusFlags

ENV = {"IONTODRIVE_TIMEOUT_S": "1.0"}
URL = "sim://clinic-4?speed=100&telemetry_hz=10"


def test_piped_monitor_prints_a_line_per_interval_not_per_sample() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "iontodrive.cli", "monitor", URL, "--duration-s", "2", "--rate-hz", "10"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ENV},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    status = [ln for ln in lines if ln.startswith("IDLE")]
    samples = int(re.search(r"^(\d+) samples$", lines[-1], re.M).group(1))  # type: ignore[union-attr]
    assert samples >= 100  # 10 Hz of device time at 100x for 2 s: about 2000
    assert 1 <= len(status) <= 4, lines  # one per second of wall time (plus the first)
    assert "\x1b[" not in result.stdout


def test_monitor_on_a_terminal_is_one_live_view() -> None:
    argv = [sys.executable, "-m", "iontodrive.cli", "monitor", URL, "--duration-s", "1.5", "--rate-hz", "10"]
    run = run_in_terminal(argv, columns=60, rows=20, env=ENV)
    assert run.returncode == 0, run.text
    screen = run.display
    status = [ln for ln in screen if ln.startswith("IDLE")]
    assert len(status) == 1, screen  # redrawn in place, not scrolled
    assert re.search(r"I \d\.\d{3} mA \(set 0\.000\)", run.text) and "samples" in run.text
    assert all(len(ln) <= 60 for ln in screen)


def test_plain_view_prints_at_once_on_a_change_of_state_or_alarm() -> None:
    out = io.StringIO()
    view = MonitorView(out, live=False, interval_s=3600.0)

    def sample(state: DeviceState, flags: StatusFlags = StatusFlags.NONE) -> SimpleNamespace:
        return SimpleNamespace(
            state=state, flags=flags, device_time_ms=1000, measured_ua=2000, setpoint_ua=2000,
            voltage_mv=9000, impedance_ohm=4500, charge_uas=60_000,
        )  # fmt: skip

    for state in (DeviceState.HOLD, DeviceState.HOLD, DeviceState.HOLD):
        view.sample(sample(state))
    view.sample(sample(DeviceState.HOLD, StatusFlags.ELECTRODE_LIFT))
    view.sample(sample(DeviceState.PAUSING, StatusFlags.ELECTRODE_LIFT))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and view.count == 5
    assert lines[1].endswith("ALARM: ELECTRODE LIFT") and lines[2].startswith("PAUSING")
