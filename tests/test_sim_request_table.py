"""The request x state table (iontodrive.protocol.rules) enforced by the simulated firmware.

A hypothesis state machine walks the device through its states (sessions, faults, pauses, lost links,
time) and, in whatever state it reaches, sends every kind of request with valid fields; each answer is
checked against the table: a refused cell is answered with its NACK code and changes nothing, an accepted
cell is never refused for its state, and the state right after an accepted request is one the table lists.
``test_every_cell_of_the_table`` does the same for every cell from a scripted route into each state.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from firmware_sim import Device, ElectrodeLift, OverCurrent
from firmware_sim.host import SimHost
from iontodrive.protocol import (
    MESSAGE_BY_TYPE,
    Abort,
    Ack,
    CheckContact,
    ClearFault,
    ConfigureTelemetry,
    DeviceState,
    ErrorCode,
    FetchEvents,
    Field,
    GetStatus,
    Heartbeat,
    Identify,
    Message,
    MessageType,
    Nack,
    OpenSession,
    Pause,
    Polarity,
    Reset,
    Resume,
    SetCurrent,
    SetWatchdog,
    Start,
    Stop,
)
from iontodrive.protocol.fastpath import minimal_message
from iontodrive.protocol.rules import RULES

S = DeviceState
START = Start(2000, 0, 120_000, 5_000, 5_000, Polarity.CATHODE)

REQUESTS: dict[MessageType, Message] = {
    MessageType.IDENTIFY: Identify(),
    MessageType.GET_STATUS: GetStatus(),
    MessageType.OPEN_SESSION: OpenSession(99),
    MessageType.CHECK_CONTACT: CheckContact(50, 2000),
    MessageType.START: START,
    MessageType.SET_CURRENT: SetCurrent(1500, 5_000),
    MessageType.PAUSE: Pause(),
    MessageType.RESUME: Resume(),
    MessageType.STOP: Stop(),
    MessageType.ABORT: Abort(),
    MessageType.HEARTBEAT: Heartbeat(),
    MessageType.CONFIGURE_TELEMETRY: ConfigureTelemetry(2),
    MessageType.FETCH_EVENTS: FetchEvents(1, 0),
    MessageType.SET_WATCHDOG: SetWatchdog(2000),
    MessageType.CLEAR_FAULT: ClearFault(),
    MessageType.RESET: Reset(),
}


for _type in RULES:  # a request type without a chosen sample gets its minimal frame
    REQUESTS.setdefault(_type, minimal_message(MESSAGE_BY_TYPE[_type]))


def test_every_request_type_has_a_sample() -> None:
    assert set(REQUESTS) == set(RULES)


class RequestTable(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 100))
    def boot(self, seed: int) -> None:
        self.device = Device("clinic-4", seed=seed)
        self.host = SimHost(self.device)
        self.states_seen: set[DeviceState] = set()

    @rule(then_s=st.sampled_from([0.0, 0.3, 5.5]), adjust=st.booleans())
    def start(self, then_s: float, adjust: bool) -> None:
        self.host.send(START)
        self.host.run(then_s, step_s=0.25)  # into RAMP_UP, HOLD (and ADJUST) with the host alive
        if adjust and then_s:
            self.host.send(SetCurrent(1000, 10_000))

    @rule(seconds=st.sampled_from([0.1, 0.25, 1.0, 3.0, 6.0]), heartbeat=st.booleans())
    def wait(self, seconds: float, heartbeat: bool) -> None:
        self.host.run(seconds, step_s=0.25, heartbeat=heartbeat)

    @rule(message=st.sampled_from([Pause(), Resume(), SetCurrent(1000, 10_000), ClearFault()]))
    def steer(self, message: Message) -> None:
        self.host.send(message)

    @rule(kind=st.sampled_from(["lift", "overcurrent"]))
    def fault(self, kind: str) -> None:
        self.device.inject(ElectrodeLift() if kind == "lift" else OverCurrent(gain=1.4, rise_s=0.1))

    @rule(request_type=st.sampled_from(sorted(RULES)))
    def request_in_the_present_state(self, request_type: MessageType) -> None:
        device = self.device
        before_state = device.state
        before = self.host.status()
        output_zero = device.firmware.output_is_zero()
        cell = RULES[request_type][before_state]
        request = REQUESTS[request_type]
        reply = self.host.request(request)
        self.states_seen.add(before_state)
        if cell.refusal is not None:
            assert isinstance(reply, Nack), (request, before_state, reply)
            expected = {cell.refusal}
            if request_type == MessageType.START and not output_zero:
                expected.add(ErrorCode.POLARITY_LOCKED)
            assert reply.code in expected, (request, before_state, reply)
            if reply.code != ErrorCode.POLARITY_LOCKED:
                assert (reply.field, reply.value) == (Field.STATE, int(before_state))
            assert self.host.status() == before, "a refused request changed something"
            return
        if isinstance(reply, Nack):  # a field or contact check may refuse, never the state
            allowed_bad_state = cell.needs_zero_output and not output_zero
            assert reply.code != ErrorCode.BAD_STATE or allowed_bad_state, (request, before_state, reply)
            if reply.code == ErrorCode.FAULT_LATCHED:
                assert request_type == MessageType.CLEAR_FAULT, (request, reply)
            return
        after = device.state
        if request_type == MessageType.RESET:
            return  # the restart happens once the Ack is out; the state is IDLE then
        if cell.then:
            assert after in cell.then, (request, before_state, after, cell)
        else:
            assert after == before_state, (request, before_state, after)
        if request.SAFETY:
            assert isinstance(reply, Ack)


TestRequestTable = RequestTable.TestCase
TestRequestTable.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _holding(host: SimHost) -> None:
    assert host.request(START) == Ack(START.TYPE)
    host.run(5.5, step_s=0.25)


def _fault(host: SimHost, settle_s: float) -> None:
    _holding(host)
    host.device.inject(OverCurrent(gain=1.4, rise_s=0.1))
    host.run(0.5, step_s=0.05, until=lambda d: d.state == S.FAULT)
    host.run(settle_s, step_s=0.25)


def _route(*steps: Message | float | str) -> Callable[[SimHost], None]:
    """A route into a state: messages to send, seconds to run, "hold" for a session at its target."""

    def walk(host: SimHost) -> None:
        for step in steps:
            if step == "hold":
                _holding(host)
            elif isinstance(step, (int, float)):
                host.run(float(step), step_s=0.25)
            elif isinstance(step, str):
                _fault(host, {"fault ramping": 0.0, "fault at zero": 2.0}[step])
            else:
                host.send(step)

    return walk


RECIPES: dict[str, Callable[[SimHost], None]] = {
    "IDLE": _route(),
    "CONTACT_CHECK": _route(START),
    "RAMP_UP": _route(START, 0.5),
    "HOLD": _route("hold"),
    "ADJUST": _route("hold", SetCurrent(1000, 10_000)),
    "RAMP_DOWN": _route("hold", Stop()),
    "PAUSING": _route("hold", Pause()),
    "PAUSED": _route("hold", Pause(), 6.0),
    "DONE": _route("hold", Stop(), 6.0),
    "FAULT ramping": _route("fault ramping"),
    "FAULT at zero": _route("fault at zero"),
}


@pytest.mark.parametrize("request_type", sorted(RULES), ids=lambda t: t.name)
@pytest.mark.parametrize("where", sorted(RECIPES))
def test_every_cell_of_the_table(where: str, request_type: MessageType) -> None:
    machine = RequestTable()
    machine.boot(seed=1)
    RECIPES[where](machine.host)
    assert machine.device.state.name == where.split()[0]
    if where == "FAULT ramping":
        assert not machine.device.firmware.output_is_zero()
    machine.request_in_the_present_state(request_type)
