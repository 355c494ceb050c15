"""Dose sessions: :class:`Stimulator` (the public entry point), :class:`Session` and progress.

A session is: driver-side checks of the prescription against the device's hard limits (S1, S3, S8, S12,
S13), a contact check judged by the driver as well as the device (S3), ``Start``, then the device ramps
up, holds and ramps down by itself while the driver records every event and telemetry sample and reports
progress.

Every exit path ramps down (S16):

========================  =====================================================================
normal end                the device plans its own ramp-down so the dose lands on target (S11)
``stop()``                ``Stop``: ramp over the prescription's ramp-down time
``abort()``               ``Abort``: ramp at the model's hard slew limit (never a step)
callback exception        ``Stop``, wait for zero, then the exception is re-raised to the caller
KeyboardInterrupt         ``Stop``, wait for zero (a second Ctrl-C does not skip the ramp), then
                          :class:`~iontodrive.errors.SessionInterrupted`
SIGTERM (in ``deliver``)  as KeyboardInterrupt
closing the client        ``Stop`` and wait for zero before the link closes
link lost                 the device's watchdog ramps down (S10); the driver raises LinkLostError
host killed               the device's watchdog ramps down; :meth:`Stimulator.recover` completes the
                          record on the next connection
========================  =====================================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Any

from iontodrive import ceilings
from iontodrive.client import DeviceClient
from iontodrive.errors import (
    DeviceFault,
    DeviceRefusal,
    IontodriveError,
    LinkError,
    LinkLostError,
    LinkTimeoutError,
    SafetyRefusal,
    SessionInterrupted,
)
from iontodrive.prescription import Prescription, contact_limits_ohm
from iontodrive.protocol import (
    OPEN_CIRCUIT_OHM,
    Abort,
    Ack,
    ContactVerdict,
    DeviceState,
    Event,
    EventCode,
    Pause,
    Resume,
    SetCurrent,
    StatusFlags,
    StatusReport,
    Stop,
    Telemetry,
)
from iontodrive.record import RecordClosedError, RecordWriter, SessionRecord, identity_to_dict
from iontodrive.units import UAS_PER_MA_MIN

logger = logging.getLogger(__name__)

IDLE_STATES = frozenset({DeviceState.IDLE, DeviceState.DONE, DeviceState.FAULT})
FAULT_EVENTS = frozenset({EventCode.OVERCURRENT_TRIP, EventCode.HARDWARE_TRIP})
# Events after which the device has paused the session at zero output by itself.
DEVICE_PAUSE_EVENTS = frozenset({EventCode.ELECTRODE_LIFT, EventCode.SHORT_CIRCUIT, EventCode.LINK_LOST})
DEFAULT_SESSION_TELEMETRY_HZ = 10
STATUS_POLL_S = 0.5
EVENT_CATCH_UP_S = 1.0  # at the end, wait this long for events still being dispatched, then fetch them
RESTART_GRACE_S = 2.0  # wait this long for the POWER_ON event after a status shows a restarted device
OVERCURRENT_MARGIN = 0.10  # S9, checked again by the driver
OVERCURRENT_FLOOR_UA = 50
OVERCURRENT_SAMPLES = 3  # consecutive samples over the limit before the driver aborts


class SessionOutcome(Enum):
    """How a session ended, as written in the record's summary (``end_reason``)."""

    COMPLETED = "completed"
    STOPPED = "stopped"
    ABORTED = "aborted"
    INTERRUPTED = "interrupted"
    CALLBACK_ERROR = "callback_error"
    FAULT = "fault"
    ELECTRODE_LIFT = "electrode_lift"
    LINK_LOST = "link_lost"
    RECOVERED = "recovered_after_host_loss"


@dataclass(frozen=True)
class Progress:
    """What a progress callback receives, in user units. Values come from the device's telemetry."""

    state: DeviceState
    flags: StatusFlags
    device_time_s: float
    delivered_uas: int
    delivered_ma_min: float
    target_ma_min: float | None  # dose-based sessions
    fraction: float  # 0..1 of dose (dose-based) or of time (time-based)
    time_left_s: float | None
    setpoint_ma: float
    current_ma: float  # measured
    voltage_v: float
    impedance_ohm: int | None  # None when the circuit is open


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.name if not isinstance(value, int) else int(value)
    return value


