"""The device's own reports: telemetry rate and numbering (§8.4, S14), events (§5, §7.4), Reset and
power-up (§4.2 Reset, S15), the contact check (§4.2 CheckContact, S3), the dose (S11) and reply times
(§8.3)."""

from __future__ import annotations

from itertools import pairwise

from iontodrive.protocol import (
    DEFAULT_REPLY_TIMEOUT_MS,
    DEFAULT_TELEMETRY_HZ,
    DEFAULT_WATCHDOG_MS,
    OPEN_CIRCUIT_OHM,
    CheckContact,
    ConfigureTelemetry,
    ContactReport,
    ContactVerdict,
    DeviceState,
    Event,
    EventCode,
    EventsReport,
    FetchEvents,
    GetStatus,
    Message,
    Pause,
    Reset,
    SetWatchdog,
    Start,
    Stop,
)

from ..probe import Probe, describe, ramp_budget_s
from ..rule import Rule, RuleFailed, expect, rule
from .ramps import observe, samples

S = DeviceState
RATE_TOLERANCE = 0.1
IN_FLIGHT_HOST_S = 0.05  # host time to let frames already sent arrive before judging a new rate
CONTACT_LOW_OHM = 200  # S3 (j): the short-circuit limit §4.2 ContactReport names
CONTACT_HIGH_CAP_OHM = 10_000  # S3 (j): the upper limit before the compliance term
CONTACT_HIGH_FRACTION = 0.8  # S3: 0.8 × V_compliance / I_target
DOSE_TOLERANCE = 0.01  # S11: within 1 %
REACTION_WAIT_S = 0.02  # host time read after an Ack for the events of its reaction
DOSE_HOLD_S = 10  # seconds at the target between the two ramps of the dose rule


def _rate_check(probe: Probe, rate: int, device_s: float) -> str:
    probe.ack(ConfigureTelemetry(rate))
    probe.drain(IN_FLIGHT_HOST_S)  # samples sent before the change may still be on the wire
    mark = len(probe.telemetry)
    probe.wait(probe.host_s(device_s))
    got = [s for _, s in probe.telemetry[mark:]]
    if rate == 0:
        expect(not got, f"{len(got)} samples after ConfigureTelemetry(0)")
        return "rate 0: no samples"
    expect(len(got) >= 3, f"{len(got)} samples in {device_s} s at {rate} Hz")
    span = (got[-1].device_time_ms - got[0].device_time_ms) / 1000
    measured = (len(got) - 1) / span if span > 0 else 0.0
    expect(
        abs(measured - rate) <= RATE_TOLERANCE * rate + 1 / device_s,
        f"{measured:.2f} Hz of device time for ConfigureTelemetry({rate})",
    )
    numbers = [s.sample_no for s in got]
    gaps = [(a, b) for a, b in pairwise(numbers) if (b - a) & 0xFFFF_FFFF != 1]
    expect(not gaps, f"sample_no does not go up by one: {gaps[:3]}")
    expect(probe.status().telemetry_hz == rate, "status telemetry_hz differs from the rate set")
    return f"{rate} Hz: {measured:.2f} Hz measured, sample_no +1 each"


@rule(
    "TELEMETRY-RATE",
    "§8.4, S14",
    "2 Hz after power-up; ConfigureTelemetry sets the rate in device time; 0 is off",
)
def telemetry_rate(probe: Probe) -> str:
    notes = [_rate_check(probe, DEFAULT_TELEMETRY_HZ, 4.0)]
    fast = probe.observe_hz()
    notes.append(_rate_check(probe, fast, 1.0))
    notes.append(_rate_check(probe, 0, 1.0))
    return "; ".join(notes)


