"""Reading a record back: every intact line, and an account of every line that is not.

:meth:`SessionRecord.load` never fails a whole record for one bad line. Each line that is torn (a write
cut short), garbled, not JSON, of an unknown shape or with a field of the wrong type is skipped and listed in
``record.problems`` (:class:`RecordProblem`: line number, byte offset, why, and an excerpt); every other
line is read. A line that holds the torn start of one line followed by a whole line (an append after a
failed write) gives back the whole line and a problem for the torn part. Where the record stops short of
its end, ``record.truncated`` (:class:`RecordCut`) says where and why: no summary line (the writer stopped,
or the session's end is not known), or a partial last line (the writer was killed mid-line).

Only a file with nothing of a record in it raises :class:`RecordFormatError` (empty, or not one intact
line); one that cannot be read raises :class:`RecordReadError`. A missing or unreadable header leaves
``header``, ``prescription``, ``identity`` and ``labels`` empty and ``started_at`` None, with a problem
on line 1.

Loading never evaluates content: JSON with NaN/Infinity refused, duplicate keys refused, integers bounded to
±2⁶⁴, every known field type-checked. Enum values in the integer form of older records (``"polarity": 2``)
are read as their names (``"CATHODE"``), so a reader sees one form whatever wrote the record.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from iontodrive.errors import RecordFormatError, RecordReadError
from iontodrive.protocol import DeviceState, Polarity
from iontodrive.records.encoding import KIND_RE, enum_name, normalise_enums, parse_line

if TYPE_CHECKING:
    from iontodrive.records.chain import RecordChain

__all__ = ["TELEMETRY_INT_FIELDS", "RecordCut", "RecordProblem", "SessionRecord"]

SUPPORTED_SCHEMAS: Final = frozenset({1})
TELEMETRY_INT_FIELDS: Final = (
    "sample_no",
    "device_time_ms",
    "flags",
    "setpoint_ua",
    "measured_ua",
    "voltage_mv",
    "impedance_ohm",
    "charge_uas",
)
_LINE_START: Final = b'{"kind":'
_EXCERPT_CHARS: Final = 80


@dataclass(frozen=True)
class RecordProblem:
    """A line of a record that was skipped (or, for a torn prefix, partly skipped).

    ``line_no`` is 1-based (0: not tied to one line, e.g. a missing header); ``offset`` the byte offset of
    the line's start; ``reason`` why; ``excerpt`` its first 80 characters (invalid UTF-8 replaced).
    """

    line_no: int
    offset: int
    reason: str
    excerpt: str = ""

    def __str__(self) -> str:
        where = f"line {self.line_no}" if self.line_no else "record"
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class RecordCut:
    """Where a record stops short of its end (``record.truncated``).

    ``after_line``: the number of the last whole line (0 if none); ``offset``: bytes of whole lines;
    ``partial_bytes``: length of a partial last line (0 if the file ends on a newline); ``device_time_ms``:
    the latest device time of an event or telemetry line; ``host_time``: the host time of the last line
    carrying one (each None if none); ``reason``: why the record is cut.
    """

    after_line: int
    offset: int
    partial_bytes: int
    device_time_ms: int | None
    host_time: str | None
    reason: str

    def __str__(self) -> str:
        at = f" (device time {self.device_time_ms / 1000:.3f} s)" if self.device_time_ms is not None else ""
        return f"cut after line {self.after_line}{at}: {self.reason}"


# ------------------------------------------------------------------------------------------ line checks


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_name(value: Any) -> bool:
    return isinstance(value, str) or _is_int(value)


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 time string, got {type(value).__name__}")
    return datetime.fromisoformat(value)


def _require(line: Mapping[str, Any], key: str, check: Callable[[Any], bool], what: str) -> Any:
    if key not in line:
        raise ValueError(f"missing {key!r}")
    value = line[key]
    if not check(value):
        raise ValueError(f"{key!r} must be {what}, got {value!r:.60}")
    return value


def _check_event(line: dict[str, Any]) -> None:
    for key in ("event_no", "device_time_ms"):
        _require(line, key, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    _require(line, "value", _is_int, "an integer")
    for key in ("code", "state"):
        _require(line, key, _is_name, "a name or integer")
    for key in ("replayed", "recovered"):
        if key in line and not isinstance(line[key], bool):
            raise ValueError(f"{key!r} must be true or false")
    normalise_enums(line, event=True)


def _check_telemetry(line: dict[str, Any]) -> None:
    for key in TELEMETRY_INT_FIELDS:
        _require(line, key, _is_int, "an integer")
    state = _require(line, "state", _is_name, "a name or integer")
    if isinstance(state, int):
        line["state"] = enum_name(DeviceState, state)
    polarity = line.get("polarity")
    if polarity is not None:
        if not _is_name(polarity):
            raise ValueError("'polarity' must be a name or integer")
        if isinstance(polarity, int):
            line["polarity"] = enum_name(Polarity, polarity)


def _check_summary(line: dict[str, Any]) -> None:
    _require(line, "delivered_uas", lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    _require(line, "end_reason", lambda v: isinstance(v, str), "a string")
    _parse_time(_require(line, "ended_at", lambda v: isinstance(v, str), "an ISO 8601 time string"))
    normalise_enums(line)


def _check_header(line: dict[str, Any]) -> datetime:
    schema = _require(line, "schema", _is_int, "an integer")
    if schema not in SUPPORTED_SCHEMAS:
        raise ValueError(f"schema {schema} is not supported (this driver reads {sorted(SUPPORTED_SCHEMAS)})")
    started = _parse_time(
        _require(line, "started_at", lambda v: isinstance(v, str), "an ISO 8601 time string")
    )
    _require(line, "prescription", lambda v: isinstance(v, dict), "an object")
    _require(line, "identity", lambda v: isinstance(v, dict), "an object")
    labels = _require(line, "labels", lambda v: isinstance(v, dict), "an object")
    if not all(isinstance(v, str) for v in labels.values()):
        raise ValueError("'labels' values must be strings")
    return started


def _excerpt(blob: bytes) -> str:
    return blob[: _EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[:_EXCERPT_CHARS]


def _parse_object(blob: bytes) -> dict[str, Any]:
    """One line as a dict with a valid ``kind``; ValueError (with the reason) otherwise."""
    try:
        obj = parse_line(blob)
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise ValueError("not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("kind")
    if not isinstance(kind, str) or not KIND_RE.fullmatch(kind):
        raise ValueError(f"missing or invalid 'kind': {kind!r:.60}")
    return obj


# ----------------------------------------------------------------------------------------------- record


@dataclass
class SessionRecord:
    """A session record read back from disk (format: :mod:`iontodrive.records`).

    ``summary`` is None if the host died before writing one (``complete`` is then False).
    ``delivered_uas`` is the summary's, else the last telemetry sample's ``charge_uas``, else None.
    ``problems`` lists the lines that were skipped, ``truncated`` says where the record stops short of its
    end (None for a complete record). ``valid_bytes`` is the length of the file's whole lines (everything
    but a partial last line); ``line_count`` the number of whole lines.
    """

    path: Path
    header: dict[str, Any]
    prescription: dict[str, Any]
    identity: dict[str, Any]
    labels: dict[str, str]
    started_at: datetime | None
    events: list[dict[str, Any]] = field(default_factory=list)
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    problems: list[RecordProblem] = field(default_factory=list)
    truncated: RecordCut | None = None
    truncated_last_line: bool = False
    valid_bytes: int = 0
    line_count: int = 0

    @property
    def complete(self) -> bool:
        """True if the record has a summary."""
        return self.summary is not None

    @property
    def ended_at(self) -> datetime | None:
        """The summary's end time, or None."""
        return None if self.summary is None else datetime.fromisoformat(self.summary["ended_at"])

    @property
    def delivered_uas(self) -> int | None:
        """Delivered charge (µA·s): the summary's, else the last telemetry ``charge_uas``, else None."""
        if self.summary is not None:
            return int(self.summary["delivered_uas"])
        if self.telemetry:
            return int(self.telemetry[-1]["charge_uas"])
        return None

    def chain(self) -> RecordChain:
        """This record and the records it continues (a resumed remainder's ``continues_record`` label),
        oldest first; ``chain().delivered_uas`` is the combined dose (:mod:`iontodrive.records.chain`)."""
        from iontodrive.records.chain import RecordChain

        return RecordChain.from_record(self)

    @property
    def last_event_no(self) -> int:
        """Highest event number in the record, 0 if there are no events."""
        return max((int(e["event_no"]) for e in self.events), default=0)

    @property
    def telemetry_dropped(self) -> int:
        """Telemetry samples the writer dropped for room (its ``telemetry_dropped`` notes), 0 if none."""
        return sum(
            int(n.get("count", 0))
            for n in self.notes
            if n.get("kind") == "telemetry_dropped" and _is_int(n.get("count"))
        )

    def telemetry_arrays(self) -> dict[str, np.ndarray[Any, np.dtype[Any]]]:
        """Telemetry as columns: int64 arrays for every integer field, ``state`` as DeviceState values
        (-1 for an unknown name), ``t_s`` as float seconds of device time. Empty arrays if no telemetry."""
        count = len(self.telemetry)
        columns: dict[str, np.ndarray[Any, np.dtype[Any]]] = {
            key: np.fromiter((row[key] for row in self.telemetry), dtype=np.int64, count=count)
            for key in TELEMETRY_INT_FIELDS
        }
        columns["state"] = np.fromiter(
            (_state_value(row["state"]) for row in self.telemetry), dtype=np.int64, count=count
        )
        columns["t_s"] = columns["device_time_ms"].astype(np.float64) / 1000.0
        return columns

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SessionRecord:
        """Read a record: every intact line, the others in ``problems``, a cut in ``truncated``.

        Raises :class:`RecordReadError` if the file cannot be read, :class:`RecordFormatError` if it holds
        no record at all (empty, or not one intact line).
        """
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise RecordReadError(path, exc.strerror or str(exc), exc.errno) from exc
        if not raw:
            raise RecordFormatError(path, 1, "empty file")
        end = raw.rfind(b"\n") + 1  # whole lines: up to and including the last newline
        if end == 0:
            raise RecordFormatError(path, 1, "no complete line (the writer stopped before the header's end)")
        return _Loader(cls, path, raw, end).run()


