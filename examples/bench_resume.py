"""Bench scenario (issue 19's "done means"): one dose delivered in three parts, through an electrode lift
and a USB unplug and replug, driven over the simulator's control API; the combined record is checked
against the prescription and the simulator's ground-truth trace.

Usage::

    python examples/bench_resume.py          # starts its own simulator subprocess; about 10 s

It starts ``python -m firmware_sim --pty --link <tmp>/usb-sim --control 127.0.0.1:0 --trace <tmp>/t.csv``
at speed 20 and, as a bench tester's script would:

1. starts a 2 mA, 1.5 mA·min session on the stable link, with ``reconnect_s=20``;
   ``POST /api/act/electrode_lift`` a few device seconds into the hold: the device ramps to zero and
   pauses, the driver reports ``DeviceFault(ELECTRODE_LIFT)`` and ends that part;
2. ``POST /api/act/contact_return``; ``resume_session()`` delivers the remainder as part 2 (a new contact
   check, a ramp up from zero); ``POST /api/act/unplug`` for 1.5 s during its hold: the driver keeps
   trying the same path, reaches the same device (serial number checked) once it is back, writes the
   device's time, charge and state in part 2's record and completes it with the device's own count:
   ``wait()`` raises ``SessionReconnected``. No current comes back by itself (the device is DONE);
3. ``resume_session()`` again delivers what is left as part 3;

then checks that the chain's combined dose (the device's own figures, ``SessionRecord.chain()``) and the
trace's integral of the true output current are both within 1 % of the prescription, and that the trace
has no slew violation (|dI/dt| outside physical breaks at most 1.05 × the model's slew limit, the fault
campaign's tolerance; ``tests/trace_tools.py``, the project's one trace reader).

Exit status 0 and ``PASS`` if every step held, ``FAIL: ...`` and 1 otherwise.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from iontodrive import DeviceFault, Prescription, Stimulator
from iontodrive.cli.simproc import SimulatorProcess
from iontodrive.protocol import ContactVerdict, DeviceState, EventCode
from iontodrive.sessions.reconnect import SessionReconnected
from iontodrive.sessions.resume import resume_session
from iontodrive.units import UAS_PER_MA_MIN

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
trace_tools = importlib.import_module("trace_tools")  # the project's one trace reader (tests/trace_tools.py)

SPEED = 20
RX = Prescription(
    current_ma=2.0, dose_ma_min=1.5, ramp_up_s=5, ramp_down_s=5, polarity="cathode", electrode_area_cm2=10
)
RX_TARGET_UA = round(RX.current_ma * 1000)
PRESCRIBED_UAS = round(1.5 * UAS_PER_MA_MIN)
SLEW_TOLERANCE = 1.05  # as the fault campaign (bench/faults.py)


def api(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(url + path, method="GET" if body is None else "POST")
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def wait_for_state(url: str, *states: str, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status: dict[str, Any] = api(url, "api/status")
        if status["state"] in states:
            return status
        time.sleep(0.02)
    raise AssertionError(f"the device never reached {' or '.join(states)}")


def run(workdir: Path) -> list[str]:
    failures: list[str] = []
    link = workdir / "usb-iontodrive-sim-if00"
    trace_path = workdir / "trace.csv"
    parts = [workdir / f"part{n}.jsonl" for n in (1, 2, 3)]
    with SimulatorProcess(
        "--pty", "--link", str(link), "--control", "127.0.0.1:0", "--speed", str(SPEED),
        "--trace", str(trace_path), log_path=workdir / "sim.log",
    ) as sim:  # fmt: skip
        url = sim.control_url
        assert url is not None
        print(f"simulator on {sim.url}, control API on {url}")
        with Stimulator.open(str(link), reconnect_s=20, watchdog_ms=500) as stim:
            compliance_mv = stim.identity.compliance_mv
            slew_limit = stim.identity.slew_limit_ua_per_s

            # 1. the first part, ended by an electrode lift asked for over HTTP
            session = stim.start(RX, record_path=parts[0])
            holding = wait_for_state(url, "HOLD")
            api(url, "api/act/electrode_lift", {"at_s": holding["t_s"] + 3.0})
            try:
                session.wait(timeout_s=60)
                failures.append("the driver did not report the lift")
            except DeviceFault as fault:
                print(f"part 1: {fault.code.name}; {session.delivered_uas / UAS_PER_MA_MIN:.3f} mA·min")
                if fault.code is not EventCode.ELECTRODE_LIFT:
                    failures.append(f"expected ELECTRODE_LIFT, got {fault.code.name}")
            api(url, "api/act/contact_return", {})
            deadline = time.monotonic() + 10
            while stim.check_contact(RX_TARGET_UA).verdict is not ContactVerdict.OK:  # the electrode is back
                if time.monotonic() > deadline:
                    failures.append("contact never came back")
                    return failures
                time.sleep(0.02)

            # 2. the remainder, interrupted by an unplug for 1.5 s; the driver reconnects and reconciles
            session = resume_session(stim, parts[0], new_record_path=parts[1])
            holding = wait_for_state(url, "HOLD")
            api(url, "api/act/unplug", {"at_s": holding["t_s"] + 2.0, "duration_s": 1.5})
            try:
                session.wait(timeout_s=60)
                failures.append("the driver did not notice the unplug")
            except SessionReconnected as exc:
                found = exc.reconciliation
                print(
                    f"part 2: link lost, reconnected after {found.waited_s:.1f} s "
                    f"({found.attempts} attempts): {found.describe()}"
                )
                if not found.device_confirmed:
                    failures.append("part 2 is not confirmed by the device")
            if stim.status().state is not DeviceState.DONE:
                failures.append(f"after the reconnect the device is {stim.status().state.name}, not DONE")

            # 3. what is left
            session = resume_session(stim, parts[1], new_record_path=parts[2])
            record = session.wait(timeout_s=60)
            print(f"part 3: {session.delivered_uas / UAS_PER_MA_MIN:.3f} mA·min")
    chain = record.chain()
    error = (chain.delivered_uas - PRESCRIBED_UAS) / PRESCRIBED_UAS
    print(f"record chain: {chain.describe()} ({error:+.2%})")
    if len(chain.parts) != 3 or not chain.device_confirmed:
        failures.append(f"the chain is not three device-confirmed parts: {chain.describe()}")
    if abs(error) > 0.01:
        failures.append(f"combined dose {error:+.2%} off the prescription")
    trace = trace_tools.load_trace(trace_path)
    true_uas = float(np.sum(trace.output_ua[1:] * np.diff(trace.t_s)))
    true_error = (true_uas - PRESCRIBED_UAS) / PRESCRIBED_UAS
    slew = trace_tools.max_slew_ua_per_s(trace, compliance_mv) / slew_limit
    print(
        f"trace: {true_uas / UAS_PER_MA_MIN:.3f} mA·min of true current ({true_error:+.2%}); "
        f"max slew {slew:.3f}x the limit"
    )
    if abs(true_error) > 0.01:
        failures.append(f"the trace's true dose is {true_error:+.2%} off the prescription")
    if slew > SLEW_TOLERANCE:
        failures.append(f"slew violation: {slew:.3f} x the limit")
    return failures


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        failures = run(Path(tmp))
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
