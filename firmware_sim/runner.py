"""Real-time execution: a thread that moves bytes between a transport and a :class:`Device`.

The runner is the only code here with a thread. It sleeps in the transport's ``read`` (which returns as
soon as host bytes arrive; the pty and TCP transports also write waiting output there as soon as the host
can take it) and otherwise wakes when the device next needs time to pass. Session time runs ``speed`` ×
wall, link time = wall, so the watchdog (S10) stays in real time.

Like firmware answering from its main loop between control ticks, a request is answered from the device's
current state without first simulating the physics, as long as less than :attr:`DeviceRunner.request_lag_s`
of session time (one physics step, at least 2 ms) is still to simulate; its link time is brought up to date
first, so the request feeds the watchdog at the moment it arrived, and what it commands takes effect at the
device's current time. The reply is written out at once; the physics catches up right after. Physics
advances happen every :attr:`DeviceRunner.period_s` of wall time while anything is going on (a session, a
ramp, telemetry due, link latency), so requests rarely find the physics behind; when nothing is scheduled
the runner sleeps until the next telemetry sample (at most ``idle_s``) and the device takes one big block.

All device calls are made under :attr:`DeviceRunner.lock`; other threads that touch the device (tests
injecting faults, reading state) should hold it too, or use :meth:`DeviceRunner.call`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from .clock import WallClock
from .device import Device
from .host_presence import watch_host

log = logging.getLogger(__name__)

T = TypeVar("T")

REQUEST_LAG_MIN_S = 0.002  # session time a request may find still unsimulated (at least one step)
# Longest block of session time simulated between two physics ticks while something is under way. The
# telemetry and events of a block leave at its end, so a block is how late the host hears of anything the
# device sampled in it: real firmware sends a sample within a control tick. At speed 100 the 4 ms wall
# period alone was 0.4 session s, which ate 40 % of the 1 s fault-to-safe budget (S6) before the host had
# a chance to react (fault campaign, hostile_self_raise). One default telemetry period (10 Hz) at most.
BLOCK_MAX_SESSION_S = 0.1


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
        tick_s: shortest physics period (wall s): at speeds where a request may find up to
            :attr:`request_lag_s` unsimulated and that is at least ``2 × tick_s`` of wall time (speed <= 1
            with the defaults), the physics is advanced every ``request_lag_s / speed / 2`` wall seconds,
            so that requests find it up to date.
        advance_s: physics period (wall s) at higher speeds (where requests advance the physics first) and
            the longest one at any speed while something is scheduled; never more than
            :data:`BLOCK_MAX_SESSION_S` of session time (nor less than ``tick_s``), so that telemetry
            leaves no later than real firmware would send it.
        idle_s: longest sleep (wall s) when nothing is scheduled (no session, no ramp, no telemetry due).

    Use as a context manager or call :meth:`start` / :meth:`stop`. If the loop fails, the exception is
    kept in :attr:`error` and re-raised by :meth:`stop` and :meth:`check`.

    Raises:
        ValueError: ``speed``, ``tick_s`` or ``idle_s`` not positive, ``advance_s`` negative.
    """

    def __init__(
        self,
        device: Device,
        transport: Transport,
        *,
        speed: float = 1.0,
        tick_s: float = 0.001,
        advance_s: float = 0.004,
        idle_s: float = 0.05,
    ) -> None:
        if not tick_s > 0:
            raise ValueError(f"tick_s = {tick_s!r} is out of range: must be > 0")
        if not advance_s >= 0:
            raise ValueError(f"advance_s = {advance_s!r} is out of range: must be >= 0")
        if not idle_s > 0:
            raise ValueError(f"idle_s = {idle_s!r} is out of range: must be > 0")
        self.advance_s = advance_s
        self.device = device
        self.transport = transport
        self.clock = WallClock(speed)
        self.speed = self.clock.speed
        self.tick_s = tick_s
        self.idle_s = idle_s
        self.request_lag_s = max(device.dt, REQUEST_LAG_MIN_S)
        lag_wall = self.request_lag_s / self.speed
        self.period_s = min(advance_s, lag_wall / 2.0) if lag_wall / 2.0 >= tick_s else advance_s
        self.period_s = min(self.period_s, max(tick_s, BLOCK_MAX_SESSION_S / self.speed))
        self.lock = threading.RLock()
        self.error: BaseException | None = None
        self._stopping = False  # set by request_stop()/stop(): the loop ends after the current tick
        self._thread: threading.Thread | None = None
        self.ticks = 0
        self.requests_without_advance = 0  # host writes answered without simulating physics first
        self._timers: list[tuple[float, int, Callable[[Device], object]]] = []  # (session s, order, action)
        self._timer_order = itertools.count()

    def at(self, session_s: float, action: Callable[[Device], object]) -> None:
        """Run ``action(device)`` in the loop, under the lock, once the device's session time reaches
        ``session_s`` (at the first physics tick at or after it; now if it has passed). Thread-safe."""
        with self.lock:
            heapq.heappush(self._timers, (float(session_s), next(self._timer_order), action))

    @property
    def scheduled(self) -> int:
        """Actions given to :meth:`at` that have not run yet."""
        return len(self._timers)

    def _run_due(self) -> float | None:
        """Run the actions that are due (lock held); return the session time of the next one, if any."""
        timers = self._timers
        device = self.device
        while timers and timers[0][0] <= device.session_time_s + 1e-9:
            _, _, action = heapq.heappop(timers)
            try:
                action(device)
            except Exception:  # a scheduled action must not end the simulator
                log.exception("scheduled action %r failed", action)
        return timers[0][0] if timers else None

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
        self._stopping = True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it; re-raises an error the loop died with."""
        self._stopping = True
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

    def _host_gone(self) -> None:
        """The transport lost its host: end its host session on the device (protocol v2, S17)."""
        with self.lock:
            self.device.end_host_session()
        log.info("host gone: host session ended, reply cache cleared")

    def _drain(self) -> list[bytes]:
        device = self.device
        piece = device.read_output()
        if not piece:
            return []
        pieces = [piece]
        while device.output_pending:  # a link-fault channel hands the output over in pieces
            pieces.append(device.read_output())
        return pieces

    def _wait_s(self, horizon_s: float) -> float:
        """Wall seconds the loop may sleep after the physics, given the device's idle horizon (session s):
        a physics period while anything is under way, else until the horizon, within [period, idle_s]."""
        if horizon_s <= 0:
            return self.period_s
        return min(self.idle_s, max(self.period_s, horizon_s / self.speed))

    def _run(self) -> None:
        device = self.device
        transport = self.transport
        lock = self.lock
        monotonic = time.monotonic
        origin = self.clock.origin_s  # link time = monotonic() - origin (WallClock.link, without the call)
        speed = self.speed
        request_lag = self.request_lag_s
        late_after = 2.0 * self.advance_s + self.tick_s
        last_phys = last_link = monotonic() - origin  # link times up to which physics / link were simulated
        wait = self.period_s
        with lock:
            device.connect_output(transport.write)  # replies leave as soon as they are encoded
        unwatch = watch_host(transport, self._host_gone)  # a reply cache never outlives its host
        try:
            while not self._stopping:
                read_from = monotonic() - origin
                data = transport.read(max(0.0, last_phys + wait - read_from))
                if data:
                    with lock:
                        now = monotonic() - origin
                        handed = False
                        if read_from - last_link > late_after:
                            # the loop fell behind (a busy machine): the bytes arrived somewhere in the
                            # interval, so hand them over first rather than let the watchdog expire over them
                            device.receive(data)
                            handed = True
                        if (now - last_phys) * speed >= request_lag:
                            device.advance((now - last_phys) * speed, now - last_link)
                            last_phys = now
                        else:
                            device.advance_link(now - last_link)  # link time only (watchdog, latency)
                            self.requests_without_advance += 1
                        last_link = now
                        if not handed:
                            device.receive(data)  # the reply is written from in here (connect_output)
                        pieces = self._drain() if device.output_pending else ()
                        horizon = device.idle_horizon_s()
                    for piece in pieces:
                        transport.write(piece)
                    # the request may have started something (a session, faster telemetry): look again
                    # as soon as that needs; one that started nothing (a status poll) leaves the wait alone
                    wait = min(wait, self._wait_s(horizon))
                    # `now` is kept: it is at most this request's handling old, which only delays the
                    # physics check below by as much
                else:
                    now = monotonic() - origin
                if now - last_phys >= wait:
                    with lock:
                        now = monotonic() - origin
                        device.advance((now - last_phys) * speed, now - last_link)
                        last_phys = last_link = now
                        next_timer = self._run_due() if self._timers else None
                        horizon = device.idle_horizon_s()
                        if next_timer is not None:
                            horizon = min(horizon, max(0.0, next_timer - device.session_time_s))
                        pieces = self._drain()
                    for piece in pieces:
                        transport.write(piece)
                    wait = self._wait_s(horizon)
                self.ticks += 1
        except BaseException as exc:  # delivered to the caller through stop()/check()
            log.exception("simulator loop failed")
            self.error = exc
        finally:
            unwatch()
            with self.lock:
                device.connect_output(None)
