"""The sans-I/O host-ramp controller (issue 18): readings in, set-points and events out.

No threads, no sleeps, no instrument: a resistive plant on a virtual clock stepped tick by tick, and a
RuleBasedStateMachine that throws requests and faults at it while checking the rules that must always
hold (never a step above the slew limit, never above the prescription, nothing after the end).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from iontodrive.protocol import DeviceState, EventCode, Polarity, Start
from iontodrive.sessions.host_ramp import (
    ArmFallback,
    DisarmFallback,
    Emit,
    HostRampController,
    Note,
    ReadLevel,
)
from iontodrive.sessions.types import SessionOutcome

RATE_HZ = 20.0
SLEW = 1000.0  # µA/s: full 5 mA in 5 s
COMPLIANCE_MV = 30_000.0


def start(dose_uas: int = 60_000, duration_ms: int = 0, target_ua: int = 2_000) -> Start:
    return Start(
        target_current_ua=target_ua,
        dose_uas=dose_uas,
        duration_ms=duration_ms,
        ramp_up_ms=5_000,
        ramp_down_ms=5_000,
        polarity=Polarity.CATHODE,
    )


@dataclass
class Plant:
    """A resistive load behind an ideal current source with a compliance limit. ``open`` breaks the
    circuit; ``gain`` makes the source deliver more than it is told (a faulty source)."""

    ohm: float = 2_000.0
    open: bool = False
    gain: float = 1.0
    extra_ua: float = 0.0

    def measure(self, level_ua: float) -> tuple[float, float]:
        if self.open:
            return 0.0, COMPLIANCE_MV
        i = level_ua * self.gain + self.extra_ua
        v = i * self.ohm / 1000.0
        if v > COMPLIANCE_MV:
            i, v = COMPLIANCE_MV * 1000.0 / self.ohm, COMPLIANCE_MV
        return i, v


@dataclass
class Rig:
    """Steps a controller against a plant on a virtual clock, the way the VISA shell does."""

    ctl: HostRampController
    plant: Plant = field(default_factory=Plant)
    t: float = 0.0
    level_ua: float = 0.0
    sent: list[tuple[float, float]] = field(default_factory=list)
    events: list[Emit] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    armed: int = 0

    def service(self) -> None:
        while outputs := self.ctl.take_outputs():
            for out in outputs:
                if isinstance(out, ReadLevel):
                    self.ctl.level_read(self.level_ua)
                elif isinstance(out, Emit):
                    self.events.append(out)
                elif isinstance(out, Note):
                    self.notes.append(out)
                elif isinstance(out, ArmFallback):
                    self.armed += 1
                elif isinstance(out, DisarmFallback):
                    pass

    def begin(self) -> Rig:
        self.ctl.level_read(self.level_ua)
        self.ctl.begin(self.t)
        self.service()
        return self

    def tick(self) -> None:
        ctl = self.ctl
        self.t += 1.0 / RATE_HZ
        ctl.reading(self.t, *self.plant.measure(self.level_ua))
        self.service()
        ctl.check_end(self.t)
        self.service()
        ctl.check_overrun(self.t)
        self.service()
        setpoint = ctl.next_setpoint(self.t)
        self.service()
        if setpoint is not None:
            self.level_ua = setpoint
            ctl.sent(self.t, setpoint)
            self.sent.append((self.t, setpoint))

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds * RATE_HZ)):
            if self.ctl.ended:
                return
            self.tick()

    def codes(self) -> list[EventCode]:
        return [e.code for e in self.events]

    def max_step_ua(self) -> float:
        levels = [0.0] + [s for _, s in self.sent]
        return max((abs(b - a) for a, b in itertools.pairwise(levels)), default=0.0)


def rig(start_message: Start | None = None, plant: Plant | None = None) -> Rig:
    ctl = HostRampController(
        start=start_message or start(),
        slew_limit_ua_per_s=SLEW,
        compliance_mv=COMPLIANCE_MV,
        min_ramp_s=5.0,
        rate_hz=RATE_HZ,
        cap_ua=5_000.0,
    )
    return Rig(ctl, plant or Plant()).begin()


STEP_LIMIT = SLEW / RATE_HZ * 1.001


def test_a_dose_session_lands_on_the_dose_without_a_step() -> None:
    r = rig()
    r.run(120)
    assert r.ctl.ended and r.ctl.state is DeviceState.DONE
    assert abs(r.ctl.charge_uas - 60_000) / 60_000 < 0.01
    assert r.max_step_ua() <= STEP_LIMIT
    assert r.codes()[-2:] == [EventCode.DOSE_COMPLETE, EventCode.SESSION_ENDED]
    assert r.level_ua == 0.0
    assert r.armed == 1  # the hold armed the fallback once


def test_a_time_based_session_counts_its_on_time() -> None:
    r = rig(start(dose_uas=0, duration_ms=30_000))
    r.run(60)
    assert r.ctl.ended and r.ctl.end_requested is SessionOutcome.COMPLETED
    assert abs(r.ctl.on_time_s - 30.0) < 0.3
    assert r.max_step_ua() <= STEP_LIMIT


def test_over_current_aborts_after_three_readings_at_the_slew_limit() -> None:
    r = rig()
    r.run(8)  # holding at 2 mA
    assert r.ctl.state is DeviceState.HOLD
    r.plant.gain = 1.5  # 3 mA against a 2.2 mA limit: marginal, so three readings are needed
    for _ in range(2):
        r.tick()
    assert EventCode.OVERCURRENT_TRIP not in r.codes()
    r.tick()
    assert EventCode.OVERCURRENT_TRIP in r.codes()
    assert r.ctl.end_requested is SessionOutcome.FAULT
    r.run(10)
    assert r.ctl.ended and r.level_ua == 0.0
    assert r.max_step_ua() <= STEP_LIMIT  # an abort ramps at the slew limit, never a step


def test_a_source_that_raises_itself_above_the_prescription_is_caught() -> None:
    """Measured far above the prescription while the set-point looks normal (issue 13 finding 2)."""
    r = rig()
    r.run(8)
    r.plant.extra_ua = 3_000.0  # 5 mA measured against a 2 mA prescription
    r.run(0.25)
    assert EventCode.OVERCURRENT_TRIP in r.codes()


def test_an_open_circuit_pauses_within_a_second_with_the_dose_kept() -> None:
    r = rig()
    r.run(8)
    before = r.ctl.charge_uas
    r.plant.open = True
    r.run(0.2)
    assert EventCode.ELECTRODE_LIFT in r.codes()
    lifted_at = r.t
    while r.ctl.state is not DeviceState.PAUSED and r.t - lifted_at < 3:
        r.tick()
    assert r.ctl.state is DeviceState.PAUSED and r.level_ua == 0.0
    assert r.t - lifted_at <= 2.1  # 2 mA at 1 mA/s: the slew limit's own time, never a step
    assert r.ctl.charge_uas >= before
    assert r.max_step_ua() <= STEP_LIMIT
    r.plant.open = False
    r.ctl.resume(r.t)
    r.service()
    r.run(3)
    assert r.ctl.state is DeviceState.RAMP_UP and r.level_ua > 0


def test_the_resistance_limit_holds_the_reachable_current_and_extends_the_time() -> None:
    r = rig(plant=Plant(ohm=15_000.0))  # 2 mA would need 30 V: the compliance
    r.run(20)
    codes = r.codes()
    assert EventCode.RESISTANCE_LIMIT in codes and EventCode.TIME_EXTENDED in codes
    reachable = 0.9 * COMPLIANCE_MV / 15_000.0 * 1000.0
    assert abs(r.level_ua - reachable) < 20
    assert r.max_step_ua() <= STEP_LIMIT


def test_every_ramp_starts_from_the_read_back_level() -> None:
    r = rig()
    r.run(8)
    r.level_ua = 1_500.0  # someone changed the output behind the host's back
    r.ctl.stop(r.t)
    r.service()
    assert any(n.kind == "readback_mismatch" for n in r.notes)
    count = len(r.sent)
    r.run(1)
    after = [s for _, s in r.sent[count:]]
    assert after and 1_500.0 - STEP_LIMIT <= after[0] <= 1_500.0  # from 1.5 mA, not the 2 mA it sent


class HostRampMachine(RuleBasedStateMachine):
    """Requests and plant faults in any order; the rules that must always hold."""

    def __init__(self) -> None:
        super().__init__()
        self.r = rig()
        self.sent_after_end = 0

    @rule(seconds=st.floats(0.05, 6.0))
    def run(self, seconds: float) -> None:
        ended = self.r.ctl.ended
        count = len(self.r.sent)
        self.r.run(seconds)
        if ended:
            self.sent_after_end += len(self.r.sent) - count

    @rule()
    def pause(self) -> None:
        self.r.ctl.pause(self.r.t)
        self.r.service()

    @rule()
    def resume(self) -> None:
        self.r.ctl.resume(self.r.t)
        self.r.service()

    @rule(ma=st.floats(0.2, 5.0))
    def set_current(self, ma: float) -> None:
        self.r.ctl.set_current(ma * 1000.0, self.r.t)
        self.r.service()

    @rule()
    def stop(self) -> None:
        self.r.ctl.stop(self.r.t)
        self.r.service()

    @rule()
    def abort(self) -> None:
        self.r.ctl.abort(self.r.t)
        self.r.service()

    @rule(is_open=st.booleans())
    def contact(self, is_open: bool) -> None:
        self.r.plant.open = is_open

    @rule(ohm=st.sampled_from([1_000.0, 5_000.0, 14_000.0, 40_000.0]))
    def load(self, ohm: float) -> None:
        self.r.plant.ohm = ohm

    @precondition(lambda self: not self.r.ctl.ended)
    @rule(gain=st.sampled_from([1.0, 1.05, 2.5]))
    def faulty_source(self, gain: float) -> None:
        self.r.plant.gain = gain

    @invariant()
    def never_a_step(self) -> None:
        assert self.r.max_step_ua() <= STEP_LIMIT

    @invariant()
    def never_above_the_cap(self) -> None:
        assert all(s <= 5_000.0 + 1e-6 for _, s in self.r.sent)

    @invariant()
    def nothing_after_the_end(self) -> None:
        assert self.sent_after_end == 0
        if self.r.ctl.ended:
            assert self.r.level_ua == 0.0 and self.r.ctl.state is DeviceState.DONE


TestHostRampMachine = HostRampMachine.TestCase
TestHostRampMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


def test_the_guard_trips_at_once_on_a_gross_excess_and_after_three_samples_on_a_marginal_one() -> None:
    from iontodrive.sessions.guards import OvercurrentGuard

    marginal = OvercurrentGuard(prescribed_ua=2_000, cap_ua=4_000)
    assert [marginal.judge(2_000, 2_400) for _ in range(3)][:2] == [None, None]
    assert marginal.tripped is not None
    gross = OvercurrentGuard(prescribed_ua=2_000, cap_ua=4_000)
    assert gross.judge(2_000, 6_000) is not None  # three times the prescription: no noise is that large
    self_raised = OvercurrentGuard(prescribed_ua=2_000, cap_ua=4_000)
    assert self_raised.judge(100_000, 100_000) is not None  # set-point = measured, both far too high
    assert OvercurrentGuard(prescribed_ua=2_000, cap_ua=4_000).judge(2_000, 2_150) is None
