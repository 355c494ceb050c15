"""Sessions on a protocol device: :class:`Stimulator` (the public entry point) and :class:`DeviceSession`.

A session is: driver-side checks of the prescription against the device's hard limits and the driver's own
ceilings (S1, S3, S8, S12, S13, S18), a contact check judged by the driver as well as the device (S3),
``Start``, then the device ramps up, holds and ramps down by itself while the driver checks, records and
reports. What every session shares (record, progress, alarms, callbacks, outcome, the interrupt-safe wait)
is in :mod:`iontodrive.sessions.engine`; this module holds only what the protocol device does differently.

Safety wiring (issue 13):

* the over-current check (:mod:`iontodrive.sessions.guards`) and the fault/lift bookkeeping run as *safety*
  listeners of the client (``add_telemetry_listener(..., safety=True)``): ahead of, and independent of,
  record writes and user callbacks, which run as ordinary listeners;
* the session registers a heartbeat gate (``DeviceClient.gate_heartbeats``) for its whole life: it is True
  only while this controller is alive and its safety checks ran on telemetry within
  :data:`GATE_FRESH_S`; a session that gave up on confirming zero output leaves it closed;
* every way to zero is *confirmed*: :meth:`DeviceSession._bring_to_zero` sends ``Stop``, then ``Abort``,
  again every :data:`ZERO_REPEAT_S`, until the device's telemetry or status shows zero output or the link
  is gone, within a bounded time;
* once ``Start`` may have reached the device, every failure path returns a handle or brings the device to
  zero and writes what it knows; a ``starting`` note is written (and fsync'd) before ``Start`` is sent, so
  :meth:`Stimulator.recover` can always tell whether the device's session is this record's;
* ``wait()`` returns within a bounded time: an end that is not confirmed within its ramp time plus
  :data:`END_MARGIN_S` raises :class:`~iontodrive.sessions.types.OutputNotConfirmedError`; a device that
  answers no request for :data:`UNANSWERED_LIMIT_S` while it keeps sending telemetry is treated as lost.

Every exit path ramps down (S16):

========================  =====================================================================
normal end                the device plans its own ramp-down so the dose lands on target (S11)
``stop()``                ``Stop``: ramp over the prescription's ramp-down time
``abort()``               ``Abort``: ramp at the model's hard slew limit (never a step), repeated
callback exception        ``Stop``, wait for zero, then the exception is re-raised to the caller
KeyboardInterrupt         ``Stop``, wait for zero (a second Ctrl-C does not skip the ramp), then
                          :class:`~iontodrive.errors.SessionInterrupted`
SIGTERM (in ``deliver``)  as KeyboardInterrupt
closing the client        ``Stop`` and wait for zero before the link closes
link lost                 ``Stop`` in case the device still hears us; the device's watchdog ramps
                          down (S10); the driver raises LinkLostError
host killed               the device's watchdog ramps down; :meth:`Stimulator.recover` completes the
                          record on the next connection
========================  =====================================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from iontodrive import ceilings
from iontodrive.client import DeviceClient
from iontodrive.errors import (
    DeviceFault,
    DeviceRefusal,
    IontodriveError,
    LinkClosedError,
    LinkError,
    LinkLostError,
    LinkTimeoutError,
    SafetyRefusal,
    SessionInterrupted,
    SessionWaitTimeout,
)
from iontodrive.prescription import Prescription, contact_limits_ohm
from iontodrive.protocol import (
    OPEN_CIRCUIT_OHM,
    Abort,
    ContactReport,
    ContactVerdict,
    DeviceState,
    Event,
    EventCode,
    IdentityReport,
    Message,
    Pause,
    Resume,
    SetCurrent,
    StatusFlags,
    StatusReport,
    Stop,
    Telemetry,
)
from iontodrive.protocol.rules import IDLE_STATES, QUIET_STATES
from iontodrive.record import RecordWriter, SessionRecord
from iontodrive.resources import normalise_resource
from iontodrive.sessions.client_api import SessionClient
from iontodrive.sessions.engine import DeliversSessions, SessionEngine, SessionOptions
from iontodrive.sessions.guards import OVERCURRENT_FLOOR_UA, OvercurrentGuard
from iontodrive.sessions.outcome import SessionFacts, decide_outcome
from iontodrive.sessions.progress import ProgressBuilder
from iontodrive.sessions.reconnect import ReconnectPolicy, after_link_loss
from iontodrive.sessions.recording import start_to_dict
from iontodrive.sessions.types import OutputNotConfirmedError, Progress, SessionOutcome
from iontodrive.sessions.waiting import wait_interruptibly
from iontodrive.units import UAS_PER_MA_MIN

logger = logging.getLogger("iontodrive.session")

FAULT_EVENTS = frozenset({EventCode.OVERCURRENT_TRIP, EventCode.HARDWARE_TRIP})
# Events after which the device has paused the session at zero output by itself.
DEVICE_PAUSE_EVENTS = frozenset({EventCode.ELECTRODE_LIFT, EventCode.SHORT_CIRCUIT, EventCode.LINK_LOST})
STATUS_POLL_S = 0.5
EVENT_CATCH_UP_S = 1.0  # at the end, wait this long for events still being dispatched, then fetch them
RESTART_GRACE_S = 2.0  # wait this long for the POWER_ON event after a status shows a restarted device
GATE_FRESH_S = 1.0  # the heartbeat gate closes when the safety checks last ran longer ago than this
ZERO_REPEAT_S = 1.0  # Stop/Abort are sent again this often until zero output is confirmed
END_MARGIN_S = 10.0  # an end must be confirmed within its ramp time plus this margin
UNANSWERED_LIMIT_S = 5.0  # a device that answers nothing for this long (while sending) is lost
# S19: the safety checks this far behind telemetry (wedged or starved) end the session from the waiting
# thread. The heartbeat rule already withholds heartbeats at SAFETY_LAG_MAX_S (0.25 s), but the status
# backstop poll is a valid frame too and would keep the device's watchdog fed while nothing checks the
# telemetry; so the waiting thread aborts (a ramp at the slew limit, S2) instead of polling on blind.
SAFETY_BEHIND_ABORT_S = 1.0
# A wait that overslept its STATUS_POLL_S by more than this means the waiting thread itself did not run (the
# whole process was stopped: SIGSTOP, a suspended VM or laptop): for SAFETY_BEHIND_ABORT_S after it runs
# again the safety checks may catch up before their lag aborts the session, and the status backstop is not
# polled meanwhile (it would feed the device's watchdog while nothing checks the telemetry).
OVERSLEPT_S = 0.5
START_SETTLE_LIMIT_S = 75.0  # upper bound on bringing an unconfirmed start to zero
RECORD_FLUSH_S = 2.0  # the 'starting' and 'started' notes are waited for (fsync'd) this long at most


def _at_zero(state: DeviceState, setpoint_ua: int, measured_ua: int) -> bool:
    return state in QUIET_STATES and setpoint_ua == 0 and measured_ua <= OVERCURRENT_FLOOR_UA


class DeviceSession(SessionEngine):
    """A running session on a protocol device. Create with :meth:`Stimulator.start`.

    Methods are thread-safe. ``wait()`` returns the :class:`~iontodrive.record.SessionRecord` once output
    is back at zero and the record is closed, or raises why the session ended early; ``account`` is the
    device's own account of the session (delivered charge and end state read back from it).
    """

    def __init__(
        self,
        stim: Stimulator,
        prescription: Prescription,
        options: SessionOptions | None = None,
        *,
        record_telemetry_hz: float = 10.0,
        **option_fields: Any,
    ) -> None:
        # ``option_fields``: the first wave's keyword form (``Session(stim, rx, record_path=...)``).
        options = options if options is not None else SessionOptions(**option_fields)
        client = stim.client
        telemetry_hz = options.telemetry_hz
        top_hz = client.identity.max_telemetry_hz
        if telemetry_hz is not None and (
            isinstance(telemetry_hz, bool)
            or not isinstance(telemetry_hz, int)
            or not 1 <= telemetry_hz <= top_hz
        ):
            raise SafetyRefusal(
                "telemetry_hz",
                telemetry_hz,
                1,
                top_hz,
                reason=f"must be an integer within the limit of {client.identity.model}",
            )
        super().__init__(prescription, client.identity, options)
        self._stim = stim
        self._client = client
        self._telemetry_hz = telemetry_hz
        self._restore_telemetry_hz: int | None = None
        self._record_interval_s = 1.0 / record_telemetry_hz if record_telemetry_hz > 0 else 0.0
        self._last_recorded_device_s = -1e9
        start = self.start_message
        # S18: over-current judged against the prescription and the driver's family cap as well as the
        # device's set-point (the lower of the device's and the driver's limits, iontodrive.ceilings)
        self._guard = OvercurrentGuard(
            prescribed_ua=start.target_current_ua,
            cap_ua=ceilings.effective_identity(self.identity).max_current_ua,
        )
        self._state = DeviceState.IDLE
        self._flags = StatusFlags.NONE
        self._end_requested: SessionOutcome | None = None
        self._end_requested_at: float | None = None
        self._aborting = False
        self._fault: DeviceFault | None = None
        self._paused_by_device: EventCode | None = None
        self._finished = False
        self._delivered_uas = 0
        self._delivered_at_ms = -1  # device time of the figure in _delivered_uas
        self._remaining_ms = start.duration_ms
        self._remaining_at_device_ms: int | None = None
        self._on_time_shown = 0.0
        self._removers: list[Callable[[], None]] = []
        self._remove_gate: Callable[[], None] | None = None
        self._gate_closed = False
        self._last_safety_s = time.monotonic()
        self._last_answer_s = time.monotonic()
        self._polled_at_s = 0.0  # when wait() last polled status (monotonic s)
        self._awake_since_s = 0.0  # since when the waiting thread has run without a freeze (monotonic s)
        self._latest: Telemetry | None = None  # newest sample of this session (safety tier)
        self._started_sending = False  # Start was (or may have been) sent
        self._accepting = False  # telemetry is this session's (the first sample of it seen)
        self._floor_device_ms = 0  # device time of the status just before Start
        self._start_device_ms: int | None = None
        self._zero_thread: threading.Thread | None = None
        self._unconfirmed: OutputNotConfirmedError | None = None
        # Events numbered up to this one happened before this session; they must not end this one.
        self._event_floor = 0
        self._device_restarted = False
        self._restart_noticed: float | None = None
        self._ended_charge: int | None = None  # the SESSION_ENDED event's delivered charge (µA·s)
        self._end_obeyed = False  # the device reported STOPPED or ABORTED: it executed an end request
        self._last_event_no = 0  # highest event number this session has handled
        self._contact_ohm = 0

    # ------------------------------------------------------------------------------------ start

    @classmethod
    def begin(cls, stim: Stimulator, prescription: Prescription, options: SessionOptions) -> DeviceSession:
        """Check and start a session on ``stim`` (what :meth:`Stimulator.start` does); see there."""
        session = cls(stim, prescription, options)
        session._begin()
        return session

    def _begin(self) -> None:
        client = self._client
        self.warnings = self.prescription.check_against(self.identity)
        for warning in self.warnings:
            logger.warning("prescription: %s", warning)
        status = self._status()
        if status.state not in IDLE_STATES or status.setpoint_ua or status.measured_ua > OVERCURRENT_FLOOR_UA:
            raise SafetyRefusal(
                "state", status.state.name, reason="device is busy; stop its session before starting another"
            )
        if status.state is DeviceState.FAULT:
            raise SafetyRefusal(
                "state", "FAULT", reason="a latched fault must be cleared first (clear_fault)"
            )
        self._event_floor = status.last_event_no
        self._floor_device_ms = status.device_time_ms
        session_before = status.session_id
        self._check_contact()
        record = self._open_record()
        record.note("contact", impedance_ohm=self._contact_ohm)
        for warning in self.warnings:
            record.note("warning", text=warning)
        self._removers.append(client.add_telemetry_listener(self._safety_telemetry, safety=True))
        self._removers.append(client.add_event_listener(self._safety_event, safety=True))
        self._removers.append(client.add_telemetry_listener(self._handle_telemetry))
        self._removers.append(client.add_event_listener(self._handle_event))
        self._removers.append(client.add_error_listener(self._handle_background_error))
        self._last_safety_s = time.monotonic()
        self._remove_gate = client.gate_heartbeats(self._controller_live)
        try:
            wanted_hz = self._telemetry_hz if self._telemetry_hz is not None else status.telemetry_hz or 2
            if wanted_hz != status.telemetry_hz:
                client.configure_telemetry(wanted_hz)
                self._restore_telemetry_hz = status.telemetry_hz
        except BaseException:
            self._refused()
            raise
        # Written (and fsync'd) before Start goes out: a host that dies from here on leaves a record that
        # recover() can match to the device's session.
        record.note(
            "starting",
            session_before=session_before,
            first_event_no=status.last_event_no,
            start=start_to_dict(self.start_message),
        )
        if not record.flush(RECORD_FLUSH_S):  # an alarm already; the device stays the record of truth
            logger.error("the 'starting' note may not be on disk: recover() will match the session by its id")
        self._started_sending = True
        try:
            client.request(self.start_message)
            self._last_answer_s = time.monotonic()
        except DeviceRefusal:
            self._refused()
            raise
        except BaseException as exc:
            self._start_failed(session_before, exc)
            raise
        try:
            status = self._first_status()
        except BaseException as exc:
            self._start_failed(session_before, exc)
            raise
        self._session_id = str(status.session_id)
        self._device_session_id = status.session_id
        self._builder = ProgressBuilder(
            session_id=self._session_id,
            start=self.start_message,
            compliance_mv=self.identity.compliance_mv,
            slew_limit_ua_per_s=self.identity.slew_limit_ua_per_s,
        )
        self._apply_status(status)
        record.note(
            "started",
            session_id=status.session_id,
            first_event_no=self._event_floor,
            start=start_to_dict(self.start_message),
        )
        record.flush(RECORD_FLUSH_S)
        logger.info("session %d started: %s", status.session_id, self.prescription)

    def _refused(self) -> None:
        """Nothing was started: detach, record the refusal, restore what was changed."""
        self._detach()
        self._restore_telemetry()
        if self._recorder is not None:
            self._recorder.summary(delivered_uas=0, end_reason="refused")
            self._recorder.close()

    def _status(self) -> StatusReport:
        status = self._client.status()
        self._last_answer_s = time.monotonic()
        return status

    def _device_still_sending(self) -> bool:
        """Whether the device's frames keep arriving (within the watchdog time)."""
        return self._client.last_frame_age_s < self._client.watchdog_ms / 1000.0

    def _first_status(self) -> StatusReport:
        """The status right after ``Start`` was acknowledged. An unanswered poll while the device's frames
        keep arriving is asked again, for up to the watchdog time; then ``LinkTimeoutError``."""
        deadline = time.monotonic() + self._client.watchdog_ms / 1000.0
        while True:
            try:
                return self._status()
            except LinkTimeoutError:
                if not self._device_still_sending() or time.monotonic() > deadline:
                    raise
                logger.warning("status after Start unanswered, but the device is still sending: asking again")

    def _start_failed(self, session_before: int, exc: BaseException) -> None:
        """``Start`` may have reached the device but the session could not be confirmed: bring the device
        to zero (confirmed, bounded), write what is known, and leave the record incomplete unless the
        device's final figures were read back."""
        logger.error("Start may have reached the device (%r): bringing the output to zero", exc)
        recorder = self._recorder
        assert recorder is not None
        confirmed, status = self._bring_to_zero(Stop(), deadline_s=START_SETTLE_LIMIT_S)
        self._detach()
        self._restore_telemetry()
        latest = self._latest
        if confirmed and status is not None:
            started = status.session_id != session_before
            if started:
                self._session_id = str(status.session_id)
                recorder.note("started", session_id=status.session_id, unconfirmed=True)
            delivered = status.charge_uas if started else 0
            account = self._make_account(
                SessionOutcome.LINK_LOST,
                delivered_uas=delivered,
                end_state=status.state,
                dose_source="device",
                confirmed=True,
                detail=f"Start unconfirmed ({exc}); output brought to zero",
            )
            self._close_record(account)
            return
        recorder.note(
            "start_unconfirmed",
            detail=f"Start unconfirmed ({exc}); zero output {'confirmed' if confirmed else 'NOT confirmed'}",
            last_delivered_uas=None if latest is None else latest.charge_uas,
            last_measured_ua=None if latest is None else latest.measured_ua,
        )
        recorder.close()
        if not confirmed:
            self._gate_closed = True  # the device's watchdog must act: no more heartbeats from us

    def _check_contact(self) -> None:
        """S3 checked by the driver: the device's verdict and the driver's own limits must both pass."""
        target = self.start_message.target_current_ua
        report: ContactReport = self._client.check_contact(target)
        self._last_answer_s = time.monotonic()
        low, high = contact_limits_ohm(self.identity, target)
        self._contact_ohm = report.impedance_ohm
        if report.verdict is not ContactVerdict.OK or not low <= report.impedance_ohm <= high:
            shown = "open circuit" if report.impedance_ohm == OPEN_CIRCUIT_OHM else report.impedance_ohm
            raise SafetyRefusal(
                "impedance_ohm",
                shown,
                low,
                high,
                reason=f"contact check failed ({report.verdict.name}); check the electrodes",
            )

    # ------------------------------------------------------------------------------ bringing to zero

    def _sample_at_zero(self) -> bool:
        latest = self._latest
        return latest is not None and _at_zero(latest.state, latest.setpoint_ua, latest.measured_ua)

    def _link_gone(self) -> bool:
        client = self._client
        return client.closed or client.failure is not None or not self._device_still_sending()

    def _bring_to_zero(
        self, first: Stop | Abort, *, deadline_s: float, first_sent: bool = False
    ) -> tuple[bool, StatusReport | None]:
        """Send ``first`` (unless ``first_sent``), then ``Abort``, every :data:`ZERO_REPEAT_S`, until the
        device shows zero output (telemetry or status) or the link is gone or ``deadline_s`` passed.
        Returns (confirmed, the last status read, if any)."""
        deadline = time.monotonic() + deadline_s
        message: Message = first
        status: StatusReport | None = None
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            try:
                if not (first_sent and attempt == 1):
                    with contextlib.suppress(DeviceRefusal, LinkTimeoutError):
                        self._client.request(message, retries=0)
                        self._last_answer_s = time.monotonic()
                with contextlib.suppress(LinkTimeoutError):
                    status = self._status()
                    if _at_zero(status.state, status.setpoint_ua, status.measured_ua):
                        return True, status
            except LinkClosedError:
                return False, status  # closed under us (e.g. between two repeats): nothing more to send
            if self._sample_at_zero() and status is None:
                return True, None
            if self._client.closed or self._client.failure is not None:
                return False, status
            if attempt > 1 and not self._device_still_sending():
                return False, status
            if isinstance(message, Stop) and attempt >= 2:
                logger.error("Stop not confirmed: sending Abort")
                message = Abort()
            time.sleep(ZERO_REPEAT_S)
        return False, status

    # ----------------------------------------------------------------------------------- control

    @property
    def state(self) -> DeviceState:
        return self._state

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def delivered_uas(self) -> int:
        """The device's delivered charge so far (µA·s), from its latest telemetry or status."""
        return self._delivered_uas

    def pause(self) -> None:
        """Ramp to zero and keep the delivered dose (S7)."""
        self._client.request(Pause())

    def resume(self) -> None:
        """Check contact again (driver and device, S7), then ramp back up to the set-point."""
        self._check_contact()
        self._client.request(Resume())
        with self._lock:
            self._paused_by_device = None

    def set_current(self, current_ma: float) -> None:
        """Ramp to a new set-point, starting from the read-back output (never from an assumed value).

        The ramp lasts as long as the prescription's ramp-up would take for the same change, and never less
        than the model's minimum ramp time or its slew limit allows.

        Raises:
            SafetyRefusal: the new current is outside the device's limits or the electrode's density limit.
        """
        candidate = dataclasses.replace(self.prescription, current_ma=current_ma)
        candidate.check_against(self.identity)
        target_ua = candidate.to_start(self.identity).target_current_ua
        readback = self._status()
        delta = abs(target_ua - readback.setpoint_ua)
        by_prescription_ms = round(
            delta / self.start_message.target_current_ua * self.start_message.ramp_up_ms
        )
        # S1/S18: never faster than the driver's minimum ramp or the effective slew (ceilings.min_ramp_ms)
        ramp_ms = max(by_prescription_ms, ceilings.min_ramp_ms(self.identity, delta))
        ramp_ms = min(ramp_ms, ceilings.effective_identity(self.identity).max_ramp_ms)
        self._guard.allow_target(target_ua)
        self._client.request(SetCurrent(target_ua, ramp_ms))
        if self._recorder is not None:
            self._recorder.note(
                "set_current", target_current_ua=target_ua, ramp_ms=ramp_ms, readback_ua=readback.setpoint_ua
            )

    def stop(self) -> None:
        """End the session with a ramp over the prescription's ramp-down time."""
        self._request_end(Stop(), SessionOutcome.STOPPED)

    def abort(self) -> None:
        """End the session at the model's hard slew limit (a fast ramp, never a step)."""
        self._request_end(Abort(), SessionOutcome.ABORTED)

    def _request_end(self, message: Stop | Abort, outcome: SessionOutcome) -> None:
        with self._lock:
            if self._end_requested is None:
                self._end_requested = outcome
            if self._end_requested_at is None or isinstance(message, Abort):
                self._end_requested_at = time.monotonic()
            if isinstance(message, Abort):
                self._aborting = True
        try:
            self._client.request(message)
            self._last_answer_s = time.monotonic()
        except DeviceRefusal as exc:
            # Nothing to stop (already done, faulted or idle): that is the state we wanted.
            logger.info("%s not needed: %s", type(message).__name__, exc)

    def _end_bound_s(self) -> float:
        """Wall seconds within which a requested end must reach zero: the ramp (the prescription's for a
        stop, the slew limit's for an abort) plus :data:`END_MARGIN_S`."""
        start = self.start_message
        if self._aborting:
            ramp_s = start.target_current_ua / max(1, self.identity.slew_limit_ua_per_s)
        else:
            ramp_s = start.ramp_down_ms / 1000.0
        return ramp_s + END_MARGIN_S

    # ------------------------------------------------------------------------------------- waiting

    def wait(self, timeout_s: float | None = None) -> SessionRecord:
        """Block until the session is over and output is at zero; return the record (see ``account``).

        Raises:
            SessionInterrupted: KeyboardInterrupt or SIGTERM arrived; the session was ramped down first.
            DeviceFault: the device latched a fault or paused on an electrode lift (or the driver's own
                over-current check aborted the session).
            OutputNotConfirmedError: an end was asked for and zero output could not be confirmed in time.
            LinkLostError: the link died or the device stopped answering; its watchdog ramps down (S10).
            TimeoutError: ``timeout_s`` passed (the session keeps running).
            Exception: whatever a progress or event callback raised (after the ramp-down).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        failure: list[LinkError] = []

        def step() -> bool:
            try:
                return self._wait_step(deadline)
            except LinkError as exc:
                failure.append(exc)
                return True

        interrupted = wait_interruptibly(step, self._interrupt_stop)
        if failure:
            return self._finish_link_lost(failure[0])
        if self._unconfirmed is not None:
            self._finish_unconfirmed(interrupted)
        return self._finish(interrupted)

    def _interrupt_stop(self, reason: str) -> None:
        self._request_end(Stop(), SessionOutcome.INTERRUPTED)

    def _wait_step(self, deadline: float | None) -> bool:
        """Wait a little; poll status as a backstop to telemetry; return True when the session is over."""
        with self._changed:
            if not self._finished and self._unconfirmed is None:
                slept_from = time.monotonic()
                self._changed.wait(STATUS_POLL_S)
                if time.monotonic() - slept_from > STATUS_POLL_S + OVERSLEPT_S:
                    self._awake_since_s = time.monotonic()
            if self._finished or self._unconfirmed is not None:
                return True
            callback_error = self._callback_error
            device_pause = self._paused_by_device
            requested_at = self._end_requested_at
        now = time.monotonic()
        if requested_at is not None and now - requested_at > self._end_bound_s():
            self._give_up(f"an end was asked for {now - requested_at:.1f} s ago")
            return True
        if deadline is not None and now > deadline:
            raise SessionWaitTimeout(
                f"session still running after the wait timeout (state {self._state.name})"
            )
        behind_s = self._client.safety_lag_s
        if behind_s > SAFETY_BEHIND_ABORT_S and requested_at is None:
            if now - self._awake_since_s <= SAFETY_BEHIND_ABORT_S:
                return False  # just back from a freeze (OVERSLEPT_S): no abort yet, and no blind poll
            self._raise_alarm(f"SAFETY CHECKS {behind_s:.1f} s BEHIND TELEMETRY: ABORTING")
            self._request_end(Abort(), SessionOutcome.ABORTED)
        # Events and requested ends wake this wait too; the status backstop is polled at most every
        # STATUS_POLL_S (a poll per wake-up once cost a request per sample), except while a callback error
        # or a device pause waits for the device to reach PAUSED.
        if callback_error is None and device_pause is None and now - self._polled_at_s < STATUS_POLL_S:
            return False
        self._polled_at_s = now
        try:
            status = self._status()
        except LinkTimeoutError:
            silent_s = time.monotonic() - self._last_answer_s
            if self._device_still_sending() and silent_s < UNANSWERED_LIMIT_S:
                logger.warning("status poll unanswered, but the device is still sending: waiting on")
                return False
            raise
        self._apply_status(status)
        if self.finished:  # (the property: _apply_status may have set it)
            return True
        if (callback_error is not None or device_pause is not None) and status.state is DeviceState.PAUSED:
            # Output is at zero already; end the session so its dose and record are final.
            if callback_error is not None:
                outcome = SessionOutcome.CALLBACK_ERROR
            elif device_pause is EventCode.LINK_LOST:
                outcome = SessionOutcome.LINK_LOST
            else:
                outcome = SessionOutcome.STOPPED
            self._request_end(Stop(), outcome)
        elif callback_error is not None and self._end_requested is None:
            self._request_end(Stop(), SessionOutcome.CALLBACK_ERROR)
        return False

    def _give_up(self, why: str) -> None:
        """Zero output could not be confirmed in the bounded time: close the heartbeat gate for good (the
        device's watchdog acts) and make ``wait()`` raise."""
        latest = self._latest
        measured = 0 if latest is None else latest.measured_ua
        code = EventCode.OVERCURRENT_TRIP if self._guard.tripped else EventCode.STOPPED
        detail = (
            f"{why} and the device still reports {measured / 1000:.3f} mA: check and switch off the output "
            "at the device; the driver stopped its heartbeats so the device's watchdog ramps down (S10)"
        )
        with self._changed:
            self._gate_closed = True
            if self._unconfirmed is None:
                self._unconfirmed = OutputNotConfirmedError(code, measured, detail)
            self._changed.notify_all()
        self._raise_alarm("OUTPUT NOT CONFIRMED AT ZERO")

    def _apply_status(self, status: StatusReport) -> None:
        if self._session_id and status.session_id != self._device_session_id:
            # The device no longer holds this session (power loss, reset). Its POWER_ON event comes after
            # every telemetry sample of the old boot, so wait for it; give up after a grace period.
            now = time.monotonic()
            if self._restart_noticed is None:
                self._restart_noticed = now
                logger.warning("device reports session %d, not %s", status.session_id, self._session_id)
            elif now - self._restart_noticed >= RESTART_GRACE_S:
                self._on_device_restart()
            return
        with self._changed:
            self._state = status.state
            self._flags = status.flags
            # A status reply may be processed after newer telemetry: keep the figure with the latest time.
            if status.device_time_ms >= self._delivered_at_ms:
                self._delivered_uas = status.charge_uas
                self._delivered_at_ms = status.device_time_ms
            self._remaining_ms = status.remaining_ms
            self._remaining_at_device_ms = status.device_time_ms
            if status.state in IDLE_STATES and status.setpoint_ua == 0:
                self._finished = True
                self._changed.notify_all()

    def _last_figure_uas(self) -> int:
        """The device's last charge figure of this session: the newest of what the ordinary tier applied
        and the last sample the safety tier saw. The safety tier handles items in arrival order, so when it
        reaches the restart's POWER_ON it has seen every sample of the old boot, while the ordinary tier,
        which can lag, may not have applied the last ones (and drops them once the restart is noted)."""
        with self._changed:
            latest = self._latest
            if latest is not None and latest.device_time_ms > self._delivered_at_ms:
                return latest.charge_uas
            return self._delivered_uas

    def _final_status(self) -> StatusReport | None:
        try:
            return self._status()
        except LinkError as exc:
            logger.warning("final status unanswered (%s)", exc)
            return None

    def _finish(self, interrupted: str | None) -> SessionRecord:
        status = self._final_status()
        if status is None and self._ended_charge is None:  # the device's final figure is unknown
            return self._finish_link_lost(LinkLostError("the final status request went unanswered"))
        if status is not None:
            self._apply_status(status)
            if not self._device_restarted:
                self._catch_up_events(status.last_event_no)
        outcome = decide_outcome(self._facts(interrupted))
        # After a restart the device's count is gone: the last figure it reported is the delivered dose.
        restarted = self._device_restarted or (
            status is not None and self._session_id != "" and status.session_id != self._device_session_id
        )
        if restarted:
            delivered = self._ended_charge if self._ended_charge is not None else self._last_figure_uas()
            end_state = DeviceState.IDLE
            source = "device (its last figure before it restarted)"
        elif status is not None:
            delivered, end_state, source = status.charge_uas, status.state, "device"
        else:
            assert self._ended_charge is not None
            delivered, end_state, source = (
                self._ended_charge,
                DeviceState.DONE,
                "device (SESSION_ENDED event)",
            )
        self._publish_final(delivered, end_state, completed=outcome is SessionOutcome.COMPLETED)
        account = self._make_account(
            outcome,
            delivered_uas=delivered,
            end_state=end_state,
            dose_source=source,
            confirmed=status is not None and not restarted,
        )
        self._end_session()
        self._close_record(account)
        logger.info(
            "session %s ended: %s, %.3f mA·min", self._session_id, outcome.value, delivered / UAS_PER_MA_MIN
        )
        if interrupted is not None:
            raise SessionInterrupted(interrupted)
        if self._callback_error is not None:
            raise self._callback_error
        if self._fault is not None:
            raise self._fault
        return SessionRecord.load(self.record_path)

    def _finish_unconfirmed(self, interrupted: str | None) -> None:
        """Zero output could not be confirmed: write what is known (no summary: the end is not known)."""
        error = self._unconfirmed
        assert error is not None
        latest = self._latest
        self._outcome = SessionOutcome.FAULT
        self._detach(keep_gate=True)
        if self._recorder is not None:
            self._recorder.note(
                "output_not_confirmed",
                detail=str(error),
                last_delivered_uas=None if latest is None else latest.charge_uas,
                last_measured_ua=None if latest is None else latest.measured_ua,
            )
            self._recorder.close()
        self._account = self._make_account(
            SessionOutcome.FAULT,
            delivered_uas=self._delivered_uas,
            end_state=self._state,
            dose_source="device (last figure; zero output NOT confirmed)",
            confirmed=False,
            detail=str(error),
        )
        raise error

    def _publish_final(self, delivered: int, end_state: DeviceState, *, completed: bool) -> None:
        """The last progress of the session: the device's final figures, fraction 1.0 if completed.

        It normally comes with the device's first sample after the end, on the dispatcher thread like every
        callback; if none arrives within :data:`EVENT_CATCH_UP_S`, it is published from here (the waiting
        thread) with the figures read back at the end."""
        latest = self._latest
        builder = self._builder
        if builder is None or latest is None:
            return
        deadline = time.monotonic() + EVENT_CATCH_UP_S
        with self._changed:
            while time.monotonic() < deadline and not self._final_published(delivered, end_state):
                self._changed.wait(0.05)
            if self._final_published(delivered, end_state):
                return
        final = dataclasses.replace(latest, charge_uas=delivered, state=end_state)
        self._publish_progress(
            builder.build(
                final, elapsed_s=self._elapsed_s(final), on_time_s=self._on_time_s(final), completed=completed
            )
        )

    def _final_published(self, delivered: int, end_state: DeviceState) -> bool:
        last = self.progress
        return last is not None and last.state is end_state and last.delivered_uas == delivered

    def _completed_sample(self, sample: Telemetry) -> bool:
        """A sample showing the session's normal end: DONE, no fault, and no end request the device carried
        out (one that reached it after its own final ramp-down began changed nothing: the outcome rule)."""
        return sample.state is DeviceState.DONE and not self._end_obeyed and self._fault is None

    def _facts(self, interrupted: str | None) -> SessionFacts:
        return SessionFacts(
            interrupted=interrupted is not None,
            callback_error=self._callback_error is not None,
            fault_code=None if self._fault is None else self._fault.code,
            end_requested=self._end_requested,
            ended_by_device=self._ended_charge is not None and not self._end_obeyed,
            paused_by=self._paused_by_device,
        )

    def _catch_up_events(self, last_no: int) -> None:
        """Before the session is judged and its record closed, make sure every event up to ``last_no`` has
        been handled (events may still be queued for dispatch, or lost on the link)."""
        deadline = time.monotonic() + EVENT_CATCH_UP_S
        with self._changed:
            while self._last_event_no < last_no and time.monotonic() < deadline:
                self._changed.wait(0.05)
        if self._last_event_no < last_no:
            logger.info(
                "events %d..%d missing at the session's end: fetching", self._last_event_no + 1, last_no
            )
            with contextlib.suppress(IontodriveError):
                self._client.fetch_events(self._last_event_no + 1)  # replays reach _handle_event

    def _finish_link_lost(self, exc: LinkError) -> SessionRecord:
        logger.error("link lost during the session: the device's watchdog ramps the output down (S10)")
        # If only the device-to-host direction failed, our heartbeats would keep the device's watchdog fed:
        # ask for a ramp-down in case the device can still hear us, and close the heartbeat gate.
        self._gate_closed = True
        with contextlib.suppress(IontodriveError):
            self._client.request(Stop(), retries=0)
        self._detach(keep_gate=True)
        self._outcome = SessionOutcome.LINK_LOST
        self._account = self._make_account(
            SessionOutcome.LINK_LOST,
            delivered_uas=self._delivered_uas,
            end_state=self._state,
            dose_source="device (last figure before the link was lost)",
            confirmed=False,
            detail=str(exc),
        )
        if self._recorder is not None and not self._recorder.finished:
            self._recorder.note("link_lost", detail=str(exc), last_delivered_uas=self._delivered_uas)
            self._recorder.close()
        if self._stim.reconnect_policy is not None:  # issue 19: reach the same device, reconcile the record
            raise after_link_loss(self._stim, self.record_path, exc) from exc
        raise LinkLostError(
            f"link lost during session {self._session_id}: {exc}; the device's watchdog ramps the output "
            "down and keeps the dose; reconnect and call recover() to complete the record"
        ) from exc

    def _end_session(self) -> None:
        self._detach()
        self._restore_telemetry()

    def _restore_telemetry(self) -> None:
        """Leave the device as found: the telemetry rate it had before the session (issue 17)."""
        rate, self._restore_telemetry_hz = self._restore_telemetry_hz, None
        if rate is not None:
            with contextlib.suppress(IontodriveError):
                self._client.configure_telemetry(rate)

    def _detach(self, *, keep_gate: bool = False) -> None:
        for remove in self._removers:
            remove()
        self._removers.clear()
        if not keep_gate and self._remove_gate is not None:
            self._remove_gate()
            self._remove_gate = None

    def ramp_down_for_close(self, detail: str = "client closed") -> None:
        """Ramp down and wait for zero (bounded): what :meth:`Stimulator.close` does to a running session
        before the link closes."""
        if self._finished or self._account is not None:
            return
        logger.warning("client closing with a session running: ramping down first")
        self._request_end(Stop(), SessionOutcome.STOPPED)
        limit = time.monotonic() + self._end_bound_s()
        while not self._finished and time.monotonic() < limit:
            self._apply_status(self._status())
            with self._changed:
                if not self._finished:
                    self._changed.wait(0.1)
        if self._finished:  # (an event may have ended the wait: the device's own final count, read now)
            final = self._final_status()
            if final is not None:
                self._apply_status(final)
        account = self._make_account(
            SessionOutcome.STOPPED,
            delivered_uas=self._delivered_uas,
            end_state=self._state,
            dose_source="device",
            confirmed=self._finished,
            detail=detail,
        )
        self._end_session()
        self._close_record(account)

    # ---------------------------------------------------------------------------- heartbeat gate

    def _controller_live(self) -> bool:
        """The heartbeat gate (S19): True only while this session's checks are alive and ran recently."""
        return not self._gate_closed and time.monotonic() - self._last_safety_s < GATE_FRESH_S

    # --------------------------------------------------------------------- listeners: safety tier

    def _is_ours(self, sample: Telemetry) -> bool:
        """Whether ``sample`` belongs to this session: after the status read just before ``Start``, and
        once the device shows the session running (samples of the previous session's end, still queued,
        never describe this one)."""
        if self._accepting:
            return True
        if not self._started_sending or sample.device_time_ms <= self._floor_device_ms:
            return False
        if sample.state in IDLE_STATES or sample.state is DeviceState.CONTACT_CHECK:
            return False
        self._accepting = True
        if self._start_device_ms is None:
            self._start_device_ms = sample.device_time_ms
        return True

    def _safety_telemetry(self, sample: Telemetry) -> None:
        """Safety tier: runs first, independent of record writes and callbacks (issue 13 finding 4)."""
        self._last_safety_s = time.monotonic()
        if not self._started_sending or sample.device_time_ms <= self._floor_device_ms:
            return
        if self._device_restarted:
            return
        self._latest = sample if self._is_ours(sample) else self._latest
        if sample.state is DeviceState.FAULT or _at_zero(
            sample.state, sample.setpoint_ua, sample.measured_ua
        ):
            if sample.setpoint_ua == 0:
                self._guard.count = 0
            return
        reason = self._guard.judge(sample.setpoint_ua, sample.measured_ua)
        if reason is not None and self._zero_thread is None:
            with self._changed:
                if self._fault is None:
                    self._fault = DeviceFault(
                        EventCode.OVERCURRENT_TRIP, sample.measured_ua, f"driver-side check: {reason}"
                    )
                self._end_requested = self._end_requested or SessionOutcome.FAULT
                self._end_requested_at = time.monotonic()
                self._aborting = True
                self._changed.notify_all()
            # The first Abort goes out from here, the safety thread, at once (a thread handoff costs up to
            # the interpreter's 5 ms switch interval); the repeats until zero is confirmed run on their own.
            self._client.send_safety_command(Abort())
            logger.error("driver-side over-current check (S9, S18): %s: aborted", reason)  # (after the Abort)
            self._zero_thread = threading.Thread(
                target=self._abort_until_zero, name="iontodrive-abort", daemon=True
            )
            self._zero_thread.start()

    def _abort_until_zero(self) -> None:
        """After the driver's over-current trip: Abort repeated until zero is confirmed (bounded)."""
        confirmed, _status = self._bring_to_zero(Abort(), deadline_s=self._end_bound_s(), first_sent=True)
        if not confirmed:
            self._give_up("the driver's over-current check aborted the session")

    def _safety_event(self, event: Event) -> None:
        """Safety tier: faults, lifts and the session's end are noted before anything else runs."""
        if event.code is EventCode.POWER_ON and not event.replayed:
            if self._last_event_no == 0 and event.event_no <= self._event_floor:
                return  # the power-on from before this session, dispatched late
            self._event_floor = 0  # the device restarted: event numbers start again at 1
            self._last_event_no = event.event_no
            self._on_device_restart()
            return
        if event.event_no <= self._event_floor:
            return
        with self._changed:
            self._last_event_no = max(self._last_event_no, event.event_no)
            self._state = event.state
            if event.code is EventCode.SESSION_STARTED and self._start_device_ms is None:
                self._start_device_ms = event.device_time_ms
            if event.code is EventCode.SESSION_ENDED:
                self._ended_charge = event.value
            elif event.code in (EventCode.STOPPED, EventCode.ABORTED):
                self._end_obeyed = True
            if event.code in FAULT_EVENTS:
                self._fault = DeviceFault(event.code, event.value)
            elif event.code in DEVICE_PAUSE_EVENTS:
                self._paused_by_device = event.code
                if event.code is EventCode.ELECTRODE_LIFT and self._fault is None:
                    self._fault = DeviceFault(
                        event.code, event.value, "electrode lifted; output ramped to zero"
                    )
                elif event.code is EventCode.SHORT_CIRCUIT and self._fault is None:
                    self._fault = DeviceFault(
                        event.code, event.value, "short circuit across the electrodes; output ramped to zero"
                    )
            if event.state in (DeviceState.DONE, DeviceState.FAULT) and event.code in (
                EventCode.SESSION_ENDED,
                EventCode.STATE_CHANGED,
                *FAULT_EVENTS,
            ):
                self._finished = self._finished or event.state is DeviceState.DONE
            self._changed.notify_all()

    def _on_device_restart(self) -> None:
        """The device restarted mid-session (power loss): output is cut, the session is gone (S15)."""
        with self._changed:
            if not self._device_restarted:
                self._device_restarted = True
                logger.error("device restarted during session %s: output cut, session lost", self._session_id)
                if self._fault is None and self._ended_charge is None:  # a cut after the end is no fault
                    self._fault = DeviceFault(
                        EventCode.POWER_ON, 0, "device restarted during the session (power loss)"
                    )
            self._state = DeviceState.IDLE
            self._finished = True
            self._changed.notify_all()

    # ------------------------------------------------------------------- listeners: ordinary tier

    def _handle_event(self, event: Event) -> None:
        if event.code is EventCode.POWER_ON and not event.replayed:
            ours = event.event_no > self._event_floor or self._device_restarted
            if ours and self._recorder is not None:
                self._recorder.event(event)
            return
        if event.event_no <= self._event_floor:
            return
        if self._recorder is not None:
            self._recorder.event(event)
        self._publish_event(event)

    def _elapsed_s(self, sample: Telemetry) -> float:
        start_ms = self._start_device_ms if self._start_device_ms is not None else sample.device_time_ms
        return (sample.device_time_ms - start_ms) / 1000.0

    def _on_time_s(self, sample: Telemetry) -> float | None:
        """Seconds counted toward a time-based session's duration, from the device's own remaining time."""
        duration_ms = self.start_message.duration_ms
        if not duration_ms:
            return None
        if self._remaining_at_device_ms is None:
            return max(0.0, self._elapsed_s(sample))
        counted = (duration_ms - self._remaining_ms) / 1000.0
        if sample.state not in (DeviceState.PAUSED, DeviceState.PAUSING, DeviceState.DONE):
            counted += max(0.0, (sample.device_time_ms - self._remaining_at_device_ms) / 1000.0)
        # The device's remaining time (polled) and the extrapolation between polls differ by a few ms:
        # never let the counted time, and so the bar, go backwards.
        self._on_time_shown = max(self._on_time_shown, min(duration_ms / 1000.0, counted))
        return self._on_time_shown

    def _handle_telemetry(self, sample: Telemetry) -> None:
        if self._device_restarted or not self._accepting or not self._is_ours(sample):
            return
        builder = self._builder
        with self._changed:
            self._state = sample.state
            self._flags = sample.flags
            if sample.device_time_ms >= self._delivered_at_ms:
                self._delivered_uas = sample.charge_uas
                self._delivered_at_ms = sample.device_time_ms
        device_s = sample.device_time_ms / 1000.0
        if self._recorder is not None and device_s - self._last_recorded_device_s >= self._record_interval_s:
            self._last_recorded_device_s = device_s
            self._recorder.telemetry(sample)
        if builder is None:
            return
        completed, aborting = self._completed_sample(sample), self._aborting

        def build() -> Progress:
            return builder.build(
                sample,
                elapsed_s=self._elapsed_s(sample),
                on_time_s=self._on_time_s(sample),
                completed=completed,
                aborting=aborting,
            )

        if self._on_progress is None and builder.duty == 1.0:  # (pulsed DC averages over every sample)
            self._defer_progress(build)
        else:
            self._publish_progress(build())

    def _handle_background_error(self, exc: BaseException) -> None:
        logger.debug("background error during session: %r", exc)

    def _on_callback_error(self) -> None:
        threading.Thread(target=self._stop_quietly, daemon=True).start()

    def _stop_quietly(self) -> None:
        with contextlib.suppress(IontodriveError):
            self._request_end(Stop(), SessionOutcome.CALLBACK_ERROR)


class Stimulator(DeliversSessions["DeviceSession"]):
    """A connected stimulator that can deliver dose sessions. Open with :meth:`Stimulator.open`.

    A Stimulator *has* a :class:`~iontodrive.client.DeviceClient` (:attr:`client`); the device methods
    people use (``identity``, ``status()``, ``check_contact()``, ``configure_telemetry()``, listeners,
    ``fetch_events()``...) are delegated to it.

    Example::

        with Stimulator.open("socket://127.0.0.1:7000") as stim:
            record = stim.deliver(Prescription(current_ma=4, dose_ma_min=40, polarity="cathode"))
    """

    def __init__(self, client: SessionClient) -> None:
        self.client: SessionClient = client
        self._session: DeviceSession | None = None
        # issue 19: reach the same device again after a lost link (iontodrive.sessions.reconnect)
        self.reconnect_policy: ReconnectPolicy | None = None
        self.reopen_with: tuple[str, dict[str, Any]] | None = None  # (url, options) as opened

    @property
    def identity(self) -> IdentityReport:
        """The device's identity (its client's): what prescriptions are checked against."""
        return self.client.identity

    @identity.setter
    def identity(self, identity: IdentityReport) -> None:
        self.client.identity = identity

    @classmethod
    def open(cls, resource: str, *, reconnect_s: float | None = None, **options: Any) -> Self:
        """Open ``resource`` (a device path, ``socket://host:port``, bare ``host:port``, ``sim://MODEL``,
        or any pyserial URL such as ``spy://``) and identify the device. ``options`` go to
        :meth:`DeviceClient.open` (``timeout_s``, ``retries``, ``watchdog_ms``, ``telemetry_hz``,
        ``trace_path``, pyserial options). ``reconnect_s``: on a link lost during a session, keep trying to
        reach the same device for this many seconds, then reconcile the record with it
        (:mod:`iontodrive.sessions.reconnect`); None (default): ``LinkLostError`` at once.

        Raises:
            InvalidResourceError: ``resource`` is empty, not a string, or a VISA resource string.
            SafetyRefusal: ``reconnect_s`` out of range (nothing opened).
            LinkClosedError, LinkTimeoutError, IncompatibleDeviceError: as :meth:`DeviceClient.open`.
        """
        url = normalise_resource(resource, for_backend="device")
        policy = None if reconnect_s is None else ReconnectPolicy(reconnect_s)
        stim = cls(DeviceClient.open(url, **options))
        stim.reconnect_policy, stim.reopen_with = policy, (url, dict(options))
        return stim

    # ------------------------------------------------------------------------- the device, delegated

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def description(self) -> str:
        return f"{self.identity.model} #{self.identity.serial_number} on {self.client.url}"

    @property
    def has_device_status(self) -> bool:
        """True: a stimulator reports its own status (``status()``, ``check_contact()``)."""
        return True

    @property
    def closed(self) -> bool:
        return self.client.closed

    @property
    def failure(self) -> BaseException | None:
        return self.client.failure

    @property
    def watchdog_ms(self) -> int:
        return self.client.watchdog_ms

    @property
    def link(self) -> Any:
        """The client's :class:`~iontodrive.link.SerialLink` (for fault injection and benches)."""
        return self.client.link

    @property
    def stats(self) -> Any:
        """The client's link statistics (:class:`~iontodrive.client.LinkStatistics`)."""
        return self.client.stats

    @property
    def last_frame_age_s(self) -> float:
        return self.client.last_frame_age_s

    def status(self) -> StatusReport:
        return self.client.status()

    def identify(self) -> IdentityReport:
        return self.client.identify()

    def check_contact(self, target_current_ua: int, probe_current_ua: int = 50) -> ContactReport:
        return self.client.check_contact(target_current_ua, probe_current_ua)

    def configure_telemetry(self, rate_hz: int) -> None:
        self.client.configure_telemetry(rate_hz)

    def set_watchdog(self, timeout_ms: int) -> None:
        self.client.set_watchdog(timeout_ms)

    def clear_fault(self) -> None:
        self.client.clear_fault()

    def reset(self) -> None:
        self.client.reset()

    def heartbeat(self) -> None:
        self.client.heartbeat()

    def request(self, message: Message, **options: Any) -> Message:
        return self.client.request(message, **options)

    def fetch_events(self, from_event_no: int, max_count: int = 32) -> list[Event]:
        return self.client.fetch_events(from_event_no, max_count)

    def add_telemetry_listener(
        self, callback: Callable[[Telemetry], None], *, safety: bool = False
    ) -> Callable[[], None]:
        return self.client.add_telemetry_listener(callback, safety=safety)

    def add_event_listener(
        self, callback: Callable[[Event], None], *, safety: bool = False
    ) -> Callable[[], None]:
        return self.client.add_event_listener(callback, safety=safety)

    def add_error_listener(self, callback: Callable[[BaseException], None]) -> Callable[[], None]:
        return self.client.add_error_listener(callback)

    def subscribe_telemetry(self, maxsize: int = 10_000) -> Any:
        return self.client.subscribe_telemetry(maxsize)

    def subscribe_events(self, maxsize: int = 10_000) -> Any:
        return self.client.subscribe_events(maxsize)

    def close(self) -> None:
        """Ramp down a running session (S16), then close the client. Idempotent. Never raises for a link
        that is already dead (the device's watchdog then ramps down, S10; this is logged)."""
        self.ramp_down_running("client closed")
        self.client.close()

    def ramp_down_running(self, detail: str) -> None:
        """Ramp down a running session (S16) and wait for zero output, before the link closes. Never
        raises for a dead link (logged; the device's watchdog then ramps down, S10)."""
        session = self._session
        if session is not None and not session.finished and not self.client.closed:
            try:
                session.ramp_down_for_close(detail)
            except IontodriveError as exc:
                logger.warning("ramp-down on close failed (%s); the device watchdog will ramp down", exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- sessions

    def _begin_session(self, prescription: Prescription, options: SessionOptions) -> DeviceSession:
        """Check and start a session; return its handle at once (the device ramps up by itself).

        Raises:
            SafetyRefusal: the prescription or the contact check failed the driver's checks; nothing sent.
            DeviceRefusal: the device refused ``Start``; nothing changed.
            LinkError: ``Start`` may have reached the device but could not be confirmed; the device was
                brought to zero (or its watchdog does it) and the record says what is known.
        """
        session = DeviceSession.begin(self, prescription, options)
        self._session = session
        return session

    def ensure_output_zero(self, timeout_s: float) -> None:
        """Safety net after an interrupt that escaped before a session took charge: if the device still has
        output on or a session running, send ``Stop`` (then ``Abort``) until it is at zero (bounded)."""
        status = self.status()
        if status.state in IDLE_STATES and status.setpoint_ua == 0:
            return
        with contextlib.suppress(IontodriveError):
            self.client.request(Stop())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status()
            if status.state in IDLE_STATES and status.setpoint_ua == 0:
                return
            time.sleep(0.1)
        with contextlib.suppress(IontodriveError):
            self.client.request(Abort())

    def recover(self, record_path: str | Path) -> SessionRecord:
        """Complete a record left unfinished by a host that died (S16, S10).

        Matches the record to the device's session (its ``started`` note, or the ``starting`` note written
        before ``Start`` was sent), fetches what the device did while the host was away, brings a session
        still running or paused to zero (stop, then abort, confirmed), and appends it all with a summary
        that carries the device's own charge. The record is marked complete only once the device's output
        is confirmed at zero; otherwise a note says so and :class:`OutputNotConfirmedError` is raised.
        """
        record = SessionRecord.load(record_path)
        if record.complete:
            return record
        writer = RecordWriter.reopen(record_path)
        try:
            status = self.status()
            started = next((n for n in record.notes if n.get("kind") == "started"), None)
            starting = next((n for n in record.notes if n.get("kind") == "starting"), None)
            if started is not None:
                same_session = started.get("session_id") == status.session_id
            elif starting is not None:
                same_session = status.session_id != starting.get("session_before")
            else:
                same_session = False
            first_no = (started or starting or {}).get("first_event_no", 0)
            if same_session:
                for event in self._fetch_all_events((record.last_event_no or first_no) + 1):
                    writer.event(event, recovered=True)
                if not _at_zero(status.state, status.setpoint_ua, status.measured_ua) or (
                    status.state is DeviceState.PAUSED
                ):
                    status = self._stop_confirmed(status)
                # the session must have ended (not merely paused at zero) for the device's count to be final
                if not _at_zero(status.state, status.setpoint_ua, status.measured_ua) or (
                    status.state is DeviceState.PAUSED
                ):
                    writer.note(
                        "recovery",
                        state=status.state.name,
                        charge_uas=status.charge_uas,
                        detail="zero output NOT confirmed: the record stays incomplete",
                    )
                    raise OutputNotConfirmedError(
                        EventCode.STOPPED,
                        status.measured_ua,
                        f"device still in {status.state.name} at {status.measured_ua / 1000:.3f} mA after "
                        "Stop and Abort: switch the output off at the device",
                    )
                writer.note("recovery", state=status.state.name, charge_uas=status.charge_uas)
                writer.summary(
                    delivered_uas=status.charge_uas,
                    end_reason=SessionOutcome.RECOVERED.value,
                    dose_source="device",
                    end_state=status.state.name,
                    device_confirmed=True,
                )
            elif started is None and starting is not None:
                writer.note(
                    "recovery", state=status.state.name, detail="Start never took effect on the device"
                )
                writer.summary(
                    delivered_uas=0,
                    end_reason=SessionOutcome.RECOVERED.value,
                    dose_source="device (no session was started)",
                    device_confirmed=True,
                )
            else:
                writer.note(
                    "recovery",
                    state=status.state.name,
                    detail="device no longer holds this session (restarted); dose from the last record",
                )
                writer.summary(
                    delivered_uas=record.delivered_uas or 0,
                    end_reason=SessionOutcome.RECOVERED.value,
                    dose_source="the record's last figure (the device restarted and lost its count)",
                    device_confirmed=False,
                )
        finally:
            writer.close()
        return SessionRecord.load(record_path)

    def _fetch_all_events(self, from_no: int) -> Iterator[Event]:
        while True:
            batch = self.client.fetch_events(from_no)
            if not batch:
                return
            yield from batch
            from_no = batch[-1].event_no + 1

    def _stop_confirmed(self, status: StatusReport) -> StatusReport:
        """Stop (a ramp), then Abort, until the device reports zero output (bounded)."""
        limit = time.monotonic() + START_SETTLE_LIMIT_S
        message: Message = Stop()
        sent_at = -1e9
        stop_until = time.monotonic() + self.identity.max_ramp_ms / 1000.0 + END_MARGIN_S
        while time.monotonic() < limit:
            if (
                _at_zero(status.state, status.setpoint_ua, status.measured_ua)
                and status.state is not DeviceState.PAUSED
            ):
                return status
            if time.monotonic() - sent_at >= ZERO_REPEAT_S:
                with contextlib.suppress(DeviceRefusal, LinkTimeoutError):
                    self.client.request(message)
                sent_at = time.monotonic()
                if time.monotonic() > stop_until:
                    message = Abort()
            time.sleep(0.1)
            status = self.status()
        return status
