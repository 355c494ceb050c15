"""Real-time execution: a thread that moves bytes between a transport and a :class:`Device`.

The runner is the only code here with a thread. Every tick (about 1 ms) it reads what the host sent
(waiting at most one tick), feeds it to the device, advances the device by the elapsed wall time --
session time ``speed`` × wall, link time = wall, so the watchdog (S10) stays in real time -- and writes the
device's output back to the transport. All device calls are made under :attr:`DeviceRunner.lock`; other
threads that touch the device (tests injecting faults, reading state) should hold it too, or use
:meth:`DeviceRunner.call`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from .clock import WallClock
from .device import Device

log = logging.getLogger(__name__)

T = TypeVar("T")


class Transport(Protocol):
    """The device side of a byte link (pty master, TCP server, in-memory pipe)."""

    def read(self, timeout: float) -> bytes:
        """Bytes from the host, waiting at most ``timeout`` seconds; b"" if none."""
        ...

    def write(self, data: bytes) -> None:
        """Bytes to the host; may drop them when no host is connected."""
        ...

    def close(self) -> None: ...


class DeviceRunner:
    """Runs ``device`` against ``transport`` in real time on a background thread.

    Args:
        device: the simulated device (the runner owns its timing from :meth:`start` on).
        transport: where the host's bytes come from and the device's go to.
        speed: session-time acceleration (ramps, dose, skin run ``speed`` times faster than the wall).
        tick_s: I/O poll period (s).
        advance_s: the device is advanced at least this often (wall s), and right before it receives
            bytes, so every request is handled at the up-to-date device time (unless the loop fell
            behind, when the bytes are handed over first so that they still feed the watchdog in time).

    Use as a context manager or call :meth:`start` / :meth:`stop`. If the loop fails, the exception is
    kept in :attr:`error` and re-raised by :meth:`stop` and :meth:`check`.

    Raises:
        ValueError: ``speed`` or ``tick_s`` not positive.
    """

    def __init__(
        self,
        device: Device,
        transport: Transport,
        *,
        speed: float = 1.0,
        tick_s: float = 0.001,
        advance_s: float = 0.004,
    ) -> None:
        if not tick_s > 0:
            raise ValueError(f"tick_s = {tick_s!r} is out of range: must be > 0")
        if not advance_s >= 0:
            raise ValueError(f"advance_s = {advance_s!r} is out of range: must be >= 0")
        self.advance_s = advance_s
        self.device = device
        self.transport = transport
        self.clock = WallClock(speed)
        self.speed = self.clock.speed
        self.tick_s = tick_s
        self.lock = threading.RLock()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0

    def start(self) -> DeviceRunner:
        """Start the thread (idempotent)."""
        if self._thread is None:
            self.clock = WallClock(self.speed)
            self._thread = threading.Thread(target=self._run, name="firmware-sim", daemon=True)
            self._thread.start()
        return self

    def run(self) -> None:
        """Run the loop in the calling thread until :meth:`request_stop` (used by the CLI)."""
        self.clock = WallClock(self.speed)
        self._run()
        self.check()

    def request_stop(self) -> None:
        """Ask the loop to end after the current tick (safe from a signal handler)."""
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it; re-raises an error the loop died with."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.check()

    def check(self) -> None:
        """Re-raise the exception the loop died with, if any."""
        if self.error is not None:
            raise RuntimeError("simulator loop failed") from self.error

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def call(self, fn: Callable[[Device], T]) -> T:
        """Run ``fn(device)`` under the lock (e.g. ``runner.call(lambda d: d.inject(fault))``)."""
        with self.lock:
            return fn(self.device)

    def __enter__(self) -> DeviceRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        device = self.device
        transport = self.transport
        last = self.clock.link()
        try:
            while not self._stop.is_set():
                data = transport.read(self.tick_s)
                with self.lock:
                    now = self.clock.link()
                    dt = now - last
                    late = dt > 2.0 * self.advance_s + self.tick_s
                    if data and late:
                        # the loop fell behind (a busy machine): the bytes arrived somewhere in the interval,
                        # so hand them over first rather than let the watchdog expire over them
                        device.receive(data)
                        data = b""
                    if data or dt >= self.advance_s:
                        last = now
                        device.advance(max(0.0, dt) * self.speed, max(0.0, dt))
                    if data:
                        device.receive(data)
                    pieces = []
                    while True:
                        piece = device.read_output()
                        if not piece:
                            break
                        pieces.append(piece)
                for piece in pieces:
                    transport.write(piece)
                self.ticks += 1
        except BaseException as exc:  # delivered to the caller through stop()/check()
            log.exception("simulator loop failed")
            self.error = exc
