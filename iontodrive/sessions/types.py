"""What every session is, whatever the source: :class:`Progress`, :class:`SessionOutcome`,
:class:`SessionAccount`, the handle and source protocols.

This module sits below both sources (the protocol device in :mod:`iontodrive.sessions.device` and the VISA
source-meter in :mod:`iontodrive.visa`): it imports only the protocol's enums, so importing the VISA source
loads no pyserial and no device client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from iontodrive.errors import DeviceFault
from iontodrive.protocol import DeviceState, EventCode, StatusFlags
from iontodrive.units import UAS_PER_MA_MIN

if TYPE_CHECKING:
    from iontodrive.prescription import Prescription
    from iontodrive.protocol import Event, IdentityReport
    from iontodrive.record import SessionRecord

__all__ = [
    "CurrentSource",
    "OutputNotConfirmedError",
    "Progress",
    "SessionAccount",
    "SessionHandle",
    "SessionOutcome",
    "Terminated",
]


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
    """What a progress callback receives, in user units; every value comes from the source's telemetry.

    ``session_id`` names the session this sample belongs to (the first callback of a session describes
    that session, never the one before). ``elapsed_s`` is device seconds since this session started.
    ``fraction`` is 0..1 of the dose (dose-based) or of the on-time (time-based) and is exactly 1.0 once
    the session completes. ``time_left_s`` is None when it cannot be estimated; ``ramp_down_left_s`` is set
    only while the output ramps down after a stop or at the end. ``current_ma`` is the measured current as
    the device reports it (for pulsed DC an instantaneous reading, in the on or the off phase); pulsed DC
    adds ``average_current_ma`` (the rate of the device's charge count, the true average over the pulses)
    and ``pulse_amplitude_ma`` (the pulse height that average implies: average / duty); None for DC.
    ``alarms`` are plain words (``"ELECTRODE LIFT"``, ``"RECORD NOT WRITTEN: <reason>"``);
    ``record_error`` is the reason the session record stopped being written, if it did.
    """

    session_id: str
    state: DeviceState
    flags: StatusFlags
    device_time_s: float
    elapsed_s: float
    delivered_uas: int
    delivered_ma_min: float
    target_ma_min: float | None  # dose-based sessions
    target_s: float | None  # time-based sessions
    fraction: float
    time_left_s: float | None
    ramp_down_left_s: float | None
    setpoint_ma: float
    current_ma: float  # measured
    pulse_amplitude_ma: float | None
    average_current_ma: float | None
    voltage_v: float
    compliance_v: float
    impedance_ohm: int | None  # None when the circuit is open
    alarms: tuple[str, ...] = ()
    record_error: str | None = None


@dataclass(frozen=True)
class SessionAccount:
    """The session's account as the source itself gives it (the device is the authority on the dose).

    ``delivered_uas`` and ``end_state`` are read back from the source at the end (``dose_source`` says
    how: ``"device"`` for a stimulator's own count, ``"host-integrated"`` for a source-meter whose charge
    the host integrates from its readings). ``confirmed`` is False when the source could not be asked at
    the end (the figures are then the last it reported). ``record_complete`` is False when the host's
    record could not be written whole; ``record_error`` says why. Whatever the record holds, this account
    is what a display, ``--json`` or a report should show.
    """

    session_id: str
    outcome: SessionOutcome
    delivered_uas: int
    target_uas: int | None
    end_state: DeviceState
    dose_source: str
    confirmed: bool
    record_path: Path
    record_complete: bool
    record_error: str | None = None
    detail: str = ""

    @property
    def delivered_ma_min(self) -> float:
        return self.delivered_uas / UAS_PER_MA_MIN

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (enums by name, charge also in mA·min)."""
        return {
            "session_id": self.session_id,
            "outcome": self.outcome.value,
            "delivered_uas": self.delivered_uas,
            "delivered_ma_min": round(self.delivered_ma_min, 6),
            "target_uas": self.target_uas,
            "end_state": self.end_state.name,
            "dose_source": self.dose_source,
            "confirmed": self.confirmed,
            "record_path": str(self.record_path),
            "record_complete": self.record_complete,
            "record_error": self.record_error,
            "detail": self.detail,
        }


class Terminated(BaseException):
    """Raised in the main thread by the SIGTERM handler that ``deliver()`` installs (a BaseException, like
    KeyboardInterrupt, so ordinary ``except Exception`` blocks do not swallow it)."""


@runtime_checkable
class SessionHandle(Protocol):
    """A running session, as returned by ``start()``. Methods are thread-safe.

    ``wait()`` returns the completed :class:`~iontodrive.record.SessionRecord` once the output is back at
    zero, or raises why the session ended early (after ramping down); it always returns within a bounded
    time. ``account`` is the source's own account of the session once it is over.
    """

    record_path: Path
    warnings: list[str]

    @property
    def session_id(self) -> str: ...

    @property
    def state(self) -> DeviceState: ...

    @property
    def progress(self) -> Progress | None: ...

    @property
    def finished(self) -> bool: ...

    @property
    def outcome(self) -> SessionOutcome | None: ...

    @property
    def account(self) -> SessionAccount | None: ...

    @property
    def alarms(self) -> tuple[str, ...]: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def set_current(self, current_ma: float) -> None: ...

    def stop(self) -> None: ...

    def abort(self) -> None: ...

    def wait(self, timeout_s: float | None = None) -> SessionRecord: ...


@runtime_checkable
class CurrentSource(Protocol):
    """A constant-current source that runs dose sessions. Every exit path ramps the output down (S16).

    ``identity`` carries the hard limits prescriptions are checked against (for a VISA source-meter they
    are synthesized from ``*IDN?`` and the configured limits). ``deliver()`` runs a whole session and
    returns its record; Ctrl-C and SIGTERM ramp down before it raises ``SessionInterrupted``.
    ``description`` says in a few words what is connected and where; ``ensure_output_zero()`` is the
    safety net a caller uses after an interrupt that escaped before a session took charge.
    """

    identity: IdentityReport

    @property
    def description(self) -> str: ...

    @property
    def has_device_status(self) -> bool: ...

    @property
    def last_session(self) -> SessionHandle | None: ...

    def deliver(
        self,
        prescription: Prescription,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        record_path: str | Path | None = None,
        labels: dict[str, str] | None = None,
        on_event: Callable[[Event], None] | None = None,
        telemetry_hz: int | None = ...,
    ) -> SessionRecord: ...

    def start(
        self,
        prescription: Prescription,
        *,
        record_path: str | Path | None = None,
        labels: dict[str, str] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        telemetry_hz: int | None = ...,
    ) -> SessionHandle: ...

    def ensure_output_zero(self, timeout_s: float) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class OutputNotConfirmedError(DeviceFault):
    """The driver asked the source to bring its output to zero (stop, then abort, repeated) and could not
    confirm that it did within the bounded time. ``wait()`` raises it rather than blocking; the session's
    heartbeat gate stays closed so that the device's own watchdog acts (S10, S19). Check the output at the
    device. Attributes as :class:`~iontodrive.errors.DeviceFault`, plus ``last_measured_ua``."""

    def __init__(self, code: EventCode, last_measured_ua: int, detail: str) -> None:
        self.last_measured_ua = last_measured_ua
        super().__init__(code, last_measured_ua, detail)
