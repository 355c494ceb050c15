"""Host-ramped dose sessions on VISA source-meters: the host is the only thing between a script and a step.

A bench source-meter steps to whatever level it is told, so here the driver does what the stimulator's
firmware does: it streams set-points from the ramp controller (:class:`~iontodrive.ramp.SetpointStream`) at
``rate_hz`` (≥ 20 Hz), one per tick and never two closer than ``1/rate_hz`` in time, so each step is at
most ``slew / rate_hz`` and the slope never exceeds the slew limit even when a tick runs late. Every ramp is
planned from the level read back from the instrument (``:SOUR:CURR?``), never from a remembered value, so a
ramp that is interrupted (pause, stop, lift, resistance limit, an error) resumes from where the output
really is.

Each tick (one thread per session, the only thread that talks to the instrument while it runs):

1. read voltage and current; integrate the delivered charge with the trapezoid rule on the readings' own
   time stamps (S11: measured current, ramps included);
2. safety: over-current (S9, driver side: measured > set-point + 10 % for 3 readings: abort),
   electrode lift (S6: measured current below half the set-point for 2 readings, or impedance rising more
   than 50 % within 1 s: ramp to zero within 1 s where the slew limit allows, report ELECTRODE_LIFT, pause
   with the dose kept), resistance limit (S5: voltage at ≥ 95 % of compliance: stop ramping up; after 2 s
   hold the current that needs 90 % of compliance, report RESISTANCE_LIMIT; a dose-based session then
   simply lasts longer, reported as TIME_EXTENDED; when the load allows 10 % more for 2 s, ramp back up);
3. requests from other threads (pause, resume, set_current, stop, abort);
4. end conditions: a time-based session starts its ramp-down ``ramp_down_s`` before its duration; a
   dose-based one when the charge so far plus the ramp-down's own charge (``I·T/2``) reaches the dose;
5. the next set-point of the running ramp, if any;
6. progress callback and record telemetry at ``telemetry_hz``.

Every exit path ramps down (S16): normal end, ``stop()`` (prescription ramp-down time), ``abort()`` (the
slew limit), a callback exception (stop, then re-raised by ``wait()``), KeyboardInterrupt and SIGTERM in
``wait()``/``deliver()`` (stop, a second one does not skip the ramp, then SessionInterrupted), closing the
source (stop and wait), the main thread ending while a session runs (stop), and any error inside the loop
(a ramp-down from the read-back level, then the error). The output is switched off only once the read-back
level is zero.

**No watchdog.** If the host process dies, the instrument keeps sourcing the last set-point. A WARNING is
logged when each session starts and a note is written to its record. The optional hardware-side fallback
(``deadman_s``, Keithley 2450 only) hands the hold phase to an instrument source list that ramps to zero by
itself unless the host restarts it in time; ``docs/visa.md`` states the trade-offs.

Records are the same JSON Lines as the stimulator's (:mod:`iontodrive.record`): events and telemetry use the
protocol's ``Event`` and ``Telemetry`` shapes with ``device_time_ms`` = milliseconds since the session
started on the session clock, ``impedance_ohm`` = ``OPEN_CIRCUIT_OHM`` when the current is too small to
compute it, and ``delivered_uas`` in the summary = the host-integrated charge.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iontodrive.errors import (
    DeviceFault,
    IontodriveError,
    LinkError,
    LinkLostError,
    SafetyRefusal,
    SessionInterrupted,
)
from iontodrive.oneshot import OneShot
from iontodrive.prescription import Prescription, contact_limits_ohm
from iontodrive.protocol import (
    OPEN_CIRCUIT_OHM,
    DeviceState,
    Event,
    EventCode,
    Polarity,
    StatusFlags,
    Telemetry,
)
from iontodrive.ramp import RampPlan, SetpointStream
from iontodrive.record import SessionRecord
from iontodrive.sessions.engine import SessionEngine
from iontodrive.sessions.guards import OvercurrentGuard
from iontodrive.sessions.outcome import SessionFacts, decide_outcome
from iontodrive.sessions.progress import ProgressBuilder
from iontodrive.sessions.recording import start_to_dict
from iontodrive.sessions.types import Progress, SessionOutcome
from iontodrive.sessions.waiting import wait_interruptibly
from iontodrive.units import UAS_PER_MA_MIN

if TYPE_CHECKING:
    from iontodrive.visa.source import VisaSource

logger = logging.getLogger(__name__)

# Thresholds. (j) marks the guide's judgement values.
LEVEL_ZERO_A = 1e-9  # a read-back level at or below this magnitude is zero (1 nA = the format's resolution)
PROBE_UA = 50  # S3: contact check with at most 50 µA
PROBE_READINGS = 3
PROBE_OPEN_FRACTION = 0.1  # probe current below 10 % of the probe: open circuit
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
DEFAULT_TELEMETRY_HZ = 10
REQUEST_TIMEOUT_S = 30.0
LANDING_STRETCH = 2.0  # the steered final ramp-down takes at most twice the prescription's ramp-down time
LANDING_STEER_S = 0.25  # how often the final ramp-down is checked against the dose
OVERRUN_FRACTION = 0.02  # guard: abort if the delivered charge passes the dose by 2 %
OVERRUN_STALL_S = 2.0  # guard: abort if a ramp-down sends nothing for 2 s
TICK_EMA_WEIGHT = 0.05  # weight of the newest interval in the running mean of the tick period
FINISH_MARGIN_S = 10.0

ACTIVE_STATES = frozenset({DeviceState.RAMP_UP, DeviceState.HOLD, DeviceState.ADJUST})
OUTPUT_STATES = ACTIVE_STATES | {DeviceState.RAMP_DOWN, DeviceState.PAUSING}
COUNTING_STATES = ACTIVE_STATES | {DeviceState.RAMP_DOWN}  # time-based sessions count these


@dataclass
class _Segment:
    """A running ramp: the ramp controller's plan, sent one point per tick from index 1 (index 0 is the
    read-back level it starts from), each no earlier than its time in the plan."""

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
class _Request:
    kind: str  # pause, resume, set_current, stop, abort
    value: Any = None
    detail: str = ""
    done: OneShot = dataclasses.field(default_factory=OneShot)
    error: BaseException | None = None


class VisaSession(SessionEngine):
    """A running host-ramped session. Create with :meth:`VisaSource.start`.

    Control methods are thread-safe: from another thread they queue a request and wait until the session
    loop has acted on it (``resume`` waits for its contact check and raises SafetyRefusal if it fails);
    from a progress or event callback they act at once. ``wait()`` returns the completed record or raises
    why the session ended early, always after the output is back at zero.
    """

    def __init__(
        self,
        source: VisaSource,
        prescription: Prescription,
        *,
        record_path: str | Path | None = None,
        labels: dict[str, str] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_alarm: Callable[[str], None] | None = None,
        telemetry_hz: float | None = DEFAULT_TELEMETRY_HZ,
        session_id: int = 0,
    ) -> None:
        super().__init__(
            prescription,
            source.identity,
            record_path=record_path,
            labels=labels,
            on_progress=on_progress,
            on_event=on_event,
            on_alarm=on_alarm,
        )
        self._source = source
        self._smu = source.instrument
        self._clock = source.clock
        self._number = session_id
        self._session_id = str(session_id)
        self._builder = ProgressBuilder(
            session_id=self._session_id,
            start=self.start_message,
            compliance_mv=self.identity.compliance_mv,
            slew_limit_ua_per_s=self.identity.slew_limit_ua_per_s,
        )
        rate = source.rate_hz
        self._period_s = 1.0 / rate
        report_hz = min(rate, telemetry_hz) if telemetry_hz else rate
        self._report_interval_s = 1.0 / report_hz
        self._stream = SetpointStream(
            slew_limit_ua_per_s=self.identity.slew_limit_ua_per_s, rate_hz=rate, stretch=True
        )
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._done = OneShot()  # the main thread waits on it (see iontodrive.oneshot)
        self._thread: threading.Thread | None = None
        # state
        self._state = DeviceState.IDLE
        self._flags = StatusFlags.NONE
        self._segment: _Segment | None = None
        self._frozen: _Segment | None = None  # a ramp up held at compliance
        self._setpoint_ua = 0.0
        self._setpoint_at_reading_ua = 0.0
        self._last_send_t: float | None = None
        self._t0 = 0.0
        self._last_t: float | None = None
        self._last_i_ua = 0.0
        self._last_v_mv = 0.0
        self._last_impedance = OPEN_CIRCUIT_OHM
        self._charge_uas = 0.0
        self._on_time_s = 0.0
        self._tick_s = self._period_s  # running mean of the time between readings
        self._readings = 0
        self._integrating = False
        self._event_no = 0
        self._sample_no = 0
        self._last_report_t = -math.inf
        # safety bookkeeping
        self._guard = OvercurrentGuard(
            prescribed_ua=self.start_message.target_current_ua, cap_ua=self.identity.max_current_ua
        )
        self._low_count = 0
        self._impedance_window: deque[tuple[float, float]] = deque()
        self._compliance_since: float | None = None
        self._recovery_since: float | None = None
        self._limited_ua: float | None = None
        self._lifting = False
        self._paused_by_lift = False
        # ending
        self._ending = False
        self._landing = False  # the final ramp-down of a dose-based session steers onto the dose
        self._overrun = False
        self._output_at_zero = False  # set once an emergency ramp-down after an error reached zero
        self._last_steer_t = -math.inf
        self._ended = False
        self._end_requested: SessionOutcome | None = None
        self._pending_end: SessionOutcome | None = None
        self._interrupted: str | None = None
        self._failure: BaseException | None = None
        self._fault: DeviceFault | None = None
        self._waiting = False
        self._end_detail = ""
        # fallback
        self._fallback_armed_at: float | None = None
        self._fallback_took_over = False

    # ------------------------------------------------------------------------------------ properties

    @property
    def state(self) -> DeviceState:
        return self._state

    @property
    def flags(self) -> StatusFlags:
        return self._flags

    @property
    def progress(self) -> Progress | None:
        return self._last_progress

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    @property
    def outcome(self) -> SessionOutcome | None:
        return self._outcome

    @property
    def delivered_uas(self) -> float:
        """Charge delivered so far (µA·s), integrated from the readings."""
        return self._charge_uas

    # --------------------------------------------------------------------------------------- begin

    def _begin(self) -> None:
        """Checks, configuration, output on at zero, contact check, record, then the session thread.

        Raises SafetyRefusal (prescription, busy instrument, failed contact check) or an instrument error;
        a refused prescription sends nothing; any later failure returns the output to zero (and off if this
        session switched it on) before raising.
        """
        self.warnings = self.prescription.check_against(self.identity)
        self.start_message = self.prescription.to_start(self.identity)
        start = self.start_message
        self._sign = 1.0 if start.polarity is Polarity.ANODE else -1.0
        self._target_ua = float(start.target_current_ua)
        self._prescribed_ua = self._target_ua
        self._ramp_up_s = start.ramp_up_ms / 1000.0
        self._ramp_down_s = start.ramp_down_ms / 1000.0
        self._dose_uas = float(start.dose_uas) if start.dose_uas else None
        self._duration_s = start.duration_ms / 1000.0 if start.duration_ms else None
        self._compliance_mv = float(self.identity.compliance_mv)
        for warning in self.warnings:
            logger.warning("prescription: %s", warning)
        if self.record_path.exists():
            raise SafetyRefusal(
                "record_path", str(self.record_path), reason="the file exists; a record is never overwritten"
            )

        smu = self._smu
        was_on = smu.output_enabled()
        if was_on:
            level = smu.source_level_a()
            if not smu.source_is_current() or abs(level) > LEVEL_ZERO_A:
                raise SafetyRefusal(
                    "state",
                    f"output on at {level:g}",
                    reason=(
                        "the instrument's output is already on and not a current source at 0 A; ramp it "
                        "down first (VisaSource.ramp_down_output()) or switch it off at the instrument"
                    ),
                )
        self._switched_on = False
        try:
            smu.configure(
                range_a=self.identity.max_current_ua * 1e-6, compliance_v=self.identity.compliance_mv / 1000.0
            )
            if not was_on:
                self._send_setpoint(0.0)  # programmed level 0 before the output goes on
                smu.output_on()
                self._switched_on = True
            self._setpoint_ua = self._readback_ua()
            contact_ohm = self._contact_check() if self._source.contact_check else None
            self._open_visa_record(contact_ohm)
        except BaseException:
            self._abandon_begin()
            raise
        logger.warning("%s", self._source.no_watchdog_warning)
        self._note("warning", text=self._source.no_watchdog_warning)
        self._t0 = self._clock.now()
        self._last_t = None
        self._integrating = True
        self._emit(EventCode.SESSION_STARTED, start.target_current_ua)
        self._thread = threading.Thread(
            target=self._run, name=f"iontodrive-visa-session-{self._number}", daemon=False
        )
        self._thread.start()
        logger.info("VISA session %s started: %s", self._session_id, self.prescription.describe())

    def _open_visa_record(self, contact_ohm: int | None) -> None:
        record = self._open_record()
        source = self._source
        record.note(
            "instrument",
            resource=source.resource_name,
            idn=self._smu.idn.raw,
            driver=type(self._smu).__name__,
            rate_hz=source.rate_hz,
            deadman_s=source.deadman_s,
            compliance_v=self.identity.compliance_mv / 1000.0,
            range_a=self.identity.max_current_ua * 1e-6,
            polarity_sign=int(self._sign),
        )
        if contact_ohm is not None:
            record.note("contact", impedance_ohm=contact_ohm)
        for warning in self.warnings:
            record.note("warning", text=warning)
        record.note("started", session_id=self._number, start=start_to_dict(self.start_message))

    def _note(self, kind: str, **data: Any) -> None:
        if self._recorder is not None:
            self._recorder.note(kind, **data)

    def _abandon_begin(self) -> None:
        """After a failure in begin: back to zero (never a step), and off if this session switched it on."""
        with contextlib.suppress(Exception):
            self._ramp_blocking(0.0, 0.0)
            if self._switched_on and abs(self._smu.source_level_a()) <= LEVEL_ZERO_A:
                self._smu.output_off()

    # ------------------------------------------------------------------------------- instrument I/O

    def _readback_ua(self) -> float:
        """The programmed level read back from the instrument (µA, positive in the prescribed polarity)."""
        value = self._sign * self._smu.source_level_a() * 1e6
        if abs(value - self._setpoint_ua) > 1.0 and self._integrating:
            logger.warning(
                "read-back level %.1f µA differs from the last set-point %.1f µA; ramping from the read-back",
                value,
                self._setpoint_ua,
            )
            self._note("readback_mismatch", readback_ua=value, setpoint_ua=self._setpoint_ua)
        self._setpoint_ua = value
        return value

    def _send_setpoint(self, setpoint_ua: float) -> None:
        """Program one set-point, never sooner than one period after the previous one."""
        clock = self._clock
        if self._last_send_t is not None:
            wait = self._period_s - (clock.now() - self._last_send_t)
            if wait > 0:
                clock.sleep(wait)
        self._smu.set_level_a(self._sign * setpoint_ua * 1e-6)
        self._last_send_t = clock.now()
        self._setpoint_ua = setpoint_ua

    def _ramp_blocking(self, target_ua: float, ramp_s: float) -> None:
        """Ramp from the read-back level to ``target_ua`` now (paced; no readings). For begin/end helpers."""
        readback = self._readback_ua()
        for _t, setpoint in self._stream.segment(readback, target_ua, ramp_s, include_start=False):
            self._send_setpoint(setpoint)

    def _read(self) -> None:
        """One reading: update charge (trapezoid on the readings' time stamps), output time, impedance."""
        clock = self._clock
        before = clock.now()
        reading = self._smu.measure()
        t = 0.5 * (before + clock.now())
        i_ua = self._sign * reading.current_a * 1e6
        v_mv = self._sign * reading.voltage_v * 1e3
        if self._last_t is not None and self._integrating:
            dt = max(0.0, t - self._last_t)
            self._tick_s += TICK_EMA_WEIGHT * (dt - self._tick_s)
            self._charge_uas += 0.5 * (self._last_i_ua + i_ua) * dt
            if self._state in COUNTING_STATES:
                self._on_time_s += dt
        self._last_t = t
        self._last_i_ua = i_ua
        self._last_v_mv = v_mv
        self._readings += 1
        if abs(i_ua) >= IMPEDANCE_FLOOR_UA:
            self._last_impedance = min(OPEN_CIRCUIT_OHM - 1, round(abs(v_mv) / abs(i_ua) * 1000.0))
        else:
            self._last_impedance = OPEN_CIRCUIT_OHM

    def _contact_check(self) -> int:
        """S3 on a source-meter: ramp to the probe current, read, ramp back to zero, judge.

        Returns the impedance (Ω); raises SafetyRefusal (field ``impedance_ohm``) outside the limits.
        """
        target = self.start_message.target_current_ua
        low, high = contact_limits_ohm(self.identity, target)
        previous = self._state
        self._state = DeviceState.CONTACT_CHECK
        try:
            self._ramp_blocking(PROBE_UA, 0.0)
            volts = amps = 0.0
            for _ in range(PROBE_READINGS):
                self._clock.sleep(self._period_s)
                reading = self._smu.measure()
                volts += abs(reading.voltage_v) / PROBE_READINGS
                amps += abs(reading.current_a) / PROBE_READINGS
            self._ramp_blocking(0.0, 0.0)
        finally:
            self._state = previous
        if amps * 1e6 < PROBE_UA * PROBE_OPEN_FRACTION:
            impedance = OPEN_CIRCUIT_OHM
        else:
            impedance = min(OPEN_CIRCUIT_OHM - 1, round(volts / amps))
        if not low <= impedance <= high:
            shown: object = "open circuit" if impedance == OPEN_CIRCUIT_OHM else impedance
            raise SafetyRefusal(
                "impedance_ohm",
                shown,
                low,
                high,
                reason="contact check failed (probe at 50 µA); check the electrodes",
            )
        logger.info("contact check: %d Ω (limits %d-%d Ω)", impedance, low, high)
        return impedance

    # -------------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        clock = self._clock
        try:
            self._start_segment(self._target_ua, self._ramp_up_s, DeviceState.RAMP_UP)
            next_tick = clock.now()
            while not self._ended:
                self._tick()
                if self._is_ended():
                    break
                next_tick += self._period_s
                now = clock.now()
                if next_tick < now:
                    next_tick = now
                clock.sleep(next_tick - now)
        except BaseException as exc:
            self._failure = exc
            logger.error("VISA session %s failed: %r; ramping down", self._session_id, exc)
            self._emergency_ramp_down()
        finally:
            self._finish()

    def _is_ended(self) -> bool:
        return self._ended

    def _tick(self) -> None:
        self._check_fallback()
        self._read()
        self._check_safety()
        self._process_requests()
        self._check_end()
        self._check_overrun()
        self._step()
        self._report()

    def _check_overrun(self) -> None:
        """A guard against this module's own mistakes: a dose overshooting by more than
        :data:`OVERRUN_FRACTION`, a time-based session running past its duration plus its ramp-down, or a
        ramp-down that stopped sending set-points aborts at the slew limit (once)."""
        if self._overrun:
            return
        reason = ""
        if self._dose_uas is not None and self._charge_uas > self._dose_uas * (1 + OVERRUN_FRACTION):
            reason = f"delivered {self._charge_uas:.0f} µA·s, over the {self._dose_uas:.0f} µA·s dose"
        elif self._duration_s is not None and self._on_time_s > self._duration_s + self._ramp_down_s:
            reason = f"on for {self._on_time_s:.1f} s, past the {self._duration_s:g} s duration"
        elif (
            self._state is DeviceState.RAMP_DOWN
            and self._segment is not None
            and self._setpoint_ua > 0.0
            and self._clock.now() - max(self._last_send_t or -math.inf, self._segment.started_at)
            > max(OVERRUN_STALL_S, 10 * self._tick_s)
        ):
            reason = "the ramp-down stopped sending set-points"
        if reason:
            self._overrun = True
            logger.error("overrun guard: %s; aborting at the slew limit", reason)
            self._note("overrun_guard", reason=reason)
            self._end(self._end_requested or SessionOutcome.ABORTED, 0.0, detail=reason, force=True)

    def _start_segment(self, target_ua: float, ramp_s: float, purpose: DeviceState) -> None:
        """Plan a ramp from the read-back level to ``target_ua`` and make it the running one."""
        self._disarm_fallback()
        self._frozen = None
        readback = self._readback_ua()
        plan = self._stream.plan(readback, target_ua, ramp_s)
        self._segment = _Segment(plan, purpose, self._clock.now())
        self._set_state(purpose)

    def _step(self) -> None:
        """Send the running ramp's next point once it is due (at most one per tick, never skipping one)."""
        segment = self._segment
        if segment is None:
            return
        if self._landing and segment.purpose is DeviceState.RAMP_DOWN:
            segment = self._steer_landing(segment)
        plan = segment.plan
        if segment.index >= plan.setpoints_ua.size:
            self._segment = None
            self._segment_finished(segment)
            return
        if self._clock.now() - segment.started_at < float(plan.times_s[segment.index]) - 1e-9:
            return
        setpoint = float(plan.setpoints_ua[segment.index])
        segment.index += 1
        self._send_setpoint(setpoint)

    def _steer_landing(self, segment: _Segment) -> _Segment:
        """Dose-based end (S11): keep the final ramp-down's charge landing the total on the dose.

        The ramp's remaining charge is about ``I · T / 2`` (measured current ``I``, time to zero ``T``), so
        the time to zero that lands the dose is ``2 · (dose - delivered) / I``, clamped between the fastest
        ramp the slew limit allows and twice the prescription's ramp-down time. The plan's remaining points
        will really take ``points_left`` ticks of the measured tick period; at most every
        :data:`LANDING_STEER_S`, when that differs from the wanted time by more than two ticks (ticks
        running late, the current lower than planned), the rest of the ramp is re-planned from the
        read-back level. A re-planned ramp sends its first point at once, so steering never stalls it.
        """
        assert self._dose_uas is not None
        now = self._clock.now()
        if now - self._last_steer_t < LANDING_STEER_S or self._setpoint_ua <= 0.0:
            return segment
        self._last_steer_t = now
        tick = max(self._period_s, self._tick_s)
        slowdown = tick / self._period_s  # real seconds per planned second
        fastest_steps = math.ceil(
            self._setpoint_ua / self.identity.slew_limit_ua_per_s * self._source.rate_hz
        )
        fastest_s = fastest_steps * tick
        current = max(self._last_i_ua, IMPEDANCE_FLOOR_UA)
        wanted_s = 2.0 * (self._dose_uas - self._charge_uas) / current
        wanted_s = min(max(wanted_s, fastest_s), LANDING_STRETCH * self._ramp_down_s * slowdown)
        expected_s = segment.points_left * tick
        if abs(expected_s - wanted_s) <= 2.0 * tick:
            return segment
        readback = self._readback_ua()
        plan = self._stream.plan(readback, 0.0, wanted_s / slowdown)
        replanned = _Segment(
            plan, DeviceState.RAMP_DOWN, now - float(plan.times_s[min(1, plan.times_s.size - 1)])
        )
        self._segment = replanned
        return replanned

    def _segment_finished(self, segment: _Segment) -> None:
        purpose = segment.purpose
        if purpose in (DeviceState.RAMP_UP, DeviceState.ADJUST):
            self._set_state(DeviceState.HOLD)
            self._arm_fallback()
        elif purpose is DeviceState.PAUSING:
            self._set_state(DeviceState.PAUSED)
            self._lifting = False
            self._emit(EventCode.PAUSED, self._charge_int())
        elif purpose is DeviceState.RAMP_DOWN:
            if abs(self._readback_ua()) * 1e-6 > LEVEL_ZERO_A:  # cannot happen unless someone else set it
                self._start_segment(0.0, 0.0, DeviceState.RAMP_DOWN)
                return
            self._set_state(DeviceState.DONE)
            outcome = self._end_requested or SessionOutcome.COMPLETED
            if outcome is SessionOutcome.COMPLETED and self._dose_uas is not None:
                self._emit(EventCode.DOSE_COMPLETE, self._charge_int())
            code = {
                SessionOutcome.STOPPED: EventCode.STOPPED,
                SessionOutcome.ABORTED: EventCode.ABORTED,
            }.get(outcome, EventCode.SESSION_ENDED)
            self._emit(code, self._charge_int())
            self._ended = True

    def _end(self, outcome: SessionOutcome, ramp_s: float, detail: str = "", *, force: bool = False) -> None:
        """Start the final ramp-down. The first reason given is the one recorded; once ending, only a
        forced end (abort, fault) replans the ramp, faster."""
        if self._ending and not force:
            return
        if self._end_requested is None:
            self._end_requested = outcome
        if detail and not self._end_detail:
            self._end_detail = detail
        self._ending = True
        self._landing = outcome is SessionOutcome.COMPLETED and self._dose_uas is not None and not force
        self._start_segment(0.0, ramp_s, DeviceState.RAMP_DOWN)

    # ------------------------------------------------------------------------------- safety

    def _check_safety(self) -> None:
        state = self._state
        if state not in OUTPUT_STATES:
            self._guard.count = self._low_count = 0
            self._impedance_window.clear()
            self._compliance_since = self._recovery_since = None
            self._setpoint_at_reading_ua = self._setpoint_ua
            return
        t = self._last_t or 0.0
        i_ua = self._last_i_ua
        v_mv = self._last_v_mv
        setpoint = max(self._setpoint_at_reading_ua, self._setpoint_ua)
        judged = self._setpoint_at_reading_ua  # what the output was told before this reading
        self._setpoint_at_reading_ua = self._setpoint_ua

        # S9 over-current (driver side); once tripped the abort ramp runs to the end
        if self._flags & StatusFlags.OVERCURRENT:
            pass
        else:
            reason = self._guard.judge(setpoint, i_ua)
            if reason is not None:
                logger.error("driver-side over-current check (S9, S18): %s: aborting", reason)
                self._flags |= StatusFlags.OVERCURRENT
                self._fault = DeviceFault(EventCode.OVERCURRENT_TRIP, round(i_ua), "driver-side S9 check")
                self._emit(EventCode.OVERCURRENT_TRIP, round(i_ua))
                self._end_requested = SessionOutcome.FAULT
                self._end(SessionOutcome.FAULT, 0.0, force=True)
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
                self._electrode_lift()
                return

        # S5 resistance limit
        if state in (DeviceState.RAMP_DOWN, DeviceState.PAUSING):
            self._compliance_since = self._recovery_since = None
            return
        at_compliance = abs(v_mv) >= COMPLIANCE_FRACTION * self._compliance_mv
        if at_compliance:
            self._recovery_since = None
            if self._compliance_since is None:
                self._compliance_since = t
            segment = self._segment
            if segment is not None and segment.target_ua > self._setpoint_ua and self._frozen is None:
                self._frozen = segment  # stop ramping up into the compliance
                self._segment = None
            if t - self._compliance_since >= COMPLIANCE_HOLD_S:
                self._resistance_limit(i_ua, v_mv)
        else:
            self._compliance_since = None
            if self._frozen is not None and self._segment is None:
                frozen = self._frozen
                self._start_segment(frozen.target_ua, self._adjust_ramp_s(frozen.target_ua), frozen.purpose)
            elif self._flags & StatusFlags.RESISTANCE_LIMIT and state is DeviceState.HOLD:
                self._check_recovery(t, i_ua, v_mv)

    def _reachable_ua(self, i_ua: float, v_mv: float) -> float:
        if i_ua < IMPEDANCE_FLOOR_UA:
            return 0.0
        ohm = abs(v_mv) / i_ua * 1000.0
        return REACHABLE_FRACTION * self._compliance_mv / ohm * 1000.0  # mV / Ω = mA -> µA

    def _resistance_limit(self, i_ua: float, v_mv: float) -> None:
        reachable = min(self._target_ua, self._reachable_ua(i_ua, v_mv))
        self._compliance_since = None
        self._limited_ua = reachable
        first = not self._flags & StatusFlags.RESISTANCE_LIMIT
        self._flags |= StatusFlags.RESISTANCE_LIMIT
        logger.warning(
            "resistance limit (S5): holding %.0f µA instead of %.0f µA", reachable, self._target_ua
        )
        self._emit(EventCode.RESISTANCE_LIMIT, round(reachable))
        if self._dose_uas is not None and first and reachable > 0:
            remaining = max(0.0, self._dose_uas - self._charge_uas)
            extension_ms = round((remaining / reachable - remaining / self._target_ua) * 1000.0)
            self._flags |= StatusFlags.TIME_EXTENDED
            self._emit(EventCode.TIME_EXTENDED, max(0, extension_ms))
        self._start_segment(reachable, 0.0, DeviceState.ADJUST)

    def _check_recovery(self, t: float, i_ua: float, v_mv: float) -> None:
        held = self._limited_ua if self._limited_ua is not None else self._target_ua
        possible = self._reachable_ua(i_ua, v_mv)
        if possible < RECOVERY_MARGIN * held:
            self._recovery_since = None
            return
        if self._recovery_since is None:
            self._recovery_since = t
        if t - self._recovery_since < RECOVERY_HOLD_S:
            return
        self._recovery_since = None
        new = min(self._target_ua, possible)
        if new >= self._target_ua:
            self._limited_ua = None
            self._flags &= ~StatusFlags.RESISTANCE_LIMIT
            self._emit(EventCode.RESISTANCE_LIMIT_CLEARED, round(self._target_ua))
        else:
            self._limited_ua = new
            self._emit(EventCode.RESISTANCE_LIMIT, round(new))
        self._start_segment(new, self._adjust_ramp_s(new), DeviceState.ADJUST)

    def _electrode_lift(self) -> None:
        value = self._last_impedance
        self._lifting = True
        self._landing = False
        self._flags |= StatusFlags.ELECTRODE_LIFT
        logger.error("electrode lift (S6): impedance %s; ramping to zero", value)
        self._emit(EventCode.ELECTRODE_LIFT, value)
        if self._fault is None:
            self._fault = DeviceFault(
                EventCode.ELECTRODE_LIFT, value, "electrode lifted; output ramped to zero"
            )
        if self._state is DeviceState.RAMP_DOWN:
            self._start_segment(0.0, LIFT_RAMP_S, DeviceState.RAMP_DOWN)
        else:
            self._paused_by_lift = True
            self._start_segment(0.0, LIFT_RAMP_S, DeviceState.PAUSING)

    def _adjust_ramp_s(self, target_ua: float) -> float:
        """Ramp time for a change to ``target_ua``: the prescription's ramp-up rate (slew limit enforced
        by the planner)."""
        delta = abs(target_ua - self._setpoint_ua)
        return self._ramp_up_s * delta / self._prescribed_ua

    # ------------------------------------------------------------------------------- ending

    def _check_end(self) -> None:
        if self._ending:
            return
        if not threading.main_thread().is_alive():
            logger.warning("the main thread ended with a session running: ramping down")
            self._end(SessionOutcome.STOPPED, self._ramp_down_s, detail="main thread ended")
            return
        if self._paused_by_lift and self._state is DeviceState.PAUSED and self._waiting:
            self._end(SessionOutcome.ELECTRODE_LIFT, 0.0)
            return
        if self._state not in ACTIVE_STATES:
            return
        down_s = self._expected_ramp_down_s()
        if self._dose_uas is not None:
            current = max(0.0, self._last_i_ua)
            if self._charge_uas + current * down_s / 2.0 >= self._dose_uas:
                self._end(SessionOutcome.COMPLETED, self._ramp_down_s)
        elif self._duration_s is not None and self._on_time_s >= self._duration_s - down_s:
            self._end(SessionOutcome.COMPLETED, self._ramp_down_s)

    def _expected_ramp_down_s(self) -> float:
        """How long the final ramp-down will really take: its steps (one per tick, each at most
        slew/rate) times the tick period measured so far. Equals ``ramp_down_s`` when ticks are on time;
        longer when the instrument or host is too slow for the rate, so the dose still lands on target."""
        steps = math.ceil(self._ramp_down_s * self._source.rate_hz - 1e-9)
        return steps * max(self._period_s, self._tick_s)

    def _emergency_ramp_down(self) -> None:
        """After an error in the loop: ramp down from the read-back level if the instrument still answers."""
        try:
            self._disarm_fallback()
            self._ramp_blocking(0.0, self._ramp_down_s)
            self._output_at_zero = True
        except Exception as exc:
            logger.critical(
                "cannot ramp the output down (%r): the instrument has NO WATCHDOG and may still be sourcing "
                "%.0f µA; ramp it down at the instrument",
                exc,
                self._setpoint_ua,
            )

    def _finish(self) -> None:
        """Output off at zero, error queue, summary, record closed; then wake waiters."""
        try:
            if self._failure is None or self._output_at_zero:
                with contextlib.suppress(Exception):
                    self._disarm_fallback()
                    level = self._smu.source_level_a()
                    if abs(level) <= LEVEL_ZERO_A:
                        self._smu.output_off()
                    else:
                        logger.error("output left ON at %g A: not switched off away from zero", level)
                with contextlib.suppress(Exception):
                    errors = self._smu.read_errors()
                    if errors:
                        logger.warning("instrument error queue after the session: %s", errors)
                        self._note("instrument_errors", errors=[list(e) for e in errors])
            if self._state is not DeviceState.DONE:
                self._set_state(DeviceState.DONE if self._failure is None else DeviceState.FAULT)
            outcome = decide_outcome(self._facts())
            # the last sample, before the record closes (its callback may still fail)
            self._report(force=True, completed=outcome is SessionOutcome.COMPLETED)
            outcome = decide_outcome(self._facts())
            extra: dict[str, Any] = {
                "readings": self._readings,
                "on_time_s": round(self._on_time_s, 3),
            }
            if self._failure is not None:
                extra["error"] = repr(self._failure)
            account = self._make_account(
                outcome,
                delivered_uas=self._charge_int(),
                end_state=self._state,
                dose_source="host-integrated instrument readings",
                confirmed=self._failure is None or self._output_at_zero,
                detail=self._end_detail,
            )
            self._close_record(account, **extra)
            logger.info(
                "VISA session %s ended: %s, %.3f mA·min",
                self._session_id,
                outcome.value,
                self._charge_uas / UAS_PER_MA_MIN,
            )
        except Exception as exc:  # never leave waiters hanging
            logger.exception("finishing the VISA session failed")
            if self._failure is None:
                self._failure = exc
        finally:
            self._done.set()

    def _facts(self) -> SessionFacts:
        failure = self._failure
        lost = (isinstance(failure, LinkError) and not self._output_at_zero) or self._fallback_took_over
        return SessionFacts(
            interrupted=self._interrupted is not None,
            callback_error=self._callback_error is not None,
            link_lost=lost,
            other_failure=failure is not None and not lost,
            fault_code=None if self._fault is None else self._fault.code,
            end_requested=self._end_requested,
        )

    # ------------------------------------------------------------------------------- requests

    def _post(self, request: _Request, *, wait: bool) -> None:
        if self._done.is_set():
            logger.info("%s ignored: the session is over", request.kind)
            return
        if self._thread is not None and threading.current_thread() is self._thread:
            self._handle(request)  # from a callback: act now (exceptions go to the callback)
            return
        self._requests.put(request)
        if wait:
            deadline = time.monotonic() + REQUEST_TIMEOUT_S
            while not request.done.wait(0.05):
                if self._done.is_set() or time.monotonic() > deadline:
                    return
            if request.error is not None:
                raise request.error

    def _process_requests(self) -> None:
        if self._pending_end is not None and not self._ending:
            outcome, self._pending_end = self._pending_end, None
            self._end(outcome, self._ramp_down_s)
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return
            try:
                self._handle(request)
            except IontodriveError as exc:
                request.error = exc
            finally:
                request.done.set()

    def _handle(self, request: _Request) -> None:
        kind = request.kind
        state = self._state
        if kind == "stop":
            self._end(request.value or SessionOutcome.STOPPED, self._ramp_down_s, request.detail)
        elif kind == "abort":
            self._end(SessionOutcome.ABORTED, 0.0, force=True)
        elif kind == "pause":
            if state in ACTIVE_STATES and not self._ending:
                self._start_segment(0.0, self._ramp_down_s, DeviceState.PAUSING)
        elif kind == "resume":
            if state is DeviceState.PAUSED and not self._ending:
                self._contact_check()
                self._flags &= ~StatusFlags.ELECTRODE_LIFT
                self._paused_by_lift = False
                if self._fault is not None and self._fault.code is EventCode.ELECTRODE_LIFT:
                    self._fault = None
                self._emit(EventCode.RESUMED, self._charge_int())
                level = self._limited_ua if self._limited_ua is not None else self._target_ua
                self._start_segment(level, self._ramp_up_s * level / self._prescribed_ua, DeviceState.RAMP_UP)
        elif kind == "set_current":
            target = float(request.value)
            self._target_ua = target
            self._guard.allow_target(target)
            self._limited_ua = None
            self._flags &= ~StatusFlags.RESISTANCE_LIMIT
            self._emit(EventCode.SETPOINT_CHANGED, round(target))
            if state in ACTIVE_STATES and not self._ending:
                ramp_s = max(self._adjust_ramp_s(target), self.identity.min_ramp_ms / 1000.0)
                self._note("set_current", target_current_ua=round(target), ramp_s=ramp_s)
                self._start_segment(target, ramp_s, DeviceState.ADJUST)

    # ------------------------------------------------------------------------------- control API

    def pause(self) -> None:
        """Ramp to zero over the prescription's ramp-down time and keep the delivered dose (S7)."""
        self._post(_Request("pause"), wait=True)

    def resume(self) -> None:
        """Check contact again, then ramp back up (S7). SafetyRefusal if the contact check fails."""
        self._post(_Request("resume"), wait=True)

    def set_current(self, current_ma: float) -> None:
        """Ramp to a new current from the read-back level at the prescription's ramp-up rate (at least the
        model's shortest ramp). SafetyRefusal (nothing changes) if the new current is outside the limits."""
        candidate = dataclasses.replace(self.prescription, current_ma=current_ma)
        candidate.check_against(self.identity)
        target = candidate.to_start(self.identity).target_current_ua
        self._post(_Request("set_current", target), wait=True)

    def stop(self) -> None:
        """End the session with a ramp over the prescription's ramp-down time."""
        self._post(_Request("stop", SessionOutcome.STOPPED), wait=True)

    def abort(self) -> None:
        """End the session at the slew limit (a fast ramp, never a step)."""
        self._post(_Request("abort"), wait=True)

    def wait(self, timeout_s: float | None = None) -> SessionRecord:
        """Block until the session is over and the output is at zero; return the completed record.

        Raises:
            SessionInterrupted: KeyboardInterrupt or SIGTERM arrived; the session was ramped down first.
            DeviceFault: an electrode lift (the session ends when it is waited on) or an over-current.
            LinkLostError: the instrument stopped answering; it has no watchdog (see the log).
            TimeoutError: ``timeout_s`` passed (the session keeps running).
            Exception: whatever a callback raised, or an error in the session loop (after the ramp-down).
        """
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError("wait() cannot be called from a session callback")
        self._waiting = True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def step() -> bool:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"session still running after {timeout_s} s (state {self._state.name})")
            return self._done.wait(0.05)

        interrupted = wait_interruptibly(step, self._interrupt)
        if interrupted is not None and self._interrupted is None:
            self._interrupted = interrupted
        wait_interruptibly(self._thread_joined, lambda reason: None)
        return self._result()

    def _interrupt(self, reason: str) -> None:
        if self._interrupted is None:
            self._interrupted = reason
        self._requests.put(_Request("stop", SessionOutcome.INTERRUPTED))

    def _thread_joined(self) -> bool:
        """True once the session thread has ended (only the record's last lines remain after the end)."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(0.05)
        return not thread.is_alive()

    def _result(self) -> SessionRecord:
        if self._interrupted is not None:
            raise SessionInterrupted(self._interrupted)
        if self._callback_error is not None:
            raise self._callback_error
        if self._failure is not None:
            if isinstance(self._failure, LinkError) and not self._output_at_zero:
                raise LinkLostError(
                    f"lost the instrument during VISA session {self._session_id}: {self._failure}; it has no "
                    "watchdog, so its output may still be on: check it at the instrument"
                ) from self._failure
            raise self._failure
        if self._fallback_took_over:
            raise LinkLostError(
                f"VISA session {self._session_id}: the host stalled for longer than deadman_s with the "
                "hardware-side fallback armed; the instrument ramped down by itself and the session ended"
            )
        if self._fault is not None:
            raise self._fault
        return SessionRecord.load(self.record_path)

    def ramp_down_for_close(self, detail: str) -> None:
        """Ramp down and wait for the end (bounded): what ``VisaSource.close()`` does to a running session."""
        if self._done.is_set():
            return
        if threading.current_thread() is self._thread:
            raise RuntimeError("close() cannot be called from a session callback; call stop() instead")
        logger.warning("source closing with a session running: ramping down first")
        self._requests.put(_Request("stop", SessionOutcome.STOPPED, detail))
        limit = self._ramp_down_s * max(1.0, self._source.real_seconds_per_clock_second) + FINISH_MARGIN_S
        self._done.wait(limit)

    # ------------------------------------------------------------------------------- fallback

    def _arm_fallback(self) -> None:
        deadman = self._source.deadman_s
        if deadman is None or self._ending:
            return
        level = self._setpoint_ua
        down = self._stream.plan(level, 0.0, self._ramp_down_s)
        hold_points = math.ceil(deadman * self._source.rate_hz)
        points = [level] * hold_points + [float(v) for v in down.setpoints_ua[1:]]
        self._smu.arm_fallback([self._sign * p * 1e-6 for p in points], self._period_s)
        self._fallback_armed_at = self._clock.now()
        if True:
            self._note(
                "fallback_armed",
                level_ua=level,
                hold_s=deadman,
                points=len(points),
                interval_s=self._period_s,
            )

    def _check_fallback(self) -> None:
        armed_at = self._fallback_armed_at
        if armed_at is None:
            return
        age = self._clock.now() - armed_at
        deadman = self._source.deadman_s or 0.0
        if age > deadman:
            self._fallback_stalled(age)
        elif age >= deadman / 2.0:
            self._smu.rearm_fallback()
            self._fallback_armed_at = self._clock.now()

    def _disarm_fallback(self) -> None:
        armed_at = self._fallback_armed_at
        if armed_at is None:
            return
        self._fallback_armed_at = None
        self._smu.disarm_fallback()
        age = self._clock.now() - armed_at
        if age > (self._source.deadman_s or 0.0):
            self._fallback_stalled(age)

    def _fallback_stalled(self, age_s: float) -> None:
        """The host did not restart the list in time: the instrument may have begun its own ramp-down."""
        if self._fallback_armed_at is not None:
            self._fallback_armed_at = None
            self._smu.disarm_fallback()
        if self._fallback_took_over:
            return
        self._fallback_took_over = True
        logger.error(
            "host stalled %.1f s with the fallback armed: the instrument ramps down by itself", age_s
        )
        self._flags |= StatusFlags.LINK_LOST
        self._emit(EventCode.LINK_LOST, round(age_s * 1000))
        self._end(SessionOutcome.LINK_LOST, self._ramp_down_s, detail="host stalled; instrument ramped down")

    # ------------------------------------------------------------------------------- reporting

    def _set_state(self, state: DeviceState) -> None:
        previous = self._state
        if state is previous:
            return
        self._state = state
        on = state in OUTPUT_STATES or (state is DeviceState.PAUSED)
        self._flags = (self._flags | StatusFlags.OUTPUT_ON) if on else (self._flags & ~StatusFlags.OUTPUT_ON)
        if state is DeviceState.DONE:
            self._flags &= ~StatusFlags.SESSION_ACTIVE
        else:
            self._flags |= StatusFlags.SESSION_ACTIVE
        if self._dose_uas is not None:
            self._flags |= StatusFlags.DOSE_BASED
        if self._integrating:
            self._emit(EventCode.STATE_CHANGED, int(previous))

    def _charge_int(self) -> int:
        return max(0, round(self._charge_uas))

    def _device_ms(self) -> int:
        return max(0, round((self._clock.now() - self._t0) * 1000.0))

    def _emit(self, code: EventCode, value: int) -> None:
        self._event_no += 1
        event = Event(
            event_no=self._event_no,
            device_time_ms=self._device_ms(),
            code=code,
            state=self._state,
            value=value,
        )
        if self._recorder is not None:
            self._recorder.event(event)
        self._publish_event(event)

    def _on_callback_error(self) -> None:
        self._pending_end = SessionOutcome.CALLBACK_ERROR

    def _report(self, *, force: bool = False, completed: bool = False) -> None:
        t = self._last_t if self._last_t is not None else self._clock.now()
        if not force and t - self._last_report_t < self._report_interval_s - 1e-9:
            return
        self._last_report_t = t
        sample = Telemetry(
            sample_no=self._sample_no,
            device_time_ms=self._device_ms(),
            state=self._state,
            flags=self._flags,
            polarity=self.start_message.polarity,
            setpoint_ua=max(0, round(self._setpoint_ua)),
            measured_ua=max(0, round(self._last_i_ua)),
            voltage_mv=max(0, round(abs(self._last_v_mv))),
            impedance_ohm=self._last_impedance,
            charge_uas=self._charge_int(),
        )
        self._sample_no += 1
        if self._recorder is not None:
            self._recorder.telemetry(sample)
        assert self._builder is not None
        progress = self._builder.build(
            sample,
            elapsed_s=sample.device_time_ms / 1000.0,
            on_time_s=self._on_time_s,
            completed=completed,
            aborting=self._end_requested in (SessionOutcome.ABORTED, SessionOutcome.FAULT),
        )
        self._publish_progress(progress)
