"""What the device does when the load misbehaves, as seen in telemetry and events: the resistance limit
(S5) and an electrode lift (S6) (``docs/protocol.md`` §4.3, §5 StatusFlags and EventCode), provoked with
the load fixture (:mod:`iontodrive.conformance.fixture`).

* ``RESISTANCE-LIMIT``: during a session at the test current the fixture raises the load in steps of
  :data:`LOAD_STEP` every :data:`LOAD_STEP_DEVICE_S` (slower than any lift, S6) until the measured current
  falls clearly below the set-point (the voltage at compliance). The device must report
  ``RESISTANCE_LIMIT`` (flag and event, value = the held current), bring the set-point down to the held
  current without a step and hold it there (the session goes on: no pause, no trip); when the load comes
  back, ``RESISTANCE_LIMIT_CLEARED`` (value = the set-point), the flag cleared, and a ramp back up to the
  target at the session's ramp-up rate, again without a step.
* ``ELECTRODE-LIFT``: during a session the fixture opens the circuit. The device must record
  ``ELECTRODE_LIFT`` (state PAUSING) and ramp the set-point to zero at the slew limit, reaching PAUSED
  within 1 s of the lift with the ``ELECTRODE_LIFT`` flag and the dose kept; when the contact returns,
  nothing comes back by itself; ``Resume`` repeats the contact check and clears the flag.
"""

from __future__ import annotations

from iontodrive.protocol import (
    OPEN_CIRCUIT_OHM,
    DeviceState,
    Event,
    EventCode,
    Resume,
    StatusFlags,
    Telemetry,
)

from ..observe import ROUNDING_UA, in_states, worst_jump
from ..probe import Probe, ramp_budget_s
from ..rule import Rule, expect, rule
from .ramps import check_ramp, observe, samples

S = DeviceState
#: The resistance rule raises the load by at most this factor per step ...
LOAD_STEP = 1.15
#: ... one step per this many device seconds: 1.32 per second, below S6's lift (+50 % within 1 s (j)).
LOAD_STEP_DEVICE_S = 0.5
#: The load is high enough once the measured current is below this share of the set-point.
LIMITED_FRACTION = 0.85
#: Loads are never raised beyond this multiple of compliance / test current (a device that never limits).
MAX_LOAD_FACTOR = 4
#: Device seconds within which the device must report the limit once the load stopped rising, and
#: report it cleared once the load is back (S5: 2 s at >= 95 % of compliance (j), plus the ramps).
LIMIT_REPORT_DEVICE_S = 5.0
#: Device seconds the held current is watched.
HELD_WATCH_DEVICE_S = 1.0
#: The held current and the measured current agree within this share (plus the measurement allowance).
HELD_TOLERANCE = 0.05
#: S6: the output is at zero within this many device seconds of the lift.
LIFT_ZERO_DEVICE_S = 1.0
#: Device seconds a paused session is watched after the contact returned, for not resuming by itself.
RETURN_WATCH_DEVICE_S = 2.0


def _events_since(probe: Probe, mark: int, code: EventCode) -> list[Event]:
    return [e for _, e in probe.events[mark:] if e.code == code and not e.replayed]


def _await_event(probe: Probe, mark: int, code: EventCode, device_s: float) -> Event:
    probe.wait_until(
        lambda: bool(_events_since(probe, mark, code)),
        probe.host_s(device_s) + 1.0,
        what=f"a {code.name} event",
    )
    return _events_since(probe, mark, code)[0]


def _no_protective_stop(seen: list[Telemetry], what: str) -> None:
    wrong = [s for s in seen if s.state not in (S.HOLD, S.ADJUST)]
    expect(
        not wrong,
        f"{what}: the session went to {wrong[0].state.name if wrong else ''} (S5: the current is held, the "
        "session goes on)",
    )