class _Loader:
    """One pass over a record's lines (the body of :meth:`SessionRecord.load`)."""

    def __init__(self, cls: type[SessionRecord], path: Path, raw: bytes, end: int) -> None:
        self.record = cls(path=path, header={}, prescription={}, identity={}, labels={}, started_at=None)
        self.raw = raw
        self.end = end
        self.have_header = False
        self.intact = 0
        self.last_device_ms: int | None = None
        self.last_host_time: str | None = None
        self.first_kind: str | None = None

    def run(self) -> SessionRecord:
        record = self.record
        offset = 0
        line_no = 0
        while offset < self.end:
            stop = self.raw.index(b"\n", offset)
            line_no += 1
            self._line(line_no, offset, self.raw[offset:stop])
            offset = stop + 1
        if self.intact == 0:
            first = record.problems[0].reason if record.problems else "no lines"
            raise RecordFormatError(path=record.path, line_no=1, problem=f"not a session record: {first}")
        if not self.have_header and not any(p.line_no == 1 for p in record.problems):
            record.problems.insert(
                0,
                RecordProblem(
                    1,
                    0,
                    f"first line must be the header, found kind {self.first_kind!r}: prescription, "
                    "device and labels unknown",
                    _excerpt(self.raw[: self.raw.find(b"\n")]),
                ),
            )
        partial = len(self.raw) - self.end
        record.truncated_last_line = partial > 0
        record.valid_bytes = self.end
        record.line_count = line_no
        reason = ""
        if partial:
            reason = f"the last line is partial ({partial} bytes): the writer stopped in the middle of it"
        elif record.summary is None:
            reason = "no summary line: the writer stopped here, or the session's end is not known"
        if reason:
            record.truncated = RecordCut(
                after_line=line_no,
                offset=self.end,
                partial_bytes=partial,
                device_time_ms=self.last_device_ms,
                host_time=self.last_host_time,
                reason=reason,
            )
        return record

    def _line(self, line_no: int, offset: int, blob: bytes) -> None:
        try:
            obj = _parse_object(blob)
        except ValueError as exc:
            recovered = self._resync(line_no, offset, blob)
            if recovered is None:
                self.record.problems.append(RecordProblem(line_no, offset, str(exc), _excerpt(blob)))
                return
            obj = recovered
        try:
            self._accept(obj)
        except ValueError as exc:
            self.record.problems.append(
                RecordProblem(line_no, offset, f"{obj['kind']} line skipped: {exc}", _excerpt(blob))
            )

    def _resync(self, line_no: int, offset: int, blob: bytes) -> dict[str, Any] | None:
        """A torn line followed on the same line by a whole one: give back the whole one."""
        start = blob.find(_LINE_START, 1)
        while start > 0:
            try:
                obj = _parse_object(blob[start:])
            except ValueError:
                start = blob.find(_LINE_START, start + 1)
                continue
            self.record.problems.append(
                RecordProblem(
                    line_no,
                    offset,
                    f"torn: {start} bytes of an unfinished line before a whole one (the whole one is read)",
                    _excerpt(blob[:start]),
                )
            )
            return obj
        return None

    def _saw_device_time(self, device_time_ms: int) -> None:
        if self.last_device_ms is None or device_time_ms > self.last_device_ms:
            self.last_device_ms = device_time_ms

    def _accept(self, obj: dict[str, Any]) -> None:
        record = self.record
        kind = obj["kind"]
        if self.first_kind is None:
            self.first_kind = kind
        if kind == "header":
            if self.have_header:
                raise ValueError("a second header")
            started = _check_header(obj)
            self.have_header = True
            record.header = obj
            record.prescription = obj["prescription"]
            record.identity = obj["identity"]
            record.labels = obj["labels"]
            record.started_at = started
        elif kind == "event":
            _check_event(obj)
            record.events.append(obj)
            self._saw_device_time(obj["device_time_ms"])
        elif kind == "telemetry":
            _check_telemetry(obj)
            record.telemetry.append(obj)
            self._saw_device_time(obj["device_time_ms"])
        elif kind == "summary":
            if record.summary is not None:
                raise ValueError("a second summary")
            _check_summary(obj)
            record.summary = obj
        elif kind == "recovery":
            record.recoveries.append(normalise_enums(obj))
        else:
            record.notes.append(normalise_enums(obj))
        host_time = obj.get("host_time")
        if isinstance(host_time, str):
            self.last_host_time = host_time
        self.intact += 1


def _state_value(name: str | int) -> int:
    if isinstance(name, int):
        return name
    try:
        return int(DeviceState[name])
    except KeyError:
        return -1
