"""Pseudo-terminal transport: the simulator appears as a serial port at ``/dev/pts/N`` (POSIX only).

The slave side is put in raw mode (no echo, no line editing, no CR/LF translation) before any host opens
it, and the simulator keeps no slave descriptor of its own. When the last host closes the port the
master's reads fail with EIO: that is "host disconnected". The bridge then drops the device's output
(so a host that opens the port later does not read stale frames) and keeps polling, so the device keeps
running -- which is when the watchdog (S10) matters -- and the next host that opens the port is served.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import time

log = logging.getLogger(__name__)

_POLL_DISCONNECTED_S = 0.005


class PtyTransport:
    """Device side of a pty pair. :attr:`path` is the slave's path for the host.

    Raises:
        OSError: the platform cannot create a pty.
    """

    def __init__(self) -> None:
        import pty
        import tty

        master, slave = pty.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(master, False)
        self._fd = master
        self.connected = False
        self.connects = 0
        self.dropped_bytes = 0

    def fileno(self) -> int:
        return self._fd

    def _mark(self, connected: bool) -> None:
        if connected and not self.connected:
            self.connects += 1
            log.info("host opened %s", self.path)
        elif not connected and self.connected:
            log.info("host closed %s", self.path)
        self.connected = connected

    def read(self, timeout: float) -> bytes:
        if self._fd < 0:
            time.sleep(timeout)
            return b""
        readable, _, _ = select.select([self._fd], [], [], timeout)
        if not readable:
            self._mark(True)  # a host holds the slave open (otherwise the master would report EIO)
            return b""
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
        self._mark(True)
        return data

    def write(self, data: bytes) -> None:
        if not self.connected or self._fd < 0:
            self.dropped_bytes += len(data)
            return
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                self.dropped_bytes += len(view)  # the host does not read: its buffer is full
                return
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                self._mark(False)
                self.dropped_bytes += len(view)
                return
            view = view[n:]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
