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
# The same text whether the run was seen whole or in pieces, so that results do not depend on chunking.
_OVERSIZE_DETAIL = f"more than {_MAX_PENDING} bytes before a delimiter"


def _oversize(run: bytes) -> DecodeError:
    return DecodeError(DecodeErrorKind.OVERSIZE, _OVERSIZE_DETAIL, run[:32])


class Decoder:
    """Incremental frame decoder. Not thread-safe: one reader feeds it.

    Empty frames (consecutive delimiters) are ignored, so a sender may transmit a lone 0x00 to flush a
    receiver's partial frame, as the driver does when it opens a port.
    """

    __slots__ = ("_discarding", "_pending", "foreign_version", "frames_bad", "frames_ok")

    def __init__(self) -> None:
        self._pending = b""
        self._discarding = False  # inside an oversize run: drop everything up to the next delimiter
        self.frames_ok = 0
        self.frames_bad = 0
        # protocol version of the newest frame that failed with WRONG_VERSION (its CRC held), or None: how a
        # host recognises a device of another version that ignores its frames (docs/protocol.md §9)
        self.foreign_version: int | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes held while waiting for a delimiter (never more than ``MAX_FRAME_BYTES - 1``)."""
        return len(self._pending)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | DecodeError]:
        """Consume ``data`` and return the frames and decode errors it completed, in arrival order.

        Never raises on wire data. Each non-empty run of bytes ending in a delimiter yields exactly one
        result; a run longer than ``MAX_FRAME_BYTES - 1`` yields one ``OVERSIZE`` error as soon as it is
        too long, and the rest of it, up to the next delimiter, is skipped.
        """
        if self._pending:
            data = self._pending + bytes(data)
        elif data.__class__ is not bytes:
            data = bytes(data)
        elif not self._discarding and 1 < len(data) <= MAX_FRAME_BYTES and data.find(0) == len(data) - 1:
            # the common case, one whole frame and nothing else: the general path below gives the same
            item = decode_body(data[:-1])
            if item.__class__ is Frame:
                self.frames_ok += 1
            else:
                self._count_bad([item])
            return [item]
        parts = data.split(DELIMITER)
        tail = parts.pop()
        if self._discarding and parts:
            self._discarding = False  # the first delimiter ends the oversize run; drop its remainder
            parts[0] = b""
        results: list[Frame | DecodeError] = [
            decode_body(part) if len(part) <= _MAX_PENDING else _oversize(part) for part in parts if part
        ]
        if self._discarding:
            tail = b""
        elif len(tail) > _MAX_PENDING:
            results.append(_oversize(tail))
            self._discarding = True
            tail = b""
        self._pending = tail
        if results:
            ok = sum([item.__class__ is Frame for item in results])
            self.frames_ok += ok
            if ok < len(results):
                self._count_bad(results)
        return results

    def _count_bad(self, results: list[Frame | DecodeError]) -> None:
        for item in results:
            if isinstance(item, DecodeError):
                self.frames_bad += 1
                if item.kind is DecodeErrorKind.WRONG_VERSION:
                    self.foreign_version = item.version

    def reset(self) -> None:
        """Drop any partial frame (e.g. after reopening a port)."""
        self._pending = b""
        self._discarding = False
