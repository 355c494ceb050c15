"""Link faults: what a bad cable, a noisy line or a dead host does to the byte stream.

:class:`LinkFaults` is the configuration; :class:`LinkChannel` applies it between the host's bytes and
the device (both directions unless stated), with its own seeded random stream:

* ``drop_rate`` -- each byte is lost with this probability;
* ``corrupt_rate`` -- each byte is replaced by a different random byte with this probability;
* ``junk_rate`` -- with this probability per frame (device to host) or per write (host to device), 1–16
  random non-zero bytes followed by a 0x00 delimiter are inserted *between* frames;
* ``split`` -- the device's output is handed out in random small pieces (1–7 bytes per read), and the
  host's writes are fed to the decoder in random pieces;
* ``latency_ms`` -- every chunk is delivered this many milliseconds of *link* time later;
* ``silent_at_s`` -- from this simulator time on (session clock, seconds) the host's bytes never reach the
  device: the host has gone silent and the watchdog must act (S10).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """Fault settings of the link (see module docstring). All zero/None = a perfect link."""

    drop_rate: float = 0.0
    corrupt_rate: float = 0.0
    junk_rate: float = 0.0
    split: bool = False
    latency_ms: float = 0.0
    silent_at_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("drop_rate", "corrupt_rate", "junk_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"LinkFaults.{name} = {value!r} is out of range: must be in [0, 1]")
        if not (self.latency_ms >= 0.0 and math.isfinite(self.latency_ms)):
            raise ValueError(f"LinkFaults.latency_ms = {self.latency_ms!r} is out of range: must be >= 0")
        if self.silent_at_s is not None and not self.silent_at_s >= 0.0:
            raise ValueError(f"LinkFaults.silent_at_s = {self.silent_at_s!r} is out of range: must be >= 0")

    @property
    def active(self) -> bool:
        return bool(
            self.drop_rate
            or self.corrupt_rate
            or self.junk_rate
            or self.split
            or self.latency_ms
            or self.silent_at_s is not None
        )


class LinkChannel:
    """Applies :class:`LinkFaults` to both directions. Not thread-safe.

    Bytes held back by latency are released by :meth:`due_inbound` / :meth:`due_outbound` once the link
    time reaches their delivery time.
    """

    def __init__(self, faults: LinkFaults, seed: int) -> None:
        self.faults = faults
        self._rng = np.random.default_rng([seed, 0x11A7])
        self._inbound: deque[tuple[float, bytes]] = deque()
        self._outbound: deque[tuple[float, bytes]] = deque()
        self.dropped_bytes = 0
        self.corrupted_bytes = 0
        self.junk_chunks = 0

    def mangle(self, data: bytes) -> bytes:
        """``data`` with this channel's byte loss and corruption applied (no junk, no latency): the
        run-time link faults of :class:`~firmware_sim.wired.WiredTransport` use it."""
        return self._mangle(data, junk_here=False)

    def _mangle(self, data: bytes, junk_here: bool) -> bytes:
        f = self.faults
        if not data:
            return data
        arr = np.frombuffer(data, dtype=np.uint8).copy()
        if f.corrupt_rate:
            hit = np.less(self._rng.random(arr.shape[0]), f.corrupt_rate)
            n_hit = int(np.count_nonzero(hit))
            if n_hit:
                arr[hit] ^= self._rng.integers(1, 256, n_hit, dtype=np.uint8)
                self.corrupted_bytes += n_hit
        if f.drop_rate:
            keep = np.greater_equal(self._rng.random(arr.shape[0]), f.drop_rate)
            self.dropped_bytes += int(arr.shape[0] - np.count_nonzero(keep))
            arr = arr[keep]
        out = arr.tobytes()
        if junk_here and f.junk_rate and self._rng.random() < f.junk_rate:
            junk = self._rng.integers(1, 256, int(self._rng.integers(1, 17)), dtype=np.uint8).tobytes()
            self.junk_chunks += 1
            out = junk + b"\x00" + out
        return out

    def host_silent(self, session_now_s: float) -> bool:
        s = self.faults.silent_at_s
        return s is not None and session_now_s >= s

    def inbound(self, data: bytes, link_now: float, session_now: float) -> list[bytes]:
        """Bytes from the host: returns the pieces to feed now (latency holds them back)."""
        if self.host_silent(session_now):
            self.dropped_bytes += len(data)
            return []
        data = self._mangle(data, junk_here=True)
        if self.faults.latency_ms:
            self._inbound.append((link_now + self.faults.latency_ms / 1000.0, data))
            return []
        return self._pieces(data)

    def _pieces(self, data: bytes) -> list[bytes]:
        if not self.faults.split or len(data) <= 1:
            return [data] if data else []
        pieces = []
        pos = 0
        while pos < len(data):
            size = int(self._rng.integers(1, 8))
            pieces.append(data[pos : pos + size])
            pos += size
        return pieces

    def outbound(self, frame: bytes, link_now: float) -> bytes:
        """One encoded frame from the device: returns the bytes to send now (latency holds them back)."""
        data = self._mangle(frame, junk_here=True)
        if self.faults.latency_ms:
            self._outbound.append((link_now + self.faults.latency_ms / 1000.0, data))
            return b""
        return data

    def next_release(self) -> float | None:
        """Earliest link time at which held-back bytes become due."""
        times = [q[0][0] for q in (self._inbound, self._outbound) if q]
        return min(times) if times else None

    def due_inbound(self, link_now: float) -> list[bytes]:
        out: list[bytes] = []
        while self._inbound and self._inbound[0][0] <= link_now + 1e-12:
            out.extend(self._pieces(self._inbound.popleft()[1]))
        return out

    def due_outbound(self, link_now: float) -> bytes:
        out = bytearray()
        while self._outbound and self._outbound[0][0] <= link_now + 1e-12:
            out += self._outbound.popleft()[1]
        return bytes(out)

    def read_size(self, available: int) -> int:
        """How many of ``available`` output bytes one read hands out (all, unless ``split``)."""
        if not self.faults.split or available <= 1:
            return available
        return min(available, int(self._rng.integers(1, 8)))
