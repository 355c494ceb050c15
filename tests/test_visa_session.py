"""Host-ramped sessions on the simulated bench, in virtual time, checked on the commands the driver sent.

Every session test ends with :func:`assert_safe_command_log`: compliance before output on, read-back
before the first ramp, no step above slew/rate, set-points at the tick rate, output off only at zero.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
from test_visa_support import (
    B2902A,
    K2400,
    K2450,
    LEVEL_WRITE,
    MODELS,
    Bench,
    assert_safe_command_log,
    copy_bench,
    level_writes,
    open_bench,
    raw_resource,
)

from iontodrive.errors import DeviceFault, LinkLostError, SafetyRefusal
from iontodrive.prescription import Prescription
from iontodrive.protocol import DeviceState, EventCode
from iontodrive.record import SessionRecord
from iontodrive.sessions.types import Progress, SessionOutcome
from iontodrive.visa import Reading

RATE_HZ = 20.0
SHORT = Prescription(current_ma=2.0, dose_ma_min=1.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode")
LONG = Prescription(current_ma=2.0, dose_ma_min=20.0, ramp_up_s=5, ramp_down_s=8, polarity="cathode")


@pytest.fixture
def library(tmp_path: Path) -> str:
    return copy_bench(tmp_path)


def check(bench: Bench) -> list[tuple[int, float, float]]:
    identity = bench.source.identity
    return assert_safe_command_log(
        list(bench.log),
        slew_ua_per_s=identity.slew_limit_ua_per_s,
        rate_hz=bench.source.rate_hz,
        max_current_ua=identity.max_current_ua,
    )


def events(record: SessionRecord) -> list[str]:
    return [e["code"] for e in record.events]


def after(t_s: float, action: object) -> object:
    """A progress callback that runs ``action(progress)`` once, at the first sample at or after ``t_s``."""
    fired = threading.Event()

    def callback(progress: Progress) -> None:
        if not fired.is_set() and progress.device_time_s >= t_s:
            fired.set()
            action(progress)  # type: ignore[operator]

    return callback


# ------------------------------------------------------------------------------------------ whole sessions


@pytest.mark.parametrize("model", sorted(MODELS))
def test_dose_session_lands_on_target_with_safe_commands(tmp_path: Path, library: str, model: str) -> None:
    bench = open_bench(library, MODELS[model])
    samples: list[Progress] = []
    record = bench.source.deliver(
        SHORT, samples.append, record_path=tmp_path / "r.jsonl", labels={"id": "A1"}
    )
    assert record.summary is not None and record.summary["end_reason"] == "completed"
    assert record.delivered_uas == pytest.approx(60_000, rel=0.01)  # 1 mA·min, S11 within 1 %
    assert record.labels == {"id": "A1"}
    codes = events(record)
    assert codes[0] == "SESSION_STARTED" and codes[-2:] == ["DOSE_COMPLETE", "SESSION_ENDED"]
    writes = check(bench)
    amps = [a for _i, _t, a in writes]
    assert min(amps) == pytest.approx(-0.002, abs=2e-9), "cathode: negative current at 2 mA"
    assert amps[-1] == 0.0
    # ramp up over 5 s at the tick rate: the first 100 set-points after the contact check are 50 ms apart
    ramp = [(t, a) for _i, t, a in writes if a != 0.0][3:100]
    gaps = [t1 - t0 for (t0, _), (t1, _) in itertools.pairwise(ramp)]
    assert max(gaps) == pytest.approx(1 / RATE_HZ, abs=1e-9)
    assert samples[-1].state is DeviceState.DONE
    assert samples[-1].delivered_ma_min == pytest.approx(1.0, rel=0.01)
    assert any(s.impedance_ohm == 1000 for s in samples), "1 kΩ simulated load"
    notes = {n["kind"] for n in record.notes}
    assert {"instrument", "contact", "warning", "started"} <= notes
    assert any("no watchdog" in n.get("text", "") for n in record.notes)


def test_time_based_session_lasts_its_duration(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, K2450)
    rx = Prescription(current_ma=1.0, duration_s=20.0, ramp_up_s=5, ramp_down_s=5, polarity="anode")
    record = bench.source.deliver(rx, record_path=tmp_path / "r.jsonl")
    writes = check(bench)
    amps = [a for _i, _t, a in writes]
    probe_end = amps.index(0.0, amps.index(5e-05))  # the contact check's probe went back to zero
    start = next(t for _i, t, a in writes[probe_end:] if a != 0.0)
    end = [t for _i, t, a in writes if a != 0.0][-1]
    # first ramp step to last non-zero set-point: the 20 s duration less one tick at each end
    assert end - start == pytest.approx(20.0 - 2 / RATE_HZ, abs=1e-6)
    ended = next(e for e in record.events if e["code"] == "SESSION_ENDED")
    assert ended["device_time_ms"] == pytest.approx(20_000, abs=60)
    assert record.summary is not None and record.summary["on_time_s"] == pytest.approx(20.0, abs=0.2)
    # 1 mA for 20 s with 5 s ramps: 15 s equivalent at full current = 15 000 µA·s
    assert record.delivered_uas == pytest.approx(15_000, rel=0.01)
    assert max(a for _i, _t, a in writes) == pytest.approx(0.001, abs=2e-9), "anode: positive current"


def test_watchdog_warning_is_logged_when_a_session_starts(
    tmp_path: Path, library: str, caplog: pytest.LogCaptureFixture
) -> None:
    bench = open_bench(library, K2400)
    with caplog.at_level("WARNING", logger="iontodrive.visa"):
        bench.source.deliver(SHORT, record_path=tmp_path / "r.jsonl")
    assert any("no watchdog" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


# --------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("prescription", "field"),
    [
        (Prescription(current_ma=8.0, dose_ma_min=10.0, polarity="cathode"), "current_ma"),
        (Prescription(current_ma=1.0, dose_ma_min=500.0, polarity="cathode"), "dose_ma_min"),
        (
            Prescription(
                current_ma=1.0,
                dose_ma_min=5.0,
                waveform="pulsed_dc",
                pulse_frequency_hz=10,
                polarity="cathode",
            ),
            "waveform",
        ),
        (
            Prescription(current_ma=4.0, dose_ma_min=10.0, polarity="cathode", electrode_area_cm2=1.0),
            "current_ma",
        ),
    ],
)
def test_refused_prescription_sends_nothing(
    tmp_path: Path, library: str, prescription: Prescription, field: str
) -> None:
    bench = open_bench(library, K2450)
    sent_at_open = len(bench.log)
    with pytest.raises(SafetyRefusal) as info:
        bench.source.deliver(prescription, record_path=tmp_path / "r.jsonl")
    assert info.value.field == field
    assert len(bench.log) == sent_at_open, bench.log.commands()[sent_at_open:]
    assert not (tmp_path / "r.jsonl").exists()


def test_busy_instrument_is_refused_and_can_be_ramped_down(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, K2400)
    other = raw_resource(library, K2400)  # someone left the output on at 1.5 mA
    for command in (":SOUR:FUNC CURR", ":SOUR:CURR 1.500000E-3", ":OUTP ON"):
        other.write(command)
    with pytest.raises(SafetyRefusal) as info:
        bench.source.deliver(SHORT, record_path=tmp_path / "r.jsonl")
    assert info.value.field == "state"
    assert not [e for e in bench.log if e.kind == "write"], "nothing may be written to a busy instrument"
    found = bench.source.ramp_down_output()
    assert found == pytest.approx(0.0015)
    writes = check(bench)
    amps = [a for _i, _t, a in writes]
    assert amps[0] == pytest.approx(0.0015 - 0.001 / RATE_HZ, abs=2e-9) and amps[-1] == 0.0
    assert other.query(":OUTP?") == "OFF"


def test_failed_contact_check_returns_to_zero_and_switches_off(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, K2450)
    bench.load.open_circuit = True
    with pytest.raises(SafetyRefusal) as info:
        bench.source.deliver(SHORT, record_path=tmp_path / "r.jsonl")
    assert info.value.field == "impedance_ohm"
    assert info.value.value == "open circuit"
    writes = check(bench)
    assert max(abs(a) for _i, _t, a in writes) <= 50e-6 + 2e-9, "probe current at most 50 µA (S3)"
    assert writes[-1][2] == 0.0
    assert raw_resource(library, K2450).query(":OUTP?") == "OFF"


# ------------------------------------------------------------------------------------------- exit paths


def test_callback_exception_ramps_down_then_reraises(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, B2902A)

    def boom(progress: Progress) -> None:
        raise RuntimeError("analysis crashed")

    with pytest.raises(RuntimeError, match="analysis crashed"):
        bench.source.deliver(LONG, after(12.0, boom), record_path=tmp_path / "r.jsonl")  # type: ignore[arg-type]
    writes = check(bench)
    record = SessionRecord.load(tmp_path / "r.jsonl")
    assert record.summary is not None and record.summary["end_reason"] == "callback_error"
    # the ramp-down from 2 mA took the prescription's 8 s, not a step
    down = [(t, a) for _i, t, a in writes if t > 12.0]
    assert down[-1][1] == 0.0
    assert down[-1][0] - down[0][0] == pytest.approx(8.0, abs=0.2)


def test_stop_pause_resume_from_another_thread(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, K2400)
    handle = bench.source.start(LONG, record_path=tmp_path / "r.jsonl")
    handle.pause()
    while handle.state is not DeviceState.PAUSED:
        threading.Event().wait(0.01)
    paused_dose = handle.delivered_uas
    handle.resume()
    # resumed: ramping up again, or (the session thread is quick) already holding
    assert handle.state in (DeviceState.RAMP_UP, DeviceState.HOLD)
    handle.stop()
    record = handle.wait()
    assert record.summary is not None and record.summary["end_reason"] == "stopped"
    assert {"PAUSED", "RESUMED", "STOPPED"} <= set(events(record))
    assert record.delivered_uas is not None and record.delivered_uas >= paused_dose
    writes = check(bench)
    assert writes[-1][2] == 0.0
    # resume repeated the contact check: a second excursion to the 50 µA probe while paused
    probes = [a for _i, _t, a in writes if abs(abs(a) - 50e-6) < 2e-9]
    assert len(probes) >= 2


def test_abort_ramps_at_the_slew_limit(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, K2450)
    state: dict[str, object] = {}

    def do_abort(progress: Progress) -> None:
        state["t"] = progress.device_time_s
        bench.source.session.abort()  # type: ignore[union-attr]

    record = bench.source.deliver(LONG, after(10.0, do_abort), record_path=tmp_path / "r.jsonl")  # type: ignore[arg-type]
    assert record.summary is not None and record.summary["end_reason"] == "aborted"
    assert "ABORTED" in events(record)
    writes = check(bench)
    down = [(t, a) for _i, t, a in writes if t >= float(state["t"])]  # type: ignore[arg-type]
    # 2 mA at 1000 µA/s: 2 s, each step the full slew/rate = 50 µA
    assert down[-1][0] - down[0][0] == pytest.approx(2.0, abs=0.11)
    steps = [abs(a1 - a0) for (_, a0), (_, a1) in itertools.pairwise(down)]
    assert max(steps) == pytest.approx(50e-6, abs=2e-9)


def test_set_current_ramps_from_the_readback(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, B2902A)
    seen: list[int] = []

    def change(progress: Progress) -> None:
        session = bench.source.session
        assert session is not None
        with pytest.raises(SafetyRefusal):
            session.set_current(9.0)  # above the 5 mA maximum: refused, nothing changes
        session.set_current(1.0)

    record = bench.source.deliver(
        SHORT, after(8.0, change), record_path=tmp_path / "r.jsonl", on_event=lambda e: seen.append(e.code)
    )  # type: ignore[arg-type]
    assert EventCode.SETPOINT_CHANGED in seen
    writes = check(bench)
    later = [(t, a) for _i, t, a in writes if t >= 8.0]
    reached = next(k for k, (_t, a) in enumerate(later) if abs(a + 0.001) < 2e-9)
    change_ramp = [a for _t, a in later[: reached + 1]]
    # 2 mA -> 1 mA: the prescription's rate would take 2.5 s, but no change ramps faster than the model's
    # shortest ramp (5 s): 100 monotonic steps, 5 s
    assert change_ramp[0] > -0.002
    assert all(b >= a for a, b in itertools.pairwise(change_ramp))
    assert len(change_ramp) == 5 * RATE_HZ
    assert later[reached][0] - later[0][0] == pytest.approx(5.0 - 1 / RATE_HZ, abs=1e-6)
    final_ramp = [a for _t, a in later[reached + 1 :]]
    assert final_ramp[0] == pytest.approx(-0.001 + 0.001 / (5 * RATE_HZ), abs=2e-9), "ramp-down from 1 mA"
    assert record.summary is not None and record.summary["end_reason"] == "completed"
    assert record.delivered_uas == pytest.approx(60_000, rel=0.01)


def test_closing_the_source_ramps_a_running_session_down(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, K2400)
    handle = bench.source.start(LONG, record_path=tmp_path / "r.jsonl")
    bench.source.close()
    assert handle.finished
    record = SessionRecord.load(tmp_path / "r.jsonl")
    assert record.summary is not None and record.summary["end_reason"] == "stopped"
    assert record.summary["detail"] == "source closed"
    writes = check(bench)
    assert writes[-1][2] == 0.0
    assert bench.log.commands()[-2:] in ([":OUTP OFF", ":SYST:ERR?"],)


def test_ramp_resumes_from_the_readback_after_someone_changed_the_level(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, K2400)
    other = raw_resource(library, K2400)

    def meddle_then_stop(progress: Progress) -> None:
        other.write(":SOUR:CURR -1.200000E-3")  # front panel: 2 mA -> 1.2 mA behind the driver's back
        bench.source.session.stop()  # type: ignore[union-attr]

    bench.source.deliver(LONG, after(10.0, meddle_then_stop), record_path=tmp_path / "r.jsonl")  # type: ignore[arg-type]
    writes = level_writes(list(bench.log))
    after_stop = [a for _i, t, a in writes if t > 10.0]
    # the ramp-down starts from the read-back 1.2 mA (not the remembered 2 mA) and never steps
    assert after_stop[0] == pytest.approx(-0.0012 + 0.0012 / (8 * RATE_HZ), abs=2e-9)
    record = SessionRecord.load(tmp_path / "r.jsonl")
    assert any(n["kind"] == "readback_mismatch" for n in record.notes)


# ---------------------------------------------------------------------------------------- safety (S5, S6, S9)


def test_open_circuit_ramps_to_zero_and_reports_electrode_lift(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, K2450)

    def lift(progress: Progress) -> None:
        bench.load.open_circuit = True

    with pytest.raises(DeviceFault) as info:
        bench.source.deliver(LONG, after(10.0, lift), record_path=tmp_path / "r.jsonl")  # type: ignore[arg-type]
    assert info.value.code is EventCode.ELECTRODE_LIFT
    record = SessionRecord.load(tmp_path / "r.jsonl")
    assert record.summary is not None and record.summary["end_reason"] == "electrode_lift"
    assert "ELECTRODE_LIFT" in events(record)
    lift_event = next(e for e in record.events if e["code"] == "ELECTRODE_LIFT")
    assert lift_event["device_time_ms"] <= 10_000 + 3 * 50 + 1, "detected within two readings"
    writes = check(bench)
    down = [(t, a) for _i, t, a in writes if t > 10.0]
    assert down[-1][1] == 0.0
    # 2 mA to zero: as fast as the slew limit allows (2 s), since 1 s would exceed it
    assert down[-1][0] - down[0][0] == pytest.approx(2.0, abs=0.11)
    assert record.delivered_uas is not None and record.delivered_uas > 0


def test_impedance_jump_is_an_electrode_lift(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, K2400, compliance_v=60.0)

    def peel(progress: Progress) -> None:
        bench.load.load_ohm = 1800.0  # +80 % at once: a partly lifted electrode, current still flowing

    with pytest.raises(DeviceFault) as info:
        bench.source.deliver(LONG, after(10.0, peel), record_path=tmp_path / "r.jsonl")  # type: ignore[arg-type]
    assert info.value.code is EventCode.ELECTRODE_LIFT
    assert info.value.value == 1800
    check(bench)


def test_compliance_holds_reachable_current_and_extends_the_dose(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, B2902A, compliance_v=30.0)
    rx = Prescription(current_ma=4.0, dose_ma_min=4.0, ramp_up_s=5, ramp_down_s=5, polarity="anode")

    def drying_skin(progress: Progress) -> None:
        if progress.device_time_s > 8.0:  # resistance rises 30 %/s at first, slower later: no lift
            bench.load.load_ohm = min(12_000.0, 1000.0 + 300.0 * (progress.device_time_s - 8.0))

    samples: list[Progress] = []

    def on_progress(progress: Progress) -> None:
        samples.append(progress)
        drying_skin(progress)

    record = bench.source.deliver(rx, on_progress, record_path=tmp_path / "r.jsonl", telemetry_hz=20)
    codes = events(record)
    assert "RESISTANCE_LIMIT" in codes and "TIME_EXTENDED" in codes
    assert "ELECTRODE_LIFT" not in codes
    assert record.delivered_uas == pytest.approx(4 * 60_000, rel=0.01), "dose still met (S5)"
    # the output never sat at ≥ 95 % of compliance for more than 2 s plus a reading
    limit_mv = 0.95 * 30_000
    run = longest = 0.0
    for previous, sample in itertools.pairwise(samples):
        run = (
            run + (sample.device_time_s - previous.device_time_s)
            if sample.voltage_v * 1000 >= limit_mv
            else 0.0
        )
        longest = max(longest, run)
    # 2 s, plus the slew-limited ramp to the reachable level (at most 4 mA -> 3.6 mA at 1 mA/s) and a tick
    assert longest <= 2.0 + 0.4 + 0.1
    held = [s.setpoint_ma for s in samples if s.state is DeviceState.HOLD and s.device_time_s > 50]
    assert held and max(held) < 4.0 * 0.8, "held a reachable current well below the 4 mA target"
    check(bench)


def test_overcurrent_reading_aborts_with_a_fault(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, K2450)

    def fault(progress: Progress) -> None:
        bench.load.transform = lambda r: Reading(r.voltage_v, r.current_a * 1.3)

    with pytest.raises(DeviceFault) as info:
        bench.source.deliver(LONG, after(10.0, fault), record_path=tmp_path / "r.jsonl")  # type: ignore[arg-type]
    assert info.value.code is EventCode.OVERCURRENT_TRIP
    record = SessionRecord.load(tmp_path / "r.jsonl")
    assert record.summary is not None and record.summary["end_reason"] == "fault"
    writes = check(bench)
    assert writes[-1][2] == 0.0


# ------------------------------------------------------------------------------------ hardware-side fallback


def test_fallback_hands_the_hold_to_a_list_ending_at_zero(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, K2450, deadman_s=2.0)
    rx = Prescription(current_ma=2.0, dose_ma_min=1.0, ramp_up_s=5, ramp_down_s=6, polarity="cathode")
    record = bench.source.deliver(rx, record_path=tmp_path / "r.jsonl")
    assert record.delivered_uas == pytest.approx(60_000, rel=0.01)
    entries = list(bench.log)
    commands = [e.command for e in entries]
    lists = [c for c in commands if c.startswith(":SOUR:LIST:CURR")]
    values = [float(v) * 1e-3 for c in lists for v in c.split(" ", 1)[1].replace("E-3", "").split(",")]
    slew_step = bench.source.identity.slew_limit_ua_per_s / RATE_HZ * 1e-6
    assert values[0] == pytest.approx(-0.002, abs=2e-9) and values[-1] == 0.0
    assert values[: 2 * int(RATE_HZ)] == [values[0]] * (2 * int(RATE_HZ)), "holds for deadman_s first"
    assert max(abs(b - a) for a, b in itertools.pairwise(values)) <= slew_step + 2e-9
    assert ":SOUR:SWE:CURR:LIST 1, 0.050000" in commands
    arm = commands.index(":INIT")
    last_abort = len(commands) - 1 - commands[::-1].index(":ABOR")
    # while armed: no host set-points, readings from the buffer, restarts at least every deadman_s / 2
    inside = entries[arm:last_abort]
    assert not any(LEVEL_WRITE.match(e.command) for e in inside)
    assert any(e.command.startswith(":FETC?") for e in inside)
    restarts = [e.t_s for e in inside if e.command == ":INIT"]
    assert restarts and max(b - a for a, b in itertools.pairwise(restarts)) <= 1.0 + 0.051
    # disarmed (":ABOR") before the host's own ramp-down began
    first_down = next(i for i, e in enumerate(entries) if i > last_abort and LEVEL_WRITE.match(e.command))
    assert first_down > last_abort
    check(bench)


def test_a_stalled_host_with_fallback_armed_ends_the_session(tmp_path: Path, library: str) -> None:
    bench = open_bench(library, K2450, deadman_s=2.0)

    def stall(progress: Progress) -> None:
        bench.clock.advance(3.0)  # the host hangs for 3 s (virtual) with the list armed

    with pytest.raises(LinkLostError, match="stalled"):
        bench.source.deliver(LONG, after(12.0, stall), record_path=tmp_path / "r.jsonl")  # type: ignore[arg-type]
    record = SessionRecord.load(tmp_path / "r.jsonl")
    assert record.summary is not None and record.summary["end_reason"] == SessionOutcome.LINK_LOST.value
    assert "LINK_LOST" in events(record)
    check(bench)


# ------------------------------------------------------------------------------------------ the example


def test_example_delivers_the_same_dose_on_both_sources(tmp_path: Path) -> None:
    """examples/same_script_two_sources.py: the same lab function, two resource strings, both on target."""
    import os
    import re
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "examples" / "same_script_two_sources.py"
    env = {
        **os.environ,
        "IONTODRIVE_VISA_LIBRARY": copy_bench(tmp_path),
        "IONTODRIVE_VISA_SIM_SPEED": "40",
    }
    result = subprocess.run(
        [sys.executable, str(script), "sim://clinic-4?speed=40&seed=1", K2450],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = re.findall(r"-> (\w+): ([\d.]+) mA·min delivered \(([+-][\d.]+) %\)", result.stdout)
    assert [o[0] for o in outcomes] == ["completed", "completed"], result.stdout
    assert all(abs(float(o[2])) <= 1.0 for o in outcomes), result.stdout
    assert "clinic-4" in result.stdout and "Keithley 2450" in result.stdout


# ------------------------------------------------------------------------------------- instrument errors


def test_io_error_mid_session_ramps_down_from_the_readback_then_raises(tmp_path: Path, library: str) -> None:
    from iontodrive.visa import InstrumentLinkError

    bench = open_bench(library, K2400)
    failures = iter([True])

    def glitch(reading: Reading) -> Reading:
        if next(failures, False):
            raise TimeoutError("VI_ERROR_TMO")  # one reading times out
        return reading

    def arm(progress: Progress) -> None:
        bench.load.transform = glitch

    with pytest.raises(InstrumentLinkError):
        bench.source.deliver(LONG, after(10.0, arm), record_path=tmp_path / "r.jsonl")  # type: ignore[arg-type]
    record = SessionRecord.load(tmp_path / "r.jsonl")
    assert record.summary is not None and record.summary["end_reason"] == "fault"
    writes = check(bench)
    down = [(t, a) for _i, t, a in writes if t > 10.0]
    assert down[-1][1] == 0.0
    assert down[-1][0] - down[0][0] >= 8.0 - 0.1, "the prescription's ramp-down, not a step"
    assert raw_resource(library, K2400).query(":OUTP?") == "OFF"


def test_dead_link_leaves_the_output_on_and_says_so(
    tmp_path: Path, library: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The no-watchdog hazard, demonstrated: with the instrument unreachable nothing can ramp it down."""
    bench = open_bench(library, K2400)
    resource = bench.load.resource

    def cut_the_cable(progress: Progress) -> None:
        def dead(*args: object) -> None:
            raise ConnectionError("cable pulled")

        resource.write = dead
        bench.load.query = dead  # type: ignore[method-assign]

    with (
        caplog.at_level("CRITICAL", logger="iontodrive.visa"),
        pytest.raises(LinkLostError, match="no watchdog"),
    ):
        bench.source.deliver(LONG, after(10.0, cut_the_cable), record_path=tmp_path / "r.jsonl")  # type: ignore[arg-type]
    assert any("NO WATCHDOG" in r.getMessage() for r in caplog.records)
    record = SessionRecord.load(tmp_path / "r.jsonl")
    assert record.summary is not None and record.summary["end_reason"] == "link_lost"
    other = raw_resource(library, K2400)
    assert other.query(":OUTP?") == "ON" and float(other.query(":SOUR:CURR?")) == pytest.approx(-0.002)
    bench.source.instrument.resource = other  # reconnected: the recovery path ramps it down
    assert bench.source.ramp_down_output() == pytest.approx(-0.002)
    assert other.query(":OUTP?") == "OFF"