@rule(
    "RESISTANCE-LIMIT",
    "§4.3, §5, S5",
    "at compliance the current is held at the reachable level with RESISTANCE_LIMIT (flag, event), never "
    "a step; when the load returns RESISTANCE_LIMIT_CLEARED and a ramp back to the target",
    needs_load=True,
    needs_fixture=True,
)
def resistance_limit(probe: Probe) -> str:
    fixture = probe.load_fixture
    observe(probe)
    start = probe.start()
    target = start.target_current_ua
    compliance_mv = probe.ident.compliance_mv
    ceiling_ohm = MAX_LOAD_FACTOR * compliance_mv * 1000 // max(1, target)
    mark_t, mark_e = len(probe.telemetry), len(probe.events)
    load_ohm = fixture.nominal_ohm
    steps = 0
    while True:
        latest = probe.latest()
        if latest is not None and (
            latest.measured_ua < LIMITED_FRACTION * latest.setpoint_ua
            or latest.flags & StatusFlags.RESISTANCE_LIMIT
        ):
            break
        expect(
            load_ohm <= ceiling_ohm,
            f"at {load_ohm} ohm (compliance {compliance_mv} mV / {target} uA x {MAX_LOAD_FACTOR}) the "
            f"measured current is still {latest.measured_ua if latest else '?'} uA: the output does not "
            "reach its compliance limit",
        )
        load_ohm = round(load_ohm * LOAD_STEP)
        fixture.set_load_ohm(load_ohm)
        steps += 1
        probe.wait(probe.host_s(LOAD_STEP_DEVICE_S))
        _no_protective_stop(samples(probe)[mark_t:], f"raising the load to {load_ohm} ohm")
    event = _await_event(probe, mark_e, EventCode.RESISTANCE_LIMIT, LIMIT_REPORT_DEVICE_S)
    expect(
        event.state in (S.ADJUST, S.HOLD),
        f"RESISTANCE_LIMIT carries state {event.state.name}; the session goes on (ADJUST or HOLD)",
    )
    held_ua = int(event.value)
    expect(0 < held_ua < target, f"RESISTANCE_LIMIT holds {held_ua} uA; the target is {target} uA")
    probe.wait_until(
        lambda: (s := probe.latest()) is not None and s.state == S.HOLD and s.setpoint_ua <= held_ua,
        probe.host_s(ramp_budget_s(1000 * target / max(1, probe.ident.slew_limit_ua_per_s))),
        what=f"HOLD at the held current {held_ua} uA",
    )
    probe.wait(probe.host_s(HELD_WATCH_DEVICE_S))
    limited = samples(probe)[mark_t:]
    _no_protective_stop(limited, "at the resistance limit")
    flagged = [s for s in limited if s.flags & StatusFlags.RESISTANCE_LIMIT]
    expect(bool(flagged), "no telemetry sample carries the RESISTANCE_LIMIT flag (§5)")
    held = in_states(limited[limited.index(flagged[0]) :], (S.HOLD,))
    allowance = HELD_TOLERANCE * held_ua + probe.margin_ua
    off = [s for s in held if abs(s.measured_ua - held_ua) > allowance or s.setpoint_ua > held_ua]
    expect(
        not off,
        f"at the resistance limit the set-point is {off[0].setpoint_ua if off else 0} uA and the measured "
        f"current {off[0].measured_ua if off else 0} uA; the held current is {held_ua} uA (S5)",
    )
    slew = probe.ident.slew_limit_ua_per_s
    jump = worst_jump(limited, lambda s: s.setpoint_ua, slew, ROUNDING_UA)
    expect(jump is None or jump.ok, (jump.describe("the set-point") if jump else "") + f"; slew {slew} uA/s")
    # The load comes back: the limit clears and the output ramps back to the target.
    mark_t, mark_e = len(probe.telemetry), len(probe.events)
    fixture.set_load_ohm(fixture.nominal_ohm)
    cleared = _await_event(probe, mark_e, EventCode.RESISTANCE_LIMIT_CLEARED, LIMIT_REPORT_DEVICE_S)
    expect(
        cleared.value == target,
        f"RESISTANCE_LIMIT_CLEARED carries {cleared.value}; the set-point of the session is {target} uA",
    )
    rate_up = target * 1000 / start.ramp_up_ms
    probe.wait_until(
        lambda: (s := probe.latest()) is not None and s.state == S.HOLD and s.setpoint_ua == target,
        probe.host_s(ramp_budget_s(start.ramp_up_ms)),
        what=f"HOLD at the target {target} uA after the limit cleared",
    )
    back = samples(probe)[mark_t:]
    expect(
        not back[-1].flags & StatusFlags.RESISTANCE_LIMIT,
        "RESISTANCE_LIMIT_CLEARED was recorded but the flag stays set",
    )
    jump = worst_jump(back, lambda s: s.setpoint_ua, rate_up, ROUNDING_UA)
    expect(
        jump is None or jump.ok,
        (jump.describe("the set-point") if jump else "")
        + f"; back to the target at the ramp-up rate {rate_up:.0f} uA/s",
    )
    return (
        f"{steps} load steps to {load_ohm} ohm: RESISTANCE_LIMIT at {held_ua} uA (target {target} uA), "
        f"held without a step; load back: RESISTANCE_LIMIT_CLEARED, ramped back to {target} uA"
    )


