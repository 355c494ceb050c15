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

Exclusive: once a host has the port open the bridge sets the tty's exclusive flag (TIOCEXCL), so a second
open fails with EBUSY as a serial port held by another program does (the kernel lets a process with
CAP_SYS_ADMIN through anyway; the driver's own lock covers that case). When the host closes the port the
flag is cleared again for the next one; where it cannot be (a simulator without the privilege to reopen
an exclusive tty) the bridge moves to a fresh pty under the same stable link.

Stable path and replug: with ``link_path`` the bridge keeps a symbolic link to the pty (as udev keeps
``/dev/serial/by-id/...`` names for real adapters). :meth:`PtyTransport.unplug` closes the master -- the
host's open port then fails its reads and writes with EIO, and the path is gone -- and
:meth:`PtyTransport.replug` creates a new pty and points the link at it. The device keeps running
throughout (its watchdog, S10, pauses the session).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import termios
import time

from .host_presence import HostPresence
from .outbuffer import DEFAULT_CAP_BYTES, OutBuffer, OutputCounters

log = logging.getLogger(__name__)

_POLL_DISCONNECTED_S = 0.005
_IN = select.POLLIN | select.POLLPRI
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


class PtyTransport(OutputCounters, HostPresence):
    """Device side of a pty pair. :attr:`path` is the slave's path for the host.

    ``out_cap_bytes`` bounds the output waiting for a host that does not read (see module docstring).
    :attr:`dropped_bytes` counts output bytes that never reached a host (none connected, or shed),
    :attr:`dropped_frames` / :attr:`dropped_telemetry` the whole frames shed for a host that did not read.

    ``link_path``: keep a symbolic link there to the pty (the stable path; see the module docstring);
    ``exclusive``: refuse a second open while a host has the port (default).

    Raises:
        OSError: the platform cannot create a pty, or the link cannot be made.
    """

    def __init__(
        self, out_cap_bytes: int = DEFAULT_CAP_BYTES, *, link_path: str | None = None, exclusive: bool = True
    ) -> None:
        self.link_path = link_path
        self.exclusive = exclusive
        self._fd = -1
        self.path = ""
        self._out = OutBuffer(out_cap_bytes)
        self._poll = select.poll()
        self._polling_out = False
        self.connected = False
        self.connects = 0
        self.plugged = True
        self.replugs = 0
        self._dropped_unconnected = 0
        self._open_pty()

    @property
    def stable_path(self) -> str:
        """The path a host should open: the link if there is one, else the pty itself."""
        return self.link_path or self.path

    def _open_pty(self) -> None:
        import pty
        import tty

        master, slave = pty.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(master, False)
        self._fd = master
        self._poll.register(master, _IN)
        self._polling_out = False
        if self.link_path is not None:
            tmp = f"{self.link_path}.{os.getpid()}.tmp"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(self.path, tmp)
            os.replace(tmp, self.link_path)  # atomic: the link never points nowhere while plugged

    def _close_pty(self) -> None:
        if self._fd >= 0:
            self._poll.unregister(self._fd)
            os.close(self._fd)
            self._fd = -1
        self.connected = False

    def _remove_link(self) -> None:
        if self.link_path is not None and os.path.islink(self.link_path):
            os.unlink(self.link_path)

    def unplug(self) -> None:
        """The adapter is pulled: the pty vanishes (the host sees EIO), the stable link is removed."""
        if not self.plugged:
            return
        log.info("unplugged %s", self.path)
        self._out.clear()
        self._close_pty()
        self._remove_link()
        self.plugged = False
        self._host_gone()  # whoever had the port open is gone with it

    def replug(self) -> None:
        """The adapter is plugged in again: a new pty, the stable link pointed at it."""
        if self.plugged:
            return
        self._open_pty()
        self.plugged = True
        self.replugs += 1
        log.info("replugged as %s (link %s)", self.path, self.link_path)

    def fileno(self) -> int:
        return self._fd

    def _set_exclusive(self, on: bool) -> bool:
        """Set (or clear) the slave's exclusive flag through a short-lived descriptor of our own."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            log.debug("cannot open %s to %s its exclusive flag: %s", self.path, "set" if on else "clear", exc)
            return False
        try:
            fcntl.ioctl(fd, termios.TIOCEXCL if on else termios.TIOCNXCL)
        finally:
            os.close(fd)
        return True

    def _mark(self, connected: bool) -> None:
        if connected and not self.connected:
            self.connects += 1
            log.info("host opened %s", self.path)
            if self.exclusive:
                self._set_exclusive(True)
        elif not connected and self.connected:
            log.info("host closed %s", self.path)
            self._out.clear()  # a host that opens the port later must not read stale frames
            self._host_gone()  # its reply cache goes with it (protocol v2)
            if self.exclusive and not self._set_exclusive(False):
                log.info("cannot clear the exclusive flag of %s: moving to a fresh pty", self.path)
                self.connected = False
                self._close_pty()
                self._open_pty()
                return
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
        self._close_pty()
        self._remove_link()
