"""Ctrl-C and SIGTERM in a real process: a lab script delivering on a simulated Keithley is signalled in
its hold; the command log it wrote as it went must show a ramp to zero (never a step) before the output
goes off."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_visa_support import K2400, assert_safe_command_log, copy_bench, level_writes

from iontodrive.record import SessionRecord
from iontodrive.visa import CommandLog

SPEED = 20.0  # the script's session clock runs 20x real time (pyvisa-sim backend only)
SLEW_UA_PER_S = 1000.0  # default for a 5 mA maximum: full scale in 5 s
RAMP_DOWN_S = 5.0

SCRIPT = textwrap.dedent(
    """
    import sys
    from iontodrive.errors import SessionInterrupted
    from iontodrive.prescription import Prescription
    from iontodrive.protocol import DeviceState
    from iontodrive.visa import CommandLog, VisaSource

    library, resource, log_path, record_path, speed = sys.argv[1:6]
    log = CommandLog(log_path)
    source = VisaSource.open(resource, visa_library=library, sim_speed=float(speed), recorder=log)
    rx = Prescription(current_ma=2.0, dose_ma_min=20.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode")
    announced = []

    def progress(p):
        if p.state is DeviceState.HOLD and not announced:
            announced.append(p.device_time_s)
            print("HOLD", flush=True)

    try:
        source.deliver(rx, progress, record_path=record_path)
        print("COMPLETED", flush=True)
    except SessionInterrupted as exc:
        print("INTERRUPTED", exc.reason, flush=True)
        sys.exit(3)
    finally:
        source.close()
        log.close()
    """
)


def run_and_signal(tmp_path: Path, signals: list[signal.Signals]) -> tuple[str, list, SessionRecord]:
    script = tmp_path / "lab_script.py"
    script.write_text(SCRIPT)
    log_path = tmp_path / "commands.tsv"
    record_path = tmp_path / "record.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            copy_bench(tmp_path),
            K2400,
            str(log_path),
            str(record_path),
            str(SPEED),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "HOLD", (line, proc.stderr.read() if proc.stderr else "")
        time.sleep(0.2)  # 4 s of session time into the hold
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.05)  # a second signal lands during the ramp-down
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, (proc.returncode, out, err)
    return out.strip(), CommandLog.read_file(log_path), SessionRecord.load(record_path)


@pytest.mark.parametrize(
    ("signals", "reason"),
    [
        ([signal.SIGINT], "KeyboardInterrupt"),
        ([signal.SIGINT, signal.SIGINT], "KeyboardInterrupt"),
        ([signal.SIGTERM], "SIGTERM"),
    ],
)
def test_signal_mid_session_ramps_down_before_exit(
    tmp_path: Path, signals: list[signal.Signals], reason: str
) -> None:
    out, entries, record = run_and_signal(tmp_path, signals)
    assert out == f"INTERRUPTED {reason}"
    writes = assert_safe_command_log(
        entries, slew_ua_per_s=SLEW_UA_PER_S, rate_hz=20.0, max_current_ua=5000.0
    )
    assert writes[-1][2] == 0.0
    assert entries[-2].command == ":OUTP OFF" or any(e.command == ":OUTP OFF" for e in entries[-3:])
    # the ramp-down from the 2 mA hold: the prescription's 100 steps over at least its 5 s (session clock;
    # a loaded machine makes ticks late, which only makes the ramp slower), no jump
    held = [k for k, (_i, _t, a) in enumerate(writes) if abs(a + 0.002) < 2e-9]
    down = writes[held[-1] :]
    assert len(down) == pytest.approx(RAMP_DOWN_S * 20 + 1, abs=1)
    assert down[-1][1] - down[0][1] >= RAMP_DOWN_S - 1 / 20
    assert record.summary is not None and record.summary["end_reason"] == "interrupted"
    assert record.delivered_uas is not None and 0 < record.delivered_uas < 20 * 60_000
    assert [w for w in level_writes(entries) if w[2] < -0.002 - 2e-9] == []
