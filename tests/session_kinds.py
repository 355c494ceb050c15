"""Real session records of every kind the report draws, made by the driver against the simulators.

The records in ``tests/data/sessions/`` were made by this module (``python tests/session_kinds.py
tests/data/sessions`` from the repository root refreshes them); the figure and report tests read those, so
that they run in a second and do not depend on a simulator.

Each maker runs a short session (the firmware simulator in process at high speed, or the VISA bench in
virtual time) and returns its record path: completed (dose-based), interrupted (Ctrl-C through the CLI),
electrode lift, resistance limit, pulsed DC (time-based, hydro-30), and a VISA source-meter's session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iontodrive.prescription import Prescription
from iontodrive.record import SessionRecord

SPEED = 100
TELEMETRY_HZ = 2
ENV = {**os.environ, "IONTODRIVE_TIMEOUT_S": "1.0"}

SHORT_DOSE = Prescription(current_ma=2.0, dose_ma_min=2.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode")


def _deliver(url: str, prescription: Prescription, path: Path, **options: Any) -> Path:
    import firmware_sim
    from iontodrive.errors import IontodriveError
    from iontodrive.session import Stimulator

    firmware_sim.register_url_handler()  # until sim:// works on import (issue 17 item 4, h18)

    with Stimulator.open(url, timeout_s=1.0) as stim:
        try:
            stim.deliver(
                prescription,
                record_path=path,
                labels={"patient": "P-017", "operator": "op-3"},
                telemetry_hz=TELEMETRY_HZ,
                **options,
            )
        except IontodriveError:  # a lift or a fault ends the session early: the record is what we want
            if not path.exists():
                raise
    return path


def completed(directory: Path) -> Path:
    return _deliver(f"sim://clinic-4?speed={SPEED}&seed=1", SHORT_DOSE, directory / "completed.jsonl")


def lift(directory: Path) -> Path:
    return _deliver(f"sim://clinic-4?speed={SPEED}&seed=2&lift_at_s=30", SHORT_DOSE, directory / "lift.jsonl")


def resistance_limit(directory: Path) -> Path:
    # A hydro-30 at 20 mA into a skin that rises: the voltage reaches the compliance and holds there.
    rx = Prescription(current_ma=20.0, duration_s=90.0, ramp_up_s=10, ramp_down_s=10, polarity="anode")
    url = f"sim://hydro-30?speed={SPEED}&seed=3&skin_kohm=1.5&impedance_rise_at_s=40"
    return _deliver(url, rx, directory / "resistance.jsonl")


def pulsed(directory: Path) -> Path:
    rx = Prescription(
        current_ma=15.0,
        duration_s=120.0,
        ramp_up_s=10,
        ramp_down_s=10,
        polarity="anode",
        waveform="pulsed_dc",
        pulse_frequency_hz=100,
        duty_percent=50,
        electrode_area_cm2=120.0,
    )
    return _deliver(f"sim://hydro-30?speed={SPEED}&seed=4", rx, directory / "pulsed.jsonl")


def interrupted(directory: Path) -> Path:
    """Ctrl-C (SIGINT) through the real CLI half-way through a session: the ramped stop."""
    path = directory / "interrupted.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "iontodrive.cli", "deliver", f"sim://clinic-4?speed={SPEED // 2}&seed=5",
            "--current-ma", "2", "--dose-ma-min", "4", "--ramp-up-s", "5", "--ramp-down-s", "10",
            "--polarity", "cathode", "--record", str(path), "--telemetry-hz", str(TELEMETRY_HZ),
            "--label", "patient=P-017",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=ENV,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the session holds its current
        if path.exists() and b'"HOLD"' in path.read_bytes():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    return path


def visa(directory: Path) -> Path:
    import tempfile

    from test_visa_support import K2450, copy_bench, open_bench

    bench = open_bench(copy_bench(Path(tempfile.mkdtemp(prefix="visa-bench-"))), K2450)
    path = directory / "visa.jsonl"
    try:
        bench.source.deliver(
            SHORT_DOSE, record_path=path, labels={"sample": "franz-cell-3", "operator": "op-3"}
        )
    finally:
        bench.source.close()
    return path


MAKERS: dict[str, Callable[[Path], Path]] = {
    "completed": completed,
    "interrupted": interrupted,
    "lift": lift,
    "resistance": resistance_limit,
    "pulsed": pulsed,
    "visa": visa,
}


def make_all(directory: Path) -> dict[str, SessionRecord]:
    return {kind: SessionRecord.load(maker(directory)) for kind, maker in MAKERS.items()}


if __name__ == "__main__":  # python tests/session_kinds.py OUTDIR: make them all, print the outcomes
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for kind, record in make_all(out).items():
        print(kind, record.summary and record.summary["end_reason"], len(record.telemetry), record.path)