class Terminated(BaseException):
    """Raised in the main thread by the SIGTERM handler installed by :meth:`Stimulator.deliver`."""


class Session:
    """A running session. Create with :meth:`Stimulator.start`.

    Methods are thread-safe. ``wait()`` returns the :class:`~iontodrive.record.SessionRecord` once output
    is back at zero and the record is complete, or raises why the session ended early.
    """

    def __init__(
        self,
        stim: Stimulator,
        prescription: Prescription,
        *,
        record_path: str | Path | None = None,
        labels: dict[str, str] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        telemetry_hz: int | None = DEFAULT_SESSION_TELEMETRY_HZ,
        record_telemetry_hz: float = 10.0,
    ) -> None:
        self._stim = stim
        self.prescription = prescription
        self.identity = stim.identity
        self.labels = dict(labels or {})
        self._on_progress = on_progress
        self._on_event = on_event
        top_hz = stim.identity.max_telemetry_hz
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
                reason=f"must be an integer within the limit of {stim.identity.model}",
            )
        self._telemetry_hz = telemetry_hz
        self._record_interval_s = 1.0 / record_telemetry_hz if record_telemetry_hz > 0 else 0.0
        self._last_recorded_device_s = -1e9
        if record_path is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            directory = Path(tempfile.gettempdir()) / "iontodrive-records"
            directory.mkdir(parents=True, exist_ok=True)
            record_path = directory / f"{stamp}-{self.identity.serial_number}.jsonl"
        self.record_path = Path(record_path)
        self.start_message = prescription.to_start(self.identity)  # SafetyRefusal before anything is sent
        self._plan = prescription.expected_plan(self.identity)
        # An RLock: Ctrl-C and SIGTERM can strike inside Condition.__enter__ after it took the lock, so that
        # the `with` block never runs and never releases it. Reentrant, this thread can still take it to
        # send its Stop, and every Condition.wait() releases it whole so the dispatcher is not shut out.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._state = DeviceState.IDLE
        self._flags = StatusFlags.NONE
        self._outcome: SessionOutcome | None = None
        self._end_requested: SessionOutcome | None = None
        self._callback_error: BaseException | None = None
        self._fault: DeviceFault | None = None
        self._paused_by_device: EventCode | None = None
        self._finished = False
        self._delivered_uas = 0
        self._remaining_ms = self.start_message.duration_ms
        self._remaining_at_device_ms = 0
        self._last_progress: Progress | None = None
        self._overcurrent_count = 0
        self._record: RecordWriter | None = None
        self._removers: list[Callable[[], None]] = []
        self.session_id: int | None = None
        self.warnings: list[str] = []
        # Events numbered up to this one happened before this session (e.g. the end of the previous
        # session, delivered late when the client fills a gap of lost events); they must not end this one.
        self._event_floor = 0
        self._device_restarted = False
        self._restart_noticed: float | None = None
        self._ended_charge: int | None = None  # the SESSION_ENDED event's delivered charge (µA·s)
        self._delivered_at_ms = -1  # device time of the figure in _delivered_uas
        self._last_event_no = 0  # highest event number this session has handled

    # ------------------------------------------------------------------------------------ start

    def _begin(self) -> None:
        stim = self._stim
        self.warnings = self.prescription.check_against(self.identity)
        for warning in self.warnings:
            logger.warning("prescription: %s", warning)
        status = stim.status()
        if status.state not in IDLE_STATES or status.setpoint_ua or status.measured_ua > OVERCURRENT_FLOOR_UA:
            raise SafetyRefusal(
                "state", status.state.name, reason="device is busy; stop its session before starting another"
            )
        if status.state is DeviceState.FAULT:
            raise SafetyRefusal(
                "state", "FAULT", reason="a latched fault must be cleared first (clear_fault)"
            )
        self._event_floor = status.last_event_no
        self._check_contact()
        self._record = RecordWriter(
            self.record_path,
            prescription=self.prescription.to_dict(),
            identity=identity_to_dict(self.identity),
            labels=self.labels,
        )
        self._record.note("contact", impedance_ohm=self._contact_ohm)
        for warning in self.warnings:
            self._record.note("warning", text=warning)
        self._removers.append(stim.add_event_listener(self._handle_event))
        self._removers.append(stim.add_telemetry_listener(self._handle_telemetry))
        self._removers.append(stim.add_error_listener(self._handle_background_error))
        try:
            if self._telemetry_hz is not None:
                stim.configure_telemetry(self._telemetry_hz)
            stim.request(self.start_message)
        except LinkError:
            self._detach()
            self._settle_unconfirmed_start(status.session_id)
            raise
        except BaseException:
            self._detach()
            self._record.summary(delivered_uas=0, end_reason="refused")
            self._record.close()
            raise
        self._removers.append(stim._register_session_closer(self._close_from_client))
        status = self._first_status()
        self.session_id = status.session_id
        self._apply_status(status)
        self._record.note(
            "started",
            session_id=status.session_id,
            first_event_no=status.last_event_no,
            start=self._start_dict(),
        )
        logger.info("session %d started: %s", status.session_id, self.prescription)

    def _device_still_sending(self) -> bool:
        """Whether the device's frames keep arriving (within the watchdog time): an unanswered poll is then
        a lost frame, not a lost link."""
        return self._stim.last_frame_age_s < self._stim.watchdog_ms / 1000.0

    def _first_status(self) -> StatusReport:
        """The status right after ``Start`` was acknowledged: the session is running from here on, so an
        unanswered poll must not abandon it. As in :meth:`_wait_step`, one that goes unanswered while the
        device's frames keep arriving is asked again (for up to the watchdog time); a link that is really
        gone raises ``LinkTimeoutError``, and the device's watchdog ramps down (S10)."""
        deadline = time.monotonic() + self._stim.watchdog_ms / 1000.0
        while True:
            try:
                return self._stim.status()
            except LinkTimeoutError:
                if not self._device_still_sending() or time.monotonic() > deadline:
                    raise
                logger.warning("status after Start unanswered, but the device is still sending: asking again")

    def _settle_unconfirmed_start(self, session_before: int) -> None:
        """``Start`` got no answer: the device may have started anyway. Stop it (a ramp) and record its dose.

        If the device cannot be reached either, the record is left without a summary (its end is unknown);
        the device's watchdog ramps down a session nobody feeds (S10).
        """
        assert self._record is not None
        logger.error("Start unanswered: making sure the device is not delivering")
        try:
            status = self._stim.status()
            if status.session_id != session_before:
                self.session_id = status.session_id
                self._record.note("started", session_id=status.session_id, unconfirmed=True)
                status = self._stim._stop_and_wait(status)
            delivered = status.charge_uas if status.session_id != session_before else 0
        except IontodriveError as exc:
            self._record.note("link_lost", detail=f"Start unanswered and the device unreachable: {exc}")
            self._record.close()
            return
        self._record.summary(
            delivered_uas=delivered, end_reason=SessionOutcome.LINK_LOST.value, detail="Start unanswered"
        )
        self._record.close()

    def _start_dict(self) -> dict[str, Any]:
        return {
            f.name: _plain(getattr(self.start_message, f.name))
            for f in dataclasses.fields(self.start_message)
        }

    def _check_contact(self) -> None:
        """S3 checked by the driver: the device's verdict and the driver's own limits must both pass."""
        target = self.start_message.target_current_ua
        report = self._stim.check_contact(target)
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

    # ----------------------------------------------------------------------------------- control

    @property
    def state(self) -> DeviceState:
        return self._state

    @property
    def progress(self) -> Progress | None:
        return self._last_progress

    @property
    def finished(self) -> bool:
        return self._finished

    def pause(self) -> None:
        """Ramp to zero and keep the delivered dose (S7)."""
        self._stim.request(Pause())

    def resume(self) -> None:
        """Check contact again (driver and device, S7), then ramp back up to the set-point."""
        self._check_contact()
        self._stim.request(Resume())
        with self._lock:
            self._paused_by_device = None

    def set_current(self, current_ma: float) -> None:
        """Ramp to a new set-point, starting from the read-back output (never from an assumed value).

        The ramp lasts as long as the prescription's ramp-up would take for the same change, and never less
        than the model's slew limit allows.

        Raises:
            SafetyRefusal: the new current is outside the device's limits or the electrode's density limit.
        """
        candidate = dataclasses.replace(self.prescription, current_ma=current_ma)
        candidate.check_against(self.identity)
        target_ua = candidate.to_start(self.identity).target_current_ua
        readback = self._stim.status()
        delta = abs(target_ua - readback.setpoint_ua)
        by_prescription_ms = round(
            delta / self.start_message.target_current_ua * self.start_message.ramp_up_ms
        )
        # S1/S18: never faster than the driver's minimum ramp or the effective slew (ceilings.min_ramp_ms)
        ramp_ms = max(by_prescription_ms, ceilings.min_ramp_ms(self.identity, delta))
        ramp_ms = min(ramp_ms, ceilings.effective_identity(self.identity).max_ramp_ms)
        self._stim.request(SetCurrent(target_ua, ramp_ms))
        readback_ua = readback.setpoint_ua
        self._write(
            lambda r: r.note(
                "set_current", target_current_ua=target_ua, ramp_ms=ramp_ms, readback_ua=readback_ua
            )
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
        try:
            self._stim.request(message)
        except DeviceRefusal as exc:
            # Nothing to stop (already done, faulted or idle): that is the state we wanted.
            logger.info("%s not needed: %s", type(message).__name__, exc)

    # ------------------------------------------------------------------------------------- waiting

    def wait(self, timeout_s: float | None = None) -> SessionRecord:
        """Block until the session is over and output is at zero; return the completed record.

        Raises:
            SessionInterrupted: KeyboardInterrupt or SIGTERM arrived; the session was ramped down first.
            DeviceFault: the device latched a fault or paused on an electrode lift.
            LinkLostError: the link died; the device's watchdog ramps down (S10).
            TimeoutError: ``timeout_s`` passed (the session keeps running).
            Exception: whatever a progress or event callback raised (after the ramp-down).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        interrupted: str | None = None
        while True:
            try:
                if self._wait_step(deadline):
                    break
            except (KeyboardInterrupt, Terminated) as exc:
                reason = "SIGTERM" if isinstance(exc, Terminated) else "KeyboardInterrupt"
                if interrupted is None:
                    interrupted = reason
                    logger.warning("%s: ramping down before exiting", reason)
                    self._interrupt_stop()
                else:
                    logger.warning("%s again: still ramping down, output is not cut", reason)
            except LinkError as exc:
                return self._finish_link_lost(exc)
        return self._finish(interrupted)

    def _interrupt_stop(self) -> None:
        while True:
            try:
                self._request_end(Stop(), SessionOutcome.INTERRUPTED)
                return
            except (KeyboardInterrupt, Terminated):
                logger.warning("interrupt while sending Stop: sending it again")

    def _wait_step(self, deadline: float | None) -> bool:
        """Wait a little; poll status as a backstop to telemetry; return True when the session is over."""
        with self._changed:
            if not self._finished:
                self._changed.wait(STATUS_POLL_S)
            if self._finished:
                return True
            callback_error = self._callback_error
            device_pause = self._paused_by_device
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"session still running after the wait timeout (state {self._state.name})")
        try:
            status = self._stim.status()
        except LinkTimeoutError:
            if self._device_still_sending():
                logger.warning("status poll unanswered, but the device is still sending: waiting on")
                return False
            raise
        self._apply_status(status)
        if self._finished:
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

    def _apply_status(self, status: StatusReport) -> None:
        if self.session_id is not None and status.session_id != self.session_id:
            # The device no longer holds this session (power loss, reset). Its POWER_ON event comes after
            # every telemetry sample of the old boot, so wait for it (the last dose figure is in those
            # samples); if it never comes (lost on the link), give up waiting after a grace period.
            now = time.monotonic()
            if self._restart_noticed is None:
                self._restart_noticed = now
                logger.warning("device reports session %d, not %s", status.session_id, self.session_id)
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
            if (
                status.state in (DeviceState.DONE, DeviceState.FAULT, DeviceState.IDLE)
                and status.setpoint_ua == 0
            ):
                self._finished = True
                self._changed.notify_all()

    def _finish(self, interrupted: str | None) -> SessionRecord:
        try:
            status: StatusReport | None = self._stim.status()
        except LinkError as exc:
            if self._ended_charge is None:  # the device's final figure is unknown
                return self._finish_link_lost(exc)
            logger.warning("final status unanswered (%s): using the SESSION_ENDED event's dose", exc)
            status = None
        if status is not None:
            self._apply_status(status)
            if not self._device_restarted:
                self._catch_up_events(status.last_event_no)
        outcome = self._decide_outcome(interrupted)
        # After a restart the device's count is gone: the last figure it reported is the delivered dose.
        restarted = self._device_restarted or (
            status is not None and self.session_id is not None and status.session_id != self.session_id
        )
        if restarted:  # the session's end, if the device reported it, else its last figure
            delivered = self._ended_charge if self._ended_charge is not None else self._delivered_uas
        elif status is not None:
            delivered = status.charge_uas
        else:
            assert self._ended_charge is not None
            delivered = self._ended_charge
        self._close_record(delivered, outcome)
        if interrupted is not None:
            raise SessionInterrupted(interrupted)
        if self._callback_error is not None:
            raise self._callback_error
        if self._fault is not None:
            raise self._fault
        return SessionRecord.load(self.record_path)

    def _catch_up_events(self, last_no: int) -> None:
        """Before the session is judged and its record closed, make sure every event up to ``last_no`` (the
        device's latest) has been handled: events may still be queued for dispatch, or lost on the link with
        no later event to reveal the gap (e.g. an electrode lift during the last ramp-down)."""
        deadline = time.monotonic() + EVENT_CATCH_UP_S
        with self._changed:
            while self._last_event_no < last_no and time.monotonic() < deadline:
                self._changed.wait(0.05)
        if self._last_event_no < last_no:
            logger.info(
                "events %d..%d missing at the session's end: fetching", self._last_event_no + 1, last_no
            )
            with contextlib.suppress(IontodriveError):
                self._stim.fetch_events(self._last_event_no + 1)  # replays reach _handle_event

    def _decide_outcome(self, interrupted: str | None) -> SessionOutcome:
        if interrupted is not None:
            return SessionOutcome.INTERRUPTED
        if self._callback_error is not None:
            return SessionOutcome.CALLBACK_ERROR
        if self._fault is not None:
            if self._fault.code is EventCode.ELECTRODE_LIFT:
                return SessionOutcome.ELECTRODE_LIFT
            return SessionOutcome.FAULT
        if self._end_requested is not None:
            return self._end_requested
        if self._paused_by_device is EventCode.LINK_LOST:
            return SessionOutcome.LINK_LOST
        return SessionOutcome.COMPLETED

    def _finish_link_lost(self, exc: LinkError) -> SessionRecord:
        logger.error("link lost during the session: the device's watchdog ramps the output down (S10)")
        # If only the device-to-host direction failed, our heartbeats would keep the device's watchdog fed:
        # ask for a ramp-down in case the device can still hear us.
        with contextlib.suppress(IontodriveError):
            self._stim.request(Stop(), retries=0)
        # No summary: the device's final dose is not known here. The record stays incomplete (readable up
        # to this point) until recover() on a new connection adds what the device did and the summary.
        self._detach()
        self._outcome = SessionOutcome.LINK_LOST
        if self._record is not None and not self._record.finished:
            self._record.note("link_lost", detail=str(exc), last_delivered_uas=self._delivered_uas)
            self._record.close()
        raise LinkLostError(
            f"link lost during session {self.session_id}: {exc}; the device's watchdog ramps the output down "
            "and keeps the dose; reconnect and call recover() to complete the record"
        ) from exc

    def _close_record(self, delivered_uas: int, outcome: SessionOutcome, **extra: Any) -> None:
        self._detach()
        self._outcome = outcome
        if self._record is not None and not self._record.finished:
            self._record.summary(
                delivered_uas=delivered_uas, end_reason=outcome.value, session_id=self.session_id, **extra
            )
            self._record.close()
        logger.info(
            "session %s ended: %s, %.3f mA·min",
            self.session_id,
            outcome.value,
            delivered_uas / UAS_PER_MA_MIN,
        )

    def _detach(self) -> None:
        for remove in self._removers:
            remove()
        self._removers.clear()

    @property
    def outcome(self) -> SessionOutcome | None:
        return self._outcome

    def _close_from_client(self) -> None:
        """Called by ``Stimulator.close()``: ramp down and wait for zero before the link closes."""
        if self._finished:
            return
        logger.warning("client closing with a session running: ramping down first")
        self._request_end(Stop(), SessionOutcome.STOPPED)
        limit = time.monotonic() + self.start_message.ramp_down_ms / 1000.0 + 10.0
        while not self._finished and time.monotonic() < limit:
            self._apply_status(self._stim.status())
            with self._changed:
                if not self._finished:
                    self._changed.wait(0.1)
        self._close_record(self._delivered_uas, SessionOutcome.STOPPED, detail="client closed")

    # ------------------------------------------------------------------------------ listeners

    def _write(self, action: Callable[[RecordWriter], object]) -> None:
        """Write to the record unless it is already closed (a listener may race the session's end)."""
        record = self._record
        if record is not None and not record.finished:
            with contextlib.suppress(RecordClosedError):
                action(record)

    def _handle_event(self, event: Event) -> None:
        if event.code is EventCode.POWER_ON and not event.replayed:
            if self._last_event_no == 0 and event.event_no <= self._event_floor:
                logger.debug("ignoring the power-on from before this session")  # dispatched late
                return
            self._event_floor = 0  # the device restarted: event numbers start again at 1
            self._last_event_no = event.event_no
            self._write(lambda r: r.event(event))
            self._on_device_restart()
            return
        if event.event_no <= self._event_floor:
            logger.debug("ignoring event %d from before this session", event.event_no)
            return
        self._write(lambda r: r.event(event))
        with self._changed:
            self._last_event_no = max(self._last_event_no, event.event_no)
            self._state = event.state
            if event.code is EventCode.SESSION_ENDED:
                self._ended_charge = event.value
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
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception as exc:
                self._callback_failed(exc)

    def _on_device_restart(self) -> None:
        """The device restarted mid-session (power loss): output is cut, the session is gone (S15)."""
        with self._changed:
            if not self._device_restarted:
                self._device_restarted = True
                logger.error("device restarted during session %s: output cut, session lost", self.session_id)
                if self._fault is None and self._ended_charge is None:  # a cut after the end is no fault
                    self._fault = DeviceFault(
                        EventCode.POWER_ON, 0, "device restarted during the session (power loss)"
                    )
            self._state = DeviceState.IDLE
            self._finished = True
            self._changed.notify_all()

    def _handle_telemetry(self, sample: Telemetry) -> None:
        device_s = sample.device_time_ms / 1000.0
        if device_s - self._last_recorded_device_s >= self._record_interval_s:
            self._last_recorded_device_s = device_s
            self._write(lambda r: r.telemetry(sample))
        self._check_overcurrent(sample)
        progress = self._progress_from(sample)
        with self._changed:
            if self._device_restarted:
                return  # a new boot's telemetry: this session's dose is the last figure before it
            self._state = sample.state
            self._flags = sample.flags
            if sample.device_time_ms >= self._delivered_at_ms:
                self._delivered_uas = sample.charge_uas
                self._delivered_at_ms = sample.device_time_ms
            self._last_progress = progress
            self._changed.notify_all()
        if self._on_progress is not None:
            try:
                self._on_progress(progress)
            except Exception as exc:
                self._callback_failed(exc)

    def _check_overcurrent(self, sample: Telemetry) -> None:
        """S9 again in the driver: abort if the device reports more current than it should."""
        limit = max(sample.setpoint_ua * (1 + OVERCURRENT_MARGIN), sample.setpoint_ua + OVERCURRENT_FLOOR_UA)
        if sample.measured_ua > limit and sample.state is not DeviceState.FAULT:
            self._overcurrent_count += 1
            if self._overcurrent_count == OVERCURRENT_SAMPLES:
                logger.error(
                    "measured %d uA over set-point %d uA: aborting", sample.measured_ua, sample.setpoint_ua
                )
                threading.Thread(target=self._abort_quietly, daemon=True).start()
        else:
            self._overcurrent_count = 0

    def _abort_quietly(self) -> None:
        with contextlib.suppress(IontodriveError):
            self.abort()

    def _handle_background_error(self, exc: BaseException) -> None:
        logger.debug("background error during session: %r", exc)

    def _callback_failed(self, exc: BaseException) -> None:
        logger.error("session callback raised %r: ramping down", exc)
        with self._changed:
            if self._callback_error is None:
                self._callback_error = exc
            self._changed.notify_all()
        threading.Thread(target=self._stop_quietly, daemon=True).start()

    def _stop_quietly(self) -> None:
        with contextlib.suppress(IontodriveError):
            self._request_end(Stop(), SessionOutcome.CALLBACK_ERROR)

    def _progress_from(self, sample: Telemetry) -> Progress:
        delivered = sample.charge_uas
        start = self.start_message
        target_ma_min = start.dose_uas / UAS_PER_MA_MIN if start.dose_uas else None
        if start.dose_uas:
            fraction = min(1.0, delivered / start.dose_uas)
            # The rest of the dose at the prescribed current, plus half the ramp-down (which delivers half
            # its duration's worth): an estimate from the plan, not from the present (ramping) current.
            rest_s = max(0, start.dose_uas - delivered) / start.target_current_ua
            time_left = rest_s + start.ramp_down_ms / 2000.0 if delivered < start.dose_uas else 0.0
        else:
            total = start.duration_ms / 1000.0
            since_poll = (sample.device_time_ms - self._remaining_at_device_ms) / 1000.0
            time_left = max(0.0, self._remaining_ms / 1000.0 - max(0.0, since_poll))
            if sample.state in (DeviceState.PAUSED, DeviceState.PAUSING):
                time_left = self._remaining_ms / 1000.0
            fraction = min(1.0, max(0.0, 1.0 - time_left / total)) if total else 0.0
        open_circuit = sample.impedance_ohm == OPEN_CIRCUIT_OHM
        return Progress(
            state=sample.state,
            flags=sample.flags,
            device_time_s=sample.device_time_ms / 1000.0,
            delivered_uas=delivered,
            delivered_ma_min=delivered / UAS_PER_MA_MIN,
            target_ma_min=target_ma_min,
            fraction=fraction,
            time_left_s=time_left,
            setpoint_ma=sample.setpoint_ua / 1000.0,
            current_ma=sample.measured_ua / 1000.0,
            voltage_v=sample.voltage_mv / 1000.0,
            impedance_ohm=None if open_circuit else sample.impedance_ohm,
        )


class DeliversSessions(ABC):
    """``deliver()`` for every source whose ``start()`` returns a session handle with ``wait()``.

    Shared by :class:`Stimulator` and the VISA source-meters, so that a whole session runs, reports and ends
    the same way on both.
    """

    @abstractmethod
    def start(self, prescription: Prescription, **options: Any) -> Any:
        """Check and start a session; return its handle (with ``wait()``)."""

    def deliver(
        self,
        prescription: Prescription,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        record_path: str | Path | None = None,
        labels: dict[str, str] | None = None,
        on_event: Callable[[Event], None] | None = None,
        **start_options: Any,
    ) -> SessionRecord:
        """Run a whole session and return its record. Ctrl-C and SIGTERM ramp down before raising.

        ``start_options`` go to ``start()`` (e.g. ``telemetry_hz``). Raises what ``start()`` and the
        session's ``wait()`` raise.
        """
        with sigterm_as_exception():
            session = self.start(
                prescription,
                record_path=record_path,
                labels=labels,
                on_progress=on_progress,
                on_event=on_event,
                **start_options,
            )
            return session.wait()  # type: ignore[no-any-return]


class Stimulator(DeliversSessions, DeviceClient):
    """A connected stimulator that can deliver dose sessions. Open with :meth:`Stimulator.open`.

    Example::

        with Stimulator.open("socket://127.0.0.1:7000") as stim:
            record = stim.deliver(Prescription(current_ma=4, dose_ma_min=40, polarity="cathode"))
    """

    def start(
        self,
        prescription: Prescription,
        *,
        record_path: str | Path | None = None,
        labels: dict[str, str] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        telemetry_hz: int | None = DEFAULT_SESSION_TELEMETRY_HZ,
    ) -> Session:
        """Check and start a session; return its handle at once (the device ramps up by itself).

        Raises:
            SafetyRefusal: the prescription or the contact check failed the driver's checks; nothing sent.
            DeviceRefusal: the device refused ``Start``; nothing changed.
        """
        session = Session(
            self,
            prescription,
            record_path=record_path,
            labels=labels,
            on_progress=on_progress,
            on_event=on_event,
            telemetry_hz=telemetry_hz,
        )
        session._begin()
        return session

    def recover(self, record_path: str | Path) -> SessionRecord:
        """Complete a record left unfinished by a host that died (S16, S10).

        Fetches what the device did while the host was away (events, final dose), ends the device's
        session if it is still paused by its watchdog (output is already at zero; a session still
        delivering is stopped with a ramp), and appends it all to the same record with a summary.
        """
        record = SessionRecord.load(record_path)
        if record.complete:
            return record
        writer = RecordWriter.reopen(record_path)
        try:
            status = self.status()
            started = next((n for n in record.notes if n.get("kind") == "started"), None)
            recorded_id = started.get("session_id") if started else None
            same_session = recorded_id is not None and recorded_id == status.session_id
            if same_session:
                next_no = (record.last_event_no or (started.get("first_event_no", 0) if started else 0)) + 1
                for event in self._fetch_all_events(next_no):
                    writer.event(event, recovered=True)
                if status.state not in IDLE_STATES:
                    status = self._stop_and_wait(status)
                writer.note("recovery", state=status.state.name, charge_uas=status.charge_uas)
                delivered = status.charge_uas
            else:
                writer.note(
                    "recovery",
                    state=status.state.name,
                    detail="device no longer holds this session (restarted); dose from the last record",
                )
                delivered = record.delivered_uas or 0
            writer.summary(delivered_uas=delivered, end_reason=SessionOutcome.RECOVERED.value)
        finally:
            writer.close()
        return SessionRecord.load(record_path)

    def _fetch_all_events(self, from_no: int) -> Iterator[Event]:
        while True:
            batch = self.fetch_events(from_no)
            if not batch:
                return
            yield from batch
            from_no = batch[-1].event_no + 1

    def _stop_and_wait(self, status: StatusReport) -> StatusReport:
        with contextlib.suppress(DeviceRefusal):
            self._request_typed(Stop(), Ack)
        limit = time.monotonic() + 75.0
        while status.state not in IDLE_STATES and time.monotonic() < limit:
            time.sleep(0.1)
            status = self.status()
        return status


@contextlib.contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """In the main thread, turn SIGTERM into an exception the session handles like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
