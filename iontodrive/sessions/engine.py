"""The session engine: what every session does, whatever the source.

:class:`SessionEngine` is the base of both session classes (:class:`iontodrive.sessions.device.
DeviceSession` for the protocol device, :class:`iontodrive.visa.session.VisaSession` for a host-ramped
source-meter). It holds, once:

=========================  ===========================================================================
record lifecycle           :class:`~iontodrive.sessions.recording.SessionRecorder` (default path from
                           :func:`iontodrive.record.default_record_path`; a write failure is an alarm)
progress                   :class:`~iontodrive.sessions.progress.ProgressBuilder` and
                           :meth:`_publish_progress` (callback errors caught, alarms added)
alarms                     :meth:`_raise_alarm`: into ``progress`` at once and every later progress
                           callback (the next sample, within a second), logged at ERROR, and given to
                           ``on_alarm`` (called on the thread that found the problem, e.g. the record's
                           writer thread: keep it short)
callback errors            :meth:`_callback_failed`: the first is kept and re-raised by ``wait()`` after
                           the source has ramped down (:meth:`_on_callback_error`)
outcome                    :func:`~iontodrive.sessions.outcome.decide_outcome`
account                    :class:`~iontodrive.sessions.types.SessionAccount`, the source's own figures
the interrupt-safe wait    :func:`~iontodrive.sessions.waiting.wait_interruptibly`
``deliver()``              :class:`DeliversSessions`, SIGTERM handled like Ctrl-C
=========================  ===========================================================================

A source supplies only what differs: how to start, stop, abort, pause, resume and change the current, how
to wait a step, and how to read back its own account at the end. ``start()``'s options are declared once,
here (:meth:`DeliversSessions.start`), and reach the session as one :class:`SessionOptions`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from iontodrive.protocol import DeviceState, Event
from iontodrive.sessions.progress import ProgressBuilder, record_alarm
from iontodrive.sessions.recording import SessionRecorder
from iontodrive.sessions.types import Progress, SessionAccount, SessionHandle, SessionOutcome
from iontodrive.sessions.waiting import sigterm_as_exception

if TYPE_CHECKING:
    from iontodrive.prescription import Prescription
    from iontodrive.protocol import IdentityReport
    from iontodrive.record import SessionRecord

logger = logging.getLogger("iontodrive.session")

DEFAULT_SESSION_TELEMETRY_HZ = 10
T = TypeVar("T")


@dataclass(frozen=True)
class SessionOptions:
    """What ``start()`` takes besides the prescription (see :meth:`DeliversSessions.start`), handed from
    the source to its session in one piece."""

    record_path: str | Path | None = None
    labels: dict[str, str] | None = None
    on_progress: Callable[[Progress], None] | None = None
    on_event: Callable[[Event], None] | None = None
    on_alarm: Callable[[str], None] | None = None
    telemetry_hz: int | None = DEFAULT_SESSION_TELEMETRY_HZ


def resolve_record_path(record_path: str | Path | None, serial: object) -> Path:
    """The record's path: as given, or a new one from :func:`iontodrive.record.default_record_path`
    (private to the user, a name no other session takes)."""
    if record_path is not None:
        return Path(record_path)
    from iontodrive.record import default_record_path

    return Path(default_record_path(serial))


class SessionEngine:
    """State and behaviour shared by every session; see the module docstring."""

    def __init__(
        self,
        prescription: Prescription,
        identity: IdentityReport,
        options: SessionOptions,
    ) -> None:
        self.prescription = prescription
        self.identity = identity
        self.labels = dict(options.labels or {})
        self.warnings: list[str] = []
        self._on_progress = options.on_progress
        self._on_event = options.on_event
        self._on_alarm = options.on_alarm
        self.record_path = resolve_record_path(options.record_path, identity.serial_number)
        self.start_message = prescription.to_start(identity)  # SafetyRefusal before anything is sent
        self._session_id = ""
        self._builder: ProgressBuilder | None = None
        self._recorder: SessionRecorder | None = None
        # An RLock: Ctrl-C and SIGTERM can strike inside Condition.__enter__ after it took the lock, so that
        # the `with` block never runs and never releases it. Reentrant, this thread can still take it.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._alarms: list[str] = []
        self._callback_error: BaseException | None = None
        self._callback_tasks: set[asyncio.Future[Any]] = set()
        self._last_progress: Progress | None = None
        self._unbuilt: Callable[[], Progress] | None = None  # see _defer_progress
        self._outcome: SessionOutcome | None = None
        self._account: SessionAccount | None = None

    # ----------------------------------------------------------------------------------- handle API

    @property
    def session_id(self) -> str:
        """The session's id as the source numbers it (``""`` until it started)."""
        return self._session_id

    @property
    def progress(self) -> Progress | None:
        """The latest :class:`Progress` (None before the first sample of the session)."""
        with self._changed:  # (reentrant) so that no newer sample's progress is overwritten by this one
            build, self._unbuilt = self._unbuilt, None
            if build is not None:
                self._publish_progress(build())
            return self._last_progress

    def _defer_progress(self, build: Callable[[], Progress]) -> None:
        """Keep ``build`` (the latest sample's progress, not yet built) for when :attr:`progress` is read:
        with no ``on_progress`` callback nobody needs a progress per sample (at 100 Hz building each cost
        more than the rest of the sample's handling). A later sample's ``build`` replaces it."""
        with self._changed:
            self._unbuilt = build

    @property
    def outcome(self) -> SessionOutcome | None:
        return self._outcome

    @property
    def account(self) -> SessionAccount | None:
        """The source's own account once the session is over (None before)."""
        return self._account

    @property
    def alarms(self) -> tuple[str, ...]:
        """Alarms raised by the engine so far (plain words; the status flags' alarms are in progress)."""
        with self._lock:
            return tuple(self._alarms)

    @property
    def record_error(self) -> str | None:
        """Why the session record stopped being written, or None."""
        return None if self._recorder is None else self._recorder.error

    # --------------------------------------------------------------------------------- record

    def _open_record(self) -> SessionRecorder:
        self._recorder = SessionRecorder(
            self.record_path,
            prescription=self.prescription.to_dict(),
            identity=self.identity,
            labels=self.labels,
            on_error=self._record_failed,
        )
        return self._recorder

    def _record_failed(self, reason: str) -> None:
        """S20: a record that cannot be written is an alarm at once; the session keeps delivering, with the
        device as the record of truth (docs/safety.md, "A record that cannot be written")."""
        self._raise_alarm(record_alarm(reason))

    # --------------------------------------------------------------------------------- alarms

    def _raise_alarm(self, text: str) -> None:
        with self._lock:
            if text in self._alarms:
                return
            self._alarms.append(text)
        logger.error("ALARM: %s", text)
        # ``progress`` shows it at once; progress callbacks get it with the next sample (telemetry runs at
        # 2 Hz or more during a session, so within a second), always on the thread they are called on.
        with self._changed:
            if self._last_progress is not None:
                self._last_progress = self._with_alarms(self._last_progress)
            self._changed.notify_all()
        self._call_back(self._on_alarm, text, after_error=True)  # an alarm reaches the operator regardless

    # --------------------------------------------------------------------------------- progress

    def _with_alarms(self, progress: Progress) -> Progress:
        engine_alarms = tuple(a for a in self.alarms if a not in progress.alarms)
        error = self.record_error
        if not engine_alarms and error == progress.record_error:
            return progress
        return replace(progress, alarms=progress.alarms + engine_alarms, record_error=error)

    def _publish_progress(self, progress: Progress) -> None:
        """Make ``progress`` the latest and give it to the callback (its errors end the session)."""
        progress = self._with_alarms(progress)
        # No notify: nothing waits for a progress (the waits that read it poll with a timeout), and waking
        # the session's waiting thread once per sample cost a thread switch per sample.
        with self._changed:
            self._unbuilt = None  # this one is newer than any deferred build
            self._last_progress = progress
        self._call_back(self._on_progress, progress)

    def _publish_event(self, event: Event) -> None:
        self._call_back(self._on_event, event)

    # ----------------------------------------------------------------------------- callback errors

    def _call_back(
        self, callback: Callable[[T], object] | None, value: T, *, after_error: bool = False
    ) -> None:
        """Give ``value`` to a user callback (if any); an exception from it ends the session
        (:meth:`_callback_failed`). After the first callback error only ``after_error`` calls still go out."""
        if callback is None or (self._callback_error is not None and not after_error):
            return
        try:
            result: Any = callback(value)
        except Exception as exc:
            self._callback_failed(exc)
            return
        if result is not None and inspect.isawaitable(result):
            self._run_awaitable(result)

    def _run_awaitable(self, awaitable: Awaitable[Any]) -> None:
        """A coroutine callback (the asyncio API, called on its loop): run as a task of that loop, not
        waited for; one that raises ends the session as a plain callback that raises. Without a running
        loop (the threaded API) a coroutine callback is itself the error."""
        try:
            task = asyncio.ensure_future(awaitable)
        except RuntimeError:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            self._callback_failed(TypeError("a coroutine callback needs the asyncio API (iontodrive.aio)"))
            return
        self._callback_tasks.add(task)
        task.add_done_callback(self._awaitable_done)

    def _awaitable_done(self, task: asyncio.Future[Any]) -> None:
        self._callback_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._callback_failed(task.exception())  # type: ignore[arg-type]

    def _callback_failed(self, exc: BaseException) -> None:
        logger.error("session callback raised %r: ramping down", exc)
        with self._changed:
            first = self._callback_error is None
            if first:
                self._callback_error = exc
            self._changed.notify_all()
        if first:
            self._on_callback_error()

    def _on_callback_error(self) -> None:
        """Start the ramp-down after a callback failed (the source decides how; never blocks)."""

    # ----------------------------------------------------------------------------------- account

    def _make_account(
        self,
        outcome: SessionOutcome,
        *,
        delivered_uas: int,
        end_state: DeviceState,
        dose_source: str,
        confirmed: bool,
        detail: str = "",
    ) -> SessionAccount:
        start = self.start_message
        recorder = self._recorder
        return SessionAccount(
            session_id=self._session_id,
            outcome=outcome,
            delivered_uas=max(0, int(delivered_uas)),
            target_uas=start.dose_uas or None,
            end_state=end_state,
            dose_source=dose_source,
            confirmed=confirmed,
            record_path=self.record_path,
            record_complete=recorder is not None and recorder.complete,
            record_error=None if recorder is None else recorder.error,
            detail=detail,
        )

    def _close_record(self, account: SessionAccount, **extra: Any) -> SessionAccount:
        """Write ``account`` as the summary and close the record; return the account as it now stands
        (``record_complete`` False if the summary could not be written)."""
        recorder = self._recorder
        self._outcome = account.outcome
        if recorder is not None:
            if not recorder.finished:
                fields = {
                    "session_id": account.session_id,
                    "end_state": account.end_state.name,
                    "dose_source": account.dose_source,
                    "device_confirmed": account.confirmed,
                    **extra,
                }
                if account.detail:
                    fields["detail"] = account.detail
                recorder.summary(
                    delivered_uas=account.delivered_uas, end_reason=account.outcome.value, **fields
                )
            recorder.close()
            if recorder.error is not None and account.record_complete:
                account = replace(account, record_complete=False, record_error=recorder.error)
        self._account = account
        if not account.record_complete:
            logger.error(
                "session %s: the record %s is INCOMPLETE (%s); the %s's own account: %s, %.3f mA·min",
                account.session_id,
                account.record_path,
                account.record_error,
                account.dose_source,
                account.outcome.value,
                account.delivered_ma_min,
            )
        return account


