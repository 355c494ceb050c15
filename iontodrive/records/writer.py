"""The record writer: one thread per record, so that a disk never reaches the session's safety path.

Threads and queue. The session's threads (telemetry and event listeners, the caller of ``note`` and
``summary``) only *queue* lines; one writer thread per record writes them. A call returns at once and
never raises an ``OSError``: a full disk (ENOSPC), an I/O error (EIO) or a removed directory is caught on
the writer thread. The queue is bounded:

* at most ``max_queued_telemetry`` telemetry lines wait (default 50,000: ten seconds at 5 kHz); beyond
  that a new sample is **dropped**, counted in :attr:`RecordWriter.telemetry_overflow`, and the record gets a
  ``telemetry_dropped`` note at that place (``count``, ``first_sample_no``, ``last_sample_no``);
* events, notes and the summary are never dropped for room. Should the writer fall
  :data:`MAX_QUEUED_LINES` lines behind all the same (a stalled disk under an event flood), the record is
  declared failed as below, never left silently short.

Failure. A failed write or fsync, or a record file found removed from its directory (checked after
every batch: writes to a removed file succeed, then vanish), is a failure. The first failure calls
``on_error(RecordWriteError)`` once, from the writer thread (or, for a writer that fell too far behind,
from a short-lived thread of its own: never from the thread that queued the line), and is kept in
:attr:`RecordWriter.error`. The writer then cuts the file back to its last whole line (best effort) and
writes nothing more: later lines are dropped and counted (:attr:`RecordWriter.lines_dropped`).
:meth:`RecordWriter.close` raises the error. A record that stops short reads back with ``record.truncated``
saying where (:mod:`iontodrive.records.reader`).

Durability (``durable=True``, the default). The header is written and fsync'd in the constructor, before
a session sends anything; the file's directory is fsync'd when the file is created. Every batch that
holds an event, a note or the summary is fsync'd as soon as it is written (group commit: the events
that arrive during one fsync share the next). Telemetry lines are not fsync'd one by one: the writer
collects them for up to :data:`BATCH_LINGER_S` (or :data:`BATCH_LINES` lines) and writes each batch with
one ``write``; they are fsync'd with the next event, note or summary, and otherwise at most
:data:`FSYNC_INTERVAL_S` after they were written. A power loss can therefore lose at most about one
second of telemetry, and no event, note or summary that was written more than one fsync ago. A host
*process* that dies loses only what was still queued (lines are in the kernel once written).
``durable=False`` writes the same lines without any fsync (for benchmarks and throw-away records).

Every value is converted with :mod:`iontodrive.records.encoding`: enums by name, whatever the source.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from iontodrive import __version__
from iontodrive.errors import RecordClosedError, RecordDataError, RecordWriteError
from iontodrive.protocol import DeviceState, Event, EventCode, Polarity, Telemetry
from iontodrive.records.encoding import KIND_RE, dumps_line, encode_str, enum_name, to_json_value
from iontodrive.records.paths import NOFOLLOW, create_record_file
from iontodrive.records.reader import SessionRecord

__all__ = [
    "BATCH_LINES",
    "BATCH_LINGER_S",
    "CLOSE_TIMEOUT_S",
    "FSYNC_INTERVAL_S",
    "MAX_QUEUED_LINES",
    "RESERVED_KINDS",
    "SCHEMA_VERSION",
    "RecordWriter",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
FSYNC_INTERVAL_S: Final = 1.0  # telemetry written but not yet fsync'd is fsync'd within this time
BATCH_LINGER_S: Final = 0.05  # telemetry waits at most this long to be written with others
BATCH_LINES: Final = 512  # ... or until this many lines wait
DEFAULT_MAX_QUEUED_TELEMETRY: Final = 50_000
MAX_QUEUED_LINES: Final = 200_000  # all lines queued; beyond, the record is declared failed
CLOSE_TIMEOUT_S: Final = 10.0
RESERVED_KINDS: Final = frozenset({"header", "event", "telemetry", "summary"})
_MAX_REPAIR_TEXT: Final = 4096

ErrorCallback = Callable[[RecordWriteError], object]


def _now() -> datetime:
    return datetime.now(UTC)


def _is_kind(kind: object) -> bool:
    return isinstance(kind, str) and bool(KIND_RE.fullmatch(kind)) and kind not in RESERVED_KINDS


@dataclass
class _DropMarker:
    """Telemetry dropped for room at this place in the queue; becomes a ``telemetry_dropped`` note."""

    host_time: str
    count: int
    first_sample_no: int
    last_sample_no: int

    def line(self) -> bytes:
        return dumps_line(
            {
                "kind": "telemetry_dropped",
                "host_time": self.host_time,
                "count": self.count,
                "first_sample_no": self.first_sample_no,
                "last_sample_no": self.last_sample_no,
                "reason": "record writer queue full",
            }
        )


# A queued line: telemetry (formatted on the writer thread), bytes of a durable line, or a drop marker.
_Item = Telemetry | bytes | _DropMarker


def telemetry_line(t: Telemetry) -> bytes:
    """One telemetry line. Formatted directly (every value is an int or an enum name, nothing to escape):
    it may be written thousands of times a second. Same keys and JSON as the dict form."""
    state = enum_name(DeviceState, t.state)
    polarity = enum_name(Polarity, t.polarity)
    state_text = encode_str(state) if isinstance(state, str) else str(int(t.state))
    polarity_text = encode_str(polarity) if isinstance(polarity, str) else str(int(t.polarity))
    return (
        f'{{"kind":"telemetry","sample_no":{int(t.sample_no)},"device_time_ms":{int(t.device_time_ms)},'
        f'"state":{state_text},"flags":{int(t.flags)},"polarity":{polarity_text},'
        f'"setpoint_ua":{int(t.setpoint_ua)},"measured_ua":{int(t.measured_ua)},'
        f'"voltage_mv":{int(t.voltage_mv)},"impedance_ohm":{int(t.impedance_ohm)},'
        f'"charge_uas":{int(t.charge_uas)}}}\n'
    ).encode("ascii")


def _event_key(line: Mapping[str, Any]) -> tuple[int, int, object, int]:
    return (int(line["event_no"]), int(line["device_time_ms"]), line["code"], int(line["value"]))


class RecordWriter:
    """Append-only writer of one session record, with a writer thread of its own (module docstring).

    ``RecordWriter(path, prescription=..., identity=..., labels=..., started_at=None, on_error=None)``
    creates ``path`` exclusively (mode 0600, ``O_EXCL | O_NOFOLLOW``; see :mod:`iontodrive.records.paths`),
    writes and fsyncs the header in the calling thread, then starts the writer thread. Raises, before
    anything is written: :class:`RecordPathError` (naming ``option``) if the path is refused or exists,
    :class:`RecordWriteError` if the header cannot be written (the empty file is then removed),
    :class:`RecordDataError` for data JSON cannot carry (``prescription`` and ``identity`` may be dicts or
    dataclasses; ``labels`` map str to str).

    Thread-safe. :meth:`telemetry` and :meth:`event` never raise for the disk's sake, nor after the record
    was finished (they return False: dropped, counted in :attr:`late_lines`); :meth:`note` and
    :meth:`summary` raise :class:`RecordClosedError` after the summary or :meth:`close`. ``now`` gives the
    wall-clock timestamps and ``clock`` (monotonic seconds) paces batching and fsync; both injectable.
    """

    # ------------------------------------------------------------------------------------ creation

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        prescription: Mapping[str, Any] | object,
        identity: Mapping[str, Any] | object,
        labels: Mapping[str, str] | None = None,
        started_at: datetime | None = None,
        on_error: ErrorCallback | None = None,
        durable: bool = True,
        max_queued_telemetry: int = DEFAULT_MAX_QUEUED_TELEMETRY,
        option: str = "record_path",
        now: Callable[[], datetime] = _now,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        label_dict = dict(labels or {})
        for key, value in label_dict.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise RecordDataError(f"labels must map str to str; got {key!r}: {value!r}")
        self.path = Path(path)
        self.started_at = started_at if started_at is not None else now()
        header = dumps_line(
            {
                "kind": "header",
                "schema": SCHEMA_VERSION,
                "driver": f"iontodrive {__version__}",
                "started_at": self.started_at.isoformat(),
                "prescription": to_json_value(prescription, "prescription"),
                "identity": to_json_value(identity, "identity"),
                "labels": label_dict,
            }
        )
        fd = create_record_file(self.path, option=option)
        try:
            _write_all(fd, header)
            if durable:
                os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            try:
                os.unlink(self.path)
            except OSError:
                log.warning("record %s: could not remove the file after its header failed", self.path)
            raise RecordWriteError.from_os_error(self.path, exc) from exc
        self._setup(
            fd,
            offset=len(header),
            seen_events=set(),
            on_error=on_error,
            durable=durable,
            max_queued_telemetry=max_queued_telemetry,
            now=now,
            clock=clock,
            lines_written=1,
        )

    @classmethod
    def reopen(
        cls,
        path: str | os.PathLike[str],
        *,
        on_error: ErrorCallback | None = None,
        durable: bool = True,
        max_queued_telemetry: int = DEFAULT_MAX_QUEUED_TELEMETRY,
        now: Callable[[], datetime] = _now,
        clock: Callable[[], float] = time.monotonic,
    ) -> RecordWriter:
        """Open an existing record to append to it (``recovery`` notes and a summary on reconnection).

        The record is read first (:meth:`SessionRecord.load`: its torn lines are reported, not fatal). A
        partial last line left by a killed writer is cut off and replaced by a ``repair`` note giving its
        byte count and text. Events already in the record are remembered, so :meth:`event` skips them. A
        record of ours that others could read (written by an older driver) is made private (0600).
        Raises what :meth:`SessionRecord.load` raises, and :class:`RecordWriteError` if the file cannot be
        opened or cut (it must be a regular file: a link is refused).
        """
        record = SessionRecord.load(path)
        target = Path(path)
        try:
            fd = os.open(target, os.O_RDWR | NOFOLLOW)
        except OSError as exc:
            raise RecordWriteError.from_os_error(target, exc) from exc
        try:
            info = os.fstat(fd)
            size = info.st_size
            ours = hasattr(os, "geteuid") and info.st_uid == os.geteuid()
            if ours and info.st_mode & 0o077:
                log.warning("record %s was readable by others: made private (0600, S21)", target)
                os.fchmod(fd, 0o600)
            dropped = b""
            if record.valid_bytes < size:
                os.lseek(fd, record.valid_bytes, os.SEEK_SET)
                dropped = os.read(fd, size - record.valid_bytes)
                os.ftruncate(fd, record.valid_bytes)
            os.lseek(fd, record.valid_bytes, os.SEEK_SET)
        except OSError as exc:
            os.close(fd)
            raise RecordWriteError.from_os_error(target, exc) from exc
        writer = cls.__new__(cls)
        writer.path = target
        writer.started_at = record.started_at if record.started_at is not None else now()
        writer._setup(
            fd,
            offset=record.valid_bytes,
            seen_events={_event_key(e) for e in record.events},
            on_error=on_error,
            durable=durable,
            max_queued_telemetry=max_queued_telemetry,
            now=now,
            clock=clock,
        )
        if dropped:
            log.warning("record %s: dropped a partial last line of %d bytes", target, len(dropped))
            writer.note(
                "repair",
                dropped_bytes=len(dropped),
                dropped_text=dropped[:_MAX_REPAIR_TEXT].decode("utf-8", errors="replace"),
            )
        return writer

    def _setup(
        self,
        fd: int,
        *,
        offset: int,
        seen_events: set[tuple[int, int, object, int]],
        on_error: ErrorCallback | None,
        durable: bool,
        max_queued_telemetry: int,
        now: Callable[[], datetime],
        clock: Callable[[], float],
        lines_written: int = 0,
    ) -> None:
        if isinstance(max_queued_telemetry, bool) or not isinstance(max_queued_telemetry, int):
            raise RecordDataError(f"max_queued_telemetry must be an int, got {max_queued_telemetry!r}")
        self._fd = fd
        self._offset = offset  # bytes of whole lines in the file (where a failed write is cut back to)
        self._seen_events = seen_events
        self._on_error = on_error
        self.durable = durable
        self.max_queued_telemetry = max(1, max_queued_telemetry)
        self._now = now
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer waits on it
        self._progress = threading.Condition(self._lock)  # flush() and close() wait on it
        self._queue: deque[_Item] = deque()
        self._queued_telemetry = 0
        self._queued_since: float | None = None  # when the oldest line in the queue was queued
        self._in_flight_since: float | None = None  # ... of the batch being written
        self._has_durable = False  # a durable line waits in the queue
        self._queued_no = 0  # lines queued so far (sequence numbers)
        self._written_no = 0  # lines up to this number are written
        self._synced_no = 0  # ... and fsync'd
        self._sync_wanted = False
        self._write_wanted = False
        self._unsynced_since: float | None = None
        self._finished = False
        self._closing = False
        self._closed = False
        self._error: RecordWriteError | None = None
        self._error_reported = False
        self.lines_written = lines_written
        self.lines_dropped = 0
        self.telemetry_overflow = 0
        self.late_lines = 0
        self._thread = threading.Thread(
            target=self._run, name=f"iontodrive-record-{self.path.name[:40]}", daemon=True
        )
        self._thread.start()
        _OPEN_WRITERS.add(self)

    # ------------------------------------------------------------------------------ public state

    @property
    def error(self) -> RecordWriteError | None:
        """The first failure, or None while every line has been written."""
        return self._error

    @property
    def finished(self) -> bool:
        """True once :meth:`summary` was queued or :meth:`close` ran: notes and summaries would raise."""
        return self._finished or self._closing

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    @property
    def backlog_s(self) -> float:
        """How long the oldest line not yet written has been waiting (s); 0.0 when the writer is caught
        up. A value that keeps growing means a stalled disk: a caller may raise its own alarm on it."""
        with self._lock:
            since = [t for t in (self._in_flight_since, self._queued_since) if t is not None]
        return max(0.0, self._clock() - min(since)) if since else 0.0

    # ------------------------------------------------------------------------------ queueing lines

    def _host_time(self) -> str:
        return self._now().isoformat(timespec="milliseconds")

    def _put_locked(self, item: _Item, *, durable: bool) -> bool:
        """Queue ``item`` (lock held). False if it was dropped (failed writer)."""
        if self._error is not None:
            self.lines_dropped += 1
            return False
        if len(self._queue) >= MAX_QUEUED_LINES:
            self.lines_dropped += 1
            self._fail_locked(
                RecordWriteError(
                    self.path,
                    f"the writer fell {len(self._queue)} lines behind (the disk is stalled or too slow)",
                    lines_lost=len(self._queue) + 1,
                ),
                from_writer=False,
            )
            return False
        if not self._queue and self._queued_since is None:
            self._queued_since = self._clock()
        self._queue.append(item)
        self._queued_no += 1
        if durable:
            self._has_durable = True
            self._wake.notify()
        elif len(self._queue) == 1 or len(self._queue) % BATCH_LINES == 0:
            self._wake.notify()
        return True

    def telemetry(self, t: Telemetry) -> bool:
        """Queue one telemetry sample; True if queued. Never blocks on the disk and never raises for it:
        False when dropped for room (counted, noted in the record), after a failure, or after the end."""
        with self._lock:
            if self._finished or self._closing:
                self.late_lines += 1
                return False
            if self._error is None and self._queued_telemetry >= self.max_queued_telemetry:
                self.telemetry_overflow += 1
                last = self._queue[-1] if self._queue else None
                if isinstance(last, _DropMarker):
                    last.count += 1
                    last.last_sample_no = int(t.sample_no)
                else:
                    marker = _DropMarker(self._host_time(), 1, int(t.sample_no), int(t.sample_no))
                    self._put_locked(marker, durable=True)  # a note: fsync'd like the others
                return False
            if self._put_locked(t, durable=False):
                self._queued_telemetry += 1
                return True
            return False

    def event(self, e: Event, *, recovered: bool = False) -> bool:
        """Queue one device event; True if queued. False (nothing written) when this event is already in
        the record, after a failure, or after the end; never raises for the disk's sake.

        Duplicates are recognised by (event_no, device_time_ms, code, value): a replayed copy of an event
        seen live is skipped; events numbered again from 1 after a device reset are kept. ``recovered``
        marks events fetched on a later connection.
        """
        line: dict[str, Any] = {
            "kind": "event",
            "event_no": int(e.event_no),
            "device_time_ms": int(e.device_time_ms),
            "code": enum_name(EventCode, e.code),
            "state": enum_name(DeviceState, e.state),
            "value": int(e.value),
            "replayed": bool(e.replayed),
            "recovered": bool(recovered),
        }
        key = _event_key(line)
        line["host_time"] = self._host_time()
        data = dumps_line(line)  # encoded outside the lock: the telemetry thread never waits for it
        with self._lock:
            if self._finished or self._closing:
                self.late_lines += 1
                return False
            if key in self._seen_events:
                return False
            if not self._put_locked(data, durable=True):
                return False
            self._seen_events.add(key)
        return True

    def note(self, kind: str, **data: Any) -> None:
        """Queue a free-form line of ``kind`` (a lower-case identifier other than header, event, telemetry
        and summary). ``recovery`` notes are loaded into ``SessionRecord.recoveries``, all others into
        ``SessionRecord.notes``. A ``host_time`` key is added unless given.

        Raises :class:`RecordDataError` for a bad kind or data JSON cannot carry (nothing written), and
        :class:`RecordClosedError` after the summary or :meth:`close`; a disk failure is never raised here
        (see :attr:`error`).
        """
        if not _is_kind(kind):
            raise RecordDataError(
                f"note kind must be a lower-case identifier other than {sorted(RESERVED_KINDS)}; got {kind!r}"
            )
        payload = to_json_value(data, kind)
        line = dumps_line({"kind": kind, "host_time": self._host_time(), **payload})
        with self._lock:
            if self._finished or self._closing:
                raise RecordClosedError(f"record {self.path} is finished; nothing more can be written")
            self._put_locked(line, durable=True)

    def recovery(self, **data: Any) -> None:
        """Shorthand for ``note("recovery", **data)``."""
        self.note("recovery", **data)

    def summary(
        self, *, delivered_uas: int, end_reason: str, ended_at: datetime | None = None, **extra: Any
    ) -> None:
        """Queue the summary line (fsync'd) and finish the record: nothing more can be written.

        ``delivered_uas`` is the delivered charge as the device reports it (µA·s, int ≥ 0); ``end_reason``
        a short string (``"completed"``, ``"stopped"``, ``"link_lost"`` ...). Raises
        :class:`RecordDataError` for bad values and :class:`RecordClosedError` if already finished. Call
        :meth:`close` next: it waits for the line to be on disk and raises if it could not be written.
        """
        if isinstance(delivered_uas, bool) or not isinstance(delivered_uas, int) or delivered_uas < 0:
            raise RecordDataError(f"delivered_uas must be an int >= 0, got {delivered_uas!r}")
        if not isinstance(end_reason, str):
            raise RecordDataError(f"end_reason must be str, got {type(end_reason).__name__}")
        extras = to_json_value(extra, "summary")
        if "kind" in extras:
            raise RecordDataError("summary extra key 'kind' is reserved")
        line = dumps_line(
            {
                "kind": "summary",
                "delivered_uas": delivered_uas,
                "end_reason": end_reason,
                "ended_at": (ended_at if ended_at is not None else self._now()).isoformat(),
                **extras,
            }
        )
        with self._lock:
            if self._finished or self._closing:
                raise RecordClosedError(f"record {self.path} is finished; nothing more can be written")
            self._put_locked(line, durable=True)
            self._finished = True

    # ------------------------------------------------------------------------------ waiting, closing

    def flush(self, timeout_s: float | None = None, *, sync: bool = True) -> bool:
        """Wait until every line queued before this call is written (and fsync'd, with ``sync`` and a
        durable writer). True when it is; False on timeout or when the writer has failed (see
        :attr:`error`). Never raises for the disk's sake."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            target = self._queued_no
            need_sync = sync and self.durable
            self._write_wanted = True  # write now rather than after the batching delay
            self._sync_wanted = self._sync_wanted or need_sync
            self._wake.notify()
            while self._error is None:
                done = self._synced_no if need_sync else self._written_no
                if done >= target:
                    return True
                if not self._thread.is_alive():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._progress.wait(0.1 if left is None else min(left, 0.1))
            return False

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is queued, fsync, close the file and stop the thread, waiting at most ``timeout_s``.

        Idempotent. Raises :class:`RecordWriteError` when the record could not be completed: the writer
        failed (:attr:`error`), or ``timeout_s`` passed with lines still unwritten (a stalled disk; the
        thread then finishes on its own, and the error says how many lines were lost). Does not write a
        summary: a record without one reads as incomplete, which is the truth if the session's end is
        unknown.
        """
        with self._lock:
            self._closing = True
            self._wake.notify()
        if threading.current_thread() is self._thread:
            return  # close() from on_error: the thread ends after the callback returns
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            with self._lock:
                lost = self._queued_no - self._written_no
                self._fail_locked(
                    RecordWriteError(
                        self.path,
                        f"close timed out after {timeout_s:g} s with {lost} line(s) not written "
                        "(the disk is stalled)",
                        lines_lost=lost,
                    ),
                    from_writer=False,
                )
        else:
            self._closed = True
        error = self._error
        if error is not None:
            raise error

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except RecordWriteError as error:  # do not hide the exception already on its way
            log.error("%s", error)

    # ------------------------------------------------------------------------------ the writer thread

    def _fail_locked(self, error: RecordWriteError, *, from_writer: bool) -> None:
        """Record the first failure (lock held) and arrange its one ``on_error`` call."""
        if self._error is not None:
            return
        self._error = error
        dropped = len(self._queue)
        self.lines_dropped += dropped
        self._queue.clear()
        self._queued_telemetry = 0
        self._queued_since = None
        log.error("%s; the session goes on, but its record stops here", error)
        self._wake.notify()
        self._progress.notify_all()
        if not from_writer:
            threading.Thread(target=self._report_error, name="iontodrive-record-error", daemon=True).start()

    def _report_error(self) -> None:
        with self._lock:
            if self._error_reported or self._error is None:
                return
            self._error_reported = True
            error = self._error
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                log.exception("the record's on_error callback failed")

    def _ready_locked(self) -> bool:
        if self._closing or self._has_durable or self._write_wanted or self._error is not None:
            return True
        if len(self._queue) >= BATCH_LINES:
            return True
        now = self._clock()
        if self._queued_since is not None and now - self._queued_since >= BATCH_LINGER_S:
            return True
        return self._unsynced_since is not None and now - self._unsynced_since >= FSYNC_INTERVAL_S

    def _wait_timeout_locked(self) -> float | None:
        now = self._clock()
        deadlines = []
        if self._queued_since is not None:
            deadlines.append(self._queued_since + BATCH_LINGER_S)
        if self._unsynced_since is not None:
            deadlines.append(self._unsynced_since + FSYNC_INTERVAL_S)
        if not deadlines:
            return None
        return min(max(0.001, min(deadlines) - now), BATCH_LINGER_S)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            try:
                os.close(self._fd)
            except OSError as exc:
                log.warning("record %s: closing the file failed: %s", self.path, exc)
            with self._lock:
                self._progress.notify_all()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._ready_locked():
                    self._wake.wait(self._wait_timeout_locked())
                failed = self._error is not None
                closing = self._closing
                batch: list[_Item] = []
                if not failed:
                    batch = list(self._queue)
                    self._queue.clear()
                    self._queued_telemetry = 0
                    self._in_flight_since = self._queued_since
                    self._queued_since = None
                    force_sync = self._has_durable or self._sync_wanted or closing
                    self._has_durable = False
                    self._sync_wanted = False
                    self._write_wanted = False
                    last_no = self._queued_no
            if failed:
                self._report_error()
                with self._lock:
                    while not self._closing:
                        self._wake.wait()
                return
            self._write_batch(batch, force_sync=force_sync, last_no=last_no)
            if closing:
                with self._lock:
                    done = not self._queue or self._error is not None
                if done:
                    self._report_error()
                    return

    def _write_batch(self, batch: list[_Item], *, force_sync: bool, last_no: int) -> None:
        parts = [
            telemetry_line(item)
            if isinstance(item, Telemetry)
            else item.line()
            if isinstance(item, _DropMarker)
            else item
            for item in batch
        ]
        data = b"".join(parts)
        now = self._clock()
        unsynced = bool(data) or self._unsynced_since is not None
        due = self._unsynced_since is not None and now - self._unsynced_since >= FSYNC_INTERVAL_S
        sync = self.durable and unsynced and (force_sync or due)
        try:
            if data:
                _write_all(self._fd, data)
            if sync:
                os.fsync(self._fd)
            if data and os.fstat(self._fd).st_nlink == 0:
                # Written, but to a file no longer in any directory (record or its directory removed):
                # the lines would vanish on close. Not silently: this is a failure like any other.
                raise FileNotFoundError(errno.ENOENT, "the record file was removed from its directory")
        except OSError as exc:
            self._cut_back()
            with self._lock:
                self._in_flight_since = None
                self.lines_dropped += len(batch)
                self._fail_locked(RecordWriteError.from_os_error(self.path, exc), from_writer=True)
            self._report_error()
            return
        with self._lock:
            self._offset += len(data)
            self.lines_written += len(batch)
            self._written_no = last_no
            self._in_flight_since = None
            if sync or not self.durable or not unsynced:
                self._synced_no = last_no
                self._unsynced_since = None
            elif self._unsynced_since is None:
                self._unsynced_since = now
            self._progress.notify_all()

    def _cut_back(self) -> None:
        """After a failed write: cut the file back to its last whole line, so that it ends cleanly."""
        try:
            os.ftruncate(self._fd, self._offset)
            os.lseek(self._fd, self._offset, os.SEEK_SET)
        except OSError as exc:
            log.warning("record %s: could not cut a partial line off (%s)", self.path, exc)


# Writers not yet closed: at interpreter exit their queued lines are written before the (daemon) writer
# threads are stopped, so a program that forgets close() loses nothing it queued.
_OPEN_WRITERS: weakref.WeakSet[RecordWriter] = weakref.WeakSet()
EXIT_FLUSH_S: Final = 2.0


@atexit.register
def _flush_open_writers() -> None:
    for writer in list(_OPEN_WRITERS):
        if not writer.closed:
            writer.flush(EXIT_FLUSH_S)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a short write is retried; an error raises OSError)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - a regular file does not do this
            raise OSError(0, "write returned 0")
        view = view[written:]
