"""Session records: append-only JSON Lines, written as the session happens, readable after any kill.

File format (schema 1). UTF-8, one JSON object per line, each line ending in ``\\n``; every object has a
``kind``:

* ``header`` (first line, exactly once): ``schema``, ``driver``, ``started_at`` (ISO 8601), ``prescription``
  (dict, see :meth:`Prescription.to_dict`), ``identity`` (dict of the device's IdentityReport), ``labels``
  (dict of str to str: patient or sample id, site, drug, notes).
* ``event``: ``event_no``, ``device_time_ms``, ``code`` (EventCode name), ``state`` (DeviceState name),
  ``value`` (int, meaning per code), ``replayed`` (bool), ``recovered`` (bool: fetched on a later
  connection), ``host_time`` (ISO 8601, when the host wrote it).
* ``telemetry``: ``sample_no``, ``device_time_ms``, ``state`` (name), ``flags`` (int), ``polarity`` (name),
  ``setpoint_ua``, ``measured_ua``, ``voltage_mv``, ``impedance_ohm``, ``charge_uas``.
* ``summary``: ``delivered_uas`` (int), ``end_reason`` (str), ``ended_at`` (ISO 8601), plus extra keys.
* ``recovery``: what the host learnt on a later connection about the time it was away (free-form keys).
* any other lower-case identifier: a note (free-form keys), e.g. ``repair`` (written by
  :meth:`RecordWriter.reopen` when it drops a partial last line).

Commit rule: a line exists once its newline is written. A writer killed mid-line leaves a final segment
without a newline; :meth:`SessionRecord.load` ignores it and sets ``truncated_last_line``, and
:meth:`RecordWriter.reopen` removes it (recording a ``repair`` note with the dropped bytes) before appending.

Durability: every line is written with one ``write`` and flushed to the operating system at once, so a host
process killed at any moment leaves every line it wrote. ``os.fsync`` (protection against an OS crash or
power loss) runs after the header, after the summary, and otherwise at most once per second (on the first
line written a second or more after the previous fsync).

Loading never evaluates content: it parses JSON with NaN/Infinity refused, duplicate keys refused, integers
bounded to ±2⁶⁴ and every known field type-checked; anything malformed (other than the partial last line)
raises :class:`RecordFormatError` with the line number.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum, IntFlag
from pathlib import Path
from typing import Any, Final

import numpy as np

from iontodrive import __version__
from iontodrive.errors import IontodriveError
from iontodrive.protocol import DeviceState, Event, EventCode, IdentityReport, Polarity, Telemetry

__all__ = [
    "SCHEMA_VERSION",
    "RecordClosedError",
    "RecordFormatError",
    "RecordWriter",
    "SessionRecord",
    "identity_to_dict",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
FSYNC_INTERVAL_S: Final = 1.0
RESERVED_KINDS: Final = frozenset({"header", "event", "telemetry", "summary"})
_KIND_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_INT_BOUND: Final = 1 << 64
_MAX_REPAIR_TEXT: Final = 4096

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


class RecordFormatError(IontodriveError, ValueError):
    """A session record file is malformed.

    Attributes: ``path``, ``line_no`` (1-based; 0 when the problem is not tied to a line), ``problem``.
    """

    def __init__(self, path: str | os.PathLike[str], line_no: int, problem: str) -> None:
        self.path = str(path)
        self.line_no = line_no
        self.problem = problem
        where = f"{self.path}:{line_no}" if line_no else self.path
        super().__init__(f"{where}: {problem}")


class RecordClosedError(IontodriveError):
    """A write to a :class:`RecordWriter` after its summary or :meth:`RecordWriter.close`."""


# ------------------------------------------------------------------------------------------ JSON helpers


def _jsonable(value: Any, where: str = "value") -> Any:
    """Convert ``value`` to plain JSON types: IntFlag → int, other Enum → name, datetime → ISO 8601,
    dataclass → dict, tuple → list. Raises ValueError for NaN/inf and TypeError for anything else."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, IntFlag):
        return int(value)
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} cannot be recorded (not finite)")
        return float(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item(), where)
    if isinstance(value, datetime):
        return value.isoformat()
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, type):
        return _jsonable(to_dict(), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _jsonable(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be str, not {type(key).__name__}")
            out[key] = _jsonable(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} cannot be recorded")


_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return (_ENCODER.encode(obj) + "\n").encode("utf-8")


def _enum_name(enum_cls: type[Enum], value: Any) -> str | int:
    if isinstance(value, Enum):
        return value.name
    try:
        return enum_cls(int(value)).name
    except ValueError:
        return int(value)


def identity_to_dict(identity: IdentityReport) -> dict[str, Any]:
    """The device identity as a JSON-friendly dict (``waveforms`` as an int bit field)."""
    return _jsonable(identity)


def _now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------- writer


class RecordWriter:
    """Append-only writer of one session record. A context manager; thread-safe (one lock per writer).

    ``RecordWriter(path, prescription=..., identity=..., labels=..., started_at=None)`` creates ``path``
    (``FileExistsError`` if it exists: a record is never overwritten) and writes and fsyncs the header at
    once. ``prescription`` and ``identity`` may be dicts or dataclasses (converted with enums by name, bit
    fields as ints). ``started_at`` defaults to now (UTC).

    After :meth:`summary` or :meth:`close`, further writes raise :class:`RecordClosedError`. ``clock``
    (monotonic seconds) paces fsync and ``now`` gives wall-clock timestamps; both are injectable for tests.
    Data that JSON cannot carry faithfully raises TypeError (unknown type) or ValueError (NaN/inf) and
    writes nothing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        prescription: Mapping[str, Any] | Any,
        identity: Mapping[str, Any] | Any,
        labels: Mapping[str, str] | None = None,
        started_at: datetime | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _now,
    ) -> None:
        label_dict = dict(labels or {})
        for key, value in label_dict.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"labels must map str to str; got {key!r}: {value!r}")
        self.path = Path(path)
        self.started_at = started_at if started_at is not None else now()
        header = {
            "kind": "header",
            "schema": SCHEMA_VERSION,
            "driver": f"iontodrive {__version__}",
            "started_at": self.started_at.isoformat(),
            "prescription": _jsonable(prescription, "prescription"),
            "identity": _jsonable(identity, "identity"),
            "labels": label_dict,
        }
        data = _dumps(header)
        self._setup(open(self.path, "xb"), clock, now, seen_events=set())  # noqa: SIM115 (closed by close())
        with self._lock:
            self._write_locked(data, force_sync=True)

    def _setup(
        self,
        handle: Any,
        clock: Callable[[], float],
        now: Callable[[], datetime],
        seen_events: set[tuple[int, int, str | int, int]],
    ) -> None:
        self._file = handle
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._last_sync = -math.inf
        self._closed = False
        self._finished = False
        self._seen_events = seen_events
        self.lines_written = 0

    @classmethod
    def reopen(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _now,
    ) -> RecordWriter:
        """Open an existing record to append to it (e.g. ``recovery`` lines and a summary on reconnection).

        The record is loaded first (RecordFormatError if malformed). A partial last line left by a killed
        writer is cut off and replaced by a ``repair`` note giving its byte count and text, so the file stays
        valid. Events already in the record are remembered so that :meth:`event` skips duplicates.
        """
        record = SessionRecord.load(path)
        writer = cls.__new__(cls)
        writer.path = Path(path)
        writer.started_at = record.started_at
        seen = {_event_key(e) for e in record.events}
        handle = open(writer.path, "r+b")  # noqa: SIM115 (closed by close())
        try:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            dropped = b""
            if record.valid_bytes < size:
                handle.seek(record.valid_bytes)
                dropped = handle.read()
                handle.truncate(record.valid_bytes)
                handle.seek(record.valid_bytes)
        except BaseException:
            handle.close()
            raise
        writer._setup(handle, clock, now, seen)
        if dropped:
            log.warning("record %s: dropped a partial last line of %d bytes", writer.path, len(dropped))
            writer.note(
                "repair",
                dropped_bytes=len(dropped),
                dropped_text=dropped[:_MAX_REPAIR_TEXT].decode("utf-8", errors="replace"),
            )
        with writer._lock:
            writer._sync_locked()
        return writer

    # -------------------------------------------------------------------------------- writing lines

    def _write_locked(self, data: bytes, *, force_sync: bool = False) -> None:
        if self._closed or self._finished:
            raise RecordClosedError(f"record {self.path} is closed; nothing more can be written")
        self._file.write(data)
        self._file.flush()
        self.lines_written += 1
        if force_sync or self._clock() - self._last_sync >= FSYNC_INTERVAL_S:
            self._sync_locked()

    def _sync_locked(self) -> None:
        os.fsync(self._file.fileno())
        self._last_sync = self._clock()

    def _host_time(self) -> str:
        return self._now().isoformat(timespec="milliseconds")

    def event(self, e: Event, *, recovered: bool = False) -> bool:
        """Record one device event; returns False (and writes nothing) if this event is already recorded.

        Duplicates are recognised by (event_no, device_time_ms, code, value), so a replayed copy of an event
        seen live is skipped, while events numbered again from 1 after a device reset are kept.
        ``recovered`` marks events fetched on a later connection.
        """
        line = {
            "kind": "event",
            "event_no": int(e.event_no),
            "device_time_ms": int(e.device_time_ms),
            "code": _enum_name(EventCode, e.code),
            "state": _enum_name(DeviceState, e.state),
            "value": int(e.value),
            "replayed": bool(e.replayed),
            "recovered": bool(recovered),
        }
        key = _event_key(line)
        with self._lock:
            if key in self._seen_events:
                return False
            line["host_time"] = self._host_time()
            self._write_locked(_dumps(line))
            self._seen_events.add(key)
        return True

    def telemetry(self, t: Telemetry) -> None:
        """Record one telemetry sample."""
        # Formatted directly (every value is an int or an enum name, so nothing needs escaping): this line
        # may be written hundreds of times a second. Same keys and JSON as the dict form.
        state = _ENCODER.encode(_enum_name(DeviceState, t.state))
        polarity = _ENCODER.encode(_enum_name(Polarity, t.polarity))
        data = (
            f'{{"kind":"telemetry","sample_no":{int(t.sample_no)},"device_time_ms":{int(t.device_time_ms)},'
            f'"state":{state},"flags":{int(t.flags)},"polarity":{polarity},'
            f'"setpoint_ua":{int(t.setpoint_ua)},"measured_ua":{int(t.measured_ua)},'
            f'"voltage_mv":{int(t.voltage_mv)},"impedance_ohm":{int(t.impedance_ohm)},'
            f'"charge_uas":{int(t.charge_uas)}}}\n'
        ).encode("ascii")
        with self._lock:
            self._write_locked(data)

    def note(self, kind: str, **data: Any) -> None:
        """Record a free-form line of ``kind`` (a lower-case identifier, not header/event/telemetry/summary).

        ``recovery`` notes are loaded into :attr:`SessionRecord.recoveries`, all others into
        :attr:`SessionRecord.notes`. A ``host_time`` key is added unless given.
        """
        if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind) or kind in RESERVED_KINDS:
            raise ValueError(
                f"note kind must be a lower-case identifier other than {sorted(RESERVED_KINDS)}; got {kind!r}"
            )
        payload = _jsonable(data, kind)
        with self._lock:
            line = {"kind": kind, "host_time": self._host_time(), **payload}
            self._write_locked(_dumps(line))

    def recovery(self, **data: Any) -> None:
        """Shorthand for ``note("recovery", **data)``."""
        self.note("recovery", **data)

    def summary(
        self, *, delivered_uas: int, end_reason: str, ended_at: datetime | None = None, **extra: Any
    ) -> None:
        """Write the summary line, fsync, and close the writer for further lines.

        ``delivered_uas`` is the delivered charge as reported by the device (µA·s, int ≥ 0); ``end_reason``
        a short string (for example ``"dose_complete"``, ``"stopped"``, ``"link_lost"``).
        """
        if isinstance(delivered_uas, bool) or not isinstance(delivered_uas, int) or delivered_uas < 0:
            raise ValueError(f"delivered_uas must be an int >= 0, got {delivered_uas!r}")
        if not isinstance(end_reason, str):
            raise TypeError(f"end_reason must be str, got {type(end_reason).__name__}")
        extras = _jsonable(extra, "summary")
        for reserved in ("kind",):
            if reserved in extras:
                raise ValueError(f"summary extra key {reserved!r} is reserved")
        with self._lock:
            line = {
                "kind": "summary",
                "delivered_uas": delivered_uas,
                "end_reason": end_reason,
                "ended_at": (ended_at if ended_at is not None else self._now()).isoformat(),
                **extras,
            }
            self._write_locked(_dumps(line), force_sync=True)
            self._finished = True

    @property
    def finished(self) -> bool:
        """True once :meth:`summary` was written or :meth:`close` ran: further writes would raise."""
        return self._finished or self._closed

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (the summary alone ends writing but leaves the file open)."""
        return self._closed

    def close(self) -> None:
        """Fsync and close the file. Idempotent. Does not write a summary (a record without one reads as
        incomplete, which is the truth if the session's end is unknown)."""
        with self._lock:
            if self._closed:
                return
            try:
                self._sync_locked()
            finally:
                self._closed = True
                self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _event_key(line: Mapping[str, Any]) -> tuple[int, int, str | int, int]:
    return (line["event_no"], line["device_time_ms"], line["code"], line["value"])


# ---------------------------------------------------------------------------------------------- reader


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _parse_int(text: str) -> int:
    if len(text) > 25:
        raise ValueError(f"integer {text[:25]}... is too large")
    value = int(text)
    if abs(value) >= _INT_BOUND:
        raise ValueError(f"integer {text} is too large")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


_DECODER = json.JSONDecoder(
    parse_float=_parse_float,
    parse_int=_parse_int,
    parse_constant=_reject_constant,
    object_pairs_hook=_no_duplicates,
)


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


def _check_event(line: Mapping[str, Any]) -> None:
    for key in ("event_no", "device_time_ms"):
        _require(line, key, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    _require(line, "value", _is_int, "an integer")
    for key in ("code", "state"):
        _require(line, key, _is_name, "a name or integer")
    for key in ("replayed", "recovered"):
        if key in line and not isinstance(line[key], bool):
            raise ValueError(f"{key!r} must be true or false")


def _check_telemetry(line: Mapping[str, Any]) -> None:
    for key in TELEMETRY_INT_FIELDS:
        _require(line, key, _is_int, "an integer")
    _require(line, "state", _is_name, "a name or integer")
    if "polarity" in line and not _is_name(line["polarity"]):
        raise ValueError("'polarity' must be a name or integer")


def _check_summary(line: Mapping[str, Any]) -> None:
    _require(line, "delivered_uas", lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    _require(line, "end_reason", lambda v: isinstance(v, str), "a string")
    _parse_time(_require(line, "ended_at", lambda v: isinstance(v, str), "an ISO 8601 time string"))


def _check_header(line: Mapping[str, Any]) -> None:
    schema = _require(line, "schema", _is_int, "an integer")
    if schema != SCHEMA_VERSION:
        raise ValueError(f"schema {schema} is not supported (this driver reads schema {SCHEMA_VERSION})")
    _parse_time(_require(line, "started_at", lambda v: isinstance(v, str), "an ISO 8601 time string"))
    _require(line, "prescription", lambda v: isinstance(v, dict), "an object")
    _require(line, "identity", lambda v: isinstance(v, dict), "an object")
    labels = _require(line, "labels", lambda v: isinstance(v, dict), "an object")
    if not all(isinstance(v, str) for v in labels.values()):
        raise ValueError("'labels' values must be strings")


@dataclass
class SessionRecord:
    """A session record read back from disk (see the module docstring for the format).

    ``summary`` is None if the host died before writing one (``complete`` is then False).
    ``delivered_uas`` is the summary's, else the last telemetry sample's ``charge_uas``, else None.
    ``last_event_no`` is the highest event number recorded, 0 if none. ``valid_bytes`` is the length of the
    file's committed part (everything but a partial last line).
    """

    path: Path
    header: dict[str, Any]
    prescription: dict[str, Any]
    identity: dict[str, Any]
    labels: dict[str, str]
    started_at: datetime
    events: list[dict[str, Any]] = field(default_factory=list)
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
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

    @property
    def last_event_no(self) -> int:
        """Highest event number in the record, 0 if there are no events."""
        return max((int(e["event_no"]) for e in self.events), default=0)

    def telemetry_arrays(self) -> dict[str, np.ndarray]:
        """Telemetry as columns: int64 arrays for every integer field, ``state`` as DeviceState values
        (-1 for an unknown name), ``t_s`` as float seconds of device time. Empty arrays if no telemetry."""
        columns: dict[str, np.ndarray] = {
            key: np.fromiter((row[key] for row in self.telemetry), dtype=np.int64, count=len(self.telemetry))
            for key in TELEMETRY_INT_FIELDS
        }
        columns["state"] = np.fromiter(
            (_state_value(row["state"]) for row in self.telemetry), dtype=np.int64, count=len(self.telemetry)
        )
        columns["t_s"] = columns["device_time_ms"].astype(np.float64) / 1000.0
        return columns

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SessionRecord:
        """Read and validate a record. Raises RecordFormatError (with the line number) for malformed content;
        a partial last line (no newline) is ignored and reported by ``truncated_last_line``. OSError if the
        file cannot be read."""
        path = Path(path)
        raw = path.read_bytes()
        end = raw.rfind(b"\n") + 1  # committed part: up to and including the last newline
        truncated = end < len(raw)
        if end == 0:
            problem = "empty file" if not raw else "no complete header line (writer stopped before it)"
            raise RecordFormatError(path, 1, problem)
        lines = raw[:end].split(b"\n")[:-1]
        record: SessionRecord | None = None
        for index, blob in enumerate(lines):
            line_no = index + 1
            try:
                text = blob.decode("utf-8")
                obj = _DECODER.decode(text)
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise RecordFormatError(path, line_no, f"not valid JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise RecordFormatError(path, line_no, f"expected a JSON object, got {type(obj).__name__}")
            kind = obj.get("kind")
            if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
                raise RecordFormatError(path, line_no, f"missing or invalid 'kind': {kind!r:.60}")
            try:
                if record is None:
                    if kind != "header":
                        raise ValueError(f"first line must be the header, found kind {kind!r}")
                    _check_header(obj)
                    record = cls(
                        path=path,
                        header=obj,
                        prescription=obj["prescription"],
                        identity=obj["identity"],
                        labels=obj["labels"],
                        started_at=_parse_time(obj["started_at"]),
                    )
                    continue
                if kind == "header":
                    raise ValueError("a second header")
                if kind == "event":
                    _check_event(obj)
                    record.events.append(obj)
                elif kind == "telemetry":
                    _check_telemetry(obj)
                    record.telemetry.append(obj)
                elif kind == "summary":
                    _check_summary(obj)
                    record.summary = obj
                elif kind == "recovery":
                    record.recoveries.append(obj)
                else:
                    record.notes.append(obj)
            except ValueError as exc:
                raise RecordFormatError(path, line_no, str(exc)) from None
        assert record is not None  # at least one line, and the first is a header or we raised
        record.truncated_last_line = truncated
        record.valid_bytes = end
        record.line_count = len(lines)
        return record


def _state_value(name: str | int) -> int:
    if isinstance(name, int):
        return name
    try:
        return int(DeviceState[name])
    except KeyError:
        return -1
