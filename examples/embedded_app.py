"""Embedding the driver in an application: callbacks arrive on the driver's thread, control comes from a
worker thread, and the main thread waits for the session.

Usage::

    python examples/embedded_app.py                  # in-process simulator, 200x real time
    python examples/embedded_app.py socket://127.0.0.1:7000

What it shows:

* ``on_progress`` and ``on_event`` are called on the driver's dispatcher thread. They only store what
  they receive and notify a condition variable; they never block (a slow callback would delay telemetry).
* A worker thread plays the operator: once the session holds, it lowers the current to 3 mA
  (``set_current`` ramps from the read-back value), pauses (the output ramps to zero and the dose is kept),
  resumes (contact is checked again, then the output ramps up) and lets the dose complete.
* The main thread blocks in ``session.wait()``; Ctrl-C there ramps the output down before raising.
* Any failure in the worker stops the session with a ramp (``session.stop()``), never a step.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from iontodrive import DeviceState, Prescription, Progress, Stimulator
from iontodrive.protocol import Event

SIM_URL = "sim://clinic-4?speed=200&seed=3"
STEP_TIMEOUT_S = 30.0  # wall-clock limit for each step the operator waits for


class AppState:
    """What the UI would show. Written by the driver's thread, read by others; guarded by one condition."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.progress: Progress | None = None
        self.events: list[str] = []
        self.callback_threads: set[str] = set()

    def on_progress(self, p: Progress) -> None:
        with self.changed:
            self.progress = p
            self.callback_threads.add(threading.current_thread().name)
            self.changed.notify_all()

    def on_event(self, event: Event) -> None:
        with self.changed:
            self.events.append(event.code.name)
            self.callback_threads.add(threading.current_thread().name)
            self.changed.notify_all()
        print(f"  event {event.code.name} ({event.state.name})", flush=True)

    def wait_for(self, what: str, predicate: Callable[[Progress], bool]) -> Progress:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        with self.changed:
            while self.progress is None or not predicate(self.progress):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out waiting for {what}")
                self.changed.wait(left)
            return self.progress


def operator(session: object, app: AppState, log: list[str]) -> None:
    """The worker thread: set_current, pause, resume, from outside the driver's threads."""
    from iontodrive import Session

    assert isinstance(session, Session)
    try:
        app.wait_for("hold at 4 mA", lambda p: p.state is DeviceState.HOLD)
        log.append("lowering the current to 3 mA")
        session.set_current(3.0)
        app.wait_for(
            "hold at 3 mA", lambda p: p.state is DeviceState.HOLD and abs(p.setpoint_ma - 3.0) < 0.01
        )
        app.wait_for("10 mA·min delivered", lambda p: p.delivered_ma_min >= 10.0)
        log.append("pausing")
        session.pause()
        paused = app.wait_for("paused", lambda p: p.state is DeviceState.PAUSED)
        time.sleep(0.2)  # a while in PAUSED: the dose must not move
        with app.changed:
            still = app.progress
        assert still is not None
        log.append(
            f"paused at {paused.delivered_ma_min:.3f} mA·min, after a while {still.delivered_ma_min:.3f}"
        )
        if abs(still.delivered_ma_min - paused.delivered_ma_min) > 0.001:
            raise AssertionError("the dose moved while paused")
        log.append("resuming")
        session.resume()
        app.wait_for("hold again", lambda p: p.state is DeviceState.HOLD)
        log.append("holding again; letting the dose complete")
    except BaseException as exc:
        log.append(f"operator failed: {exc!r}; stopping with a ramp")
        session.stop()
        raise


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        url = argv[1]
    else:
        import firmware_sim

        firmware_sim.register_url_handler()
        url = SIM_URL
    prescription = Prescription(
        current_ma=4.0, dose_ma_min=20.0, ramp_up_s=10, ramp_down_s=10, polarity="cathode"
    )
    app = AppState()
    log: list[str] = []
    failures: list[BaseException] = []
    record_path = Path(tempfile.mkdtemp(prefix="embedded-")) / "session.jsonl"

    def run_operator() -> None:
        try:
            operator(session, app, log)
        except BaseException as exc:
            failures.append(exc)

    with Stimulator.open(url) as stim:
        session = stim.start(
            prescription, on_progress=app.on_progress, on_event=app.on_event, record_path=record_path
        )
        worker = threading.Thread(target=run_operator, name="operator")
        worker.start()
        record = session.wait()  # the main thread waits; Ctrl-C here ramps down first
        worker.join(STEP_TIMEOUT_S)
    for line in log:
        print(f"operator: {line}")
    delivered = (record.delivered_uas or 0) / 60_000
    main_thread = threading.main_thread().name
    print(f"callbacks ran on: {sorted(app.callback_threads)} (main thread: {main_thread})")
    print(f"delivered {delivered:.3f} mA·min of 20, outcome {record.summary['end_reason']}")
    print(f"record: {record_path}")
    ok = (
        not failures
        and record.summary["end_reason"] == "completed"
        and abs(delivered - 20.0) <= 0.2
        and {"SETPOINT_CHANGED", "PAUSED", "RESUMED"} <= set(app.events)
        and main_thread not in app.callback_threads
    )
    if failures:
        print(f"operator error: {failures[0]!r}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
