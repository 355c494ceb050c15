"""The request x state table (``docs/protocol.md`` §7.5), read from :mod:`iontodrive.protocol.rules` so that
the table is defined once: the firmware enforces it, the docs render it, and this rule checks a device
against it.

For every state the bench can reach safely (all but FAULT, which needs a real fault: an over-current or
hardware trip, which only a load fixture can provoke; ``STATE-TABLE-FAULT`` checks that column), the
device is brought into that state and every request type
is sent once, in a form whose fields are valid, so that only the state can decide. A refused cell must be
refused with the table's code, field ``STATE`` and the present state as value, and change nothing; an
accepted cell must not be refused for its state, and must leave the device in one of the table's
``then`` states (or where it was, when the table lists none). Cells that change the state are checked on
a freshly reached state each.

Transient states are held open by slow ramps: RAMP_UP, ADJUST, RAMP_DOWN and PAUSING use the longest
ramp the identity allows, and a cell is only judged while less than 75 % of its ramp has run (so that the
request cannot arrive after the ramp ended, even on a simulator at ``--speed 50``). CONTACT_CHECK lasts
what the device's own check lasts (about 200 ms). A cell whose state has moved on, or whose ramp is too
far gone, is retried on a fresh visit (three at most), and not counted if it cannot be hit (the evidence
says which).
"""

from __future__ import annotations

from iontodrive.protocol import (
    MESSAGE_BY_TYPE,
    Abort,
    CheckContact,
    ConfigureTelemetry,
    DeviceState,
    ErrorCode,
    EventCode,
    FetchEvents,
    Field,
    Message,
    MessageType,
    Nack,
    OpenSession,
    Pause,
    Reset,
    SetCurrent,
    SetWatchdog,
    Start,
    StatusFlags,
    StatusReport,
    Stop,
)
from iontodrive.protocol.rules import RULES as TABLE
from iontodrive.protocol.rules import Rule as Cell

from ..idle import await_zero_output, restore_safe_idle
from ..probe import Probe, describe, ramp_budget_s
from ..rule import Rule, RuleFailed, expect, rule

S = DeviceState
UNREACHABLE: dict[DeviceState, str] = {
    S.FAULT: "needs a trip: STATE-TABLE-FAULT checks it with a load fixture"
}
TRIP_DEVICE_S = 2.0  # device time a trip may take to latch once the fixture provoked it
TRANSIENT_TRIES = 3  # fresh visits of a transient state tried for one cell
TRANSIENT = frozenset({S.CONTACT_CHECK, S.RAMP_UP, S.ADJUST, S.RAMP_DOWN, S.PAUSING})
LATE_IN_RAMP = 0.75  # past this share of a ramp, a request might arrive after it ended: not judged there


def ramp_progress(status: StatusReport) -> float:
    """How far (0..1) the ramp of a ramping state has come, from the status alone (0 for other states).

    RAMP_UP rises from 0 to the target, RAMP_DOWN and PAUSING fall from the target to 0, and the suite's
    ADJUST (:func:`reach`) falls from the target to half of it."""
    target = max(1, status.target_current_ua)
    sp = status.setpoint_ua
    if status.state == S.RAMP_UP:
        return sp / target
    if status.state in (S.RAMP_DOWN, S.PAUSING):
        return 1.0 - sp / target
    if status.state == S.ADJUST:
        return 0.0  # the target is already the new one; ADJUST lasts the longest ramp, 60 s
    return 0.0


