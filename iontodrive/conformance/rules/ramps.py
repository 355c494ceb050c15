"""Ramps, never steps (S1, S2, S4, S7; ``docs/protocol.md`` §4.2 Start, SetCurrent, Pause, Resume, Stop,
Abort), as seen in telemetry.

Each rule runs one session at the suite's test current (a quarter of ``max_current_ua``) with the
shortest ramps the identity allows, watches telemetry at :meth:`Probe.observe_hz`, and judges in device
time (:mod:`iontodrive.conformance.observe`): the set-point follows the requested ramp, the measured
current never changes faster than ``slew_limit_ua_per_s``, and every ramp lasts what was asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from statistics import median

from iontodrive.protocol import (
    Abort,
    ConfigureTelemetry,
    DeviceState,
    EventCode,
    Pause,
    Resume,
    SetCurrent,
    StatusFlags,
    Stop,
    Telemetry,
    Waveform,
    WaveformSet,
)

from ..observe import ROUNDING_UA, in_states, length_ok, period_s, ramp_span, worst_jump
from ..probe import Probe, ramp_budget_s
from ..rule import NotApplicable, Rule, expect, rule

S = DeviceState
HOLD_OBSERVE_DEVICE_S = 0.3  # device time watched at the set-point before the next step of a rule
PAUSED_OBSERVE_DEVICE_S = 1.0  # device time a paused session is watched for staying at zero
PULSE_OBSERVE_DEVICE_S = 2.0  # device time a pulsed session is watched at its target
PULSE_DUTY_PERCENT = 50  # the duty the pulse rule asks for (within the identity's range)
PULSE_FREQUENCY_HZ = 13  # a period no telemetry rate divides, so that samples sweep the phase (in range)
PULSE_CHARGE_TOLERANCE = 0.02  # charge rate within 2 % of set-point x duty, plus one period's charge


def samples(probe: Probe) -> list[Telemetry]:
    """Every telemetry sample the rule has seen so far, oldest first."""
    return [sample for _, sample in probe.telemetry]


def observe(probe: Probe) -> None:
    """Ask for telemetry fast enough to watch ramps."""
    probe.ack(ConfigureTelemetry(probe.observe_hz()))


def check_measured_slew(probe: Probe, seen: Sequence[Telemetry]) -> str:
    """The measured current never changed faster than the slew limit (S2), with the allowances."""
    slew = probe.ident.slew_limit_ua_per_s
    jump = worst_jump(seen, lambda s: s.measured_ua, slew, probe.margin_ua)
    expect(jump is not None, "fewer than two telemetry samples: cannot judge the output")
    assert jump is not None
    expect(jump.ok, jump.describe("the measured current") + f"; slew limit {slew} uA/s (S2)")
    return f"measured current within the slew limit {slew} uA/s over {len(seen)} samples"


def check_ramp(
    seen: Sequence[Telemetry], state: DeviceState, rate_ua_per_s: float, expected_s: float, what: str
) -> str:
    """The set-point in ``state`` moves at ``rate`` (no step) and the ramp lasts ``expected_s``."""
    run = in_states(seen, (state,))
    expect(len(run) >= 2, f"{what}: {len(run)} telemetry sample(s) in {state.name}; expected a ramp")
    jump = worst_jump(run, lambda s: s.setpoint_ua, rate_ua_per_s, ROUNDING_UA)
    assert jump is not None
    expect(
        jump.ok,
        f"{what}: " + jump.describe("the set-point") + f"; the ramp's rate is {rate_ua_per_s:.0f} uA/s",
    )
    first, last = ramp_span(seen, state)
    period = period_s(seen)
    expect(
        length_ok(last - first, expected_s, period),
        f"{what}: {state.name} lasted {last - first:.3f} s of device time; expected {expected_s:.3f} s",
    )
    return f"{what} {last - first:.2f} s (expected {expected_s:.2f} s)"


def _stable_at(seen: Sequence[Telemetry], state: DeviceState, setpoint_ua: int, what: str) -> None:
    run = in_states(seen, (state,))
    expect(bool(run), f"{what}: no telemetry sample in {state.name}")
    off = [s for s in run if abs(s.setpoint_ua - setpoint_ua) > ROUNDING_UA]
    expect(
        not off,
        f"{what}: set-point {off[0].setpoint_ua if off else 0} uA in {state.name}, expected {setpoint_ua}",
    )


def _events(probe: Probe) -> list[EventCode]:
    return [event.code for _, event in probe.events if not event.replayed]


@rule(
    "RAMP-UP",
    "§4.2 Start, S1, S2, S4",
    "output starts from zero and ramps to the target over ramp_up_ms",
    needs_load=True,
)
def ramp_up(probe: Probe) -> str:
    observe(probe)
    start = probe.start()
    probe.wait(probe.host_s(HOLD_OBSERVE_DEVICE_S))
    seen = samples(probe)
    slew_note = check_measured_slew(probe, seen)
    up = in_states(seen, (S.RAMP_UP,))
    expect(bool(up), "no telemetry sample in RAMP_UP: the output reached its target at once")
    first_step = (
        start.target_current_ua / start.ramp_up_ms * 1000 * max(period_s(seen), 0.01) * 2 + ROUNDING_UA
    )
    expect(
        up[0].setpoint_ua <= first_step, f"the ramp up began at {up[0].setpoint_ua} uA, not from zero (S4)"
    )
    rate = start.target_current_ua * 1000 / start.ramp_up_ms
    note = check_ramp(seen, S.RAMP_UP, rate, start.ramp_up_ms / 1000, "ramp up")
    _stable_at(seen, S.HOLD, start.target_current_ua, "after the ramp")
    return f"{note}, from zero to {start.target_current_ua} uA; {slew_note}"


@rule(
    "RAMP-STOP",
    "§4.2 Stop, §4.3, S1, S2",
    "Stop ramps the output to zero over ramp_down_ms, then DONE",
    needs_load=True,
)
def ramp_stop(probe: Probe) -> str:
    observe(probe)
    start = probe.start()
    probe.wait(probe.host_s(HOLD_OBSERVE_DEVICE_S))
    probe.ack(Stop())
    probe.wait_state((S.DONE,), ramp_budget_s(start.ramp_down_ms))
    probe.wait(probe.host_s(HOLD_OBSERVE_DEVICE_S))
    seen = samples(probe)
    rate = start.target_current_ua * 1000 / start.ramp_down_ms
    note = check_ramp(seen, S.RAMP_DOWN, rate, start.ramp_down_ms / 1000, "ramp down")
    done = in_states(seen, (S.DONE,))
    expect(bool(done), "no telemetry sample in DONE")
    last = done[-1]
    expect(
        all(s.setpoint_ua == 0 and s.measured_ua == 0 and s.voltage_mv == 0 for s in done[1:] or done),
        f"in DONE the output reads set-point {last.setpoint_ua} uA, measured {last.measured_ua} uA, "
        f"{last.voltage_mv} mV; §4.3: 0 while the output is disabled",
    )
    expect(not last.flags & StatusFlags.OUTPUT_ON, f"OUTPUT_ON still set in DONE: {last.flags!r}")
    codes = _events(probe)
    expect(
        EventCode.STOPPED in codes and EventCode.SESSION_ENDED in codes,
        f"events {[c.name for c in codes]}: expected STOPPED and SESSION_ENDED",
    )
    return f"{note}; " + check_measured_slew(probe, seen)


@rule(
    "RAMP-ABORT",
    "§4.2 Abort, S1, S2",
    "Abort ramps to zero at the slew limit: fast, but never a step",
    needs_load=True,
)
def ramp_abort(probe: Probe) -> str:
    observe(probe)
    start = probe.start()
    probe.wait(probe.host_s(HOLD_OBSERVE_DEVICE_S))
    probe.ack(Abort())
    probe.wait_state((S.DONE,), probe.ident.max_ramp_ms / 1000 + 1)  # judged below, not by this wait
    probe.wait(probe.host_s(HOLD_OBSERVE_DEVICE_S))
    seen = samples(probe)
    slew = probe.ident.slew_limit_ua_per_s
    expected = start.target_current_ua / slew
    note = check_ramp(seen, S.RAMP_DOWN, slew, expected, "abort ramp")
    return f"{note} at {slew} uA/s; " + check_measured_slew(probe, seen)


@rule(
    "RAMP-SETCURRENT",
    "§4.2 SetCurrent, S1",
    "SetCurrent moves the set-point along a ramp of ramp_ms (ADJUST), then HOLD at the new value",
    needs_load=True,
)
def ramp_setcurrent(probe: Probe) -> str:
    observe(probe)
    start = probe.start()
    new = max(1, start.target_current_ua // 2)
    ramp_ms = probe.drive.min_ramp_ms
    probe.ack(SetCurrent(new, ramp_ms))
    probe.wait_state((S.HOLD,), ramp_budget_s(ramp_ms))
    probe.wait(probe.host_s(HOLD_OBSERVE_DEVICE_S))
    seen = samples(probe)
    after = [s for s in seen if s.state in (S.ADJUST, S.HOLD)]
    rate = (start.target_current_ua - new) * 1000 / ramp_ms
    note = check_ramp(after, S.ADJUST, rate, ramp_ms / 1000, "set-point change")
    tail = [
        s
        for s in after
        if s.state == S.HOLD and s.device_time_ms > in_states(after, (S.ADJUST,))[-1].device_time_ms
    ]
    _stable_at(tail, S.HOLD, new, "after SetCurrent")
    expect(EventCode.SETPOINT_CHANGED in _events(probe), "no SETPOINT_CHANGED event")
    return f"{note}, {start.target_current_ua} -> {new} uA; " + check_measured_slew(probe, seen)


@rule(
    "RAMP-PAUSE-RESUME",
    "§4.2 Pause, Resume, S7",
    "Pause ramps to zero and keeps the dose; Resume checks contact and ramps up from zero again",
    needs_load=True,
)
def ramp_pause_resume(probe: Probe) -> str:
    observe(probe)
    start = probe.start()
    probe.wait(probe.host_s(HOLD_OBSERVE_DEVICE_S))
    probe.ack(Pause())
    paused = probe.wait_state((S.PAUSED,), ramp_budget_s(start.ramp_down_ms))
    charge_paused = paused.charge_uas
    expect(charge_paused > 0, "PAUSED with charge_uas 0: the delivered dose was not kept")
    expect(
        bool(paused.flags & StatusFlags.SESSION_ACTIVE), f"PAUSED without SESSION_ACTIVE: {paused.flags!r}"
    )
    probe.wait(probe.host_s(PAUSED_OBSERVE_DEVICE_S))
    still = probe.status()
    expect(still.state == S.PAUSED, f"a paused session moved to {still.state.name} by itself")
    expect(
        still.charge_uas == charge_paused,
        f"charge moved while paused: {charge_paused} -> {still.charge_uas} uA*s",
    )
    seen_pause = samples(probe)
    rate = start.target_current_ua * 1000 / start.ramp_down_ms
    note = check_ramp(seen_pause, S.PAUSING, rate, start.ramp_down_ms / 1000, "pause ramp")
    mark = len(probe.telemetry)
    probe.ack(Resume())
    probe.wait_state((S.HOLD,), ramp_budget_s(start.ramp_up_ms, slack_s=2))
    resumed = samples(probe)[mark:]
    states = [s.state for s in resumed]
    expect(S.CONTACT_CHECK in states, "Resume went to RAMP_UP without a contact check (S7)")
    up = in_states(resumed, (S.RAMP_UP,))
    expect(
        bool(up) and up[0].setpoint_ua <= start.target_current_ua // 10,
        "the resumed ramp did not start from zero",
    )
    expect(probe.status().charge_uas >= charge_paused, "the charge went back after Resume")
    note2 = check_ramp(
        resumed,
        S.RAMP_UP,
        start.target_current_ua * 1000 / start.ramp_up_ms,
        start.ramp_up_ms / 1000,
        "resume ramp",
    )
    return f"{note}; dose {charge_paused} uA*s kept; {note2}; " + check_measured_slew(probe, samples(probe))


@rule(
    "PULSE-READINGS",
    "§4.3 measured_ua in pulsed DC, S11",
    "pulsed DC: on-phase samples (PULSE_ON) read the amplitude, off-phase about 0; the set-point is the "
    "envelope; the charge grows at set-point x duty",
    needs_load=True,
)
def pulse_readings(probe: Probe) -> str:
    ident = probe.drive
    if not ident.waveforms & WaveformSet.PULSED_DC:
        raise NotApplicable("the identity lacks PULSED_DC")
    frequency_hz = min(max(PULSE_FREQUENCY_HZ, ident.min_pulse_frequency_hz), ident.max_pulse_frequency_hz)
    duty = min(max(PULSE_DUTY_PERCENT, ident.min_duty_percent), ident.max_duty_percent)
    observe(probe)
    start = replace(
        probe.session_request(),
        waveform=Waveform.PULSED_DC,
        pulse_frequency_hz=frequency_hz,
        duty_percent=duty,
    )
    probe.start(start)
    mark = len(probe.telemetry)
    probe.wait(probe.host_s(PULSE_OBSERVE_DEVICE_S))
    hold = in_states(samples(probe)[mark:], (S.HOLD,))
    target = start.target_current_ua
    on = [s.measured_ua for s in hold if s.flags & StatusFlags.PULSE_ON]
    off = [s.measured_ua for s in hold if not s.flags & StatusFlags.PULSE_ON]
    expect(
        len(on) >= 3 and len(off) >= 3,
        f"{len(on)} on-phase and {len(off)} off-phase samples (PULSE_ON) in {len(hold)} samples at "
        f"{frequency_hz} Hz, {duty} %: expected both",
    )
    envelope = [s.setpoint_ua for s in hold if abs(s.setpoint_ua - target) > ROUNDING_UA]
    expect(not envelope, f"set-point {envelope[:1]} uA in HOLD; the envelope is the amplitude {target} uA")
    margin = probe.margin_ua
    expect(
        abs(median(on) - target) <= margin,
        f"on-phase samples read {median(on):.0f} uA (median); the pulse amplitude is {target} uA (§4.3)",
    )
    expect(median(off) <= margin, f"off-phase samples read {median(off):.0f} uA (median); about 0 (§4.3)")
    above = [value for value in on + off if value > target + margin]
    expect(not above, f"a sample reads {above[:1]} uA, above the pulse amplitude {target} uA")
    first, last = hold[0], hold[-1]
    span_s = (last.device_time_ms - first.device_time_ms) / 1000
    expected_uas = target * duty / 100 * span_s
    delivered_uas = last.charge_uas - first.charge_uas
    allowed_uas = PULSE_CHARGE_TOLERANCE * expected_uas + target * duty / 100 / frequency_hz
    expect(
        abs(delivered_uas - expected_uas) <= allowed_uas,
        f"{delivered_uas} uA*s delivered in {span_s:.2f} s at {target} uA x {duty} %; expected "
        f"{expected_uas:.0f} (S11: the charge integrates the measured waveform)",
    )
    return (
        f"{frequency_hz} Hz, {duty} %: on-phase median {median(on):.0f} uA ({len(on)} samples), off-phase "
        f"{median(off):.0f} uA ({len(off)}), set-point {target} uA, {delivered_uas} uA*s in {span_s:.2f} s "
        f"(expected {expected_uas:.0f})"
    )


RULES: tuple[Rule, ...] = (
    ramp_up,
    ramp_stop,
    ramp_abort,
    ramp_setcurrent,
    ramp_pause_resume,
    pulse_readings,
)
