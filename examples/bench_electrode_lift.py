"""Bench test: inject an electrode lift and check from the simulator's ground truth that the output ramped
to zero (S6) instead of stepping.

Usage::

    python examples/bench_electrode_lift.py                         # starts its own simulator subprocess
    python examples/bench_electrode_lift.py PORT [TRACE.csv]        # manual: lift the electrode yourself

It starts ``python -m firmware_sim --tcp 127.0.0.1:0 --lift-at T --trace trace.csv`` (a clinic-4 whose
electrode lifts T seconds of simulator time after start), delivers 4 mA from the cathode, and expects the
driver to report the lift (``DeviceFault`` with code ``ELECTRODE_LIFT``). Then it reads the trace CSV and
asserts:

1. the firmware entered PAUSING (its ramp to zero) within 1 s of the lift beginning;
2. the output reached zero within 1 s of that (S6), and stayed there;
3. apart from physical breaks (open circuit, voltage at compliance) the output never changed faster than
   the model's slew limit (S2);
4. no current came back by itself after the lift (S6: returning contact never restarts output).

Exit status 0 and ``PASS`` if all hold; ``FAIL: ...`` and exit status 1 otherwise.

Given a PORT, the script delivers to it and waits for you to lift the electrode (or to inject a lift in
the simulator serving that port); with the simulator's trace CSV as a second argument it checks the trace
too, taking the lift time as the start of the firmware's ramp-down.
"""

from __future__ import annotations

import csv
import itertools
import sys
import tempfile
from pathlib import Path

from iontodrive import DeviceFault, Prescription, Stimulator
from iontodrive.cli.simproc import SimulatorProcess
from iontodrive.protocol import EventCode

SPEED = 10  # simulator time runs 10x faster than the wall clock
LIFT_AT_S = 40.0  # simulator seconds after start: the session is holding 4 mA by then
SLEW_LIMIT_UA_PER_S = 5_000  # clinic-4 hard slew limit (iontodrive info shows it)
COMPLIANCE_MV = 80_000
OPEN_OHM = 0xFFFF_FFFF


def load_trace(path: Path) -> list[dict[str, float | str]]:
    with open(path, newline="") as handle:
        rows = []
        for row in csv.DictReader(handle):
            rows.append({k: (v if k == "state" else float(v)) for k, v in row.items()})
    return rows


def check_trace(rows: list[dict[str, float | str]], lift_at_s: float | None) -> list[str]:
    """The S6/S2 assertions; returns the failures (empty if all hold). ``lift_at_s`` None: the lift is taken
    to begin where the firmware first ramps down after holding (manual mode)."""
    failures: list[str] = []
    if lift_at_s is None:
        holding = [i for i, r in enumerate(rows) if r["state"] == "HOLD"]
        first = next((r for r in rows[holding[0] :] if r["state"] == "PAUSING"), None) if holding else None
        if first is None:
            return ["the trace shows no ramp-down after holding"]
        lift_at_s = float(first["t_s"]) - 1e-9
    lifted = [r for r in rows if float(r["t_s"]) >= lift_at_s]
    if not lifted:
        return [f"the trace ends before the lift at {lift_at_s} s"]
    before = [r for r in rows if float(r["t_s"]) < lift_at_s]
    if not before or before[-1]["state"] != "HOLD" or float(before[-1]["output_ua"]) < 3_900:
        failures.append("the session was not holding 4 mA when the electrode lifted")
    pausing = next((r for r in lifted if r["state"] == "PAUSING"), None)
    if pausing is None:
        return [*failures, "the firmware never ramped down (no PAUSING state after the lift)"]
    t_pause = float(pausing["t_s"])
    if t_pause - lift_at_s > 1.0:
        failures.append(f"ramp-down began {t_pause - lift_at_s:.3f} s after the lift (limit 1 s)")
    zero = next((r for r in lifted if float(r["t_s"]) >= t_pause and float(r["output_ua"]) < 1.0), None)
    if zero is None:
        return [*failures, "the output never reached zero"]
    t_zero = float(zero["t_s"])
    if t_zero - t_pause > 1.0:
        failures.append(
            f"output reached zero {t_zero - t_pause:.3f} s after the ramp-down began (S6: <= 1 s)"
        )
    after = [r for r in rows if float(r["t_s"]) >= t_zero]
    if max(float(r["output_ua"]) for r in after) > 1.0:
        failures.append("current came back after the lift without a resume (S6)")
    worst = 0.0
    for a, b in itertools.pairwise(rows):
        physical = any(
            float(r["impedance_ohm"]) >= OPEN_OHM or float(r["voltage_mv"]) >= 0.95 * COMPLIANCE_MV
            for r in (a, b)
        )
        dt = float(b["t_s"]) - float(a["t_s"])
        if physical or dt <= 0:
            continue
        worst = max(worst, abs(float(b["output_ua"]) - float(a["output_ua"])) / dt)
    if worst > SLEW_LIMIT_UA_PER_S * 1.05:
        failures.append(
            f"output changed at {worst:.0f} uA/s, above the {SLEW_LIMIT_UA_PER_S} uA/s slew limit"
        )
    print(
        f"lift at {lift_at_s:.3f} s; ramp-down from {t_pause:.3f} s; zero at {t_zero:.3f} s; "
        f"fastest change outside physical breaks {worst:.0f} uA/s"
    )
    return failures


def deliver_until_lift(url: str, record_path: Path) -> DeviceFault | None:
    """Deliver 4 mA; return the DeviceFault the driver raised (None if the session completed)."""
    prescription = Prescription(
        current_ma=4.0, dose_ma_min=40.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode"
    )
    with Stimulator.open(url) as stim:
        try:
            stim.deliver(prescription, record_path=record_path)
        except DeviceFault as exc:
            print(f"driver reported: {exc}")
            return exc
    return None


def main(argv: list[str]) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-lift-"))
    lift_at_s: float | None
    if len(argv) > 1:  # manual mode: someone lifts the electrode on PORT
        print(f"delivering 4 mA on {argv[1]}: lift the electrode during the session")
        fault = deliver_until_lift(argv[1], workdir / "session.jsonl")
        trace_path = Path(argv[2]) if len(argv) > 2 else None
        lift_at_s = None
    else:
        trace_path = workdir / "trace.csv"
        sim_args = [
            "--tcp",
            "127.0.0.1:0",
            "--speed",
            str(SPEED),
            "--trace",
            str(trace_path),
            "--trace-rate",
            "1000",
        ]
        sim_args += ["--lift-at", str(LIFT_AT_S)]
        with SimulatorProcess(*sim_args, log_path=workdir / "simulator.log") as sim:
            print(f"simulator on {sim.url}, electrode lift scheduled at {LIFT_AT_S} s (simulator time)")
            fault = deliver_until_lift(sim.url, workdir / "session.jsonl")
        lift_at_s = LIFT_AT_S
    if fault is None or fault.code is not EventCode.ELECTRODE_LIFT:
        print(f"FAIL: expected DeviceFault ELECTRODE_LIFT, got {fault!r}")
        raise SystemExit(1)
    print(f"driver raised DeviceFault {fault.code.name}")
    if trace_path is None:
        print("PASS: the driver reported the lift (no trace given, so the ramp was not checked)")
        return 0
    failures = check_trace(load_trace(trace_path), lift_at_s)
    print(f"trace: {trace_path}")
    if failures:
        for text in failures:
            print(f"FAIL: {text}")
        raise SystemExit(1)
    print("PASS: the lift ramped the output to zero within the slew limit and it stayed at zero")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