SessionT = TypeVar("SessionT", bound=SessionHandle)


class DeliversSessions(ABC, Generic[SessionT]):
    """``start()`` and ``deliver()`` for every source; a source supplies :meth:`_begin_session`."""

    def start(
        self,
        prescription: Prescription,
        *,
        record_path: str | Path | None = None,
        labels: dict[str, str] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_alarm: Callable[[str], None] | None = None,
        telemetry_hz: int | None = DEFAULT_SESSION_TELEMETRY_HZ,
    ) -> SessionT:
        """Check and start a session; return its handle at once (the output then ramps up by itself).

        ``record_path``: the session record to write (default: a new file from
        :func:`iontodrive.record.default_record_path`); ``labels``: operator labels stored in it;
        ``on_progress`` / ``on_event`` / ``on_alarm``: callbacks (an exception in one ends the session
        with a ramp-down and is re-raised by ``wait()``); ``telemetry_hz``: the telemetry rate during the
        session (device-time Hz, within the source's limit; None keeps the source's).

        Raises:
            SafetyRefusal: the prescription, the options or the contact check failed the driver's checks,
                or the source is busy; nothing was started.
            DeviceRefusal / InstrumentError: the device or instrument refused; nothing changed.
            LinkError: the start may have reached the source but could not be confirmed; the output was
                brought to zero (or the device's watchdog does it) and the record says what is known.
        """
        session = self._begin_session(
            prescription,
            SessionOptions(
                record_path=record_path,
                labels=labels,
                on_progress=on_progress,
                on_event=on_event,
                on_alarm=on_alarm,
                telemetry_hz=telemetry_hz,
            ),
        )
        self._last_session = session
        return session

    @abstractmethod
    def _begin_session(self, prescription: Prescription, options: SessionOptions) -> SessionT:
        """Check and start a session on this source (what :meth:`start` does); return its handle."""

    def deliver(
        self,
        prescription: Prescription,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        record_path: str | Path | None = None,
        labels: dict[str, str] | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_alarm: Callable[[str], None] | None = None,
        telemetry_hz: int | None = DEFAULT_SESSION_TELEMETRY_HZ,
        while_running: Callable[[SessionT], AbstractContextManager[object]] | None = None,
    ) -> SessionRecord:
        """Run a whole session and return its record. Ctrl-C and SIGTERM ramp down before raising.

        ``while_running(session)``, when given, is entered once the session has started and exited when
        ``wait()`` returns or raises: what a caller runs alongside the session with its handle (the CLI's
        operator keys, :mod:`iontodrive.cli.keys`). Raises what ``start()`` and the session's ``wait()``
        raise. An error while entering ``while_running`` propagates before ``wait()``; the session is then
        still running and ``close()`` ramps it down (S16), as for any error around a started session.
        """
        with sigterm_as_exception():
            session = self.start(
                prescription,
                record_path=record_path,
                labels=labels,
                on_progress=on_progress,
                on_event=on_event,
                on_alarm=on_alarm,
                telemetry_hz=telemetry_hz,
            )
            with nullcontext() if while_running is None else while_running(session):
                return session.wait()

    _last_session: SessionT | None = None

    @property
    def last_session(self) -> SessionT | None:
        """The last session started on this source by ``start()`` or ``deliver()`` (or None)."""
        return self._last_session
