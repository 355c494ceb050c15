"""The byte link under the client: anything pyserial's ``serial_for_url`` opens.

Accepted URLs: a device path (``/dev/ttyUSB0``, ``COM3``), a pty path, ``socket://host:port`` (the
simulator's cross-platform route), ``loop://`` (codec tests only) and any URL scheme registered with
pyserial, such as the simulator's in-process ``sim://`` (``firmware_sim.register_url_handler()``).

A :class:`SerialLink` has one writer lock and is read by one thread at a time (the client decides which:
see "Who reads the link" in :mod:`iontodrive.client`). On POSIX ports a blocked :meth:`SerialLink.read`
can be woken early with :meth:`SerialLink.interrupt` (a self-pipe); :attr:`SerialLink.interruptible` says
whether that is available. Every failure of the port surfaces as :class:`~iontodrive.errors.LinkClosedError`.

Exclusive ports (contract 6): a device path or pty (any URL without ``scheme://``) is opened with
pyserial's ``exclusive=True``, an advisory ``flock(LOCK_EX | LOCK_NB)`` on POSIX that works on serial
devices and pty slaves alike; a second process (or a second link in this one) then gets
:class:`~iontodrive.errors.PortInUseError` before a byte is written or a setting changed. (A lock is
advisory: it keeps out every program that asks for it -- this driver, pyserial with ``exclusive=True``,
the simulator's tools -- not one that ignores locks.) Pass ``exclusive=False`` to opt out (bench tools).
URL handlers (``socket://``, ``sim://``, ``spy://``...) decide for themselves: the simulator's TCP server
refuses a second client.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
from typing import Any

import serial

from iontodrive.errors import LinkClosedError, PortInUseError

_PosixSerial: type[serial.SerialBase] | None
try:
    from serial.serialposix import Serial as _ImportedPosixSerial

    _PosixSerial = _ImportedPosixSerial
except ImportError:  # Windows: no file descriptor to use directly
    _PosixSerial = None

logger = logging.getLogger(__name__)

# A device path or pty is opened with pyserial's ``exclusive=True`` (POSIX: flock(LOCK_EX | LOCK_NB) on the
# descriptor, taken before pyserial changes any setting). Windows opens COM ports exclusively anyway.
_EXCLUSIVE_BY_DEFAULT = os.name == "posix"
# flock's "held elsewhere" (EWOULDBLOCK = EAGAIN on Linux), and EBUSY: a tty in exclusive mode (TIOCEXCL).
_IN_USE_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY})
DEFAULT_BAUDRATE = 115_200
DEFAULT_READ_TIMEOUT_S = 0.02
READ_CHUNK = 4096


class SerialLink:
    """A thread-safe byte pipe over a pyserial port.

    ``read`` blocks for at most ``read_timeout_s`` and returns ``b""`` on timeout; ``write`` sends all bytes
    or raises. Both raise :class:`LinkClosedError` once the port is closed or has failed (e.g. EIO when the
    other end of a pty goes away, or a TCP reset).
    """

    def __init__(self, port: serial.SerialBase, url: str = "") -> None:
        # Any: a POSIX port's ``fd`` and every port's ``in_waiting`` are not in SerialBase's stubs
        self._port: Any = port
        self.url = url or str(getattr(port, "portstr", "") or getattr(port, "port", ""))
        self._write_lock = threading.Lock()
        self._closed = False
        # A POSIX port or pty is read and written through its (non-blocking) file descriptor directly:
        # pyserial's read costs a select, an ioctl and a 1-byte read per frame, its write a select after
        # every write. Other pyserial ports (socket://, loop://, sim://) go through pyserial.
        # Exactly a POSIX Serial: a subclass such as pyserial's spy:// wrapper overrides read/write (to log,
        # to alter) and must be used through them, as pyserial documents it (h18, issue 17 item 4).
        self._posix = _PosixSerial is not None and type(port) is _PosixSerial
        timeout = port.timeout
        self._read_timeout_s = DEFAULT_READ_TIMEOUT_S if timeout is None else float(timeout)
        self._wake_r = self._wake_w = -1
        self._wake_lock = threading.Lock()  # interrupt() never writes to a pipe close() has closed
        self._poller = select.poll()  # the port's fd and the wake-up pipe (poll: no fd lists to build)
        self._polled_fd = -1
        if self._posix:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._poller.register(self._wake_r, select.POLLIN)

    @property
    def interruptible(self) -> bool:
        """True when :meth:`interrupt` can end a blocked :meth:`read` early (POSIX ports and ptys)."""
        return self._wake_w >= 0

    @classmethod
    def open(
        cls,
        url: str,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        **serial_options: Any,
    ) -> SerialLink:
        """Open ``url`` with pyserial; a device path or pty is opened exclusively (see the module docstring).

        Raises:
            PortInUseError: another process (or another link here) has the port open; nothing was
                written to it and its settings were not touched.
            LinkClosedError: it cannot be opened for any other reason (with the port's reason).
        """
        if _EXCLUSIVE_BY_DEFAULT and "://" not in url:
            serial_options.setdefault("exclusive", True)
        try:
            port = serial.serial_for_url(
                url, baudrate=baudrate, timeout=read_timeout_s, write_timeout=2.0, **serial_options
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            if getattr(exc, "errno", None) in _IN_USE_ERRNOS:
                raise PortInUseError(
                    f"cannot open {url!r}: the port is in use by another process or client ({exc}); "
                    "close the other program first"
                ) from exc
            raise LinkClosedError(f"cannot open {url!r}: {exc}") from exc
        logger.debug("opened %s", url)
        return cls(port, url)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def port(self) -> serial.SerialBase:
        """The underlying pyserial object (for tests and bench tools)."""
        port: serial.SerialBase = self._port
        return port

    def write(self, data: bytes) -> None:
        if self._closed:
            raise LinkClosedError(f"link {self.url} is closed")
        with self._write_lock:
            try:
                fd = self._port.fd if self._posix else None  # None once pyserial closed the port
                if fd is not None:
                    try:
                        written = os.write(fd, data)
                    except BlockingIOError:
                        written = 0
                    if written == len(data):
                        return
                    data = data[written:]  # output buffer full: pyserial waits with its write timeout
                self._port.write(data)
            except (serial.SerialException, OSError, AttributeError, TypeError) as exc:
                self._closed = True
                raise LinkClosedError(f"write to {self.url} failed: {exc}") from exc

    def interrupt(self) -> None:
        """Make a :meth:`read` that is waiting (or the next one) return ``b""`` at once. No-op if not
        :attr:`interruptible` or closed; safe from any thread."""
        with self._wake_lock:
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
                    os.write(self._wake_w, b"\0")

    def read(self, timeout_s: float | None = None) -> bytes:
        """Bytes from the port, waiting at most ``timeout_s`` (default: the link's read timeout) for the
        first; ``b""`` on timeout or :meth:`interrupt`. Raises LinkClosedError when closed or failed."""
        if self._closed:
            raise LinkClosedError(f"link {self.url} is closed")
        fd = self._port.fd if self._posix else None  # None once pyserial closed the port
        if fd is None:
            return self._read_port()
        # A POSIX port or pty: wait on the fd (or an interrupt), then read what is there. Inline, not a
        # helper: this is the first code a caller runs when its reply arrives.
        if timeout_s is None:
            timeout_s = self._read_timeout_s
        try:
            if fd != self._polled_fd:
                if self._polled_fd >= 0:
                    self._poller.unregister(self._polled_fd)
                self._poller.register(fd, select.POLLIN)
                self._polled_fd = fd
            ready = self._poller.poll(timeout_s * 1000.0 if timeout_s > 0 else 0)
            if not ready:
                return b""
            if len(ready) > 1 or ready[0][0] != fd:  # woken through the pipe (closed fds report POLLNVAL)
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 64)
                if all(ready_fd != fd for ready_fd, _ in ready):
                    return b""
            if self._closed or self._port.fd != fd:  # closed while waiting: the number may be reused
                raise LinkClosedError(f"link {self.url} is closed")
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return b""
        except (OSError, ValueError) as exc:
            if self._closed:
                raise LinkClosedError(f"link {self.url} is closed") from exc
            self._closed = True
            raise LinkClosedError(f"read from {self.url} failed: {exc}") from exc
        if not data:  # readable but empty: the other end has gone away
            self._closed = True
            raise LinkClosedError(f"read from {self.url} failed: end of file")
        return data

    def _read_port(self) -> bytes:
        """Read through pyserial (socket://, loop://, sim:// and non-POSIX ports)."""
        try:
            waiting = self._port.in_waiting
            data = self._port.read(waiting if waiting > 0 else 1)
        except (serial.SerialException, OSError, AttributeError, TypeError) as exc:
            if self._closed:
                raise LinkClosedError(f"link {self.url} is closed") from exc
            self._closed = True
            raise LinkClosedError(f"read from {self.url} failed: {exc}") from exc
        return bytes(data)

    def close(self) -> None:
        if self._closed and not self._port.is_open:
            return
        self._closed = True
        self.interrupt()  # a reader blocked in poll() sees the closed flag at once
        try:
            self._port.close()
        except (serial.SerialException, OSError) as exc:  # closing a dead port: nothing more to do
            logger.debug("closing %s: %s", self.url, exc)
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
