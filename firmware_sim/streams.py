"""In-memory byte streams: the in-process link between a host and a :class:`~firmware_sim.DeviceRunner`."""

from __future__ import annotations

import threading
import time


class BytePipe:
    """A thread-safe, unbounded one-way byte stream with blocking reads."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._closed = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        with self._cond:
            if self._closed:
                return
            self._buf += data
            self._cond.notify_all()

    def read(self, size: int | None = None, timeout: float | None = 0.0) -> bytes:
        """Up to ``size`` bytes (all if None); waits at most ``timeout`` s for the first (None = forever)."""
        with self._cond:
            if not self._buf and timeout != 0.0 and not self._closed:
                self._cond.wait_for(lambda: bool(self._buf) or self._closed, timeout)
            n = len(self._buf) if size is None else min(size, len(self._buf))
            out = bytes(self._buf[:n])
            del self._buf[:n]
            return out

    def read_exactly(self, size: int, timeout: float | None) -> bytes:
        """Wait until ``size`` bytes are there or ``timeout`` s passed (None = forever); return what came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._buf) < size and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            n = min(size, len(self._buf))
            out = bytes(self._buf[:n])
            del self._buf[:n]
            return out

    def __len__(self) -> int:
        with self._cond:
            return len(self._buf)

    def clear(self) -> None:
        with self._cond:
            self._buf.clear()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class MemoryTransport:
    """Device side of an in-memory link: reads ``to_device``, writes ``to_host``."""

    def __init__(self, to_device: BytePipe | None = None, to_host: BytePipe | None = None) -> None:
        self.to_device = to_device if to_device is not None else BytePipe()
        self.to_host = to_host if to_host is not None else BytePipe()

    def read(self, timeout: float) -> bytes:
        return self.to_device.read(None, timeout)

    def write(self, data: bytes) -> None:
        self.to_host.write(data)

    def close(self) -> None:
        self.to_device.close()
        self.to_host.close()
