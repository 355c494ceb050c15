"""The byte link under the client: anything pyserial's ``serial_for_url`` opens.

Accepted URLs: a device path (``/dev/ttyUSB0``, ``COM3``), a pty path, ``socket://host:port`` (the
simulator's cross-platform route), ``loop://`` (codec tests only) and any URL scheme registered with
pyserial, such as the simulator's in-process ``sim://`` (``firmware_sim.register_url_handler()``).

A :class:`SerialLink` has one writer lock and is read by exactly one thread (the client's reader). Every
failure of the port surfaces as :class:`~iontodrive.errors.LinkClosedError`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import serial

from iontodrive.errors import LinkClosedError

logger = logging.getLogger(__name__)

DEFAULT_BAUDRATE = 115_200
DEFAULT_READ_TIMEOUT_S = 0.02


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
                self._port.write(data)
            except (serial.SerialException, OSError, AttributeError, TypeError) as exc:
                self._closed = True
                raise LinkClosedError(f"write to {self.url} failed: {exc}") from exc

    def read(self) -> bytes:
        if self._closed:
            raise LinkClosedError(f"link {self.url} is closed")
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
        try:
            self._port.close()
        except (serial.SerialException, OSError) as exc:  # closing a dead port: nothing more to do
            logger.debug("closing %s: %s", self.url, exc)
