"""Which request a device accepts in which state, and what it does there: the request x state table.

Everything that decides whether a request is allowed in a :class:`DeviceState` lives here, as data (in the
manner of h11's ``_state.py``). The simulated firmware enforces this table before it looks at a request's
fields (``firmware_sim/requests.py``), ``tools/make_protocol_tables.py`` renders it into
``docs/protocol.md`` §7.5, and the conformance suite checks a device against it.

Invariants (``docs/protocol.md`` §7.5; each one is checked at import):

* Every request type has exactly one rule in every state: the table is total.
* A refusal is ``BAD_STATE`` (Nack field ``STATE``, value = the present state) or, in ``FAULT`` for a
  request that would make output, ``FAULT_LATCHED``; a refused request changes nothing.
* The safety commands (:data:`~iontodrive.protocol.messages.SAFETY_REQUESTS`: Stop, Abort, Pause) are
  accepted in every state, and after their Ack the output is at zero or ramping to zero (S16, S17).
* Requests that only read or configure (Identify, GetStatus, Heartbeat, ConfigureTelemetry, FetchEvents,
  SetWatchdog, OpenSession) are accepted in every state and never change it.
* Only Start (from IDLE or DONE) and Resume (from PAUSED) lead into a state with output, and both go
  through CONTACT_CHECK first (S3, S4, S7); nothing else raises the output from zero.
* A rule marked ``needs_zero_output`` is accepted only once the output has reached zero (a FAULT whose trip
  ramp is still running answers BAD_STATE until it ends).

Field checks (ranges, consistency, contact) come after the state check and are per request; they are
specified with each message in ``docs/protocol.md`` §4.2 and §6.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .enums import DeviceState, ErrorCode, MessageType
from .messages import MESSAGE_CLASSES, SAFETY_REQUESTS

S = DeviceState
T = MessageType

ALL_STATES: tuple[DeviceState, ...] = tuple(DeviceState)
OUTPUT_STATES: frozenset[DeviceState] = frozenset({S.RAMP_UP, S.HOLD, S.ADJUST})
"""States at a non-zero set-point that the session means to keep (SetCurrent is allowed)."""
SESSION_STATES: frozenset[DeviceState] = frozenset(
    {S.CONTACT_CHECK, S.RAMP_UP, S.HOLD, S.ADJUST, S.RAMP_DOWN, S.PAUSING, S.PAUSED}
)
"""States in which a session exists (``SESSION_ACTIVE`` is set)."""
QUIET_STATES: frozenset[DeviceState] = frozenset({S.IDLE, S.DONE, S.PAUSED, S.FAULT})
"""States whose output is zero once any ramp in progress has ended."""
RAMPING_DOWN_STATES: frozenset[DeviceState] = frozenset({S.RAMP_DOWN, S.PAUSING})
"""States ramping the output to zero (to end the session, or to pause it)."""
IDLE_STATES: frozenset[DeviceState] = frozenset(ALL_STATES) - SESSION_STATES
"""States in which no session exists (IDLE, DONE, FAULT): a new session may start (FAULT once cleared)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """What one request does in one state.

    ``refusal`` is None when the request is accepted (then ``then`` lists the states the device may be in
    right after it, empty when the state does not change), else the NACK code. ``effect`` says what the
    device does, in the words ``docs/protocol.md`` prints.
    """

    refusal: ErrorCode | None
    effect: str
    then: tuple[DeviceState, ...] = ()
    needs_zero_output: bool = False

    @property
    def accepted(self) -> bool:
        return self.refusal is None


def _accept(effect: str, *then: DeviceState, needs_zero_output: bool = False) -> Rule:
    return Rule(None, effect, then, needs_zero_output)


_BAD_STATE = Rule(ErrorCode.BAD_STATE, "refused: BAD_STATE")
_FAULT_LATCHED = Rule(ErrorCode.FAULT_LATCHED, "refused: FAULT_LATCHED (ClearFault first)")
_NO_CHANGE = _accept("no change")


def _row(default: Rule, **cells: Rule) -> dict[DeviceState, Rule]:
    row = dict.fromkeys(ALL_STATES, default)
    for name, rule in cells.items():
        row[DeviceState[name]] = rule
    return row


_SESSION_STOP = "ends the session: RAMP_DOWN at the session's ramp-down rate"
_ABORT = "ends the session: RAMP_DOWN at the slew limit"