@rule(
    "EVENTS-NUMBERING",
    "§5 EventCode, §7.4",
    "event 1 is POWER_ON; numbers +1; FetchEvents replays them in order",
)
def events_numbering(probe: Probe) -> str:
    probe.ack(SetWatchdog(probe.ident.min_watchdog_ms))
    probe.ack(ConfigureTelemetry(DEFAULT_TELEMETRY_HZ))
    probe.ack(SetWatchdog(DEFAULT_WATCHDOG_MS))
    probe.drain(0.05)
    sent = probe.clock()
    report = probe.request(FetchEvents(0, 255))
    if not isinstance(report, EventsReport):
        raise RuleFailed(f"FetchEvents answered {describe(report)}")
    probe.drain(0.1)
    replayed = [e for t, e in probe.events if e.replayed and t >= sent]
    expect(
        len(replayed) == report.count,
        f"EventsReport count {report.count}, {len(replayed)} replayed events followed",
    )
    expect(
        bool(replayed) and replayed[0].event_no == 1 and replayed[0].code == EventCode.POWER_ON,
        f"the first event after Reset is {replayed[0] if replayed else None!r}; expected event 1 POWER_ON",
    )
    numbers = [e.event_no for e in replayed]
    expect(numbers == list(range(1, len(numbers) + 1)), f"event numbers {numbers}")
    expect(
        report.next_event_no == numbers[-1] + 1,
        f"next_event_no {report.next_event_no} after event {numbers[-1]}",
    )
    live = [e.event_no for _, e in probe.events if not e.replayed]
    expect(
        live == sorted(live) and all(n in numbers for n in live),
        f"live events {live} do not match the ring {numbers}",
    )
    codes = [e.code for e in replayed]
    expect(
        codes.count(EventCode.WATCHDOG_CHANGED) == 2 and EventCode.TELEMETRY_CHANGED in codes,
        f"events {[c.name for c in codes]}",
    )
    return (
        f"{len(numbers)} events 1..{numbers[-1]}, POWER_ON first, replayed in order, next "
        f"{report.next_event_no}"
    )


#: What §5 says an event's ``state`` must be for events that always end in one state.
_EVENT_STATES: dict[EventCode, frozenset[DeviceState]] = {
    EventCode.SESSION_STARTED: frozenset({S.CONTACT_CHECK}),
    EventCode.STOPPED: frozenset({S.RAMP_DOWN, S.DONE}),
    EventCode.PAUSED: frozenset({S.PAUSED}),
    EventCode.SESSION_ENDED: frozenset({S.DONE}),
    EventCode.LINK_LOST: frozenset({S.PAUSING, S.RAMP_DOWN, S.FAULT}),
}


def judge_reaction(events: list[Event], before: DeviceState) -> DeviceState:
    """Check the events of one reaction (one request, or one step of the device's own): every event
    carries the state the reaction ends in, STATE_CHANGED's value is the state it left. Returns the state
    the reaction ended in; raises RuleFailed."""
    final = before
    for event in events:
        if event.code == EventCode.STATE_CHANGED:
            expect(
                int(event.value) == int(final),
                f"STATE_CHANGED {event.event_no}: value {event.value}, but the state was {final.name}",
            )
            final = event.state
    for event in events:
        expect(
            event.state == final,
            f"{event.code.name} (event {event.event_no}) carries state {event.state.name}; the device was in "
            f"{final.name} after reacting (§5: Event.state is the state after the event)",
        )
        allowed = _EVENT_STATES.get(event.code)
        if allowed is not None:
            expect(
                event.state in allowed,
                f"{event.code.name} carries state {event.state.name}; expected "
                f"{sorted(a.name for a in allowed)}",
            )
    return final


def _reaction(probe: Probe, message: Message) -> list[Event]:
    """Send ``message`` (it must be acknowledged) and return the live events of its reaction: those that
    arrive right after the Ack, at the device time of the first of them."""
    mark = len(probe.events)
    probe.ack(message)
    probe.drain(REACTION_WAIT_S)
    new = [e for _, e in probe.events[mark:] if not e.replayed]
    return [e for e in new if e.device_time_ms == new[0].device_time_ms] if new else []


