"""A transport seen through a serial line: the wire model's timing and the link faults set at run time.

:class:`WiredTransport` wraps any :class:`~firmware_sim.runner.Transport` (pty, TCP, serial port, memory):

* with a :class:`~firmware_sim.wire.WireSettings` the device's output reaches the host at the line's
  pace (telemetry beyond what it carries is shed whole, replies never) and the host's bytes reach the
  device one character time after another (:mod:`firmware_sim.wire`);
* :meth:`WiredTransport.set_link_faults` changes byte loss and corruption (both directions) while the
  simulator runs, and :meth:`WiredTransport.silence_host` makes the host's bytes vanish (the watchdog,
  S10, must act) -- the run-time counterparts of ``--drop-rate``, ``--corrupt-rate`` and ``--silent-at``;
* :meth:`unplug` / :meth:`replug` are passed to the wrapped transport (see :class:`Pluggable`).

Times are wall-clock link seconds (``time.monotonic``); the wrapped transport's ``read`` is only ever asked
to wait until the next byte is due on the line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from .link_faults import LinkChannel, LinkFaults
from .runner import Transport
from .wire import WireModel, WireSettings

log = logging.getLogger(__name__)


@runtime_checkable
class Pluggable(Protocol):
    """A transport whose port can vanish and come back (a USB adapter pulled and plugged in again)."""

    plugged: bool

    def unplug(self) -> None: ...

    def replug(self) -> None: ...


class WiredTransport:
    """``inner`` as the host sees it through a serial line (see the module docstring). Not thread-safe:
    the runner's thread calls it under the runner's lock or from its own loop."""

    def __init__(
        self,
        inner: Transport,
        wire: WireSettings | None = None,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.wire = WireModel(wire) if wire is not None else None
        self._clock = clock
        self._seed = seed
        self._faults: LinkChannel | None = None
        self.host_silent = False
        self.silenced_bytes = 0

    # -------------------------------------------------------------------------------- run-time faults

    @property
    def link_faults(self) -> LinkFaults:
        return self._faults.faults if self._faults is not None else LinkFaults()

    def set_link_faults(self, drop_rate: float = 0.0, corrupt_rate: float = 0.0) -> LinkFaults:
        """Byte loss and corruption from now on, both directions (0 = none). Raises ValueError out of
        [0, 1]."""
        faults = LinkFaults(drop_rate=drop_rate, corrupt_rate=corrupt_rate)
        self._faults = LinkChannel(faults, self._seed) if faults.active else None
        log.info("link faults now drop_rate=%g corrupt_rate=%g", drop_rate, corrupt_rate)
        return faults

    def silence_host(self, silent: bool = True) -> None:
        """From now on the host's bytes never reach the device (``False``: they do again)."""
        self.host_silent = silent
        log.info("host %s", "silenced" if silent else "heard again")

    # -------------------------------------------------------------------------------------- plugging

    @property
    def pluggable(self) -> bool:
        return isinstance(self.inner, Pluggable)

    @property
    def plugged(self) -> bool:
        return bool(getattr(self.inner, "plugged", True))

    def unplug(self) -> None:
        """Make the port vanish (the wrapped transport's :meth:`Pluggable.unplug`). Raises
        NotImplementedError for a transport that cannot."""
        if not isinstance(self.inner, Pluggable):
            raise NotImplementedError(f"{type(self.inner).__name__} cannot be unplugged")
        self.inner.unplug()
        if self.wire is not None:
            self.wire.reset()

    def replug(self) -> None:
        """Bring the port back under the same path."""
        if not isinstance(self.inner, Pluggable):
            raise NotImplementedError(f"{type(self.inner).__name__} cannot be unplugged")
        self.inner.replug()

    # ------------------------------------------------------------------------------------- transport

    def write(self, data: bytes) -> None:
        if self._faults is not None:
            data = self._faults.mangle(data)
        if self.wire is None:
            self.inner.write(data)
            return
        now = self._clock()
        self.wire.device_send(data, now)
        self._deliver(now)

    def _deliver(self, now: float) -> None:
        assert self.wire is not None
        for _, piece in self.wire.host_receive(now):
            self.inner.write(piece)

    def _from_host(self, data: bytes) -> bytes:
        if self.host_silent:
            self.silenced_bytes += len(data)
            return b""
        if self._faults is not None:
            data = self._faults.mangle(data)
        return data

    def read(self, timeout: float) -> bytes:
        """Host bytes that have crossed the line, waiting at most ``timeout`` s; delivers the device's
        output at the line's pace meanwhile."""
        wire = self.wire
        if wire is None:
            return self._from_host(self.inner.read(timeout))
        clock = self._clock
        deadline = clock() + timeout
        while True:
            now = clock()
            self._deliver(now)
            arrived = wire.device_receive(now)
            if arrived:
                return arrived
            due = wire.next_event_s()
            until = deadline if due is None else min(deadline, due)
            data = self.inner.read(max(0.0, until - now))
            if data:
                data = self._from_host(data)
                if data:
                    wire.host_send(data, clock())
            elif clock() >= deadline:
                self._deliver(clock())
                return wire.device_receive(clock())

    def close(self) -> None:
        self.inner.close()

    # ---------------------------------------------------------------------------------------- counters

    @property
    def shed_telemetry(self) -> int:
        """Telemetry frames the line could not carry (shed whole by the wire model)."""
        return self.wire.shed_telemetry if self.wire is not None else 0

    def counters(self) -> dict[str, int]:
        """Everything counted on this link, by name (for the control API and the exit log)."""
        out = {
            "wire_shed_telemetry_frames": self.shed_telemetry,
            "wire_shed_bytes": self.wire.shed_bytes if self.wire is not None else 0,
            "wire_frames_sent": self.wire.sent_frames if self.wire is not None else 0,
            "silenced_host_bytes": self.silenced_bytes,
            "fault_dropped_bytes": self._faults.dropped_bytes if self._faults is not None else 0,
            "fault_corrupted_bytes": self._faults.corrupted_bytes if self._faults is not None else 0,
        }
        for name in ("dropped_bytes", "dropped_frames", "dropped_telemetry", "connects", "refused_clients"):
            value = getattr(self.inner, name, None)
            if isinstance(value, int):
                out[f"transport_{name}"] = value
        return out
