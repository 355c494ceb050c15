"""Bytes a transport could not hand to the host yet: kept in order, bounded, shed by whole frames.

A pty or a socket takes only so much before the host reads; what does not fit waits here and is written
when the descriptor becomes writable again (the transports poll for it). Nothing is cut: a frame is only
ever dropped whole. If the host stops reading altogether the buffer would grow without end, so above
``cap`` bytes it sheds frames, oldest telemetry first (telemetry is numbered, so the host sees the loss
as a gap in ``sample_no``); replies and events are dropped only when nothing but them is left above the
cap. Every drop is counted.

Frames are recognised by their 0x00 delimiter; a telemetry frame by its type byte, which COBS leaves in
place (``COBS(version | type | ...)``: version and type are non-zero, so the first COBS code byte is >= 3
and the type is the frame's third byte).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from iontodrive.protocol import MessageType

log = logging.getLogger(__name__)

DEFAULT_CAP_BYTES = 256 * 1024
_TELEMETRY = int(MessageType.TELEMETRY)
_DELIMITER = b"\x00"


def is_telemetry_frame(frame: bytes) -> bool:
    """True if ``frame`` (COBS-encoded, delimiter optional) is a telemetry frame."""
    return len(frame) >= 3 and frame[0] >= 3 and frame[2] == _TELEMETRY


class OutBuffer:
    """FIFO of output bytes waiting for the host, at most about ``cap`` bytes (see module docstring).

    Raises:
        ValueError: ``cap`` is below 1 KiB.
    """

    def __init__(self, cap: int = DEFAULT_CAP_BYTES) -> None:
        if cap < 1024:
            raise ValueError(f"cap = {cap!r} is out of range: must be >= 1024 bytes")
        self.cap = cap
        self._buf = bytearray()
        self.dropped_telemetry = 0  # telemetry frames shed because the host did not read
        self.dropped_other = 0  # replies/events shed (only when nothing else was left to shed)
        self.dropped_bytes = 0
        self._warned = False

    def __len__(self) -> int:
        return len(self._buf)

    def __bool__(self) -> bool:
        return bool(self._buf)

    @property
    def dropped_frames(self) -> int:
        return self.dropped_telemetry + self.dropped_other

    def append(self, data: bytes | memoryview) -> None:
        """Queue ``data`` after what is already waiting; shed frames if the cap is exceeded."""
        self._buf += data
        if len(self._buf) > self.cap:
            self._shed()

    def write_to(self, write: Callable[[bytearray], int]) -> int:
        """Hand as much as possible to ``write`` (returns bytes taken; may raise BlockingIOError/OSError).

        Returns the number of bytes written; what was written leaves the buffer.
        """
        total = 0
        while self._buf:
            n = write(self._buf)
            if n <= 0:
                break
            del self._buf[:n]
            total += n
        if not self._buf:
            self._warned = False
        return total

    def clear(self) -> int:
        """Forget everything waiting (the host went away); returns the number of bytes dropped."""
        n = len(self._buf)
        self._buf.clear()
        self.dropped_bytes += n
        return n

    def _shed(self) -> None:
        """Drop whole frames, oldest telemetry first, until at most 3/4 of the cap is left."""
        buf = self._buf
        first = buf.find(_DELIMITER)  # the frame at the head may be partly written already: keep it
        if first < 0:
            return
        head = bytes(buf[: first + 1])
        parts = bytes(buf[first + 1 :]).split(_DELIMITER)
        frames, fragment = parts[:-1], parts[-1]  # the fragment is an unfinished frame at the end
        size = len(buf)
        target = self.cap * 3 // 4
        keep = [True] * len(frames)
        for i, frame in enumerate(frames):
            if size <= target:
                break
            if is_telemetry_frame(frame):
                keep[i] = False
                size -= len(frame) + 1
                self.dropped_telemetry += 1
        if size > self.cap:  # nothing but replies and events: they must go too, oldest first
            for i, frame in enumerate(frames):
                if size <= target:
                    break
                if keep[i]:
                    keep[i] = False
                    size -= len(frame) + 1
                    self.dropped_other += 1
        kept = [frame + _DELIMITER for frame, k in zip(frames, keep, strict=True) if k]
        self.dropped_bytes += len(buf) - size
        self._buf = bytearray(head + b"".join(kept) + fragment)
        if not self._warned:
            self._warned = True
            log.warning(
                "the host does not read: %d bytes waiting, dropping whole frames (oldest telemetry first)",
                len(buf),
            )


class OutputCounters:
    """Counters shared by the transports that own an :class:`OutBuffer` (``_out``) and count the bytes
    written while no host was connected (``_dropped_unconnected``)."""

    _out: OutBuffer
    _dropped_unconnected: int

    @property
    def dropped_bytes(self) -> int:
        return self._dropped_unconnected + self._out.dropped_bytes

    @property
    def dropped_frames(self) -> int:
        return self._out.dropped_frames

    @property
    def dropped_telemetry(self) -> int:
        return self._out.dropped_telemetry

    @property
    def output_pending(self) -> int:
        """Output bytes waiting for the host to read."""
        return len(self._out)