RULES: Mapping[MessageType, Mapping[DeviceState, Rule]] = {
    T.IDENTIFY: _row(_accept("answers IdentityReport")),
    T.GET_STATUS: _row(_accept("answers StatusReport")),
    T.OPEN_SESSION: _row(_accept("opens a host session with its own reply cache (§7.3)")),
    T.HEARTBEAT: _row(_accept("feeds the watchdog")),
    T.CONFIGURE_TELEMETRY: _row(_accept("sets the telemetry rate")),
    T.FETCH_EVENTS: _row(_accept("replays events")),
    T.SET_WATCHDOG: _row(_accept("sets the watchdog timeout")),
    T.CHECK_CONTACT: _row(
        _BAD_STATE,
        IDLE=_accept("spot measurement at the probe current; answers ContactReport"),
        DONE=_accept("spot measurement at the probe current; answers ContactReport"),
        PAUSED=_accept("spot measurement at the probe current; answers ContactReport"),
        FAULT=_FAULT_LATCHED,
    ),
    T.START: _row(
        Rule(ErrorCode.BAD_STATE, "refused: BAD_STATE (POLARITY_LOCKED if the polarity differs, S8)"),
        IDLE=_accept("contact check, then a new session", S.CONTACT_CHECK),
        DONE=_accept("contact check, then a new session", S.CONTACT_CHECK),
        PAUSED=_BAD_STATE,
        FAULT=_FAULT_LATCHED,
    ),
    T.SET_CURRENT: _row(
        _BAD_STATE,
        RAMP_UP=_accept("ramps to the new set-point", S.ADJUST, S.HOLD),
        HOLD=_accept("ramps to the new set-point", S.ADJUST, S.HOLD),
        ADJUST=_accept("ramps to the new set-point", S.ADJUST, S.HOLD),
        FAULT=_FAULT_LATCHED,
    ),
    T.PAUSE: _row(
        _accept("no change (the output is at zero or already ramping to zero)"),
        CONTACT_CHECK=_accept("ends the check: PAUSING at the slew limit", S.PAUSING),
        RAMP_UP=_accept("PAUSING at the session's ramp-down rate", S.PAUSING),
        HOLD=_accept("PAUSING at the session's ramp-down rate", S.PAUSING),
        ADJUST=_accept("PAUSING at the session's ramp-down rate", S.PAUSING),
    ),
    T.RESUME: _row(
        _BAD_STATE,
        PAUSED=_accept("contact check, then ramps up again", S.CONTACT_CHECK),
        FAULT=_FAULT_LATCHED,
    ),
    T.STOP: _row(
        _accept("no change (no session to stop)"),
        CONTACT_CHECK=_accept("ends the session: RAMP_DOWN at the slew limit", S.RAMP_DOWN),
        RAMP_UP=_accept(_SESSION_STOP, S.RAMP_DOWN),
        HOLD=_accept(_SESSION_STOP, S.RAMP_DOWN),
        ADJUST=_accept(_SESSION_STOP, S.RAMP_DOWN),
        PAUSING=_accept(_SESSION_STOP + " (never slower than the ramp under way)", S.RAMP_DOWN),
        RAMP_DOWN=_accept("no change (already ending)"),
        PAUSED=_accept("ends the session at once (output is zero)", S.DONE),
    ),
    T.ABORT: _row(
        _accept("no change (no session to abort)"),
        CONTACT_CHECK=_accept(_ABORT, S.RAMP_DOWN),
        RAMP_UP=_accept(_ABORT, S.RAMP_DOWN),
        HOLD=_accept(_ABORT, S.RAMP_DOWN),
        ADJUST=_accept(_ABORT, S.RAMP_DOWN),
        PAUSING=_accept(_ABORT, S.RAMP_DOWN),
        RAMP_DOWN=_accept("ramps down at the slew limit from now (no change if it does already)"),
        PAUSED=_accept("ends the session at once (output is zero)", S.DONE),
    ),
    T.CLEAR_FAULT: _row(
        _BAD_STATE,
        FAULT=_accept(
            "clears the latch and the session (FAULT_LATCHED while a hardware trip is latched)",
            S.IDLE,
            needs_zero_output=True,
        ),
    ),
    T.RESET: _row(
        _BAD_STATE,
        IDLE=_accept("restarts the firmware as at power-up (§8.5)", S.IDLE),
        PAUSED=_accept("restarts the firmware as at power-up; the paused session is lost", S.IDLE),
        DONE=_accept("restarts the firmware as at power-up (§8.5)", S.IDLE),
        FAULT=_accept(
            "restarts the firmware as at power-up; clears every latch", S.IDLE, needs_zero_output=True
        ),
    ),
}


def rule(request_type: MessageType, state: DeviceState) -> Rule:
    """The rule for ``request_type`` in ``state``. Raises KeyError for a type that is not a request."""
    return RULES[request_type][state]


def _check() -> None:
    """The invariants at the top of this module (raises AssertionError at import if one is broken)."""
    request_types = {cls.TYPE for cls in MESSAGE_CLASSES if cls.REPLY is not None}
    assert set(RULES) == request_types, set(RULES) ^ request_types
    for request_type, row in RULES.items():
        assert set(row) == set(ALL_STATES), request_type
        for state, cell in row.items():
            assert cell.refusal in (None, ErrorCode.BAD_STATE, ErrorCode.FAULT_LATCHED), (request_type, state)
            assert cell.refusal is not ErrorCode.FAULT_LATCHED or state is S.FAULT, (request_type, state)
    for cls in SAFETY_REQUESTS:
        assert all(cell.accepted for cell in RULES[cls.TYPE].values()), cls
        assert all(set(cell.then) <= {S.PAUSING, S.RAMP_DOWN, S.DONE} for cell in RULES[cls.TYPE].values())
    for request_type in (T.IDENTIFY, T.GET_STATUS, T.OPEN_SESSION, T.HEARTBEAT, T.CONFIGURE_TELEMETRY,
                         T.FETCH_EVENTS, T.SET_WATCHDOG):  # fmt: skip
        assert all(cell.accepted and not cell.then for cell in RULES[request_type].values())
    raising = {(t, s) for t, row in RULES.items() for s, cell in row.items() if S.CONTACT_CHECK in cell.then}
    assert raising == {(T.START, S.IDLE), (T.START, S.DONE), (T.RESUME, S.PAUSED)}, raising
    for row in RULES.values():
        for state, cell in row.items():
            assert not (set(cell.then) & OUTPUT_STATES) or state in OUTPUT_STATES, (state, cell)


_check()
