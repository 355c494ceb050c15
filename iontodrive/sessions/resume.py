"""Deliver the remaining dose of an interrupted session, explicitly (issue 19 item 5; S6, S7).

Current never comes back by itself: not when contact returns after an electrode lift, not when a lost link
comes back (:mod:`iontodrive.sessions.reconnect`). The remainder is delivered only by an explicit call,
:func:`resume_session`, which:

1. reads the record chain (:class:`~iontodrive.records.chain.RecordChain`) ending at the given record;
2. refuses a device that is not the record's own (:class:`~iontodrive.sessions.reconnect.
   DifferentDeviceError`);
3. completes the last part from the device if it is not complete yet (:meth:`Stimulator.recover`: the
   device's session is ended at zero and its final charge written);
4. refuses (:class:`ResumeRefusedError`) unless every part's figure is the device's confirmed count (a
   remainder computed from an estimate could overdose), and when nothing is left to deliver
   (:class:`NothingToResumeError`, below :data:`NOTHING_LEFT_FRACTION` of the prescription);
5. starts a **new session** for the remainder: the first part's prescription with
   ``dose_ma_min`` = prescribed − delivered (each part's figure the device's own), through
   :meth:`Stimulator.start` -- so the driver's and the device's contact check run again (S3, S7), the
   output ramps up from zero at the prescription's ramp (S1, S4), and every safety check of a session
   applies. Its record's labels name the part it continues (``continues_record``, ``continues_session``,
   ``part``; :mod:`iontodrive.records.chain`), written before ``Start`` is sent.

Only dose-based sessions can be resumed: the device does not report the on-time of an ended session, so
the remaining time of a time-based one is not the device's figure (refused, typed).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from iontodrive.errors import IontodriveError, SafetyRefusal
from iontodrive.prescription import Prescription
from iontodrive.records.chain import CONTINUES_RECORD, CONTINUES_SESSION, PART, RecordChain
from iontodrive.sessions.engine import DEFAULT_SESSION_TELEMETRY_HZ
from iontodrive.sessions.reconnect import check_same_device
from iontodrive.units import UAS_PER_MA_MIN

if TYPE_CHECKING:
    from iontodrive.protocol import Event
    from iontodrive.sessions.device import DeviceSession, Stimulator
    from iontodrive.sessions.types import Progress

__all__ = [
    "NOTHING_LEFT_FRACTION",
    "NothingToResumeError",
    "Remainder",
    "ResumeRefusedError",
    "plan_remainder",
    "resume_session",
]

logger = logging.getLogger("iontodrive.session")

NOTHING_LEFT_FRACTION = 0.01  # a remainder below 1 % of the prescription is not delivered (issue 19's bound)


class ResumeRefusedError(IontodriveError):
    """The remainder cannot be delivered safely from this record chain; nothing was sent. ``record``
    names the record, ``reason`` why."""

    def __init__(self, record: str | Path, reason: str) -> None:
        self.record = Path(record)
        self.reason = reason
        super().__init__(f"cannot resume {record}: {reason}")


class NothingToResumeError(ResumeRefusedError):
    """The prescribed dose is delivered already (within :data:`NOTHING_LEFT_FRACTION`)."""


@dataclasses.dataclass(frozen=True)
class Remainder:
    """What is left of a session: the chain it continues and the prescription for the rest."""

    chain: RecordChain
    prescription: Prescription
    remaining_uas: int

    @property
    def labels(self) -> dict[str, str]:
        """The new part's labels: the first part's, plus the link to the part it continues."""
        last = self.chain.last
        summary = last.summary or {}
        return {
            **self.chain.head.labels,
            CONTINUES_RECORD: str(last.path.resolve()),
            CONTINUES_SESSION: str(summary.get("session_id", "")),
            PART: str(len(self.chain.parts) + 1),
        }

    def describe(self) -> str:
        prescribed = self.chain.prescribed_uas or 0
        return (
            f"{self.remaining_uas / UAS_PER_MA_MIN:.3f} of {prescribed / UAS_PER_MA_MIN:g} mA·min left "
            f"after {self.chain.describe()}"
        )


def plan_remainder(chain: RecordChain) -> Remainder:
    """The remainder of a complete, device-confirmed chain (no I/O).

    Raises:
        ResumeRefusedError: a part is missing or incomplete, a figure is not the device's, or the session
            is time-based.
        NothingToResumeError: less than :data:`NOTHING_LEFT_FRACTION` of the dose is left.
    """
    path = chain.last.path
    if chain.problems:
        raise ResumeRefusedError(path, "; ".join(chain.problems))
    if not chain.complete:
        raise ResumeRefusedError(
            path, "a part of the session has no summary yet: run `iontodrive recover` first"
        )
    if not chain.device_confirmed:
        raise ResumeRefusedError(
            path,
            "a part's delivered charge is not the device's confirmed count (the device restarted?): the "
            "remainder cannot be known; deliver a new prescription if the clinician decides so",
        )
    prescribed = chain.prescribed_uas
    if prescribed is None:
        raise ResumeRefusedError(
            path,
            "only dose-based sessions can be resumed (the device does not report an ended one's on-time)",
        )
    remaining = max(0, prescribed - chain.delivered_uas)
    if remaining < NOTHING_LEFT_FRACTION * prescribed:
        raise NothingToResumeError(
            path, f"{chain.describe()}: less than {NOTHING_LEFT_FRACTION:.0%} of the dose is left"
        )
    try:
        head = Prescription.from_dict(chain.head.prescription)
        rx = dataclasses.replace(head, dose_ma_min=remaining / UAS_PER_MA_MIN)
    except SafetyRefusal as exc:
        raise ResumeRefusedError(path, f"the first part's prescription cannot be read back: {exc}") from exc
    return Remainder(chain, rx, remaining)


def resume_session(
    stim: Stimulator,
    record_path: str | Path,
    *,
    new_record_path: str | Path | None = None,
    labels: dict[str, str] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_alarm: Callable[[str], None] | None = None,
    telemetry_hz: int | None = DEFAULT_SESSION_TELEMETRY_HZ,
) -> DeviceSession:
    """Start the remaining dose of the session whose last part is the record at ``record_path`` (see
    the module docstring) and return its handle; ``wait()`` on it as on any session. ``labels`` are added
    to the first part's.

    Raises:
        DifferentDeviceError: ``stim`` is not the record's device.
        ResumeRefusedError, NothingToResumeError: see :func:`plan_remainder`; nothing was sent.
        OutputNotConfirmedError: completing the last part could not confirm zero output.
        SafetyRefusal, DeviceRefusal, LinkError: as :meth:`Stimulator.start` (the contact check included).
    """
    chain = RecordChain.load(record_path)
    check_same_device(chain.last.identity, stim.identity, stim.url)
    if not chain.last.complete:
        logger.info("resume: completing %s from the device first", record_path)
        stim.recover(record_path)
        chain = RecordChain.load(record_path)
    remainder = plan_remainder(chain)
    logger.info("resuming: %s", remainder.describe())
    return stim.start(
        remainder.prescription,
        record_path=new_record_path,
        labels={**remainder.labels, **(labels or {})},
        on_progress=on_progress,
        on_event=on_event,
        on_alarm=on_alarm,
        telemetry_hz=telemetry_hz,
    )