@rule(
    "EVENTS-STATE-AFTER",
    "§5 EventCode, §4.2 Event",
    "Event.state is the state after the device reacted; STATE_CHANGED's value is the previous state",
    needs_load=True,
)
def events_state_after(probe: Probe) -> str:
    start = probe.session_request()
    reactions = [_reaction(probe, start)]
    probe.wait_state((S.HOLD,), ramp_budget_s(start.ramp_up_ms))
    reactions.append(_reaction(probe, Pause()))
    probe.wait_state((S.PAUSED,), ramp_budget_s(start.ramp_down_ms))
    reactions.append(_reaction(probe, Stop()))
    caused = {e.event_no for group in reactions for e in group}
    own: dict[int, list[Event]] = {}
    for _, event in probe.events:
        if not event.replayed and event.event_no not in caused:
            own.setdefault(event.device_time_ms, []).append(event)
    groups = sorted([*reactions, *own.values()], key=lambda group: group[0].event_no if group else 0)
    state = DeviceState.IDLE
    for group in groups:
        if group:
            state = judge_reaction(sorted(group, key=lambda e: e.event_no), state)
    names = [e.code.name for group in reactions for e in group]
    expect(
        EventCode.SESSION_STARTED.name in names and EventCode.STOPPED.name in names,
        f"reaction events {names}",
    )
    count = sum(len(g) for g in groups)
    return (
        f"{count} events in {len(groups)} reactions (Start, Pause, Stop and the device's own) carry the "
        "state after"
    )


@rule(
    "RESET-POWER-UP",
    "§4.2 Reset, S15",
    "Reset restarts: IDLE, watchdog 2000 ms, telemetry 2 Hz, events from 1",
)
def reset_power_up(probe: Probe) -> str:
    ident = probe.ident
    probe.ack(SetWatchdog(ident.max_watchdog_ms))
    probe.ack(ConfigureTelemetry(min(10, ident.max_telemetry_hz)))
    probe.ack(Reset())
    probe.drain(0.05)
    probe.decoder.reset()
    status = probe.status()
    expect(status.state == S.IDLE, f"state {status.state.name} after Reset")
    expect(
        status.watchdog_ms == DEFAULT_WATCHDOG_MS,
        f"watchdog {status.watchdog_ms} ms after Reset; expected {DEFAULT_WATCHDOG_MS}",
    )
    expect(status.telemetry_hz == DEFAULT_TELEMETRY_HZ, f"telemetry {status.telemetry_hz} Hz after Reset")
    expect(
        status.session_id == 0 and status.setpoint_ua == 0,
        f"session {status.session_id}, set-point {status.setpoint_ua} uA after Reset",
    )
    report = probe.request(FetchEvents(0, 1))
    expect(
        isinstance(report, EventsReport) and report.first_available_no == 1,
        f"after Reset the ring starts at {describe(report)}",
    )
    return f"IDLE, watchdog {status.watchdog_ms} ms, telemetry {status.telemetry_hz} Hz, ring from event 1"


def verdict_for(report: ContactReport) -> ContactVerdict:
    """The verdict a ContactReport's impedance earns against its own limits (§4.2, S3)."""
    z = report.impedance_ohm
    if z == OPEN_CIRCUIT_OHM:
        return ContactVerdict.OPEN
    if z < report.low_limit_ohm:
        return ContactVerdict.LOW
    if z > report.high_limit_ohm:
        return ContactVerdict.HIGH
    return ContactVerdict.OK


@rule(
    "CONTACT-REPORT",
    "§4.2 CheckContact, §4.3, S3",
    "a contact check reports its limits and a verdict that follows them",
    needs_load=True,
)
def contact_report(probe: Probe) -> str:
    ident = probe.ident
    target = probe.test_current_ua
    report = probe.request(CheckContact(50, target))
    if not isinstance(report, ContactReport):
        raise RuleFailed(f"CheckContact(50, {target}) answered by {describe(report)}")
    high = min(CONTACT_HIGH_CAP_OHM, int(CONTACT_HIGH_FRACTION * ident.compliance_mv * 1000 / target))
    expect(report.probe_current_ua <= 50, f"probe {report.probe_current_ua} uA; S3 allows at most 50")
    expect(
        report.low_limit_ohm == CONTACT_LOW_OHM,
        f"low limit {report.low_limit_ohm} ohm; §4.2 says {CONTACT_LOW_OHM}",
    )
    expect(
        abs(report.high_limit_ohm - high) <= 1,
        f"high limit {report.high_limit_ohm} ohm; min(10 kohm, 0.8 x compliance / target) = {high}",
    )
    z = report.impedance_ohm
    expect(
        report.verdict == verdict_for(report),
        f"verdict {report.verdict.name} for {z} ohm within {report.low_limit_ohm}..{report.high_limit_ohm}",
    )
    after = probe.status()
    expect(
        after.state == S.IDLE,
        f"CheckContact moved the device to {after.state.name} (§4.3: a spot measurement)",
    )
    recorded = [e.code for _, e in probe.events if not e.replayed]
    wanted = EventCode.CONTACT_OK if report.verdict == ContactVerdict.OK else EventCode.CONTACT_FAILED
    expect(
        wanted in recorded,
        f"no {wanted.name} event for the contact check (§4.3); events {[c.name for c in recorded]}",
    )
    expect(
        report.verdict == ContactVerdict.OK,
        f"verdict {report.verdict.name} at {z} ohm: connect the load of docs/conformance.md §3",
    )
    return f"{z} ohm, OK within {report.low_limit_ohm}..{report.high_limit_ohm} ohm at {target} uA"


