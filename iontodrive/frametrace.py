"""Frame trace for bench debugging: every frame sent and received, as hex and decoded.

What pyserial's ``spy://`` gives, but decoded. Lines go to the ``iontodrive.frames`` logger at DEBUG
level and, optionally, to a file (one line per frame, flushed as written)::

    12.345678 TX seq=17 GetStatus() | 01 03 02 11 ...
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TextIO

from iontodrive.protocol import DecodeError, Frame

logger = logging.getLogger("iontodrive.frames")


class FrameTrace:
    """Writes one line per frame. Thread-safe. ``path=None`` logs only (when DEBUG is enabled)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._file: TextIO | None = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115
        self._t0 = time.monotonic()

    @property
    def active(self) -> bool:
        return self._file is not None or logger.isEnabledFor(logging.DEBUG)

    def sent(self, seq: int, message: object, frame: bytes) -> None:
        self._emit("TX", f"seq={seq} {message!r}", frame)

    def received(self, item: Frame | DecodeError, raw: bytes = b"") -> None:
        if isinstance(item, Frame):
            self._emit("RX", f"seq={item.seq} {item.message!r}", raw)
        else:
            self._emit("RX!", f"{item.kind.value}: {item.detail}", item.raw or raw)

    def note(self, text: str) -> None:
        self._emit("--", text, b"")

    def _emit(self, direction: str, text: str, raw: bytes) -> None:
        line = f"{time.monotonic() - self._t0:12.6f} {direction} {text}"
        if raw:
            line += f" | {raw.hex(' ')}"
        logger.debug(line)
        if self._file is not None:
            with self._lock:
                if self._file is not None:
                    self._file.write(line + "\n")
                    self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
