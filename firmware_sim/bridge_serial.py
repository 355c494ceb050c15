"""Serial-port transport: the simulator on an existing port (a real adapter, one end of a null-modem pty
pair such as ``socat``, com0com or tty0tty, or any pyserial URL).

The port is opened with pyserial at the given baud rate and framing (exclusively where pyserial can lock
it). A real UART paces the bytes itself; a pty pair or a URL does not, so the command line puts the wire
model (:mod:`firmware_sim.wire`) in front of this transport by default, which paces both kinds alike.
Output the port does not take at once waits in an :class:`~firmware_sim.outbuffer.OutBuffer` (whole frames
shed above its cap, telemetry first). A serial port cannot tell whether a host is listening, so
:attr:`SerialTransport.connected` is always True while the port is open.

:meth:`SerialTransport.unplug` closes the port (the simulator side of the cable goes dead: nothing is
sent or heard); :meth:`SerialTransport.replug` opens it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from typing import Any

import serial

from iontodrive.protocol.budget import FRAMING_8N1, Framing

from .host_presence import HostPresence
from .outbuffer import DEFAULT_CAP_BYTES, OutBuffer, OutputCounters

log = logging.getLogger(__name__)

_PARITY = {
    "N": serial.PARITY_NONE,
    "E": serial.PARITY_EVEN,
    "O": serial.PARITY_ODD,
    "M": serial.PARITY_MARK,
    "S": serial.PARITY_SPACE,
}
_STOP = {1.0: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE, 2.0: serial.STOPBITS_TWO}


class SerialTransport(OutputCounters, HostPresence):
    """The device side on ``port`` (a path or a pyserial URL) at ``baud`` with ``framing``.

    Raises:
        OSError: the port cannot be opened (pyserial's ``SerialException`` is an OSError).
    """

    def __init__(
        self,
        port: str,
        baud: int = 115_200,
        framing: Framing = FRAMING_8N1,
        out_cap_bytes: int = DEFAULT_CAP_BYTES,
    ) -> None:
        self.port_name = port
        self.baud = baud
        self.framing = framing
        self._out = OutBuffer(out_cap_bytes)
        self._dropped_unconnected = 0
        self._port: serial.SerialBase | None = None
        self._fd = -1
        self.plugged = True
        self.connects = 0
        self._open()

    @property
    def path(self) -> str:
        return self.port_name

    @property
    def connected(self) -> bool:
        return self._port is not None

    def _open(self) -> None:
        options: dict[str, Any] = {
            "baudrate": self.baud,
            "bytesize": self.framing.data_bits,
            "parity": _PARITY[self.framing.parity],
            "stopbits": _STOP[float(self.framing.stop_bits)],
            "timeout": 0,
            "write_timeout": 0,
        }
        if "://" not in self.port_name and os.name == "posix":
            options["exclusive"] = True
        port = serial.serial_for_url(self.port_name, **options)
        self._port = port
        fd = getattr(port, "fd", None)
        self._fd = fd if isinstance(fd, int) else -1
        self.connects += 1
        log.info("opened %s at %d baud %s", self.port_name, self.baud, self.framing)

    def unplug(self) -> None:
        """Close the port: nothing is sent or heard until :meth:`replug`."""
        if not self.plugged:
            return
        self._out.clear()
        if self._port is not None:
            self._port.close()
        self._port, self._fd = None, -1
        self.plugged = False
        log.info("unplugged %s", self.port_name)
        self._host_gone()  # the host on the other end is cut off: its reply cache goes (protocol v2)

    def replug(self) -> None:
        """Open the port again."""
        if self.plugged:
            return
        self._open()
        self.plugged = True

    def read(self, timeout: float) -> bytes:
        """Bytes from the host, waiting at most ``timeout`` s; writes waiting output as the port takes it."""
        port = self._port
        if port is None:
            time.sleep(max(0.0, timeout))
            return b""
        if self._fd >= 0:
            writers = [self._fd] if self._out else []
            readable, writable, _ = select.select([self._fd], writers, [], max(0.0, timeout))
            if writable:
                self._flush()
            if not readable:
                return b""
            try:
                return os.read(self._fd, 65536)
            except BlockingIOError:
                return b""
        port.timeout = max(0.0, timeout)
        if self._out:
            self._flush()
        first = bytes(port.read(1))
        if not first:
            return b""
        waiting = int(getattr(port, "in_waiting", 0) or 0)
        return first + bytes(port.read(waiting)) if waiting else first

    def _write_now(self, data: bytes | bytearray) -> int:
        if self._fd >= 0:
            return os.write(self._fd, data)
        assert self._port is not None
        return int(self._port.write(bytes(data)) or 0)

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the host and write what the port takes now (never blocks, never cuts)."""
        if self._port is None:
            self._dropped_unconnected += len(data)
            return
        if not self._out:
            try:
                n = self._write_now(data)
            except (BlockingIOError, serial.SerialTimeoutException):
                n = 0
            if n == len(data):
                return
            data = data[n:]
        self._out.append(data)
        self._flush()

    def _flush(self) -> None:
        with contextlib.suppress(BlockingIOError, serial.SerialTimeoutException):
            self._out.write_to(self._write_now)

    def close(self) -> None:
        if self._port is not None:
            self._port.close()
        self._port, self._fd = None, -1