@rule(
    "DOSE-LANDS",
    "§4.2 Start, S11",
    "a dose-based session ends on its own with the charge within 1 % of the dose",
    needs_load=True,
)
def dose_lands(probe: Probe) -> str:
    target = probe.test_current_ua
    ramp = probe.drive.min_ramp_ms
    dose = int(target * (ramp / 1000 + DOSE_HOLD_S))  # two half-ramps and DOSE_HOLD_S at the target
    start = Start(target, dose, 0, ramp, ramp, probe.session_request().polarity)
    probe.start(start, until=())
    budget = 2 * ramp / 1000 + DOSE_HOLD_S
    status = probe.wait_state((S.DONE,), budget * 1.5 + 2)
    error = abs(status.charge_uas - dose) / dose
    expect(
        error <= DOSE_TOLERANCE,
        f"delivered {status.charge_uas} uA*s for a dose of {dose} uA*s ({error * 100:.2f} % off; S11 allows "
        "1 %)",
    )
    codes = [e.code for _, e in probe.events if not e.replayed]
    expect(
        EventCode.DOSE_COMPLETE in codes and EventCode.SESSION_ENDED in codes,
        f"events {[c.name for c in codes]}: expected DOSE_COMPLETE and SESSION_ENDED",
    )
    return f"{status.charge_uas} uA*s for {dose} uA*s ({error * 100:.2f} % off)"


@rule("REPLY-DEADLINE", "§8.3", "replies arrive within the host's 250 ms deadline (should: within 50 ms)")
def reply_deadline(probe: Probe) -> str:
    times = []
    for _ in range(20):
        sent = probe.clock()
        probe.request(GetStatus(), retries=0)
        times.append(probe.clock() - sent)
    times.sort()
    worst = times[-1]
    expect(worst <= DEFAULT_REPLY_TIMEOUT_MS / 1000, f"slowest reply {worst * 1000:.1f} ms")
    return f"20 GetStatus: median {times[10] * 1000:.1f} ms, slowest {worst * 1000:.1f} ms (host clock)"


@rule(
    "DOSE-SMALL",
    "§4.3, S11",
    "a dose smaller than its own ramps is accepted, peaks below the target and still lands on the dose",
    needs_load=True,
)
def dose_small(probe: Probe) -> str:
    target = probe.test_current_ua
    ramp = probe.drive.min_ramp_ms
    dose = max(1, int(target * ramp / 1000 / 4))  # a quarter of what the two ramps alone would deliver
    observe(probe)
    probe.start(Start(target, dose, 0, ramp, ramp, probe.session_request().polarity), until=())
    status = probe.wait_state((S.DONE,), ramp_budget_s(2 * ramp, slack_s=2))
    error = abs(status.charge_uas - dose) / dose
    peak = max((s.setpoint_ua for s in samples(probe)), default=0)
    expect(
        error <= DOSE_TOLERANCE,
        f"delivered {status.charge_uas} uA*s for a dose of {dose} uA*s ({error * 100:.2f} % off; S11 allows "
        "1 %)",
    )
    expect(0 < peak < target, f"the set-point peaked at {peak} uA; §4.3: below the target {target} uA")
    return f"{status.charge_uas} uA*s for {dose} uA*s ({error * 100:.2f} % off), peak {peak} of {target} uA"


RULES: tuple[Rule, ...] = (
    reply_deadline,
    telemetry_rate,
    events_numbering,
    reset_power_up,
    contact_report,
    events_state_after,
    dose_lands,
    dose_small,
)
