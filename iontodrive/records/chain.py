"""A session delivered in parts: the chain of records a resumed remainder links (issue 19 item 5).

When a session is interrupted (electrode lift, lost link, a stop) and its remaining dose is delivered
later by an explicit resume (:mod:`iontodrive.sessions.resume`), the remainder is a new device session
with a record of its own. Its header's labels name the part it continues:

=======================  ============================================================================
``continues_record``     the absolute path of the previous part's record
``continues_session``    the device's session id of the previous part
``part``                 this part's number (the first part, the original session, is 1)
=======================  ============================================================================

Labels are in the header, which is written and fsync'd before ``Start`` is sent, so the link survives
any kill. :class:`RecordChain` follows those links back to the first part and gives the combined
figures, each part's being the device's own (its summary's ``delivered_uas``). A linked record that is not
at its recorded path is looked for under the same file name beside the record that links it (records
moved together); one that cannot be found or read is a ``problem`` and ends the walk.

``prescribed_uas`` is the dose the first part's device was told to deliver (the ``started``/``starting``
note's ``Start.dose_uas``), else the prescription's ``dose_ma_min`` in µA·s; None for a time-based
session.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iontodrive.errors import RecordError
from iontodrive.records.reader import SessionRecord
from iontodrive.units import UAS_PER_MA_MIN

__all__ = ["CONTINUES_RECORD", "CONTINUES_SESSION", "PART", "RecordChain", "started_note"]

CONTINUES_RECORD = "continues_record"
CONTINUES_SESSION = "continues_session"
PART = "part"
MAX_PARTS = 1000  # a guard against a pathological chain, far beyond any real session


def started_note(record: SessionRecord) -> dict[str, Any] | None:
    """The record's ``started`` note, else its ``starting`` note (written before ``Start``), else None."""
    for kind in ("started", "starting"):
        note = next((n for n in record.notes if n.get("kind") == kind), None)
        if note is not None:
            return note
    return None


def _prescribed_uas(record: SessionRecord) -> int | None:
    note = started_note(record)
    start = None if note is None else note.get("start")
    if isinstance(start, dict):
        dose = start.get("dose_uas")
        if isinstance(dose, int) and not isinstance(dose, bool) and dose > 0:
            return dose
        if dose == 0:
            return None  # a time-based session
    dose_ma_min = record.prescription.get("dose_ma_min")
    if isinstance(dose_ma_min, (int, float)) and not isinstance(dose_ma_min, bool) and dose_ma_min > 0:
        return round(dose_ma_min * UAS_PER_MA_MIN)
    return None


@dataclass(frozen=True)
class RecordChain:
    """The parts of one session, oldest first (``parts[0]`` is the original session, ``parts[-1]`` the
    record the chain was read from). See the module docstring."""

    parts: tuple[SessionRecord, ...]
    problems: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: str | Path) -> RecordChain:
        """The chain ending at the record at ``path``. Raises what :meth:`SessionRecord.load` raises for
        that record; a missing or unreadable earlier part is a ``problem``, not an exception."""
        return cls.from_record(SessionRecord.load(path))

    @classmethod
    def from_record(cls, record: SessionRecord) -> RecordChain:
        parts = [record]
        problems: list[str] = []
        seen = {record.path.resolve()}
        current = record
        while CONTINUES_RECORD in current.labels:
            if len(parts) >= MAX_PARTS:
                problems.append(f"more than {MAX_PARTS} parts: the walk stopped")
                break
            named = Path(current.labels[CONTINUES_RECORD])
            candidates = [named, current.path.parent / named.name]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                problems.append(f"{current.path}: the part it continues, {named}, is missing")
                break
            if found.resolve() in seen:
                problems.append(f"{current.path}: links back to {found}, already in the chain")
                break
            try:
                previous = SessionRecord.load(found)
            except RecordError as exc:
                problems.append(f"{found}: cannot be read ({exc})")
                break
            expected = current.labels.get(CONTINUES_SESSION)
            if expected is not None and previous.summary is not None:
                got = previous.summary.get("session_id")
                if got is not None and str(got) != expected:
                    problems.append(
                        f"{found}: holds session {got}, not the {expected} that {current.path} names"
                    )
            seen.add(found.resolve())
            parts.append(previous)
            current = previous
        return cls(tuple(reversed(parts)), tuple(problems))

    # ------------------------------------------------------------------------------------- figures

    @property
    def head(self) -> SessionRecord:
        """The first part: the original session and its prescription."""
        return self.parts[0]

    @property
    def last(self) -> SessionRecord:
        return self.parts[-1]

    @property
    def prescribed_uas(self) -> int | None:
        """The prescribed dose (µA·s) of the whole session; None for a time-based one."""
        return _prescribed_uas(self.head)

    @property
    def delivered_uas(self) -> int:
        """The combined delivered charge (µA·s): the sum of every part's own figure (0 for a part with
        none). Whether each is the device's confirmed count: :attr:`device_confirmed`."""
        return sum(part.delivered_uas or 0 for part in self.parts)

    @property
    def delivered_ma_min(self) -> float:
        return self.delivered_uas / UAS_PER_MA_MIN

    @property
    def remaining_uas(self) -> int | None:
        """The prescribed dose less the combined delivered charge, never below 0; None if time-based."""
        prescribed = self.prescribed_uas
        return None if prescribed is None else max(0, prescribed - self.delivered_uas)

    @property
    def complete(self) -> bool:
        """Every part has its summary (and no part is missing)."""
        return not self.problems and all(part.complete for part in self.parts)

    @property
    def device_confirmed(self) -> bool:
        """Every part's summary carries the device's own final count (``device_confirmed`` True)."""
        return self.complete and all(
            part.summary is not None and part.summary.get("device_confirmed") is True for part in self.parts
        )

    def describe(self) -> str:
        """One line, e.g. ``3 parts, 3.998 of 4 mA·min delivered (device-confirmed)``."""
        prescribed = self.prescribed_uas
        of = "" if prescribed is None else f" of {prescribed / UAS_PER_MA_MIN:g}"
        how = "device-confirmed" if self.device_confirmed else "NOT all device-confirmed"
        parts = f"{len(self.parts)} part{'s' if len(self.parts) != 1 else ''}"
        return f"{parts}, {self.delivered_ma_min:.3f}{of} mA·min delivered ({how})"
