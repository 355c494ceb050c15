"""Hypothesis drives commands, plant faults, clock steps and power cuts against the firmware; after every
step the ground-truth trace written since the previous step is checked against the safety invariants:

* the output never moves faster than the slew limit, except where physics shapes it (compliance clamp,
  open circuit, a failed regulator, a power cut);
* the polarity never changes while output flows;
* the delivered dose never decreases within a session and never exceeds the model's cap;
* after a latched fault the output only falls, reaches zero within the slew-limited ramp, and stays there;
* host silence always brings the output to zero (watchdog + the session's ramp-down time);
* every answer agrees with the request x state table (iontodrive.protocol.rules), and the safety
  commands are always acknowledged.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from firmware_sim import (
    ContactReturn,
    Device,
    ElectrodeLift,
    ImpedanceRise,
    OverCurrent,
    PlantFault,
    ShortCircuit,
    TraceRecorder,
)
from firmware_sim.host import SimHost
from iontodrive.protocol import (
    Abort,
    Ack,
    CheckContact,
    ClearFault,
    ConfigureTelemetry,
    DeviceState,
    ErrorCode,
    Heartbeat,
    Message,
    Nack,
    Pause,
    Polarity,
    Reset,
    Resume,
    SetCurrent,
    SetWatchdog,
    Start,
    Stop,
)
from iontodrive.protocol.rules import RULES

S = DeviceState
MODEL = "clinic-4"
SLEW = 5000.0
CAP = 4_800_000
MAX_UA = 4000.0
SETTLE_S = 0.02


def check_against_the_table(message: Message, state: DeviceState, output_zero: bool, reply: Message) -> None:
    """The request x state table (iontodrive.protocol.rules): a refused cell gets its code, an accepted
    cell is never refused for its state (field and contact checks may still refuse it)."""
    cell = RULES[message.TYPE][state]
    if cell.refusal is not None:
        assert isinstance(reply, Nack), (message, state, reply)
        allowed = {cell.refusal} | ({ErrorCode.POLARITY_LOCKED} if isinstance(message, Start) else set())
        assert reply.code in allowed, (message, state, reply)
    elif isinstance(reply, Nack):
        assert reply.code != ErrorCode.BAD_STATE or (cell.needs_zero_output and not output_zero), (
            message,
            state,
            reply,
        )
        assert reply.code != ErrorCode.FAULT_LATCHED or isinstance(message, ClearFault), (message, reply)
    if message.SAFETY:
        assert isinstance(reply, Ack), (message, state, reply)


class FirmwareMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 1000))
    def boot(self, seed: int) -> None:
        self.rec = TraceRecorder()
        self.device = Device(MODEL, seed=seed, trace=self.rec)
        self.host = SimHost(self.device)
        self.last_frame_link = 0.0
        self.watchdog_s = 2.0
        self.max_ramp_down_s = 0.0
        self.prev: dict[str, float] | None = None
        self.fault_since: float | None = None

    # ------------------------------------------------------------------------------------ host side

    def send(self, message: Message) -> None:
        state = self.device.state
        output_zero = self.device.firmware.output_is_zero()
        seq, frames = self.host.send(message)
        self.last_frame_link = self.device.link_time_s
        replies = [f.message for f in frames if f.seq == seq]
        assert replies, f"no reply to {message!r}"
        check_against_the_table(message, state, output_zero, replies[0])

    @rule(
        current=st.one_of(st.sampled_from([500, 2000, 4000]), st.integers(100, 4000)),
        dose=st.one_of(st.just(0), st.integers(1_000, 1_000_000)),
        duration_s=st.integers(10, 300),
        up=st.integers(5_000, 20_000),
        down=st.integers(5_000, 20_000),
        polarity=st.sampled_from([Polarity.ANODE, Polarity.CATHODE]),
        fault=st.sampled_from([None, "lift", "overcurrent", "short", "rise"]),
        fault_after=st.floats(0.5, 10.0),
        gain=st.floats(1.2, 1.5),
    )
    def start(
        self,
        current: int,
        dose: int,
        duration_s: int,
        up: int,
        down: int,
        polarity: Polarity,
        fault: str | None,
        fault_after: float,
        gain: float,
    ) -> None:
        duration = 0 if dose else max(duration_s * 1000, up + down)
        self.send(Start(current, dose, duration, up, down, polarity))
        self.max_ramp_down_s = max(self.max_ramp_down_s, down / 1000.0)
        self.host.run(0.3, step_s=0.3)  # past the contact check
        self.last_frame_link = self.device.link_time_s
        if fault is not None:  # something happens to the live output later in the session
            self.inject(fault, fault_after, gain, 5.0)

    @rule(current=st.integers(100, 4000), ramp_ms=st.integers(1, 20_000))
    def set_current(self, current: int, ramp_ms: int) -> None:
        self.send(SetCurrent(current, ramp_ms))

    @rule(message=st.sampled_from([Pause(), Resume(), Stop(), Abort(), ClearFault(), Reset(), Heartbeat()]))
    def simple(self, message: Message) -> None:
        self.send(message)

    @rule(probe=st.integers(0, 60), current=st.integers(0, 5000))
    def check_contact(self, probe: int, current: int) -> None:
        self.send(CheckContact(probe, current))

    @rule(timeout=st.integers(400, 10_500))
    def set_watchdog(self, timeout: int) -> None:
        self.send(SetWatchdog(timeout))
        self.watchdog_s = self.host.status().watchdog_ms / 1000.0
        self.last_frame_link = self.device.link_time_s

    @rule(rate=st.sampled_from([0, 2, 50]))
    def telemetry(self, rate: int) -> None:
        self.send(ConfigureTelemetry(rate))

    # ------------------------------------------------------------------------------------ the world

    @rule(
        kind=st.sampled_from(["lift", "return", "short", "rise", "overcurrent"]),
        delay=st.floats(0.0, 3.0),
        gain=st.floats(1.05, 1.5),
        factor=st.floats(1.5, 10.0),
    )
    def fault(self, kind: str, delay: float, gain: float, factor: float) -> None:
        self.inject(kind, delay, gain, factor)

    def inject(self, kind: str, delay: float, gain: float, factor: float) -> None:
        at = self.device.session_time_s + delay
        faults: dict[str, PlantFault] = {
            "lift": ElectrodeLift(at_s=at),
            "return": ContactReturn(at_s=at),
            "short": ShortCircuit(at_s=at, duration_s=2.0),
            "rise": ImpedanceRise(at_s=at, factor=factor, duration_s=15.0),
            "overcurrent": OverCurrent(at_s=at, gain=gain, rise_s=0.5, duration_s=5.0),
        }
        self.device.inject(faults[kind])

    @rule(
        seconds=st.one_of(st.sampled_from([0.2, 2.0, 10.0, 30.0]), st.floats(0.01, 30.0)),
        heartbeat=st.sampled_from([True, True, False]),
    )
    def advance(self, seconds: float, heartbeat: bool) -> None:
        self.host.run(seconds, step_s=0.5, heartbeat=heartbeat)
        if heartbeat:
            self.last_frame_link = self.device.link_time_s

    @precondition(lambda self: self.device.state != S.IDLE)
    @rule()
    def power_cut(self) -> None:
        self.device.power_cycle()
        self.last_frame_link = self.device.link_time_s
        self.watchdog_s = 2.0

    # ------------------------------------------------------------------------------------ invariants

    @invariant()
    def ground_truth_is_safe(self) -> None:
        rows = self.rec.new_rows()
        if rows["t_s"].shape[0] == 0:
            return
        cols = {k: np.asarray(v) for k, v in rows.items()}
        if self.prev is not None:
            cols = {k: np.concatenate(([self.prev[k]], v)) for k, v in cols.items()}
        t, out, state = cols["t_s"], cols["output_ua"], cols["state"]
        physical = cols["physical"].astype(bool)
        dt = self.device.dt
        if t.shape[0] > 1:
            exempt = physical[1:] | physical[:-1]
            step = np.abs(np.diff(out))
            bad = (step > SLEW * dt * 1.000001 + 1e-6) & ~exempt
            assert not bad.any(), f"slew exceeded at t={t[1:][bad][:3]}: {step[bad][:3]} uA per step"
            flipped = np.diff(cols["polarity"]) != 0
            assert not (flipped & (out[:-1] >= 1.0) & ~physical[1:]).any(), "polarity changed under current"
            same = np.diff(cols["session"]) == 0
            assert not (same & (np.diff(cols["charge_uas"]) < -1e-9)).any(), "dose decreased"
            in_fault = (state[1:] == S.FAULT) & (state[:-1] == S.FAULT)
            rising = np.diff(out) > 1e-6
            assert not (in_fault & rising & ~physical[1:]).any(), "output rose in FAULT"
        assert cols["charge_uas"].max() <= CAP, "dose cap exceeded"
        # a latched fault brings output to zero within the slew-limited ramp
        fault_rows = state == S.FAULT
        for i in range(t.shape[0]):
            if not fault_rows[i]:
                self.fault_since = None
            elif self.fault_since is None:
                self.fault_since = float(t[i])
        if self.fault_since is not None:
            late = fault_rows & (t > self.fault_since + MAX_UA / SLEW + SETTLE_S + 2 * dt)
            assert not (late & (out > 0.01)).any(), "output after a latched fault"
        # host silence always ends in zero output
        silent = self.device.link_time_s - self.last_frame_link
        if silent > self.watchdog_s + self.max_ramp_down_s + SETTLE_S + 0.01:
            assert self.device.output_ua < 1.0, (
                f"output {self.device.output_ua} uA after {silent} s of silence"
            )
        self.prev = {k: v[-1] for k, v in cols.items()}


FirmwareMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestFirmwareInvariants = FirmwareMachine.TestCase
