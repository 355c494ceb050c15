"""The sans-I/O client core, driven directly: no threads, no sockets, a virtual clock.

The device is the simulator's :class:`firmware_sim.Device` (itself sans-I/O), joined to the core by a
channel that can lose whole frames in either direction. Time is a number both sides advance together.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from firmware_sim import Device
from iontodrive.clientcore import (
    DISPATCH_WEDGED_S,
    HEARTBEAT_RECHECK_S,
    SAFETY_FRESH_S,
    SAFETY_LAG_MAX_S,
    Call,
    ClientCore,
    Fetch,
    PendingRequest,
    ReplayCollector,
    Step,
    Write,
    check_type,
    fill_gap,
    opening,
    refill,
)
from iontodrive.delivery import Gap, Routing
from iontodrive.errors import (
    DeviceRefusal,
    IontodriveError,
    LinkTimeoutError,
    LocalProtocolError,
    RemoteProtocolError,
)
from iontodrive.protocol import (
    Ack,
    ConfigureTelemetry,
    Event,
    EventsReport,
    Frame,
    GetStatus,
    Heartbeat,
    Identify,
    IdentityReport,
    Message,
    Polarity,
    SessionOpened,
    Start,
    StatusReport,
    Stop,
    Telemetry,
    encode,
)

R = TypeVar("R")
STEP_S = 0.001


@dataclass
class Sink:
    """What the core delivered, in order."""

    replies: list[PendingRequest] = field(default_factory=list)
    telemetry: list[Telemetry] = field(default_factory=list)
    routings: list[Routing] = field(default_factory=list)
    replays: list[Event] = field(default_factory=list)
    collectors: list[ReplayCollector] = field(default_factory=list)

    def on_reply(self, pending: PendingRequest) -> None:
        self.replies.append(pending)

    def on_telemetry(self, sample: Telemetry, now: float) -> None:
        self.telemetry.append(sample)

    def on_routing(self, routing: Routing, now: float) -> None:
        self.routings.append(routing)

    def on_replay(self, event: Event) -> None:
        self.replays.append(event)
        for collector in self.collectors:
            collector.add(event)

    @property
    def ordinary_events(self) -> list[int]:
        return [e.event_no for r in self.routings for e in r.both + r.ordinary]


class VirtualDriver:
    """The smallest possible driver: the core and a simulated device on one virtual clock."""

    def __init__(self, core: ClientCore | None = None, *, telemetry_hz: int = 0) -> None:
        self.device = Device("clinic-4", telemetry_hz=telemetry_hz)
        self.core = core or ClientCore(timeout_s=0.05, retries=2, first_seq=100)
        self.sink = Sink()
        self.now = 0.0
        self.drop_to_device = 0  # frames to lose from the host's next sends
        self.drop_from_device: set[type[Message]] = set()  # message kinds lost on the way back
        self.lose_event_nos: set[int] = set()  # these event numbers are lost on the way back, once each
        self.sent: list[bytes] = []
        self.timeouts: list[LinkTimeoutError] = []

    def send(self, pending: PendingRequest) -> None:
        self.sent.append(pending.frame)
        if self.drop_to_device > 0:
            self.drop_to_device -= 1
        else:
            self.device.receive(pending.frame)
        self.core.sent(pending, self.now)

    def pump(self) -> None:
        data = self.device.read_output()
        if not data:
            return
        if self.drop_from_device or self.lose_event_nos:
            kept = []
            for chunk in data.split(b"\x00"):
                if not chunk:
                    continue
                frames = list(self.core.decoder.__class__().feed(chunk + b"\x00"))
                message = getattr(frames[0], "message", None) if frames else None
                if type(message) in self.drop_from_device:
                    continue
                if isinstance(message, Event) and message.event_no in self.lose_event_nos:
                    self.lose_event_nos.discard(message.event_no)
                    continue
                kept.append(chunk + b"\x00")
            data = b"".join(kept)
        self.core.receive(data, self.now, self.sink)

    def tick(self, dt: float = STEP_S) -> None:
        self.device.advance(dt)
        self.now += dt
        self.pump()
        for pending in self.core.overdue(self.now):
            try:
                self.core.expire(pending)
            except LinkTimeoutError as exc:
                self.timeouts.append(exc)
            else:
                self.send(pending)

    def call(self, message: Message, *, retries: int | None = None) -> Message:
        pending = self.core.begin(message, retries=retries)
        self.send(pending)
        self.pump()
        while pending.reply is None:
            before = len(self.timeouts)
            self.tick()
            if len(self.timeouts) > before:
                raise self.timeouts[-1]
        return self.core.finish(pending)

    def run(self, procedure: Generator[Step, Any, R]) -> R:
        outcome: Any = None
        error: IontodriveError | None = None
        while True:
            try:
                step = procedure.send(outcome) if error is None else procedure.throw(error)
            except StopIteration as stop:
                result: R = stop.value
                return result
            outcome, error = None, None
            try:
                if isinstance(step, Call):
                    outcome = check_type(
                        step.message, self.call(step.message, retries=step.retries), step.expect
                    )
                elif isinstance(step, Write):
                    self.device.receive(step.data)
                else:
                    outcome = self.fetch(step)
            except IontodriveError as exc:
                error = exc

    def fetch(self, step: Fetch) -> tuple[EventsReport, list[Event]]:
        collector = ReplayCollector(step.from_event_no, lambda: None)
        self.sink.collectors.append(collector)
        try:
            report = check_type(step.message, self.call(step.message), EventsReport)
            collector.reported(report)
            for _ in range(200):
                if collector.complete:
                    break
                self.tick()
        finally:
            self.sink.collectors.remove(collector)
        return report, collector.result()

    def open(self) -> IdentityReport:
        return self.run(opening(self.core, watchdog_ms=5000, telemetry_hz=None)).identity


START = Start(
    target_current_ua=1000,
    dose_uas=0,
    duration_ms=600_000,
    ramp_up_ms=5_000,
    ramp_down_ms=5_000,
    polarity=Polarity.ANODE,
)


# ------------------------------------------------------------------------------ opening and replies


def test_opening_runs_the_handshake_and_numbers_events_from_the_device() -> None:
    driver = VirtualDriver()
    identity = driver.open()
    assert identity.model == driver.device.identity.model
    assert driver.core.watchdog_ms == 5000
    assert driver.core.events.next_no == driver.device.status().last_event_no + 1
    assert not driver.core.pending  # nothing left in flight


def test_a_nonce_that_is_not_echoed_is_refused() -> None:
    core = ClientCore(first_seq=10)
    procedure = opening(core, watchdog_ms=None, telemetry_hz=None)
    step = next(procedure)
    assert isinstance(step, Call)
    nonce = step.message.host_nonce  # type: ignore[attr-defined]
    with pytest.raises(RemoteProtocolError, match="echoes nonce"):
        procedure.send(SessionOpened(nonce ^ 1, 1, 0))


def test_a_silent_device_times_out_after_the_same_frame_went_out_each_time() -> None:
    driver = VirtualDriver(ClientCore(timeout_s=0.05, retries=3, first_seq=7))
    driver.drop_to_device = 10**6
    pending = driver.core.begin(GetStatus())
    driver.send(pending)
    while not driver.timeouts:
        deadline = driver.core.next_deadline()
        assert deadline is not None and deadline >= driver.now
        driver.tick(0.01)
    assert driver.sent == [pending.frame] * 4  # one send and three retries, one sequence number
    assert driver.timeouts[0].attempts == 4
    assert driver.core.stats.retries == 3 and driver.core.stats.timeouts == 1
    assert driver.core.next_deadline() is None and not driver.core.pending


def test_a_lost_request_is_answered_on_its_retry_and_executed_once() -> None:
    driver = VirtualDriver()
    driver.open()
    driver.drop_from_device = {Ack}  # the device executes ConfigureTelemetry, its Ack is lost
    pending = driver.core.begin(ConfigureTelemetry(10))
    driver.send(pending)
    for _ in range(60):
        driver.tick()
    driver.drop_from_device = set()
    while pending.reply is None:
        driver.tick()
    assert isinstance(driver.core.finish(pending), Ack)
    assert len(set(driver.sent[-2:])) == 1  # the retry is the same frame


@pytest.mark.parametrize(
    ("request_", "reply", "why"),
    [
        (Stop(), Ack(Heartbeat.TYPE), "naming Heartbeat"),
        (GetStatus(), Ack(GetStatus.TYPE), "cannot answer it"),
        (Identify(), StatusReport.__new__(StatusReport), "cannot answer it"),
    ],
)
def test_a_reply_that_cannot_answer_its_request_is_not_accepted(
    request_: Message, reply: Message, why: str
) -> None:
    core = ClientCore(first_seq=500)
    pending = core.begin(request_)
    core.sent(pending, 0.0)
    if isinstance(reply, StatusReport):  # (a hollow one: only its type matters here)
        core.on_frame(Frame(pending.seq, reply), 0.01, Sink())
    else:
        core.receive(encode(reply, pending.seq), 0.01, Sink())
    assert pending.reply is not None
    with pytest.raises(RemoteProtocolError, match=why):
        core.finish(pending)
    assert core.stats.bad_replies == 1


def test_a_nack_is_a_device_refusal() -> None:
    driver = VirtualDriver()
    driver.open()
    with pytest.raises(DeviceRefusal):
        driver.call(ConfigureTelemetry(60_000))


def test_a_reply_is_a_request_only() -> None:
    with pytest.raises(LocalProtocolError, match="not a request"):
        ClientCore().begin(Ack(1))


# ------------------------------------------------------------------------------------ event gaps


def driver_with_a_gap() -> tuple[VirtualDriver, Gap]:
    """A session's START events lost on the way back, then its Stop's event arriving live: a gap."""
    driver = VirtualDriver()
    driver.open()
    driver.drop_from_device = {Event}
    driver.call(START)
    for _ in range(100):
        driver.tick()
    driver.drop_from_device = set()
    driver.call(Stop())
    for _ in range(50):
        driver.tick()
    gap = driver.core.events.gap
    assert gap is not None
    return driver, gap


def test_a_lost_event_is_found_fetched_and_delivered_once_in_order() -> None:
    driver, gap = driver_with_a_gap()
    why = driver.run(fill_gap(gap))
    routing = driver.core.gap_done(gap, why)
    driver.sink.on_routing(routing, driver.now)
    numbers = driver.sink.ordinary_events
    device_numbers = [e.event_no for e in driver.device.events if e.event_no >= numbers[0]]
    assert numbers == sorted(set(numbers)) == device_numbers[: len(numbers)]
    assert driver.core.events.gap is None


@pytest.mark.parametrize("lost_replays", ["all", "the first, its successor arriving"])
def test_a_replayed_event_lost_on_the_link_is_fetched_again_not_reported_lost(lost_replays: str) -> None:
    """FetchEvents replays events as frames of their own; one lost on the link (the device's ring still
    holds it) is asked for again from the first number missing, never skipped or called out of the ring."""
    driver, gap = driver_with_a_gap()
    assert gap.upto - gap.fetch_from >= 2
    missing = range(gap.fetch_from, gap.upto)
    driver.lose_event_nos = set(missing) if lost_replays == "all" else {missing[0]}
    why = driver.run(fill_gap(gap))
    routing = driver.core.gap_done(gap, why)
    driver.sink.on_routing(routing, driver.now)
    assert not routing.lost, (why, routing.lost)
    assert not driver.lose_event_nos  # every one of them was lost once...
    delivered = driver.sink.ordinary_events
    assert set(missing) <= set(delivered) and delivered == sorted(set(delivered))  # ...and delivered once


def test_refill_asks_again_for_a_replay_lost_on_the_link() -> None:
    driver = VirtualDriver()
    driver.open()
    driver.call(START)
    for _ in range(100):
        driver.tick()
    driver.call(Stop())
    for _ in range(50):
        driver.tick()
    numbers = [e.event_no for e in driver.device.events]
    first, last = numbers[0], numbers[-1]
    driver.lose_event_nos = {first + 1}
    got = driver.run(refill(first, last))
    assert [e.event_no for e in got] == list(range(first, last + 1))


# -------------------------------------------------------------------------------- heartbeat rule


@dataclass
class Health:
    lag_s: float = 0.0
    checked_at: float | None = 0.0
    stalled_s: float = 0.0
    dead: str | None = None

    def safety_lag_s(self, now: float) -> float:
        return self.lag_s

    def safety_checked_at(self) -> float | None:
        return self.checked_at

    def dispatch_stalled_s(self, now: float) -> float:
        return self.stalled_s

    def dead_worker(self) -> str | None:
        return self.dead


class HeartbeatRule(RuleBasedStateMachine):
    """The heartbeat is an output of the core, emitted only when due and while every check is current."""

    def __init__(self) -> None:
        super().__init__()
        self.core = ClientCore(heartbeat_s=0.5)
        self.health = Health()
        self.now = 0.0
        self.live = True
        self.remove_gate: Any = None
        self.beats: list[float] = []

    @rule(dt=st.floats(0.0, 1.5))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule(lag=st.floats(0.0, 0.5), age=st.one_of(st.none(), st.floats(0.0, 2.0)))
    def the_safety_tier_moves(self, lag: float, age: float | None) -> None:
        self.health.lag_s = lag
        self.health.checked_at = None if age is None else self.now - age

    @rule(stalled=st.floats(0.0, 3.0), dead=st.booleans())
    def the_workers_change(self, stalled: float, dead: bool) -> None:
        self.health.stalled_s = stalled
        self.health.dead = "thread x" if dead else None

    @rule(live=st.booleans())
    def the_controller_changes(self, live: bool) -> None:
        self.live = live

    @precondition(lambda self: self.remove_gate is None)
    @rule()
    def a_session_gates(self) -> None:
        self.remove_gate = self.core.add_gate(lambda: self.live)

    @precondition(lambda self: self.remove_gate is not None)
    @rule()
    def the_session_ends(self) -> None:
        self.remove_gate()
        self.remove_gate = None

    @precondition(lambda self: self.remove_gate is not None)
    @rule()
    def a_safety_listener_raises(self) -> None:
        self.core.safety_listener_failed(RuntimeError("check failed"))

    @rule()
    def poll(self) -> None:
        core, health, now = self.core, self.health, self.now
        wait = core.heartbeat_poll(now, health)
        due = now - core.last_sent >= core.heartbeat_period_s
        checks_current = self.remove_gate is None or (
            self.live
            and core.safety_failure is None
            and health.lag_s <= SAFETY_LAG_MAX_S
            and health.checked_at is not None
            and now - health.checked_at <= SAFETY_FRESH_S
            and health.stalled_s <= DISPATCH_WEDGED_S
            and health.dead is None
        )
        if wait is None:
            assert due and checks_current
            core.last_sent = now  # the driver sent it (ClientCore.sent would do this)
            self.beats.append(now)
        elif due:
            assert not checks_current and wait == HEARTBEAT_RECHECK_S and core.withheld
        else:
            assert 0 < wait <= core.heartbeat_period_s

    @invariant()
    def no_failure_is_latched_without_a_gate(self) -> None:
        if self.remove_gate is None:
            assert self.core.safety_failure is None


TestHeartbeatRule = HeartbeatRule.TestCase
TestHeartbeatRule.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# ------------------------------------------------------------------------ requests on a lossy link


class LossyLink(RuleBasedStateMachine):
    """Requests on a link that loses frames both ways: every request ends, once, either with its own
    checked reply or with a timeout after exactly its attempts, all with one sequence number; telemetry
    losses are counted exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.driver = VirtualDriver(ClientCore(timeout_s=0.02, retries=2, first_seq=60_000), telemetry_hz=50)
        self.driver.open()
        self.inflight: list[PendingRequest] = []
        self.done: dict[int, str] = {}
        self.frames: dict[int, set[bytes]] = {}
        self.lost_samples = 0

    @rule(message=st.sampled_from([GetStatus(), Heartbeat(), Identify(), ConfigureTelemetry(50)]))
    def request(self, message: Message) -> None:
        pending = self.driver.core.begin(message)
        self.inflight.append(pending)
        self.driver.send(pending)

    @rule(n=st.integers(1, 3))
    def lose_the_next_requests(self, n: int) -> None:
        self.driver.drop_to_device += n

    @rule(kinds=st.sets(st.sampled_from([Ack, StatusReport, IdentityReport, Telemetry])))
    def lose_replies(self, kinds: set[type[Message]]) -> None:
        self.driver.drop_from_device = kinds

    @rule(steps=st.integers(1, 40))
    def time_passes(self, steps: int) -> None:
        for _ in range(steps):
            self.driver.tick()
        self._settle()

    def _settle(self) -> None:
        for pending in list(self.inflight):
            self.frames.setdefault(pending.seq, set()).add(pending.frame)
            if pending.reply is not None:
                reply = self.driver.core.finish(pending)
                assert reply is not None
                self.done[pending.seq] = "reply"
                self.inflight.remove(pending)
        timed_out = {e.seq for e in self.driver.timeouts}
        for pending in list(self.inflight):
            if pending.seq in timed_out:
                assert pending.seq not in self.done
                self.done[pending.seq] = "timeout"
                self.inflight.remove(pending)

    @invariant()
    def each_request_is_one_frame(self) -> None:
        sent: dict[bytes, int] = {}
        for frame in self.driver.sent:
            sent[frame] = sent.get(frame, 0) + 1
        for frames in self.frames.values():
            assert len(frames) == 1
            (frame,) = frames
            assert sent.get(frame, 0) <= 3  # at most 1 + retries sends

    @invariant()
    def the_core_tracks_only_what_is_in_flight(self) -> None:
        tracked = set(self.driver.core.pending)
        assert tracked <= {p.seq for p in self.inflight}
        for seq in self.done:
            assert seq not in tracked

    @invariant()
    def telemetry_loss_is_counted(self) -> None:
        samples = [s.sample_no for s in self.driver.sink.telemetry]
        assert samples == sorted(samples)
        if samples:
            missing = samples[-1] - samples[0] + 1 - len(set(samples))
            assert self.driver.core.stats.telemetry_lost == missing


TestLossyLink = LossyLink.TestCase
TestLossyLink.settings = settings(
    max_examples=15, stateful_step_count=20, deadline=None, suppress_health_check=list(HealthCheck)
)
