"""Host-ramped dose sessions on VISA source-meters: the host is the only thing between a script and a step.

A bench source-meter steps to whatever level it is told, so here the driver does what the stimulator's
firmware does: it streams set-points from the ramp controller (:class:`~iontodrive.ramp.SetpointStream`) at
``rate_hz`` (≥ 20 Hz), one per tick and never two closer than ``1/rate_hz`` in time, so each step is at
most ``slew / rate_hz`` and the slope never exceeds the slew limit even when a tick runs late. Every ramp is
planned from the level read back from the instrument (``:SOUR:CURR?``), never from a remembered value, so a
ramp that is interrupted (pause, stop, lift, resistance limit, an error) resumes from where the output
really is.

Everything that decides - ramps, the S5/S6/S9 guards, end conditions, the overrun guard - is the sans-I/O
:class:`~iontodrive.sessions.host_ramp.HostRampController` (readings in, set-points and events out, tested
without threads or sleeps). This module is its I/O shell: one thread per session, the only thread that
talks to the instrument while it runs. Each tick:

1. measure voltage and current; give the reading to the controller (charge, on-time, safety guards);
2. requests from other threads (pause, resume after a contact check here, set_current, stop, abort);
3. the controller's end conditions and overrun guard;
4. the next set-point the controller says is due, paced so that no two are closer than ``1/rate_hz``;
5. progress callback and record telemetry at ``telemetry_hz``.

After every call the controller's outputs are carried out in order: read the level back (every ramp is
planned from it), events (record and callback), notes, the instrument-side fallback.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from iontodrive.errors import (
    IontodriveError,
    LinkError,
    LinkLostError,
    SafetyRefusal,
    SessionInterrupted,
    SessionWaitTimeout,
)
from iontodrive.oneshot import OneShot
from iontodrive.prescription import Prescription, contact_limits_ohm
from iontodrive.protocol import (
    OPEN_CIRCUIT_OHM,
    DeviceState,
    Event,
    Polarity,
    StatusFlags,
    Telemetry,
)
from iontodrive.record import SessionRecord
from iontodrive.sessions.engine import SessionEngine, SessionOptions
from iontodrive.sessions.host_ramp import (
    ArmFallback,
    DisarmFallback,
    Emit,
    HostRampController,
    Note,
    ReadLevel,
)
from iontodrive.sessions.outcome import SessionFacts, decide_outcome
from iontodrive.sessions.progress import ProgressBuilder
from iontodrive.sessions.recording import start_to_dict
from iontodrive.sessions.types import SessionOutcome
from iontodrive.sessions.waiting import wait_interruptibly
from iontodrive.units import UAS_PER_MA_MIN

if TYPE_CHECKING:
    from iontodrive.visa.source import VisaSource

logger = logging.getLogger(__name__)

LEVEL_ZERO_A = 1e-9  # a read-back level at or below this magnitude is zero (1 nA = the format's resolution)
PROBE_UA = 50  # S3: contact check with at most 50 µA
PROBE_READINGS = 3
PROBE_OPEN_FRACTION = 0.1  # probe current below 10 % of the probe: open circuit
REQUEST_TIMEOUT_S = 30.0
FINISH_MARGIN_S = 10.0


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
        options: SessionOptions,
        *,
        session_id: int = 0,
    ) -> None:
        super().__init__(prescription, source.identity, options)
        telemetry_hz = options.telemetry_hz
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
        self._ctl = HostRampController(
            start=self.start_message,
            slew_limit_ua_per_s=float(self.identity.slew_limit_ua_per_s),
            compliance_mv=float(self.identity.compliance_mv),
            min_ramp_s=self.identity.min_ramp_ms / 1000.0,
            rate_hz=rate,
            cap_ua=float(self.identity.max_current_ua),
        )
        self._stream = self._ctl.stream
        self._sign = 1.0 if self.start_message.polarity is Polarity.ANODE else -1.0
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._done = OneShot()  # the main thread waits on it (see iontodrive.oneshot)
        self._thread: threading.Thread | None = None
        self._switched_on = False
        self._last_send_t: float | None = None
        self._t0 = 0.0
        self._event_no = 0
        self._sample_no = 0
        self._last_report_t = -math.inf
        self._output_at_zero = False  # set once an emergency ramp-down after an error reached zero
        self._pending_end: SessionOutcome | None = None
        self._interrupted: str | None = None
        self._failure: BaseException | None = None
        self._waiting = False
        self._fallback_armed_at: float | None = None

    # ------------------------------------------------------------------------------------ properties

    @property
    def state(self) -> DeviceState:
        return self._ctl.state

    @property
    def flags(self) -> StatusFlags:
        return self._ctl.flags

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    @property
    def delivered_uas(self) -> float:
        """Charge delivered so far (µA·s), integrated from the readings."""
        return self._ctl.charge_uas

    # --------------------------------------------------------------------------------------- begin

    @classmethod
    def begin(
        cls, source: VisaSource, prescription: Prescription, options: SessionOptions, *, session_id: int
    ) -> VisaSession:
        """Check, configure and start a session on ``source`` (what :meth:`VisaSource.start` does)."""
        session = cls(source, prescription, options, session_id=session_id)
        session._begin()
        return session

    def _begin(self) -> None:
        """Checks, configuration, output on at zero, contact check, record, then the session thread.

        Raises SafetyRefusal (prescription, busy instrument, failed contact check, an existing record) or
        an instrument error; a refused prescription sends nothing; any later failure returns the output to
        zero (and off if this session switched it on) before raising.
        """
        self.warnings = self.prescription.check_against(self.identity)
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
        try:
            smu.configure(
                range_a=self.identity.max_current_ua * 1e-6, compliance_v=self.identity.compliance_mv / 1000.0
            )
            if not was_on:
                self._send_setpoint(0.0)  # programmed level 0 before the output goes on
                smu.output_on()
                self._switched_on = True
            self._ctl.level_read(self._read_level_ua())
            contact_ohm = self._contact_check() if self._source.contact_check else None
            self._open_visa_record(contact_ohm)
        except BaseException:
            self._abandon_begin()
            raise
        logger.warning("%s", self._source.no_watchdog_warning)
        self._note("warning", text=self._source.no_watchdog_warning)
        self._t0 = self._clock.now()
        self._ctl.begin(self._clock.now())
        self._service()
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

    def _read_level_ua(self) -> float:
        """The programmed level read back from the instrument (µA, positive in the prescribed polarity)."""
        return self._sign * self._smu.source_level_a() * 1e6

    def _send_setpoint(self, setpoint_ua: float) -> None:
        """Program one set-point, never sooner than one period after the previous one."""
        clock = self._clock
        if self._last_send_t is not None:
            wait = self._period_s - (clock.now() - self._last_send_t)
            if wait > 0:
                clock.sleep(wait)
        self._smu.set_level_a(self._sign * setpoint_ua * 1e-6)
        self._last_send_t = clock.now()
        self._ctl.sent(self._last_send_t, setpoint_ua)

    def _ramp_blocking(self, target_ua: float, ramp_s: float) -> None:
        """Ramp from the read-back level to ``target_ua`` now (paced; no readings). For begin/end helpers."""
        readback = self._read_level_ua()
        self._ctl.setpoint_ua = readback
        for _t, setpoint in self._stream.segment(readback, target_ua, ramp_s, include_start=False):
            self._send_setpoint(setpoint)

    def _read(self) -> None:
        """One reading, at the middle of its measurement, to the controller."""
        clock = self._clock
        before = clock.now()
        reading = self._smu.measure()
        t = 0.5 * (before + clock.now())
        self._ctl.reading(t, self._sign * reading.current_a * 1e6, self._sign * reading.voltage_v * 1e3)
        self._service()

    def _contact_check(self) -> int:
        """S3 on a source-meter: ramp to the probe current, read, ramp back to zero, judge.

        Returns the impedance (Ω); raises SafetyRefusal (field ``impedance_ohm``) outside the limits.
        """
        target = self.start_message.target_current_ua
        low, high = contact_limits_ohm(self.identity, target)
        ctl = self._ctl
        previous = ctl.state
        ctl.state = DeviceState.CONTACT_CHECK
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
            ctl.state = previous
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

    # ------------------------------------------------------------------------- controller outputs

    def _service(self) -> None:
        """Carry out the controller's outputs, in order, until it has none left."""
        ctl = self._ctl
        while True:
            outputs = ctl.take_outputs()
            if not outputs:
                return
            for output in outputs:
                if isinstance(output, ReadLevel):
                    ctl.level_read(self._read_level_ua())
                elif isinstance(output, Emit):
                    self._emit(output)
                elif isinstance(output, Note):
                    self._note(output.kind, **output.data)
                elif isinstance(output, ArmFallback):
                    self._arm_fallback(output.level_ua)
                elif isinstance(output, DisarmFallback):
                    self._disarm_fallback()

    def _emit(self, output: Emit) -> None:
        self._event_no += 1
        event = Event(
            event_no=self._event_no,
            device_time_ms=self._device_ms(),
            code=output.code,
            state=output.state,
            value=output.value,
        )
        if self._recorder is not None:
            self._recorder.event(event)
        self._publish_event(event)

    # -------------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        clock = self._clock
        try:
            next_tick = clock.now()
            while True:
                self._tick()
                if self._ctl.ended:
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

    def _tick(self) -> None:
        ctl = self._ctl
        self._check_fallback()
        self._read()
        self._process_requests()
        now = self._clock.now()
        ctl.check_end(now, main_thread_alive=threading.main_thread().is_alive(), waited_on=self._waiting)
        self._service()
        ctl.check_overrun(now)
        self._service()
        setpoint = ctl.next_setpoint(self._clock.now())
        self._service()
        if setpoint is not None:
            self._send_setpoint(setpoint)
        self._report()

    def _process_requests(self) -> None:
        ctl = self._ctl
        if self._pending_end is not None and not ctl.ending:
            outcome, self._pending_end = self._pending_end, None
            ctl.stop(self._clock.now(), outcome)
            self._service()
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
        ctl = self._ctl
        now = self._clock.now()
        kind = request.kind
        if kind == "stop":
            ctl.stop(now, request.value or SessionOutcome.STOPPED, request.detail)
        elif kind == "abort":
            ctl.abort(now)
        elif kind == "pause":
            ctl.pause(now)
        elif kind == "resume":
            if ctl.can_resume:
                self._contact_check()
                ctl.resume(self._clock.now())
        elif kind == "set_current":
            ctl.set_current(float(request.value), now)
        self._service()

    def _emergency_ramp_down(self) -> None:
        """After an error in the loop: ramp down from the read-back level if the instrument still answers."""
        try:
            self._disarm_fallback(check_stall=False)
            self._ramp_blocking(0.0, self._ctl.ramp_down_s)
            self._output_at_zero = True
        except Exception as exc:
            logger.critical(
                "cannot ramp the output down (%r): the instrument has NO WATCHDOG and may still be sourcing "
                "%.0f µA; ramp it down at the instrument",
                exc,
                self._ctl.setpoint_ua,
            )

    def _finish(self) -> None:
        """Output off at zero, error queue, summary, record closed; then wake waiters."""
        try:
            if self._failure is None or self._output_at_zero:
                with contextlib.suppress(Exception):
                    self._disarm_fallback(check_stall=False)
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
            self._ctl.finish(failed=self._failure is not None)
            self._service()
            outcome = decide_outcome(self._facts())
            # the last sample, before the record closes (its callback may still fail)
            self._report(force=True, completed=outcome is SessionOutcome.COMPLETED)
            outcome = decide_outcome(self._facts())
            ctl = self._ctl
            extra: dict[str, Any] = {"readings": ctl.readings, "on_time_s": round(ctl.on_time_s, 3)}
            if self._failure is not None:
                extra["error"] = repr(self._failure)
            account = self._make_account(
                outcome,
                delivered_uas=ctl.charge_int(),
                end_state=ctl.state,
                dose_source="host-integrated instrument readings",
                confirmed=self._failure is None or self._output_at_zero,
                detail=ctl.end_detail,
            )
            self._close_record(account, **extra)
            logger.info(
                "VISA session %s ended: %s, %.3f mA·min",
                self._session_id,
                outcome.value,
                ctl.charge_uas / UAS_PER_MA_MIN,
            )
        except Exception as exc:  # never leave waiters hanging
            logger.exception("finishing the VISA session failed")
            if self._failure is None:
                self._failure = exc
        finally:
            self._done.set()

    def _facts(self) -> SessionFacts:
        failure = self._failure
        ctl = self._ctl
        lost = (isinstance(failure, LinkError) and not self._output_at_zero) or ctl.fallback_took_over
        return SessionFacts(
            interrupted=self._interrupted is not None,
            callback_error=self._callback_error is not None,
            link_lost=lost,
            other_failure=failure is not None and not lost,
            fault_code=None if ctl.fault is None else ctl.fault.code,
            end_requested=ctl.end_requested,
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
                raise SessionWaitTimeout(
                    f"session still running after {timeout_s} s (state {self.state.name})"
                )
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
        if self._ctl.fallback_took_over:
            raise LinkLostError(
                f"VISA session {self._session_id}: the host stalled for longer than deadman_s with the "
                "hardware-side fallback armed; the instrument ramped down by itself and the session ended"
            )
        if self._ctl.fault is not None:
            raise self._ctl.fault
        return SessionRecord.load(self.record_path)

    def ramp_down_for_close(self, detail: str) -> None:
        """Ramp down and wait for the end (bounded): what ``VisaSource.close()`` does to a running session."""
        if self._done.is_set():
            return
        if threading.current_thread() is self._thread:
            raise RuntimeError("close() cannot be called from a session callback; call stop() instead")
        logger.warning("source closing with a session running: ramping down first")
        self._requests.put(_Request("stop", SessionOutcome.STOPPED, detail))
        limit = self._ctl.ramp_down_s * max(1.0, self._source.real_seconds_per_clock_second) + FINISH_MARGIN_S
        self._done.wait(limit)

    # ------------------------------------------------------------------------------- fallback

    def _arm_fallback(self, level: float) -> None:
        deadman = self._source.deadman_s
        if deadman is None:
            return
        down = self._stream.plan(level, 0.0, self._ctl.ramp_down_s)
        hold_points = math.ceil(deadman * self._source.rate_hz)
        points = [level] * hold_points + [float(v) for v in down.setpoints_ua[1:]]
        self._smu.arm_fallback([self._sign * p * 1e-6 for p in points], self._period_s)
        self._fallback_armed_at = self._clock.now()
        self._note(
            "fallback_armed", level_ua=level, hold_s=deadman, points=len(points), interval_s=self._period_s
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

    def _disarm_fallback(self, *, check_stall: bool = True) -> None:
        armed_at = self._fallback_armed_at
        if armed_at is None:
            return
        self._fallback_armed_at = None
        self._smu.disarm_fallback()
        age = self._clock.now() - armed_at
        if check_stall and age > (self._source.deadman_s or 0.0):
            self._fallback_stalled(age)

    def _fallback_stalled(self, age_s: float) -> None:
        """The host did not restart the list in time: the instrument may have begun its own ramp-down."""
        if self._fallback_armed_at is not None:
            self._fallback_armed_at = None
            self._smu.disarm_fallback()
        self._ctl.fallback_stalled(age_s, self._clock.now())
        self._service()

    # ------------------------------------------------------------------------------- reporting

    def _device_ms(self) -> int:
        return max(0, round((self._clock.now() - self._t0) * 1000.0))

    def _on_callback_error(self) -> None:
        self._pending_end = SessionOutcome.CALLBACK_ERROR

    def _report(self, *, force: bool = False, completed: bool = False) -> None:
        ctl = self._ctl
        t = ctl.last_t if ctl.last_t is not None else self._clock.now()
        if not force and t - self._last_report_t < self._report_interval_s - 1e-9:
            return
        self._last_report_t = t
        sample = Telemetry(
            sample_no=self._sample_no,
            device_time_ms=self._device_ms(),
            state=ctl.state,
            flags=ctl.flags,
            polarity=self.start_message.polarity,
            setpoint_ua=max(0, round(ctl.setpoint_ua)),
            measured_ua=max(0, round(ctl.last_i_ua)),
            voltage_mv=max(0, round(abs(ctl.last_v_mv))),
            impedance_ohm=ctl.impedance_ohm,
            charge_uas=ctl.charge_int(),
        )
        self._sample_no += 1
        if self._recorder is not None:
            self._recorder.telemetry(sample)
        assert self._builder is not None
        progress = self._builder.build(
            sample,
            elapsed_s=sample.device_time_ms / 1000.0,
            on_time_s=ctl.on_time_s,
            completed=completed,
            aborting=ctl.end_requested in (SessionOutcome.ABORTED, SessionOutcome.FAULT),
        )
        self._publish_progress(progress)
