"""Dose sessions end to end against the simulator, in-process and over a pty, with the trace checked.

Each S16 exit path (normal end, stop, abort, callback exception, KeyboardInterrupt, SIGTERM, closing the
client, a killed host) has its own test; each checks from the simulator's ground truth that output
ramped to zero rather than stepping.
"""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from trace_tools import Trace, load_trace, max_slew_ua_per_s

import firmware_sim
from iontodrive import (
    DeviceFault,
    LinkTimeoutError,
    Prescription,
    SafetyRefusal,
    SessionInterrupted,
    SessionOutcome,
    Stimulator,
)
from iontodrive.cli.simproc import SimulatorProcess
from iontodrive.protocol import DeviceState, EventCode, Start, StatusFlags, StatusReport
from iontodrive.record import SessionRecord

SPEED = 100
PTY_SPEED = 50
CLINIC_COMPLIANCE_MV = 80_000
CLINIC_SLEW_UA_PER_S = 5000

QUICK = Prescription(current_ma=1.0, dose_ma_min=1.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode")
LONG = Prescription(current_ma=2.0, dose_ma_min=20.0, ramp_up_s=5, ramp_down_s=10, polarity="cathode")


@pytest.fixture(scope="module", autouse=True)
def _register() -> None:
    firmware_sim.register_url_handler()


def sim_url(trace: Path, speed: float = SPEED, **options: object) -> str:
    query = "&".join(
        [f"speed={speed}", "seed=7", f"trace={trace}", *(f"{k}={v}" for k, v in options.items())]
    )
    return f"sim://clinic-4?{query}"


@dataclass
class PtySim:
    """A simulator subprocess on a pty. ``finish()`` stops it (trace flushed) and returns its trace."""

    process: SimulatorProcess
    trace_path: Path

    @property
    def port(self) -> str:
        return self.process.url

    def finish(self) -> Trace:
        self.process.stop()
        return load_trace(self.trace_path)


@pytest.fixture
def pty_sim(tmp_path: Path) -> Iterator[PtySim]:
    trace = tmp_path / "pty-trace.csv"
    process = SimulatorProcess("--pty", "--speed", str(PTY_SPEED), "--seed", "3", "--trace", str(trace))
    process.start()
    yield PtySim(process, trace)
    process.stop()


def assert_ramped_to_zero(
    trace: Trace, max_rate_ua_per_s: float, ramp_down_ua_per_s: float | None = None
) -> None:
    """Output ends at zero; it never moved faster than the model's hard slew limit (S2); outside the
    contact-check probe (<= 50 uA, ramped at the hard limit) never faster than ``max_rate_ua_per_s``; and
    while ramping down, never faster than ``ramp_down_ua_per_s``."""
    assert len(trace) > 10
    assert trace.output_ua[-1] == pytest.approx(0, abs=1.0)
    assert max_slew_ua_per_s(trace, CLINIC_COMPLIANCE_MV) <= CLINIC_SLEW_UA_PER_S * 1.05
    rate = max_slew_ua_per_s(trace, CLINIC_COMPLIANCE_MV, skip_states=("CONTACT_CHECK",))
    assert rate <= max_rate_ua_per_s * 1.05, (
        f"output changed at {rate:.0f} uA/s, limit {max_rate_ua_per_s:.0f}"
    )
    if ramp_down_ua_per_s is not None:
        down = max_slew_ua_per_s(trace, CLINIC_COMPLIANCE_MV, only_states=("RAMP_DOWN",))
        assert down <= ramp_down_ua_per_s * 1.05, (
            f"ramp-down at {down:.0f} uA/s, limit {ramp_down_ua_per_s:.0f}"
        )


def settle_trace(path: Path) -> Trace:
    """The whole trace of an in-process simulator, read once its port is closed (its runner has stopped)."""
    return load_trace(path)


def wait_for_device_time(stim: Stimulator, device_time_ms: int, timeout_s: float = 10.0) -> None:
    """Poll until the device's own clock reaches ``device_time_ms`` (wall time depends on the speed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stim.status().device_time_ms >= device_time_ms:
            return
        time.sleep(0.02)
    raise AssertionError(f"device time never reached {device_time_ms} ms")


def wait_for_state(stim: Stimulator, state: DeviceState, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stim.status().state is state:
            return
        time.sleep(0.02)
    raise AssertionError(f"device never reached {state.name}")


# ----------------------------------------------------------------------------------------------- normal end


def test_dose_session_in_process_lands_on_target_and_ramps(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.csv"
    progress: list[float] = []
    with Stimulator.open(sim_url(trace_path)) as stim:
        record = stim.deliver(
            QUICK, on_progress=lambda p: progress.append(p.delivered_ma_min), record_path=tmp_path / "r.jsonl"
        )
        device_charge = stim.status().charge_uas
    assert record.complete
    assert record.summary is not None and record.summary["end_reason"] == SessionOutcome.COMPLETED.value
    assert record.delivered_uas == device_charge
    assert device_charge == pytest.approx(60_000, rel=0.01)  # 1 mA·min within 1 % (S11)
    assert progress and progress == sorted(progress)  # dose never decreases
    codes = {e["code"] for e in record.events}
    assert {"SESSION_STARTED", "DOSE_COMPLETE"} <= codes
    trace = settle_trace(trace_path)
    assert_ramped_to_zero(trace, 1000 / 5)  # never faster than the prescribed 1 mA per 5 s
    assert trace.charge_uas[-1] == pytest.approx(60_000, rel=0.01)


def test_dose_session_over_a_pty(pty_sim: PtySim, tmp_path: Path) -> None:
    with Stimulator.open(pty_sim.port) as stim:
        record = stim.deliver(QUICK, record_path=tmp_path / "r.jsonl")
    assert record.complete
    assert record.delivered_uas == pytest.approx(60_000, rel=0.01)
    assert_ramped_to_zero(pty_sim.finish(), 1000 / 5)


def test_time_based_session_runs_for_its_duration(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.csv"
    prescription = Prescription(current_ma=1.0, duration_s=40, ramp_up_s=5, ramp_down_s=5, polarity="anode")
    with Stimulator.open(sim_url(trace_path)) as stim:
        record = stim.deliver(prescription, record_path=tmp_path / "r.jsonl")
    trace = settle_trace(trace_path)
    on = trace.t_s[trace.output_ua > 1.0]
    assert on[-1] - on[0] == pytest.approx(40, abs=0.5)
    # 35 s at full current minus nothing: ramps deliver half their time at full current
    assert record.delivered_uas == pytest.approx(1000 * (40 - 5), rel=0.01)


def test_a_refused_prescription_sends_no_start(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.csv"
    with Stimulator.open(sim_url(trace_path)) as stim:
        with pytest.raises(SafetyRefusal, match="current_ma"):
            stim.deliver(
                Prescription(current_ma=5.0, dose_ma_min=10, polarity="cathode")
            )  # clinic-4 max is 4 mA
        assert stim.status().state is DeviceState.IDLE
        assert stim.status().session_id == 0


# ----------------------------------------------------------------------------------------- explicit ends


def test_stop_ramps_down_over_the_prescribed_time(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.csv"
    with Stimulator.open(sim_url(trace_path, speed=50)) as stim:
        session = stim.start(LONG, record_path=tmp_path / "r.jsonl")
        wait_for_state(stim, DeviceState.HOLD)
        session.stop()
        record = session.wait()
    assert record.summary is not None and record.summary["end_reason"] == "stopped"
    assert_ramped_to_zero(settle_trace(trace_path), 2000 / 5)


def test_a_stop_that_reaches_the_device_in_its_final_ramp_down_leaves_the_account_completed(
    tmp_path: Path,
) -> None:
    """The device is the authority on how a session ended. A Stop in the final ramp-down changes nothing
    on the device (it acks, sends no STOPPED, ramps on and reports DOSE_COMPLETE with the whole dose), so the
    record says ``completed``; it once said ``stopped`` (and an S19 abort that came too late under an event
    flood, ``aborted``: campaign ``hostile_flood`` seeds 228 and 30128)."""
    with Stimulator.open(sim_url(tmp_path / "trace.csv", speed=20)) as stim:  # a 0.25 s wall ramp-down
        session = stim.start(QUICK, record_path=tmp_path / "r.jsonl")
        wait_for_state(stim, DeviceState.RAMP_DOWN, timeout_s=60)
        session.stop()
        record = session.wait()
    events = [e["code"] for e in record.events]
    assert "DOSE_COMPLETE" in events and "STOPPED" not in events
    assert record.summary is not None and record.summary["end_reason"] == "completed", record.summary
    assert record.delivered_uas == pytest.approx(QUICK.dose_ma_min * 60_000, rel=0.01)


def test_abort_ramps_at_the_hard_slew_limit_not_a_step(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.csv"
    with Stimulator.open(sim_url(trace_path, speed=50)) as stim:
        session = stim.start(LONG, record_path=tmp_path / "r.jsonl")
        wait_for_state(stim, DeviceState.HOLD)
        session.abort()
        record = session.wait()
    assert record.summary is not None and record.summary["end_reason"] == "aborted"
    trace = settle_trace(trace_path)
    assert_ramped_to_zero(trace, CLINIC_SLEW_UA_PER_S)
    falling = trace.t_s[(trace.output_ua < 1990) & (trace.output_ua > 10) & (trace.state == "RAMP_DOWN")]
    assert falling.size and falling[-1] - falling[0] == pytest.approx(2000 / CLINIC_SLEW_UA_PER_S, abs=0.1)


def test_an_exception_in_a_progress_callback_ramps_down_and_is_re_raised(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.csv"

    class Boom(RuntimeError):
        pass

    def on_progress(progress: object) -> None:
        if getattr(progress, "state", None) is DeviceState.HOLD:
            raise Boom("display crashed")

    with Stimulator.open(sim_url(trace_path, speed=50)) as stim:
        with pytest.raises(Boom):
            stim.deliver(LONG, on_progress=on_progress, record_path=tmp_path / "r.jsonl")
        assert stim.status().setpoint_ua == 0
    record = SessionRecord.load(tmp_path / "r.jsonl")
    assert record.summary is not None and record.summary["end_reason"] == "callback_error"
    assert_ramped_to_zero(settle_trace(trace_path), 2000 / 5)


def test_keyboard_interrupt_ramps_down_before_raising(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.csv"
    with Stimulator.open(sim_url(trace_path, speed=50)) as stim:

        def interrupt_when_holding() -> None:
            wait_for_state(stim, DeviceState.HOLD)
            _thread.interrupt_main()

        threading.Thread(target=interrupt_when_holding, daemon=True).start()
        with pytest.raises(SessionInterrupted, match="KeyboardInterrupt"):
            stim.deliver(LONG, record_path=tmp_path / "r.jsonl")
        assert stim.status().setpoint_ua == 0
    record = SessionRecord.load(tmp_path / "r.jsonl")
    assert record.complete and record.summary is not None and record.summary["end_reason"] == "interrupted"
    assert_ramped_to_zero(settle_trace(trace_path), 2000 / 5, 2000 / 10)


def test_an_unanswered_status_right_after_start_does_not_abandon_the_session(tmp_path: Path) -> None:
    """The fault campaign (seed 10115, 0.3 % of bytes corrupted) lost the first status poll after an
    acknowledged Start four times running: ``start()`` raised and left the running session without its
    driver (no summary; the device finished it alone). The device's frames were still arriving, so the poll
    is asked again, as a poll during the session already was."""
    trace_path = tmp_path / "trace.csv"
    with Stimulator.open(sim_url(trace_path, speed=50)) as stim:
        real_request, real_status = stim.client.request, stim.client.status
        started: list[bool] = []
        unanswered: list[bool] = []

        def request(message: Any, **options: Any) -> Any:
            reply = real_request(message, **options)
            if isinstance(message, Start):
                started.append(True)
            return reply

        def status() -> StatusReport:
            if started and not unanswered:
                unanswered.append(True)
                raise LinkTimeoutError("GetStatus", 1, 4, 0.25)
            return real_status()

        stim.client.request = request  # type: ignore[method-assign]
        stim.client.status = status  # type: ignore[method-assign]
        record = stim.deliver(QUICK, record_path=tmp_path / "r.jsonl")
    assert unanswered == [True]
    assert record.complete and record.summary is not None and record.summary["end_reason"] == "completed"
    assert_ramped_to_zero(settle_trace(trace_path), 1000 / 5, 1000 / 5)


def test_an_interrupt_just_as_the_session_lock_is_taken_still_ramps_down(tmp_path: Path) -> None:
    """Ctrl-C can strike inside ``threading.Condition.__enter__`` after the lock was taken, so that the
    ``with`` block never starts and never releases it. The session must still send its Stop, ramp down
    and finish its record, not deadlock on its own lock (a SIGTERM'd script used to hang for ever)."""
    trace_path = tmp_path / "trace.csv"
    outcome: list[BaseException | str] = []
    stim = Stimulator.open(sim_url(trace_path, speed=50))
    session = stim.start(LONG, record_path=tmp_path / "r.jsonl")
    wait_for_state(stim, DeviceState.HOLD)
    condition = session._changed
    enter_code = threading.Condition.__enter__.__code__

    def tracer(frame: types.FrameType, event: str, arg: object) -> object:
        if frame.f_code is enter_code and event == "return" and frame.f_locals.get("self") is condition:
            sys.settrace(None)
            raise KeyboardInterrupt  # the lock is held, and the caller's `with` will never release it
        return tracer if frame.f_code is enter_code else None

    def waiter() -> None:
        sys.settrace(tracer)
        try:
            session.wait(timeout_s=30)
            outcome.append("returned")
        except BaseException as exc:
            outcome.append(exc)
        finally:
            sys.settrace(None)

    def in_a_thread(target: Callable[[], None], timeout_s: float) -> bool:
        """Run ``target`` on a daemon thread; False if it is still running after ``timeout_s``."""
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(timeout_s)
        return not thread.is_alive()

    assert in_a_thread(waiter, 20), "the session deadlocked on its own lock"
    assert in_a_thread(stim.close, 10), "closing the client deadlocked"
    assert len(outcome) == 1 and isinstance(outcome[0], SessionInterrupted), outcome
    record = SessionRecord.load(tmp_path / "r.jsonl")
    assert record.complete and record.summary is not None and record.summary["end_reason"] == "interrupted"
    assert_ramped_to_zero(settle_trace(trace_path), 2000 / 5, 2000 / 10)


HOST_SCRIPT = textwrap.dedent(
    """
    import sys
    from iontodrive import Prescription, Stimulator
    port, record = sys.argv[1], sys.argv[2]
    with Stimulator.open(port) as stim:
        print("OPEN", flush=True)
        stim.deliver(
            Prescription(current_ma=2.0, dose_ma_min=20.0, ramp_up_s=5, ramp_down_s=10, polarity="cathode"),
            on_progress=lambda p: print("STATE", p.state.name, flush=True),
            record_path=record,
        )
    """
)


def run_host(port: str, record: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOST_SCRIPT, port, str(record)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen[str], text: str, timeout_s: float = 20.0) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"host exited early: {proc.stderr.read() if proc.stderr else ''}")
    raise AssertionError(f"host never printed {text!r}")


def test_sigterm_in_a_script_ramps_down(pty_sim: PtySim, tmp_path: Path) -> None:
    record_path = tmp_path / "r.jsonl"
    host = run_host(pty_sim.port, record_path)
    try:
        wait_for_line(host, "STATE HOLD")
        host.send_signal(signal.SIGTERM)
        host.wait(30)
    finally:
        if host.poll() is None:  # a host that hangs must not outlive the test
            host.kill()
            host.wait()
    assert host.returncode != 0  # the script ends with SessionInterrupted, after the ramp
    record = SessionRecord.load(record_path)
    stderr = host.stderr.read() if host.stderr else ""
    assert record.complete, stderr
    assert record.summary is not None and record.summary["end_reason"] == "interrupted", stderr
    assert_ramped_to_zero(pty_sim.finish(), 2000 / 5, 2000 / 10)


def test_closing_the_client_ramps_down_a_running_session(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.csv"
    stim = Stimulator.open(sim_url(trace_path, speed=50))
    stim.start(LONG, record_path=tmp_path / "r.jsonl")
    wait_for_state(stim, DeviceState.HOLD)
    stim.close()
    record = SessionRecord.load(tmp_path / "r.jsonl")
    assert record.complete and record.summary is not None and record.summary["end_reason"] == "stopped"
    assert_ramped_to_zero(settle_trace(trace_path), 2000 / 5, 2000 / 10)


def test_a_killed_host_is_ramped_down_by_the_watchdog_and_recovered(pty_sim: PtySim, tmp_path: Path) -> None:
    record_path = tmp_path / "r.jsonl"
    host = run_host(pty_sim.port, record_path)
    wait_for_line(host, "STATE HOLD")
    os.kill(host.pid, signal.SIGKILL)
    host.wait(10)
    partial = SessionRecord.load(record_path)
    assert not partial.complete  # readable, up to its last second
    time.sleep(3.0)  # the device's watchdog (2 s of real time) ramps the output down and pauses
    with Stimulator.open(pty_sim.port) as stim:
        paused = stim.status()
        assert paused.state is DeviceState.PAUSED
        assert paused.flags & StatusFlags.LINK_LOST
        assert paused.setpoint_ua == 0
        recovered = stim.recover(record_path)
        final_charge = stim.status().charge_uas
    trace = pty_sim.finish()
    paused_rows = trace.t_s[trace.state == "PAUSED"]
    assert paused_rows.size
    assert trace.output_ua[trace.t_s < paused_rows[0]].max() > 1900  # delivering 2 mA when the host died
    assert_ramped_to_zero(trace, 2000 / 5, 2000 / 10)
    assert recovered.complete
    assert recovered.summary is not None and recovered.summary["end_reason"] == "recovered_after_host_loss"
    assert recovered.delivered_uas == final_charge
    assert any(e["code"] == EventCode.LINK_LOST.name for e in recovered.events)


# --------------------------------------------------------------------------------------- control and faults


def test_pause_and_resume_keep_the_dose(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.csv"
    with Stimulator.open(sim_url(trace_path, speed=50)) as stim:
        session = stim.start(LONG, record_path=tmp_path / "r.jsonl")
        wait_for_state(stim, DeviceState.HOLD)
        session.pause()
        wait_for_state(stim, DeviceState.PAUSED)
        paused = stim.status()
        kept = paused.charge_uas
        wait_for_device_time(stim, paused.device_time_ms + 5000)  # 5 s of device time in PAUSED
        assert stim.status().charge_uas == kept
        session.resume()
        wait_for_state(stim, DeviceState.HOLD)
        assert stim.status().charge_uas > kept
        session.stop()
        session.wait()
    assert_ramped_to_zero(settle_trace(trace_path), 2000 / 5)


def test_set_current_ramps_from_the_read_back_value(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.csv"
    with Stimulator.open(sim_url(trace_path, speed=50)) as stim:
        session = stim.start(LONG, record_path=tmp_path / "r.jsonl")
        wait_for_state(stim, DeviceState.HOLD)
        session.set_current(3.0)
        wait_for_state(stim, DeviceState.HOLD)
        assert stim.status().setpoint_ua == 3000
        with pytest.raises(SafetyRefusal, match="current_ma"):
            session.set_current(4.5)
        assert stim.status().setpoint_ua == 3000
        session.stop()
        session.wait()
    assert_ramped_to_zero(settle_trace(trace_path), 2000 / 5)


def test_an_electrode_lift_pauses_at_zero_and_is_reported(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.csv"
    with Stimulator.open(sim_url(trace_path, speed=20, lift_at_s=20)) as stim:
        with pytest.raises(DeviceFault, match="ELECTRODE_LIFT"):
            stim.deliver(LONG, record_path=tmp_path / "r.jsonl")
        assert stim.status().setpoint_ua == 0
    record = SessionRecord.load(tmp_path / "r.jsonl")
    assert record.complete
    assert any(e["code"] == "ELECTRODE_LIFT" for e in record.events)


def test_requests_complete_or_fail_typed_within_their_deadline_on_a_faulty_link(tmp_path: Path) -> None:
    url = sim_url(
        tmp_path / "trace.csv", speed=20, drop_rate=0.001, corrupt_rate=0.001, junk_rate=0.05, latency_ms=5
    )
    # Rates are per byte (per frame for junk): a 60-byte status round trip survives ~89 % of the time.
    with Stimulator.open(url, timeout_s=0.1, retries=4) as stim:
        bound = 0.1 * 5 + 0.5
        outcomes = {"ok": 0, "timeout": 0}
        for _ in range(100):
            started = time.monotonic()
            try:
                stim.status()
                outcomes["ok"] += 1
            except LinkTimeoutError:
                outcomes["timeout"] += 1
            assert time.monotonic() - started < bound
        assert outcomes["ok"] >= 90
        assert stim.stats.retries > 0  # the faults really happened and were retried
        record = stim.deliver(QUICK, record_path=tmp_path / "r.jsonl")
    assert record.delivered_uas == pytest.approx(60_000, rel=0.01)
