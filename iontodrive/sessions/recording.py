"""A session's record lifecycle, the same for every source.

:class:`SessionRecorder` owns the :class:`~iontodrive.record.RecordWriter` of one session. It never lets a
disk error reach the caller or the safety path: the first failure of any write (ENOSPC, EIO, the directory
removed...) is reported once through ``on_error(reason)`` - the engine turns it into an alarm shown by
progress callbacks, event listeners and the CLI within a second - and every later write is dropped. The
writer's own background failure (``RecordWriter(on_error=...)``) reaches the same place.

The summary is the source's own account (:class:`~iontodrive.sessions.types.SessionAccount`): the device's
delivered charge and end state, read back from it at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from iontodrive.protocol import Event, Telemetry
from iontodrive.record import RecordWriter, identity_to_dict

logger = logging.getLogger(__name__)


def start_to_dict(start: Any) -> dict[str, Any]:
    """The ``Start`` a session sent (or would send), enums by name: the ``started`` note's ``start``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(start):
        value = getattr(start, f.name)
        out[f.name] = value.name if isinstance(value, Enum) else value
    return out


class SessionRecorder:
    """Writes one session's record; see the module docstring. Thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        prescription: Any,
        identity: Any,
        labels: dict[str, str],
        on_error: Callable[[str], None],
    ) -> None:
        self.path = path
        self._on_error = on_error
        self._lock = threading.Lock()
        self.error: str | None = None
        self.dropped = 0
        self._writer = RecordWriter(
            path,
            prescription=prescription,
            identity=identity_to_dict(identity),
            labels=labels,
            on_error=self._writer_failed,
        )

    @property
    def complete(self) -> bool:
        """True while nothing has failed (the record on disk holds everything written so far)."""
        return self.error is None

    @property
    def finished(self) -> bool:
        return self._writer.finished

    def _writer_failed(self, exc: BaseException) -> None:
        self._failed(str(exc))

    def _failed(self, reason: str) -> None:
        with self._lock:
            first = self.error is None
            if first:
                self.error = reason
        if first:
            logger.error("session record %s cannot be written: %s", self.path, reason)
            self._on_error(reason)

    def _do(self, action: Callable[[RecordWriter], object]) -> None:
        if self.error is not None:
            self.dropped += 1
            return
        writer = self._writer
        if writer.finished:
            return
        try:
            action(writer)
        except Exception as exc:  # a disk error never reaches the session (S20: it is an alarm instead)
            self._failed(f"{type(exc).__name__}: {exc}")

    def event(self, event: Event, *, recovered: bool = False) -> None:
        self._do(lambda w: w.event(event, recovered=recovered))

    def telemetry(self, sample: Telemetry) -> None:
        self._do(lambda w: w.telemetry(sample))

    def note(self, kind: str, **data: Any) -> None:
        self._do(lambda w: w.note(kind, **data))

    def summary(self, *, delivered_uas: int, end_reason: str, **extra: Any) -> None:
        self._do(lambda w: w.summary(delivered_uas=delivered_uas, end_reason=end_reason, **extra))

    def flush(self, timeout_s: float) -> bool:
        """Wait (bounded) until everything written so far is on disk (fsync'd). False if it is not."""
        if self.error is not None:
            return False
        try:
            return self._writer.flush(timeout_s)
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return False

    def close(self) -> None:
        """Flush and close (bounded). A record that could not be completed becomes :attr:`error`."""
        try:
            self._writer.close()
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