def sample_request(probe: Probe, request_type: MessageType, status: StatusReport) -> Message:
    """A request of ``request_type`` whose fields are valid in ``status``, so that only the state decides."""
    ident = probe.ident
    if request_type == MessageType.OPEN_SESSION:
        return OpenSession(probe.new_nonce())
    if request_type == MessageType.CHECK_CONTACT:
        return CheckContact(50, probe.test_current_ua)
    if request_type == MessageType.CONFIGURE_TELEMETRY:
        return ConfigureTelemetry(status.telemetry_hz)
    if request_type == MessageType.FETCH_EVENTS:
        return FetchEvents(0, 1)
    if request_type == MessageType.SET_WATCHDOG:
        return SetWatchdog(status.watchdog_ms)
    if request_type == MessageType.START:
        polarity = status.polarity if status.polarity else probe.session_request().polarity
        return probe.session_request(polarity=polarity)  # the same polarity: BAD_STATE, not POLARITY_LOCKED
    if request_type == MessageType.SET_CURRENT:
        target = max(ident.min_current_ua, probe.test_current_ua // 2)
        return SetCurrent(target, ident.max_ramp_ms)
    return MESSAGE_BY_TYPE[request_type]()


def _slow_start(probe: Probe) -> Start:
    ident = probe.ident
    return probe.session_request(ramp_up_ms=ident.max_ramp_ms, ramp_down_ms=ident.max_ramp_ms)


def reach(probe: Probe, state: DeviceState) -> StatusReport:
    """Bring the device from safe idle (or any state) into ``state`` and return the status there.

    Raises RuleFailed if the device does not get there (the evidence names where it is)."""
    ident = probe.ident
    status = probe.status()
    if status.state not in (S.IDLE, S.DONE):
        probe.request(Abort())
        status = probe.wait_state((S.IDLE, S.DONE), ident.max_ramp_ms / 1000 + 1)
    if state == S.IDLE:
        if status.state != S.IDLE:
            probe.ack(Reset())
            probe.drain(0.05)
            probe.decoder.reset()
            probe.open_session()
        return probe.wait_state((S.IDLE,), 1.0)
    fast, slow = probe.session_request(), _slow_start(probe)
    if state == S.DONE:
        probe.ack(fast)
        probe.ack(Abort())
        return probe.wait_state((S.DONE,), 2.0)
    if state == S.CONTACT_CHECK:
        probe.ack(fast)
        return probe.status()
    if state == S.RAMP_UP:
        probe.ack(slow)
        return probe.wait_state((S.RAMP_UP,), 2.0)
    if state == S.HOLD:
        probe.start(fast)
        return probe.status()
    if state == S.ADJUST:
        probe.start(fast)
        probe.ack(SetCurrent(max(ident.min_current_ua, fast.target_current_ua // 2), ident.max_ramp_ms))
        return probe.wait_state((S.ADJUST,), 1.0)
    if state in (S.RAMP_DOWN, S.PAUSING):
        probe.start(probe.session_request(ramp_down_ms=ident.max_ramp_ms))
        probe.ack(Stop() if state == S.RAMP_DOWN else Pause())
        return probe.wait_state((state,), 1.0)
    if state == S.PAUSED:
        probe.start(fast)
        probe.ack(Pause())
        return probe.wait_state((S.PAUSED,), ramp_budget_s(fast.ramp_down_ms))
    raise RuleFailed(f"the suite cannot reach {state.name}")


def check_cell(probe: Probe, request_type: MessageType, state: DeviceState, cell: Cell) -> bool:
    """Send one request in ``state`` (already reached); fail the rule if the device contradicts ``cell``.

    Returns False when the state had moved on before the request could be judged (a transient state)."""
    before = probe.status()
    if before.state != state or ramp_progress(before) > LATE_IN_RAMP:
        return False  # too close to the end of the ramp: judge it on a fresh one
    message = sample_request(probe, request_type, before)
    reply = probe.request(message)
    after = probe.status()
    name = f"{type(message).__name__} in {state.name}"
    refused_for_state = isinstance(reply, Nack) and reply.code in (
        ErrorCode.BAD_STATE,
        ErrorCode.FAULT_LATCHED,
    )
    if cell.refusal is not None:
        if not isinstance(reply, Nack):
            if after.state != state and not cell.then and state == S.CONTACT_CHECK:
                return False
            raise RuleFailed(f"{name} was accepted ({describe(reply)}); the table says {cell.effect}")
        expected = (cell.refusal, Field.STATE, int(state))
        allowed = {expected}
        if request_type == MessageType.START:  # S8: POLARITY_LOCKED names the polarity instead
            allowed.add((ErrorCode.POLARITY_LOCKED, Field.POLARITY, int(message.polarity)))  # type: ignore[attr-defined]
        got = (reply.code, reply.field, reply.value)
        if got not in allowed and after.state != state:
            return False  # refused for the state it moved on to: judge it again on a fresh one
        expect(
            got in allowed,
            f"{name} was refused with {describe(reply)}; the table says {cell.refusal.name}, field STATE, "
            f"value {state.name}",
        )
        expect(
            after.state == state or state in (S.CONTACT_CHECK,),
            f"the refused {name} moved the device to {after.state.name}",
        )
        return True
    if refused_for_state:
        if after.state != state:
            return False
        raise RuleFailed(
            f"{name} was refused with {describe(reply)}; the table says it is accepted: {cell.effect}"
        )
    if isinstance(reply, Nack):
        raise RuleFailed(
            f"{name} was refused with {describe(reply)} although its fields are valid; the table says "
            f"{cell.effect}"
        )
    targets = set(cell.then) or {state}
    # A fast device (or a simulator at --speed) may already have left a transient target by itself.
    reachable = targets.union(*(_next_states(t) for t in targets))
    expect(
        after.state in reachable,
        f"after {name} ({cell.effect}) the device is in {after.state.name}; the table allows "
        f"{sorted(t.name for t in targets)}",
    )
    return True


def _next_states(state: DeviceState) -> set[DeviceState]:
    """Where a transient state moves on by itself, so that the device having moved on before the status
    was read is not judged a contradiction of the table."""
    return {
        S.CONTACT_CHECK: {S.RAMP_UP, S.IDLE, S.PAUSED},
        S.RAMP_UP: {S.HOLD},
        S.ADJUST: {S.HOLD},
        S.RAMP_DOWN: {S.DONE},
        S.PAUSING: {S.PAUSED},
    }.get(state, set())


def _changes_state(cell: Cell, state: DeviceState) -> bool:
    return cell.accepted and bool(cell.then) and set(cell.then) != {state}


@rule(
    "STATE-TABLE",
    "§7.5, §6 BAD_STATE",
    "every request in every reachable state is accepted or refused as the request x state table says",
    needs_load=True,
    min_version=2,
)
def state_table(probe: Probe) -> str:
    checked = 0
    missed: list[str] = []
    for state in S:
        if state in UNREACHABLE:
            continue
        for group in _groups(state):
            pending = list(group)
            for _ in range(TRANSIENT_TRIES if state in TRANSIENT else 1):
                if not pending:
                    break
                reach(probe, state)
                left = []
                for request_type in pending:
                    if check_cell(probe, request_type, state, TABLE[request_type][state]):
                        checked += 1
                    else:
                        left.append(request_type)
                pending = left
            missed += [f"{t.name} in {state.name}" for t in pending]
    total = sum(1 for row in TABLE.values() for s in row if s not in UNREACHABLE)
    skipped = ", ".join(f"{s.name} ({why})" for s, why in UNREACHABLE.items())
    note = f"; {len(missed)} transient cell(s) not hit: {', '.join(missed)}" if missed else ""
    expect(checked >= total - len(missed) and checked > 0, f"only {checked} of {total} cells checked")
    return f"{checked} of {total} cells agree with the table; not reachable: {skipped}{note}"


def _groups(state: DeviceState) -> list[list[MessageType]]:
    """The request types of ``state``'s column in visits: the cells that leave the state alone share one,
    each cell that changes it gets its own."""
    steady = [t for t, row in TABLE.items() if not _changes_state(row[state], state)]
    changing = [t for t, row in TABLE.items() if _changes_state(row[state], state)]
    return [steady] + [[t] for t in changing]


def reach_fault(probe: Probe) -> tuple[StatusReport, str]:
    """A latched FAULT with the output at zero: a session at the test current, a trip by the fixture
    (S9), the trip ramp waited out. Returns the status there and a note on the trip.

    Raises:
        RuleFailed: no FAULT within TRIP_DEVICE_S, no trip flag or event, or the output not at zero.
        UnsafeDevice: the FAULT of an earlier visit cannot be cleared.
        FixtureUnsupported: the fixture cannot provoke a trip.
    """
    fixture = probe.load_fixture
    restore_safe_idle(probe)  # a FAULT of the visit before is cleared by the way there
    reach(probe, S.HOLD)
    mark = len(probe.events)
    fixture.trip()
    probe.wait_state((S.FAULT,), TRIP_DEVICE_S)
    trips = [
        e
        for _, e in probe.events[mark:]
        if e.code in (EventCode.OVERCURRENT_TRIP, EventCode.HARDWARE_TRIP) and not e.replayed
    ]
    expect(bool(trips), "the device entered FAULT without an OVERCURRENT_TRIP or HARDWARE_TRIP event")
    expect(
        trips[0].state == S.FAULT,
        f"{trips[0].code.name} carries state {trips[0].state.name}; the state after the trip is FAULT (§4.3)",
    )
    status = await_zero_output(probe)
    expect(status.state == S.FAULT, f"the latched fault let go by itself: {status.state.name}")
    expect(
        bool(status.flags & (StatusFlags.OVERCURRENT | StatusFlags.HARDWARE_TRIP)),
        f"FAULT without the OVERCURRENT or HARDWARE_TRIP flag: {status.flags!r}",
    )
    return status, f"{trips[0].code.name} at {trips[0].value} uA"


@rule(
    "STATE-TABLE-FAULT",
    "§7.5, §6 FAULT_LATCHED, S9",
    "after a trip, in a latched FAULT, every request is accepted or refused as the table's FAULT column says",
    needs_load=True,
    min_version=2,
    needs_fixture=True,
)
def state_table_fault(probe: Probe) -> str:
    checked: list[str] = []
    trip = ""
    for group in _groups(S.FAULT):
        _, trip = reach_fault(probe)
        for request_type in group:
            cell = TABLE[request_type][S.FAULT]
            expect(
                check_cell(probe, request_type, S.FAULT, cell),
                f"{request_type.name} in FAULT could not be judged: the device left FAULT before it",
            )
            checked.append(request_type.name)
    refused = sorted(t.name for t, row in TABLE.items() if row[S.FAULT].refusal is not None)
    return (
        f"{len(checked)} of {len(TABLE)} cells of FAULT agree with the table (trip by the fixture: {trip}, "
        f"latched, output ramped to zero); refused FAULT_LATCHED: {', '.join(refused)}"
    )


RULES: tuple[Rule, ...] = (state_table, state_table_fault)
