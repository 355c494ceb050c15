"""Clocks for host-side sessions: real time in production, accelerated or virtual time for simulation.

A :class:`Clock` gives ``now()`` (seconds, monotonic) and ``sleep(seconds)``. The session loop paces its
set-points and integrates charge on this clock only, so the same code runs in real time against hardware,
faster than real time against the pyvisa-sim backend (:class:`ScaledClock`, refused for real backends by
:mod:`iontodrive.visa.source`), and in virtual time in tests (:class:`VirtualClock`, where ``sleep`` just
advances the time).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Monotonic time in seconds."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of this clock's time pass (returns at once for ``seconds <= 0``)."""
        ...


class RealClock:
    """Wall time: :func:`time.monotonic` and :func:`time.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ScaledClock:
    """Real time multiplied by ``speed`` (> 0): one real second is ``speed`` clock seconds."""

    def __init__(self, speed: float) -> None:
        if not (isinstance(speed, (int, float)) and 0 < speed <= 10_000):
            raise ValueError(f"speed = {speed!r} is out of range: must be in (0, 10000]")
        self.speed = float(speed)
        self._origin = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._origin) * self.speed

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.speed)


class VirtualClock:
    """Time that moves only when someone sleeps on it (thread-safe). For tests."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                self._now += seconds

    def advance(self, seconds: float) -> None:
        """Move time forward without a sleeper (e.g. to model slow I/O)."""
        self.sleep(seconds)
