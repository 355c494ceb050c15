"""Pseudo-terminal transport: the simulator appears as a serial port at ``/dev/pts/N`` (POSIX only).

The slave side is put in raw mode (no echo, no line editing, no CR/LF translation) before any host opens
it, and the simulator keeps no slave descriptor of its own. When the last host closes the port the
master's reads fail with EIO: that is "host disconnected". The bridge then drops the device's output
(so a host that opens the port later does not read stale frames) and keeps polling, so the device keeps
running -- which is when the watchdog (S10) matters -- and the next host that opens the port is served.

A pty never loses bytes, it only stops taking them when the host does not read (the slave's input queue
is full). What the master cannot take at once waits in an :class:`~firmware_sim.outbuffer.OutBuffer` and
is written as soon as the pty is writable again (:meth:`PtyTransport.read` polls for it); only a host that
stops reading for long (the buffer above its cap) loses data, and then whole frames, telemetry first.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import time

from .outbuffer import DEFAULT_CAP_BYTES, OutBuffer, OutputCounters

log = logging.getLogger(__name__)

_POLL_DISCONNECTED_S = 0.005
_IN = select.POLLIN | select.POLLPRI
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


class PtyTransport(OutputCounters):
    """Device side of a pty pair. :attr:`path` is the slave's path for the host.

    ``out_cap_bytes`` bounds the output waiting for a host that does not read (see module docstring).
    :attr:`dropped_bytes` counts output bytes that never reached a host (none connected, or shed),
    :attr:`dropped_frames` / :attr:`dropped_telemetry` the whole frames shed for a host that did not read.

    Raises:
        OSError: the platform cannot create a pty.
    """

    def __init__(self, out_cap_bytes: int = DEFAULT_CAP_BYTES) -> None:
        import pty
        import tty

        master, slave = pty.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(master, False)
        self._fd = master
        self._out = OutBuffer(out_cap_bytes)
        self._poll = select.poll()
        self._poll.register(master, _IN)
        self._polling_out = False
        self.connected = False
        self.connects = 0
        self._dropped_unconnected = 0

    def fileno(self) -> int:
        return self._fd

    def _mark(self, connected: bool) -> None:
        if connected and not self.connected:
            self.connects += 1
            log.info("host opened %s", self.path)
        elif not connected and self.connected:
            log.info("host closed %s", self.path)
            self._out.clear()  # a host that opens the port later must not read stale frames
        self.connected = connected

    def _want_out(self, want: bool) -> None:
        if want != self._polling_out and self._fd >= 0:
            self._poll.modify(self._fd, _IN | select.POLLOUT if want else _IN)
            self._polling_out = want

    def read(self, timeout: float) -> bytes:
        """Bytes from the host, waiting at most ``timeout`` s; writes waiting output whenever it can."""
        if self._fd < 0:
            time.sleep(timeout)
            return b""
        if not self._out:  # the usual case: nothing waits to go out, so only input can wake the poll
            if self._polling_out:
                self._want_out(False)
            if not self._poll.poll(timeout * 1000.0 if timeout > 0 else 0):
                if not self.connected:
                    self._mark(True)  # a host holds the slave open (otherwise the master would report EIO)
                return b""
            return self._read_now(timeout)
        deadline = time.monotonic() + timeout
        while True:
            self._want_out(bool(self._out))
            events = self._poll.poll(max(0.0, timeout) * 1000.0)
            if not events:
                self._mark(True)  # a host holds the slave open (otherwise the master would report EIO)
                return b""
            mask = events[0][1]
            if mask & select.POLLOUT and self._out:
                self._flush()
            if mask & (_IN | _GONE):
                return self._read_now(timeout)
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return b""

    def _read_now(self, timeout: float) -> bytes:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            self._mark(True)
            return b""
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            self._mark(False)
            time.sleep(min(timeout, _POLL_DISCONNECTED_S) if timeout > 0 else 0)
            return b""
        if not self.connected:
            self._mark(True)
        return data

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the host and write what the pty takes now (never blocks, never cuts)."""
        if not self.connected or self._fd < 0:
            self._dropped_unconnected += len(data)
            return
        if not self._out:
            try:
                n = os.write(self._fd, data)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                self._mark(False)
                self._dropped_unconnected += len(data)
                return
            if n == len(data):
                return
            data = data[n:]
        self._out.append(data)
        self._flush()

    def _flush(self) -> None:
        fd = self._fd
        try:
            self._out.write_to(lambda buf: os.write(fd, buf))
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            self._mark(False)

    def close(self) -> None:
        if self._fd >= 0:
            self._poll.unregister(self._fd)
            os.close(self._fd)
            self._fd = -1
