"""Stream decoder: bytes in, frames and decode errors out.

Sans-I/O in the manner of h11: the caller owns the transport and feeds whatever bytes arrived;
:meth:`Decoder.feed` returns what they completed. It never raises on wire data, keeps at most one
maximum-size frame of pending bytes, and resynchronises at the next 0x00 delimiter after any error.
"""

from __future__ import annotations

from .codec import Frame, decode_body
from .constants import DELIMITER, MAX_FRAME_BYTES
from .errors import DecodeError, DecodeErrorKind

_MAX_PENDING = MAX_FRAME_BYTES - 1  # an encoded frame without its delimiter


class Decoder:
    """Incremental frame decoder. Not thread-safe: one reader feeds it.

    Empty frames (consecutive delimiters) are ignored, so a sender may transmit a lone 0x00 to flush a
    receiver's partial frame, as the driver does when it opens a port.
    """

    __slots__ = ("_discarding", "_pending", "frames_bad", "frames_ok")

    def __init__(self) -> None:
        self._pending = b""
        self._discarding = False  # inside an oversize run: drop everything up to the next delimiter
        self.frames_ok = 0
        self.frames_bad = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes held while waiting for a delimiter (never more than ``MAX_FRAME_BYTES - 1``)."""
        return len(self._pending)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | DecodeError]:
        """Consume ``data`` and return the frames and decode errors it completed, in arrival order."""
        if self._pending:
            data = self._pending + bytes(data)
        elif not isinstance(data, bytes):
            data = bytes(data)
        parts = data.split(DELIMITER)
        tail = parts.pop()
        results: list[Frame | DecodeError] = []
        for part in parts:
            if self._discarding:
                self._discarding = False  # this delimiter ends the oversize run
                continue
            if not part:
                continue
            if len(part) > _MAX_PENDING:
                results.append(DecodeError(DecodeErrorKind.OVERSIZE, f"{len(part)} bytes", part[:32]))
                continue
            results.append(decode_body(part))
        if self._discarding:
            tail = b""
        elif len(tail) > _MAX_PENDING:
            results.append(DecodeError(DecodeErrorKind.OVERSIZE, f">{_MAX_PENDING} bytes", tail[:32]))
            self._discarding = True
            tail = b""
        self._pending = tail
        for item in results:
            if isinstance(item, Frame):
                self.frames_ok += 1
            else:
                self.frames_bad += 1
        return results

    def reset(self) -> None:
        """Drop any partial frame (e.g. after reopening a port)."""
        self._pending = b""
        self._discarding = False
