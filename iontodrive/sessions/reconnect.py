"""Reconnect after a lost link and reconcile the session's record with the device (issue 19 item 5).

When the link to a stimulator is lost during a session (a USB adapter pulled, a cable cut, a device that
stopped answering), the device's own watchdog ramps the output down and pauses the session with its dose
kept (S10). A :class:`~iontodrive.sessions.device.Stimulator` opened with ``reconnect_s=`` then:

1. **keeps trying to reach the same device** on the same resource (the stable path a ``/dev/serial/by-id/``
   name gives, or the simulator's ``--link``) every :attr:`ReconnectPolicy.interval_s`, for up to
   :attr:`ReconnectPolicy.within_s`. A device that answers there but is not the same one (another serial
   number or model) is refused at once with :class:`DifferentDeviceError`: nothing is sent to it beyond
   ``Identify`` and the protocol handshake. After the configured time it gives up with
   :class:`ReconnectFailedError`; the record says so (a ``reconnect_failed`` note) and stays incomplete
   (``iontodrive recover`` completes it later from the device);
2. **reconciles** the record with the device: a ``reconciled`` note with the device's own time, delivered
   charge, state, flags and session id as it finds them, then
   :meth:`Stimulator.recover <iontodrive.sessions.device.Stimulator.recover>`: the events the host missed
   are fetched into the record, the device's session is ended at zero output (a paused session ends
   without any change of output; one still running, because the link came back before the watchdog
   acted, is ramped down over its ramp-down time: it never continues unwatched) and the summary carries
   the device's own final charge. The session's ``wait()`` then raises :class:`SessionReconnected` (a
   :class:`~iontodrive.errors.LinkLostError`) carrying the :class:`Reconciliation`.

**Current never comes back by itself.** Nothing here resumes output: delivering the remaining dose is an
explicit call (:func:`iontodrive.sessions.resume.resume_session`, ``iontodrive resume``), which runs a new
contact check and ramps up from zero (S6, S7).

Choices where the issue was silent (``docs/api.md``, "Reconnect, reconcile, resume"): reconnecting is off
unless asked for (``reconnect_s=None``), because a caller that does not expect a session to outlive its
link must keep getting ``LinkLostError`` at once; the interval is 0.25 s (a USB re-enumeration takes
about a second); the device's session is ended at reconciliation rather than kept paused, so that every
record is complete against the device's confirmed count and every remainder is a new session with a
contact check of its own (the firmware's ``Resume`` would do the same check, but the record of the first
part could then only be completed by the process that resumed it).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iontodrive.client import DeviceClient
from iontodrive.errors import (
    IontodriveError,
    LinkError,
    LinkLostError,
    RecordError,
    SafetyRefusal,
    SessionInterrupted,
)
from iontodrive.protocol import DeviceState, IdentityReport, StatusReport
from iontodrive.record import RecordWriter, SessionRecord
from iontodrive.records.chain import started_note
from iontodrive.sessions.types import Terminated
from iontodrive.units import UAS_PER_MA_MIN

if TYPE_CHECKING:
    from iontodrive.sessions.device import Stimulator

__all__ = [
    "DEFAULT_INTERVAL_S",
    "MAX_RECONNECT_S",
    "DifferentDeviceError",
    "Reconciliation",
    "ReconnectFailedError",
    "ReconnectPolicy",
    "SessionReconnected",
    "after_link_loss",
    "check_same_device",
    "reach_same_device",
    "reconcile",
    "record_note",
]

logger = logging.getLogger("iontodrive.session")

DEFAULT_INTERVAL_S = 0.25  # between attempts to open the resource again
MAX_RECONNECT_S = 3600.0  # the longest reconnect time that can be configured
ENDED_STATES = frozenset({DeviceState.DONE, DeviceState.IDLE, DeviceState.FAULT})


# ------------------------------------------------------------------------------------------- errors


class DifferentDeviceError(IontodriveError):
    """A device answered on the resource, but it is not the session's device (another serial number or
    model). Nothing was sent to it beyond identification; the session's record is not touched by it.

    Attributes: ``resource``, ``expected_serial``, ``found_serial``, ``expected_model``, ``found_model``.
    """

    def __init__(
        self, resource: str, expected_serial: int, found_serial: int, expected_model: str, found_model: str
    ) -> None:
        self.resource = resource
        self.expected_serial = expected_serial
        self.found_serial = found_serial
        self.expected_model = expected_model
        self.found_model = found_model
        super().__init__(
            f"{resource}: found {found_model} #{found_serial}, not the session's {expected_model} "
            f"#{expected_serial}; refused (connect the session's own device)"
        )


class ReconnectFailedError(LinkLostError):
    """The session's device could not be reached again within the configured time. Its watchdog ramped
    the output down and keeps the dose (S10); the record says so and stays incomplete until
    ``iontodrive recover`` completes it from the device.

    Attributes: ``resource``, ``waited_s``, ``attempts``, ``last_error`` (the last attempt's, or None).
    """

    def __init__(
        self, resource: str, waited_s: float, attempts: int, last_error: BaseException | None
    ) -> None:
        self.resource = resource
        self.waited_s = waited_s
        self.attempts = attempts
        self.last_error = last_error
        super().__init__(
            f"could not reach the session's device on {resource} again within {waited_s:.1f} s "
            f"({attempts} attempts; last: {last_error}); its watchdog ramps the output down and keeps "
            "the dose: run `iontodrive recover RECORD PORT` once it is back"
        )


class SessionReconnected(LinkLostError):
    """The link was lost during the session and came back: the record was reconciled with the device
    (:attr:`reconciliation`), the device's session ended at zero output. No current was resumed; deliver
    the rest with :func:`iontodrive.sessions.resume.resume_session` (a new contact check, a ramp)."""

    def __init__(self, reconciliation: Reconciliation, cause: BaseException) -> None:
        self.reconciliation = reconciliation
        super().__init__(
            f"link lost ({cause}) and reconnected: {reconciliation.describe()}; no current was resumed"
        )


# ------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class ReconnectPolicy:
    """How long to keep trying to reach the same device after a lost link (wall seconds).

    Raises SafetyRefusal for ``within_s`` outside (0, :data:`MAX_RECONNECT_S`] or ``interval_s`` outside
    [0.01, 10].
    """

    within_s: float
    interval_s: float = DEFAULT_INTERVAL_S

    def __post_init__(self) -> None:
        for name, value, low, high in (
            ("reconnect_s", self.within_s, 0.0, MAX_RECONNECT_S),
            ("interval_s", self.interval_s, 0.01, 10.0),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not (low < value <= high if name == "reconnect_s" else low <= value <= high)
            ):
                raise SafetyRefusal(name, value, low, high, reason="seconds of wall time")


# ------------------------------------------------------------------------------------ same device


def check_same_device(
    expected: Mapping[str, Any] | IdentityReport, found: IdentityReport, resource: str
) -> None:
    """Raise :class:`DifferentDeviceError` unless ``found`` has ``expected``'s serial number and model
    (``expected`` an IdentityReport or a record's ``identity`` dict)."""
    serial: object
    model: object
    if isinstance(expected, IdentityReport):
        serial, model = expected.serial_number, expected.model
    else:
        serial, model = expected.get("serial_number"), expected.get("model")
    if serial != found.serial_number or model != found.model:
        raise DifferentDeviceError(
            resource, serial if isinstance(serial, int) else -1, found.serial_number, str(model), found.model
        )


def reach_same_device(
    resource: str,
    options: Mapping[str, Any],
    expected: IdentityReport,
    policy: ReconnectPolicy,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[DeviceClient, int, float]:
    """Open ``resource`` again (``DeviceClient.open(resource, **options)``) until it answers as the same
    device, for up to ``policy.within_s``. Returns (client, attempts, seconds waited).

    Raises:
        DifferentDeviceError: a device answered that is not ``expected`` (at once; its client is closed).
        ReconnectFailedError: nothing answered as a device within the time.
    """
    began = clock()
    deadline = began + policy.within_s
    attempts = 0
    last_error: BaseException | None = None
    while True:
        attempts += 1
        try:
            client = DeviceClient.open(resource, **options)
        except LinkError as exc:
            last_error = exc
            logger.debug("reconnect attempt %d to %s: %s", attempts, resource, exc)
        else:
            try:
                check_same_device(expected, client.identity, resource)
            except DifferentDeviceError:
                client.close()
                raise
            waited = clock() - began
            logger.warning("reconnected to %s after %.1f s (%d attempts)", resource, waited, attempts)
            return client, attempts, waited
        now = clock()
        if now >= deadline:
            raise ReconnectFailedError(resource, now - began, attempts, last_error)
        sleep(min(policy.interval_s, deadline - now))


# ------------------------------------------------------------------------------------ reconciling


@dataclass(frozen=True)
class Reconciliation:
    """What the device said when the host came back, and how the record now stands.

    ``found_*`` are the device's figures at reconnection (its time, charge, state, flags, session id);
    ``same_session`` whether the device still held the record's session; ``record`` the record as it
    now stands (complete, its summary the device's final charge, unless the device restarted);
    ``attempts`` / ``waited_s`` how the device was reached.
    """

    record_path: Path
    session_id: int
    same_session: bool
    found_device_time_ms: int
    found_charge_uas: int
    found_state: DeviceState
    found_flags: int
    record: SessionRecord
    attempts: int = 1
    waited_s: float = 0.0

    @property
    def delivered_uas(self) -> int:
        """The record's delivered charge after reconciliation (the device's own final figure)."""
        return self.record.delivered_uas or 0

    @property
    def device_confirmed(self) -> bool:
        summary = self.record.summary
        return summary is not None and summary.get("device_confirmed") is True

    def describe(self) -> str:
        confirmed = "device-confirmed" if self.device_confirmed else "NOT confirmed by the device"
        return (
            f"device found {self.found_state.name} at {self.found_device_time_ms / 1000:.1f} s with "
            f"{self.found_charge_uas / UAS_PER_MA_MIN:.3f} mA·min; record "
            f"{'complete' if self.record.complete else 'INCOMPLETE'}, "
            f"{self.delivered_uas / UAS_PER_MA_MIN:.3f} mA·min delivered ({confirmed})"
        )


def record_note(path: str | Path, kind: str, **data: Any) -> bool:
    """Append one note to a closed record (reopened for it). Never raises: a record that cannot be
    written is logged at ERROR (the device stays the record of truth, S20); returns whether it was."""
    try:
        writer = RecordWriter.reopen(path)
    except RecordError as exc:
        logger.error("RECORD NOT WRITTEN: %s note to %s failed: %s", kind, path, exc)
        return False
    try:
        writer.note(kind, **data)
    finally:
        try:
            writer.close()
        except RecordError as exc:
            logger.error("RECORD NOT WRITTEN: %s note to %s failed: %s", kind, path, exc)
            return False
    return True


def _session_of(record: SessionRecord) -> int | None:
    started = next((n for n in record.notes if n.get("kind") == "started"), None)
    value = None if started is None else started.get("session_id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def reconcile(
    stim: Stimulator, record_path: str | Path, *, attempts: int = 1, waited_s: float = 0.0
) -> Reconciliation:
    """Reconcile the record at ``record_path`` with the device ``stim`` is connected to: a ``reconciled``
    note with the device's figures, then :meth:`Stimulator.recover` (events fetched, the device's session
    ended at zero output, the device's final charge in the summary).

    Raises:
        DifferentDeviceError: ``stim`` is not the record's device (nothing written).
        OutputNotConfirmedError: the device's output could not be confirmed at zero (the record stays
            incomplete and says so).
        LinkError: the device stopped answering.
    """
    record = SessionRecord.load(record_path)
    check_same_device(record.identity, stim.identity, stim.url)
    status: StatusReport = stim.status()
    ours = _session_of(record)
    if ours is not None:
        same = status.session_id == ours
    else:
        note = started_note(record)
        same = note is not None and status.session_id != note.get("session_before")
    record_note(
        record_path,
        "reconciled",
        device_time_ms=status.device_time_ms,
        charge_uas=status.charge_uas,
        state=status.state.name,
        flags=int(status.flags),
        setpoint_ua=status.setpoint_ua,
        measured_ua=status.measured_ua,
        session_id=status.session_id,
        same_session=same,
        attempts=attempts,
        waited_s=round(waited_s, 3),
    )
    logger.info(
        "reconciling %s: device %s at %.1f s, %d µA·s, session %d (%s)",
        record_path,
        status.state.name,
        status.device_time_ms / 1000,
        status.charge_uas,
        status.session_id,
        "the record's" if same else "not the record's",
    )
    recovered = stim.recover(record_path)
    return Reconciliation(
        record_path=Path(record_path),
        session_id=status.session_id,
        same_session=same,
        found_device_time_ms=status.device_time_ms,
        found_charge_uas=status.charge_uas,
        found_state=status.state,
        found_flags=int(status.flags),
        record=recovered,
        attempts=attempts,
        waited_s=waited_s,
    )


def after_link_loss(stim: Stimulator, record_path: str | Path, cause: LinkError) -> IontodriveError:
    """What a session does when its link is lost and ``stim`` has a reconnect policy (called by
    :class:`~iontodrive.sessions.device.DeviceSession` once its record is closed): reach the same device,
    reconcile, and return the exception ``wait()`` raises -- :class:`SessionReconnected`,
    :class:`ReconnectFailedError`, :class:`DifferentDeviceError` or, for Ctrl-C or SIGTERM while trying,
    :class:`~iontodrive.errors.SessionInterrupted` (each noted in the record), or what reconciling
    raised."""
    policy = stim.reconnect_policy
    reopen = stim.reopen_with
    assert policy is not None and reopen is not None
    resource, options = reopen
    old = stim.client
    expected = old.identity
    with contextlib.suppress(Exception):  # the old link is dead; closing it must not hide the reconnect
        old.close()
    record_note(record_path, "reconnecting", resource=resource, within_s=policy.within_s, cause=str(cause))
    try:
        client, attempts, waited = reach_same_device(resource, options, expected, policy)
    except (KeyboardInterrupt, Terminated) as interrupt:  # nothing to ramp: the device's watchdog did (S10)
        reason = type(interrupt).__name__
        record_note(record_path, "reconnect_interrupted", resource=resource, reason=reason)
        return SessionInterrupted(
            f"{reason} while reconnecting (the device's watchdog paused the session; `iontodrive recover` "
            "completes the record)"
        )
    except ReconnectFailedError as failed:
        record_note(
            record_path,
            "reconnect_failed",
            resource=resource,
            waited_s=round(failed.waited_s, 3),
            attempts=failed.attempts,
            last_error=str(failed.last_error),
            detail="the device's watchdog ramps down and keeps the dose; complete with `iontodrive recover`",
        )
        return failed
    except DifferentDeviceError as refused:
        record_note(
            record_path,
            "reconnect_refused",
            resource=resource,
            expected_serial=refused.expected_serial,
            found_serial=refused.found_serial,
            expected_model=refused.expected_model,
            found_model=refused.found_model,
        )
        return refused
    stim.client = client
    try:
        reconciliation = reconcile(stim, record_path, attempts=attempts, waited_s=waited)
    except IontodriveError as exc:
        record_note(record_path, "reconcile_failed", detail=str(exc))
        return exc
    return SessionReconnected(reconciliation, cause)
