"""The byte link under the client: anything pyserial's ``serial_for_url`` opens.

Accepted URLs: a device path (``/dev/ttyUSB0``, ``COM3``), a pty path, ``socket://host:port`` (the
simulator's cross-platform route), ``loop://`` (codec tests only) and any URL scheme registered with
pyserial, such as the simulator's in-process ``sim://`` (``firmware_sim.register_url_handler()``).

A :class:`SerialLink` has one writer lock and is read by exactly one thread (the client's reader). Every
failure of the port surfaces as :class:`~iontodrive.errors.LinkClosedError`.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Any

import serial

try:
    from serial.serialposix import Serial as _PosixSerial
except ImportError:  # Windows: no file descriptor to use directly
    _PosixSerial = None

from iontodrive.errors import LinkClosedError

logger = logging.getLogger(__name__)

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
        self._port = port
        self.url = url or str(getattr(port, "portstr", "") or getattr(port, "port", ""))
        self._write_lock = threading.Lock()
        self._closed = False
        # A POSIX port or pty is read and written through its (non-blocking) file descriptor directly:
        # pyserial's read costs a select, an ioctl and a 1-byte read per frame, its write a select after
        # every write. Other pyserial ports (socket://, loop://, sim://) go through pyserial.
        self._posix = _PosixSerial is not None and isinstance(port, _PosixSerial)
        timeout = port.timeout
        self._read_timeout_s = DEFAULT_READ_TIMEOUT_S if timeout is None else float(timeout)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        **serial_options: Any,
    ) -> SerialLink:
        """Open ``url`` with pyserial. Raises LinkClosedError (with the port's reason) if it cannot open."""
        try:
            port = serial.serial_for_url(
                url, baudrate=baudrate, timeout=read_timeout_s, write_timeout=2.0, **serial_options
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkClosedError(f"cannot open {url!r}: {exc}") from exc
        logger.debug("opened %s", url)
        return cls(port, url)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def port(self) -> serial.SerialBase:
        """The underlying pyserial object (for tests and bench tools)."""
        return self._port

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

    def read(self) -> bytes:
        if self._closed:
            raise LinkClosedError(f"link {self.url} is closed")
        fd = self._port.fd if self._posix else None  # None once pyserial closed the port
        if fd is not None:
            return self._read_fd(fd)
        try:
            waiting = self._port.in_waiting
            data = self._port.read(waiting if waiting > 0 else 1)
        except (serial.SerialException, OSError, AttributeError, TypeError) as exc:
            if self._closed:
                raise LinkClosedError(f"link {self.url} is closed") from exc
            self._closed = True
            raise LinkClosedError(f"read from {self.url} failed: {exc}") from exc
        return bytes(data)

    def _read_fd(self, fd: int) -> bytes:
        """Wait up to the read timeout for data on ``fd``, then return whatever is there (one syscall)."""
        try:
            ready, _, _ = select.select([fd], [], [], self._read_timeout_s)
            if not ready:
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

    def close(self) -> None:
        if self._closed and not self._port.is_open:
            return
        self._closed = True
        try:
            self._port.close()
        except (serial.SerialException, OSError) as exc:  # closing a dead port: nothing more to do
            logger.debug("closing %s: %s", self.url, exc)