@rule(
    "ELECTRODE-LIFT",
    "§4.3, §5, S6",
    "an open circuit during output: ELECTRODE_LIFT, a ramp to zero at the slew limit within 1 s, PAUSED "
    "with the dose kept; returning contact brings nothing back, Resume does",
    needs_load=True,
    needs_fixture=True,
)
def electrode_lift(probe: Probe) -> str:
    fixture = probe.load_fixture
    observe(probe)
    start = probe.start()
    mark_t, mark_e = len(probe.telemetry), len(probe.events)
    fixture.open_circuit()
    lift = _await_event(probe, mark_e, EventCode.ELECTRODE_LIFT, LIFT_ZERO_DEVICE_S)
    expect(
        lift.state == S.PAUSING,
        f"ELECTRODE_LIFT carries state {lift.state.name}; the state after the lift is PAUSING (§4.3)",
    )
    paused = _await_event(probe, mark_e, EventCode.PAUSED, LIFT_ZERO_DEVICE_S + 1.0)
    took_ms = (paused.device_time_ms - lift.device_time_ms) & 0xFFFF_FFFF
    expect(
        took_ms <= LIFT_ZERO_DEVICE_S * 1000,
        f"the output reached zero {took_ms} ms after ELECTRODE_LIFT; S6 allows {LIFT_ZERO_DEVICE_S:.0f} s",
    )
    probe.await_telemetry_state((S.PAUSED,), 1.0)
    seen = samples(probe)[mark_t:]
    slew = probe.ident.slew_limit_ua_per_s
    ramp = check_ramp(seen, S.PAUSING, slew, start.target_current_ua / slew, "lift ramp at the slew limit")
    status = probe.status()
    expect(status.state == S.PAUSED, f"after the lift the device is in {status.state.name}, not PAUSED")
    expect(
        bool(status.flags & StatusFlags.ELECTRODE_LIFT),
        f"PAUSED after a lift without the ELECTRODE_LIFT flag: {status.flags!r}",
    )
    expect(
        status.charge_uas == paused.value,
        f"the dose is {status.charge_uas} uA*s in PAUSED; the PAUSED event kept {paused.value} (S6: kept)",
    )
    mark_t = len(probe.telemetry)
    fixture.restore()
    probe.wait(probe.host_s(RETURN_WATCH_DEVICE_S))
    after = samples(probe)[mark_t:]
    moved = [s for s in after if s.state != S.PAUSED or s.setpoint_ua != 0 or s.measured_ua > probe.margin_ua]
    expect(
        not moved,
        f"the contact returned and the output came back by itself: {moved[0].state.name if moved else ''}, "
        f"set-point {moved[0].setpoint_ua if moved else 0} uA (S6: never by itself)",
    )
    expect(bool(after), "no telemetry while the session was paused after the lift")
    probe.ack(Resume())
    resumed = probe.wait_state((S.RAMP_UP, S.HOLD), ramp_budget_s(0))
    expect(
        not resumed.flags & StatusFlags.ELECTRODE_LIFT,
        "a successful Resume after the lift leaves the ELECTRODE_LIFT flag set (§5: cleared by it)",
    )
    value = "open circuit" if lift.value == OPEN_CIRCUIT_OHM else f"{lift.value} ohm"
    return (
        f"ELECTRODE_LIFT ({value}) in PAUSING; {ramp}; PAUSED {took_ms} ms after the lift with the flag and "
        f"{status.charge_uas} uA*s kept; contact back: stayed PAUSED; Resume cleared the flag"
    )


RULES: tuple[Rule, ...] = (resistance_limit, electrode_lift)
