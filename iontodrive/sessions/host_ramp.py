"""The sans-I/O controller of a host-ramped session: readings in, set-points and events out.

A bench source-meter steps to whatever level it is told, so the host does what a stimulator's firmware
does. :class:`HostRampController` holds all of it - the ramp segments (S1, S2), the safety guards (S9
over-current, S6 electrode lift, S5 resistance limit), the end conditions (S11) and the overrun guard -
and performs no I/O, starts no thread and reads no clock: every input carries its own time.

Inputs: :meth:`~HostRampController.begin`, :meth:`~HostRampController.reading` (one measurement at time
``t``), :meth:`~HostRampController.level_read` (the programmed level read back, when asked), requests
(:meth:`stop`, :meth:`abort`, :meth:`pause`, :meth:`resume` once the shell's contact check passed,
:meth:`set_current`), :meth:`check_end`, :meth:`check_overrun` and :meth:`fallback_stalled`.
Outputs: :meth:`next_setpoint` returns the set-point due now (at most one per tick, never two closer than
one period: the shell paces and then calls :meth:`sent`), and :meth:`take_outputs` the actions queued in
order - :class:`Emit` (an event, with the state it happened in), :class:`Note` (a record note),
:class:`ReadLevel` (read the programmed level back and call :meth:`level_read`: every ramp is planned
from the read-back level, never from a remembered one), :class:`ArmFallback` / :class:`DisarmFallback`
(the instrument-side dead-man list, where the source has one).

Rules, as in the guide (``(j)`` marks judgement values):

1. each reading updates the delivered charge (trapezoid on the readings' own times, S11) and the output
   time counted toward a time-based session's duration;
2. S9 (:mod:`iontodrive.sessions.guards`): over the lowest of set-point, prescription and cap for 3
   readings: abort at the slew limit, report OVERCURRENT_TRIP, outcome FAULT;
3. S6: measured current below half the set-point for 2 readings, or impedance rising more than 50 % within
   1 s: ramp to zero within 1 s where the slew limit allows, report ELECTRODE_LIFT, pause with the dose kept;
4. S5: voltage at >= 95 % of compliance stops a ramp up; after 2 s the current that needs 90 % of compliance
   is held (RESISTANCE_LIMIT, and TIME_EXTENDED for a dose-based session); when the load allows 10 % more for
   2 s, the current ramps back up;
5. ends: a time-based session starts its ramp-down ``ramp_down`` before its duration, a dose-based one when
   the charge so far plus the ramp-down's own charge (``I·T/2``) reaches the dose; the final ramp-down of a
   dose-based session is steered onto the dose;
6. the overrun guard aborts (once) on a dose 2 % over, a time-based session past its duration plus its
   ramp-down, or a ramp-down that stopped sending set-points.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from iontodrive.errors import DeviceFault
from iontodrive.protocol import OPEN_CIRCUIT_OHM, DeviceState, EventCode, StatusFlags
from iontodrive.protocol.messages import Start
from iontodrive.ramp import RampPlan, SetpointStream
from iontodrive.sessions.guards import OvercurrentGuard
from iontodrive.sessions.types import SessionOutcome

logger = logging.getLogger("iontodrive.visa.session")

IMPEDANCE_FLOOR_UA = 50  # below this the impedance is not computed (reported as OPEN_CIRCUIT_OHM)
LIFT_FLOOR_UA = 100  # (j) set-points below this are not judged for lift
LIFT_CURRENT_FRACTION = 0.5  # (j) measured current below half the set-point ...
LIFT_SAMPLES = 2  # ... in this many consecutive readings is a lift (open circuit)
LIFT_IMPEDANCE_RISE = 0.5  # S6 (j): impedance rising more than 50 % ...
LIFT_WINDOW_S = 1.0  # ... within 1 s
LIFT_RAMP_S = 1.0  # S6: to zero within 1 s (never faster than the slew limit)
COMPLIANCE_FRACTION = 0.95  # S5 (j): voltage at ≥ 95 % of compliance ...
COMPLIANCE_HOLD_S = 2.0  # ... for ≥ 2 s
REACHABLE_FRACTION = 0.90  # hold the current that needs 90 % of compliance (margin below the 95 % mark)
RECOVERY_MARGIN = 1.10  # ramp back up when the load would allow 10 % more ...
RECOVERY_HOLD_S = 2.0  # ... for 2 s
LANDING_STRETCH = 2.0  # the steered final ramp-down takes at most twice the prescription's ramp-down time
LANDING_STEER_S = 0.25  # how often the final ramp-down is checked against the dose
OVERRUN_FRACTION = 0.02  # guard: abort if the delivered charge passes the dose by 2 %
OVERRUN_STALL_S = 2.0  # guard: abort if a ramp-down sends nothing for 2 s
TICK_EMA_WEIGHT = 0.05  # weight of the newest interval in the running mean of the tick period
LEVEL_ZERO_UA = 1e-3  # a read-back level at or below this magnitude is zero (1 nA)

ACTIVE_STATES = frozenset({DeviceState.RAMP_UP, DeviceState.HOLD, DeviceState.ADJUST})
OUTPUT_STATES = ACTIVE_STATES | {DeviceState.RAMP_DOWN, DeviceState.PAUSING}
COUNTING_STATES = ACTIVE_STATES | {DeviceState.RAMP_DOWN}  # time-based sessions count these


@dataclass(frozen=True)
class Emit:
    """An event to report: ``code`` with ``value``, in ``state``."""

    code: EventCode
    value: int
    state: DeviceState


@dataclass(frozen=True)
class Note:
    """A line for the record."""

    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class ReadLevel:
    """Read the programmed level back and give it to :meth:`HostRampController.level_read`."""


@dataclass(frozen=True)
class ArmFallback:
    """The output holds: arm the instrument-side dead-man fallback (where the source has one)."""

    level_ua: float


@dataclass(frozen=True)
class DisarmFallback:
    """A new ramp begins: disarm the instrument-side fallback."""


Output = Emit | Note | ReadLevel | ArmFallback | DisarmFallback


@dataclass
class Segment:
    """A running ramp: its plan, sent one point per tick from index 1 (index 0 is the read-back level it
    starts from), each no earlier than its time in the plan."""

    plan: RampPlan
    purpose: DeviceState
    started_at: float
    index: int = 1

    @property
    def target_ua(self) -> float:
        return self.plan.target_ua

    @property
    def points_left(self) -> int:
        return max(0, self.plan.setpoints_ua.size - self.index)


@dataclass
class _Pending:
    """A segment asked for, waiting for the read-back level it starts from."""

    target_ua: float
    ramp_s: float
    purpose: DeviceState
    at: float


@dataclass
class HostRampController:
    """See the module docstring. ``start`` is the session's ``Start`` (targets, ramps, dose or duration);
    limits are the source's (``cap_ua`` the driver's current cap)."""

    start: Start
    slew_limit_ua_per_s: float
    compliance_mv: float
    min_ramp_s: float
    rate_hz: float
    cap_ua: float
    # state the shell reads
    state: DeviceState = DeviceState.IDLE
    flags: StatusFlags = StatusFlags.NONE
    setpoint_ua: float = 0.0
    charge_uas: float = 0.0
    on_time_s: float = 0.0
    last_i_ua: float = 0.0
    last_v_mv: float = 0.0
    last_t: float | None = None
    impedance_ohm: int = OPEN_CIRCUIT_OHM
    tick_s: float = 0.0
    readings: int = 0
    ending: bool = False
    ended: bool = False
    end_requested: SessionOutcome | None = None
    end_detail: str = ""
    fault: DeviceFault | None = None
    paused_by_lift: bool = False
    fallback_took_over: bool = False
    last_send_t: float | None = None
    _outputs: list[Output] = field(default_factory=list)
    _segment: Segment | None = None
    _pending: _Pending | None = None
    _frozen: Segment | None = None  # a ramp up held at compliance
    _integrating: bool = False
    _setpoint_at_reading_ua: float = 0.0
    _low_count: int = 0
    _impedance_window: deque[tuple[float, float]] = field(default_factory=deque)
    _compliance_since: float | None = None
    _recovery_since: float | None = None
    _limited_ua: float | None = None
    _lifting: bool = False
    _landing: bool = False
    _overrun: bool = False
    _last_steer_t: float = -math.inf

    def __post_init__(self) -> None:
        start = self.start
        self.target_ua = float(start.target_current_ua)
        self.prescribed_ua = self.target_ua
        self.ramp_up_s = start.ramp_up_ms / 1000.0
        self.ramp_down_s = start.ramp_down_ms / 1000.0
        self.dose_uas = float(start.dose_uas) if start.dose_uas else None
        self.duration_s = start.duration_ms / 1000.0 if start.duration_ms else None
        self.period_s = 1.0 / self.rate_hz
        self.tick_s = self.period_s
        self.guard = OvercurrentGuard(prescribed_ua=self.target_ua, cap_ua=self.cap_ua)
        self.stream = SetpointStream(
            slew_limit_ua_per_s=self.slew_limit_ua_per_s, rate_hz=self.rate_hz, stretch=True
        )

    # ------------------------------------------------------------------------------------ outputs

    def take_outputs(self) -> list[Output]:
        """The actions queued so far, in order (the list is emptied)."""
        out, self._outputs = self._outputs, []
        return out

    def _emit(self, code: EventCode, value: int) -> None:
        self._outputs.append(Emit(code, value, self.state))

    def _note(self, kind: str, **data: Any) -> None:
        self._outputs.append(Note(kind, data))

    def charge_int(self) -> int:
        return max(0, round(self.charge_uas))

    @property
    def segment(self) -> Segment | None:
        return self._segment

    # -------------------------------------------------------------------------------------- start

    def begin(self, now: float) -> None:
        """The session starts: integrate from here, ramp up from the read-back level."""
        self._integrating = True
        self.last_t = None
        self._emit(EventCode.SESSION_STARTED, self.start.target_current_ua)
        self._start_segment(self.target_ua, self.ramp_up_s, DeviceState.RAMP_UP, now)

    def level_read(self, level_ua: float) -> None:
        """The programmed level, read back (µA in the prescribed polarity): plan the pending ramp from it."""
        if abs(level_ua - self.setpoint_ua) > 1.0 and self._integrating:
            logger.warning(
                "read-back level %.1f µA differs from the last set-point %.1f µA; ramping from the read-back",
                level_ua,
                self.setpoint_ua,
            )
            self._note("readback_mismatch", readback_ua=level_ua, setpoint_ua=self.setpoint_ua)
        self.setpoint_ua = level_ua
        pending, self._pending = self._pending, None
        if pending is None:
            return
        plan = self.stream.plan(level_ua, pending.target_ua, pending.ramp_s)
        self._segment = Segment(plan, pending.purpose, pending.at)
        self._set_state(pending.purpose)

    def _start_segment(self, target_ua: float, ramp_s: float, purpose: DeviceState, now: float) -> None:
        """Ask for a ramp to ``target_ua`` from the read-back level (planned in :meth:`level_read`)."""
        self._outputs.append(DisarmFallback())
        self._frozen = None
        self._segment = None
        self._pending = _Pending(target_ua, ramp_s, purpose, now)
        self._outputs.append(ReadLevel())

    # ------------------------------------------------------------------------------------ readings

    def reading(self, t: float, i_ua: float, v_mv: float) -> None:
        """One measurement at time ``t`` (µA and mV in the prescribed polarity), then the safety checks."""
        if self.last_t is not None and self._integrating:
            dt = max(0.0, t - self.last_t)
            self.tick_s += TICK_EMA_WEIGHT * (dt - self.tick_s)
            self.charge_uas += 0.5 * (self.last_i_ua + i_ua) * dt
            if self.state in COUNTING_STATES:
                self.on_time_s += dt
        self.last_t = t
        self.last_i_ua = i_ua
        self.last_v_mv = v_mv
        self.readings += 1
        if abs(i_ua) >= IMPEDANCE_FLOOR_UA:
            self.impedance_ohm = min(OPEN_CIRCUIT_OHM - 1, round(abs(v_mv) / abs(i_ua) * 1000.0))
        else:
            self.impedance_ohm = OPEN_CIRCUIT_OHM
        self._check_safety(t)

    # ------------------------------------------------------------------------------------ safety

    def _check_safety(self, t: float) -> None:
        state = self.state
        if state not in OUTPUT_STATES:
            self.guard.count = self._low_count = 0
            self._impedance_window.clear()
            self._compliance_since = self._recovery_since = None
            self._setpoint_at_reading_ua = self.setpoint_ua
            return
        i_ua = self.last_i_ua
        v_mv = self.last_v_mv
        setpoint = max(self._setpoint_at_reading_ua, self.setpoint_ua)
        judged = self._setpoint_at_reading_ua  # what the output was told before this reading
        self._setpoint_at_reading_ua = self.setpoint_ua

        # S9 over-current (driver side); once tripped the abort ramp runs to the end
        if not self.flags & StatusFlags.OVERCURRENT:
            reason = self.guard.judge(setpoint, i_ua)
            if reason is not None:
                logger.error("driver-side over-current check (S9, S18): %s: aborting", reason)
                self.flags |= StatusFlags.OVERCURRENT
                self.fault = DeviceFault(EventCode.OVERCURRENT_TRIP, round(i_ua), "driver-side S9 check")
                self._emit(EventCode.OVERCURRENT_TRIP, round(i_ua))
                self.end_requested = SessionOutcome.FAULT
                self.end(SessionOutcome.FAULT, 0.0, t, force=True)
                return

        # S6 electrode lift
        if not self._lifting:
            if judged >= LIFT_FLOOR_UA and i_ua < LIFT_CURRENT_FRACTION * judged:
                self._low_count += 1
            else:
                self._low_count = 0
            risen = False
            if i_ua >= IMPEDANCE_FLOOR_UA:
                impedance = abs(v_mv) / i_ua * 1000.0
                window = self._impedance_window
                window.append((t, impedance))
                while window and window[0][0] < t - LIFT_WINDOW_S:
                    window.popleft()
                risen = impedance > (1 + LIFT_IMPEDANCE_RISE) * min(r for _, r in window)
            if self._low_count >= LIFT_SAMPLES or risen:
                self._electrode_lift(t)
                return

        # S5 resistance limit
        if state in (DeviceState.RAMP_DOWN, DeviceState.PAUSING):
            self._compliance_since = self._recovery_since = None
            return
        at_compliance = abs(v_mv) >= COMPLIANCE_FRACTION * self.compliance_mv
        if at_compliance:
            self._recovery_since = None
            if self._compliance_since is None:
                self._compliance_since = t
            segment = self._segment
            if segment is not None and segment.target_ua > self.setpoint_ua and self._frozen is None:
                self._frozen = segment  # stop ramping up into the compliance
                self._segment = None
            if t - self._compliance_since >= COMPLIANCE_HOLD_S:
                self._resistance_limit(i_ua, v_mv, t)
        else:
            self._compliance_since = None
            if self._frozen is not None and self._segment is None:
                frozen = self._frozen
                self._start_segment(frozen.target_ua, self.adjust_ramp_s(frozen.target_ua), frozen.purpose, t)
            elif self.flags & StatusFlags.RESISTANCE_LIMIT and state is DeviceState.HOLD:
                self._check_recovery(t, i_ua, v_mv)

    def _reachable_ua(self, i_ua: float, v_mv: float) -> float:
        if i_ua < IMPEDANCE_FLOOR_UA:
            return 0.0
        ohm = abs(v_mv) / i_ua * 1000.0
        return REACHABLE_FRACTION * self.compliance_mv / ohm * 1000.0  # mV / Ω = mA -> µA

    def _resistance_limit(self, i_ua: float, v_mv: float, t: float) -> None:
        reachable = min(self.target_ua, self._reachable_ua(i_ua, v_mv))
        self._compliance_since = None
        self._limited_ua = reachable
        first = not self.flags & StatusFlags.RESISTANCE_LIMIT
        self.flags |= StatusFlags.RESISTANCE_LIMIT
        logger.warning("resistance limit (S5): holding %.0f µA instead of %.0f µA", reachable, self.target_ua)
        self._emit(EventCode.RESISTANCE_LIMIT, round(reachable))
        if self.dose_uas is not None and first and reachable > 0:
            remaining = max(0.0, self.dose_uas - self.charge_uas)
            extension_ms = round((remaining / reachable - remaining / self.target_ua) * 1000.0)
            self.flags |= StatusFlags.TIME_EXTENDED
            self._emit(EventCode.TIME_EXTENDED, max(0, extension_ms))
        self._start_segment(reachable, 0.0, DeviceState.ADJUST, t)

    def _check_recovery(self, t: float, i_ua: float, v_mv: float) -> None:
        held = self._limited_ua if self._limited_ua is not None else self.target_ua
        possible = self._reachable_ua(i_ua, v_mv)
        if possible < RECOVERY_MARGIN * held:
            self._recovery_since = None
            return
        if self._recovery_since is None:
            self._recovery_since = t
        if t - self._recovery_since < RECOVERY_HOLD_S:
            return
        self._recovery_since = None
        new = min(self.target_ua, possible)
        if new >= self.target_ua:
            self._limited_ua = None
            self.flags &= ~StatusFlags.RESISTANCE_LIMIT
            self._emit(EventCode.RESISTANCE_LIMIT_CLEARED, round(self.target_ua))
        else:
            self._limited_ua = new
            self._emit(EventCode.RESISTANCE_LIMIT, round(new))
        self._start_segment(new, self.adjust_ramp_s(new), DeviceState.ADJUST, t)

    def _electrode_lift(self, t: float) -> None:
        value = self.impedance_ohm
        self._lifting = True
        self._landing = False
        self.flags |= StatusFlags.ELECTRODE_LIFT
        logger.error("electrode lift (S6): impedance %s; ramping to zero", value)
        self._emit(EventCode.ELECTRODE_LIFT, value)
        if self.fault is None:
            self.fault = DeviceFault(
                EventCode.ELECTRODE_LIFT, value, "electrode lifted; output ramped to zero"
            )
        if self.state is DeviceState.RAMP_DOWN:
            self._start_segment(0.0, LIFT_RAMP_S, DeviceState.RAMP_DOWN, t)
        else:
            self.paused_by_lift = True
            self._start_segment(0.0, LIFT_RAMP_S, DeviceState.PAUSING, t)

    def adjust_ramp_s(self, target_ua: float) -> float:
        """Ramp time for a change to ``target_ua``: the prescription's ramp-up rate (the slew limit is
        enforced by the planner)."""
        delta = abs(target_ua - self.setpoint_ua)
        return self.ramp_up_s * delta / self.prescribed_ua

    # ----------------------------------------------------------------------------------- requests

    def stop(self, now: float, outcome: SessionOutcome = SessionOutcome.STOPPED, detail: str = "") -> None:
        self.end(outcome, self.ramp_down_s, now, detail)

    def abort(self, now: float) -> None:
        self.end(SessionOutcome.ABORTED, 0.0, now, force=True)

    def pause(self, now: float) -> None:
        if self.state in ACTIVE_STATES and not self.ending and not self.ended:
            self._start_segment(0.0, self.ramp_down_s, DeviceState.PAUSING, now)

    @property
    def can_resume(self) -> bool:
        return self.state is DeviceState.PAUSED and not self.ending and not self.ended

    def resume(self, now: float) -> None:
        """Ramp back up after a pause; the shell has checked contact again (S7)."""
        if not self.can_resume:
            return
        self.flags &= ~StatusFlags.ELECTRODE_LIFT
        self.paused_by_lift = False
        if self.fault is not None and self.fault.code is EventCode.ELECTRODE_LIFT:
            self.fault = None
        self._emit(EventCode.RESUMED, self.charge_int())
        level = self._limited_ua if self._limited_ua is not None else self.target_ua
        self._start_segment(level, self.ramp_up_s * level / self.prescribed_ua, DeviceState.RAMP_UP, now)

    def set_current(self, target_ua: float, now: float) -> None:
        """A new target (already checked against the limits), ramped at the prescription's rate."""
        if self.ended:
            return
        self.target_ua = float(target_ua)
        self.guard.allow_target(target_ua)
        self._limited_ua = None
        self.flags &= ~StatusFlags.RESISTANCE_LIMIT
        self._emit(EventCode.SETPOINT_CHANGED, round(target_ua))
        if self.state in ACTIVE_STATES and not self.ending:
            ramp_s = max(self.adjust_ramp_s(target_ua), self.min_ramp_s)
            self._note("set_current", target_current_ua=round(target_ua), ramp_s=ramp_s)
            self._start_segment(float(target_ua), ramp_s, DeviceState.ADJUST, now)

    def end(
        self, outcome: SessionOutcome, ramp_s: float, now: float, detail: str = "", *, force: bool = False
    ) -> None:
        """Start the final ramp-down. The first reason given is the one recorded; once ending, only a
        forced end (abort, fault) replans the ramp, faster. Nothing once the session has ended."""
        if self.ended or (self.ending and not force):
            return
        if self.end_requested is None:
            self.end_requested = outcome
        if detail and not self.end_detail:
            self.end_detail = detail
        self.ending = True
        self._landing = outcome is SessionOutcome.COMPLETED and self.dose_uas is not None and not force
        self._start_segment(0.0, ramp_s, DeviceState.RAMP_DOWN, now)

    def fallback_stalled(self, age_s: float, now: float) -> None:
        """The host did not restart the instrument-side fallback in time: it may be ramping down itself."""
        if self.fallback_took_over:
            return
        self.fallback_took_over = True
        logger.error(
            "host stalled %.1f s with the fallback armed: the instrument ramps down by itself", age_s
        )
        self.flags |= StatusFlags.LINK_LOST
        self._emit(EventCode.LINK_LOST, round(age_s * 1000))
        self.end(
            SessionOutcome.LINK_LOST, self.ramp_down_s, now, detail="host stalled; instrument ramped down"
        )

    # ------------------------------------------------------------------------------------- ending

    def expected_ramp_down_s(self) -> float:
        """How long the final ramp-down will really take: its steps (one per tick, each at most
        slew/rate) times the tick period measured so far."""
        steps = math.ceil(self.ramp_down_s * self.rate_hz - 1e-9)
        return steps * max(self.period_s, self.tick_s)

    def check_end(self, now: float, *, main_thread_alive: bool = True, waited_on: bool = False) -> None:
        """End conditions (rule 5); ``waited_on``: someone waits, so a lift pause ends the session."""
        if self.ending:
            return
        if not main_thread_alive:
            logger.warning("the main thread ended with a session running: ramping down")
            self.end(SessionOutcome.STOPPED, self.ramp_down_s, now, detail="main thread ended")
            return
        if self.paused_by_lift and self.state is DeviceState.PAUSED and waited_on:
            self.end(SessionOutcome.ELECTRODE_LIFT, 0.0, now)
            return
        if self.state not in ACTIVE_STATES:
            return
        down_s = self.expected_ramp_down_s()
        if self.dose_uas is not None:
            current = max(0.0, self.last_i_ua)
            if self.charge_uas + current * down_s / 2.0 >= self.dose_uas:
                self.end(SessionOutcome.COMPLETED, self.ramp_down_s, now)
        elif self.duration_s is not None and self.on_time_s >= self.duration_s - down_s:
            self.end(SessionOutcome.COMPLETED, self.ramp_down_s, now)

    def check_overrun(self, now: float) -> None:
        """The guard against this controller's own mistakes (rule 6)."""
        if self._overrun:
            return
        reason = ""
        if self.dose_uas is not None and self.charge_uas > self.dose_uas * (1 + OVERRUN_FRACTION):
            reason = f"delivered {self.charge_uas:.0f} µA·s, over the {self.dose_uas:.0f} µA·s dose"
        elif self.duration_s is not None and self.on_time_s > self.duration_s + self.ramp_down_s:
            reason = f"on for {self.on_time_s:.1f} s, past the {self.duration_s:g} s duration"
        elif (
            self.state is DeviceState.RAMP_DOWN
            and self._segment is not None
            and self.setpoint_ua > 0.0
            and now - max(self.last_send_t or -math.inf, self._segment.started_at)
            > max(OVERRUN_STALL_S, 10 * self.tick_s)
        ):
            reason = "the ramp-down stopped sending set-points"
        if reason:
            self._overrun = True
            logger.error("overrun guard: %s; aborting at the slew limit", reason)
            self._note("overrun_guard", reason=reason)
            self.end(self.end_requested or SessionOutcome.ABORTED, 0.0, now, detail=reason, force=True)

    # ------------------------------------------------------------------------------- set-points

    def next_setpoint(self, now: float) -> float | None:
        """The running ramp's next point once it is due (at most one per call, never skipping one)."""
        segment = self._segment
        if segment is None:
            return None
        if self._landing and segment.purpose is DeviceState.RAMP_DOWN:
            segment = self._steer_landing(segment, now)
        plan = segment.plan
        if segment.index >= plan.setpoints_ua.size:
            self._segment = None
            self._segment_finished(segment, now)
            return None
        if now - segment.started_at < float(plan.times_s[segment.index]) - 1e-9:
            return None
        setpoint = float(plan.setpoints_ua[segment.index])
        segment.index += 1
        return setpoint

    def sent(self, now: float, setpoint_ua: float) -> None:
        """The shell programmed ``setpoint_ua`` at ``now``."""
        self.last_send_t = now
        self.setpoint_ua = setpoint_ua

    def _steer_landing(self, segment: Segment, now: float) -> Segment:
        """Dose-based end (S11): keep the final ramp-down's charge landing the total on the dose.

        The ramp's remaining charge is about ``I · T / 2`` (measured current ``I``, time to zero ``T``), so
        the time to zero that lands the dose is ``2 · (dose - delivered) / I``, clamped between the fastest
        ramp the slew limit allows and twice the prescription's ramp-down time. At most every
        :data:`LANDING_STEER_S`, when the plan's remaining points (at the measured tick period) differ from
        that by more than two ticks, the rest of the ramp is re-planned from the last set-point sent (the
        final ramp-down itself started from a read-back level); it sends its first point at once.
        """
        assert self.dose_uas is not None
        if now - self._last_steer_t < LANDING_STEER_S or self.setpoint_ua <= 0.0:
            return segment
        self._last_steer_t = now
        tick = max(self.period_s, self.tick_s)
        slowdown = tick / self.period_s  # real seconds per planned second
        fastest_steps = math.ceil(self.setpoint_ua / self.slew_limit_ua_per_s * self.rate_hz)
        fastest_s = fastest_steps * tick
        current = max(self.last_i_ua, IMPEDANCE_FLOOR_UA)
        wanted_s = 2.0 * (self.dose_uas - self.charge_uas) / current
        wanted_s = min(max(wanted_s, fastest_s), LANDING_STRETCH * self.ramp_down_s * slowdown)
        expected_s = segment.points_left * tick
        if abs(expected_s - wanted_s) <= 2.0 * tick:
            return segment
        plan = self.stream.plan(self.setpoint_ua, 0.0, wanted_s / slowdown)
        replanned = Segment(
            plan, DeviceState.RAMP_DOWN, now - float(plan.times_s[min(1, plan.times_s.size - 1)])
        )
        self._segment = replanned
        return replanned

    def _segment_finished(self, segment: Segment, now: float) -> None:
        purpose = segment.purpose
        if purpose in (DeviceState.RAMP_UP, DeviceState.ADJUST):
            self._set_state(DeviceState.HOLD)
            if not self.ending:
                self._outputs.append(ArmFallback(self.setpoint_ua))
        elif purpose is DeviceState.PAUSING:
            self._set_state(DeviceState.PAUSED)
            self._lifting = False
            self._emit(EventCode.PAUSED, self.charge_int())
        elif purpose is DeviceState.RAMP_DOWN:
            if abs(self.setpoint_ua) > LEVEL_ZERO_UA:  # cannot happen unless the plan did not reach zero
                self._start_segment(0.0, 0.0, DeviceState.RAMP_DOWN, now)
                return
            self._set_state(DeviceState.DONE)
            outcome = self.end_requested or SessionOutcome.COMPLETED
            if outcome is SessionOutcome.COMPLETED and self.dose_uas is not None:
                self._emit(EventCode.DOSE_COMPLETE, self.charge_int())
            code = {
                SessionOutcome.STOPPED: EventCode.STOPPED,
                SessionOutcome.ABORTED: EventCode.ABORTED,
            }.get(outcome, EventCode.SESSION_ENDED)
            self._emit(code, self.charge_int())
            self.ended = True

    def _set_state(self, state: DeviceState) -> None:
        previous = self.state
        if state is previous:
            return
        self.state = state
        on = state in OUTPUT_STATES or (state is DeviceState.PAUSED)
        self.flags = (self.flags | StatusFlags.OUTPUT_ON) if on else (self.flags & ~StatusFlags.OUTPUT_ON)
        if state is DeviceState.DONE:
            self.flags &= ~StatusFlags.SESSION_ACTIVE
        else:
            self.flags |= StatusFlags.SESSION_ACTIVE
        if self.dose_uas is not None:
            self.flags |= StatusFlags.DOSE_BASED
        if self._integrating:
            self._emit(EventCode.STATE_CHANGED, int(previous))

    def finish(self, failed: bool) -> None:
        """The session is over (the shell brought the output to zero): DONE, or FAULT after an error."""
        if self.state is not DeviceState.DONE:
            self._set_state(DeviceState.FAULT if failed else DeviceState.DONE)
