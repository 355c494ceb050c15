"""Clocks that drive the simulated device.

* :class:`VirtualClock` -- deterministic time for in-process tests: it moves only when told to, and can
  carry listeners (for instance ``device.advance``) that are advanced with it.
* :class:`WallClock` -- real time with a speed factor. ``session()`` runs ``speed`` times faster than the
  wall (ramps, dose, skin); ``link()`` is plain wall time, so a silent host is still caught by the watchdog
  in real time (S10).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

Listener = Callable[[float], None]


class VirtualClock:
    """Time that advances only through :meth:`advance` (or :meth:`sleep`). Seconds, starting at ``start``.

    Listeners registered with :meth:`add_listener` are called with each increment, in registration order,
    before :meth:`advance` returns; this is how a :class:`~firmware_sim.Device` follows the clock.
    Thread-safe for one advancing thread and any number of readers.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._listeners: list[Listener] = []
        self._lock = threading.RLock()

    def now(self) -> float:
        """Current virtual time (s)."""
        return self._now

    def monotonic(self) -> float:
        """Alias of :meth:`now`, so the clock can stand in for ``time.monotonic``."""
        return self._now

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(dt)`` on every advance."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.remove(listener)

    def advance(self, dt: float) -> None:
        """Move time forward by ``dt`` seconds.

        Raises:
            ValueError: ``dt`` is negative or not finite.
        """
        if not dt >= 0.0 or dt == float("inf"):
            raise ValueError(f"dt = {dt!r} is out of range: must be a finite number >= 0")
        with self._lock:
            self._now += dt
            for listener in list(self._listeners):
                listener(dt)

    def sleep(self, dt: float) -> None:
        """Same as :meth:`advance`: a virtual sleep passes time instantly."""
        self.advance(dt)


class WallClock:
    """Wall time with a speed factor: ``session()`` = ``speed`` × wall seconds since creation.

    Raises:
        ValueError: ``speed`` is not a positive finite number.
    """

    def __init__(self, speed: float = 1.0) -> None:
        if not 0.0 < speed < float("inf"):
            raise ValueError(f"speed = {speed!r} is out of range: must be a finite number > 0")
        self.speed = float(speed)
        self.origin_s = time.monotonic()  # link() = time.monotonic() - origin_s

    def link(self) -> float:
        """Real seconds since creation (drives the host watchdog)."""
        return time.monotonic() - self.origin_s

    def session(self) -> float:
        """Accelerated seconds since creation (drives ramps, dose and skin)."""
        return self.link() * self.speed

    def now(self) -> float:
        """Alias of :meth:`session`."""
        return self.session()
