"""pyserial URL handler ``sim://``: a simulated stimulator in this process, no pty needed.

URL format::

    sim://[MODEL][?option=value[&option=value...]]

MODEL is ``clinic-4`` (default) or ``hydro-30``. Options (times in simulator seconds unless stated;
fault options may be repeated or comma-separated):

========================  ==================================================================
``speed=F``               session-time acceleration (ramps, dose, skin); default 1
``seed=N``                seed of ADC noise, contact probe and link faults; default 0
``clock=wall|virtual``    ``wall`` (default): a :class:`~firmware_sim.DeviceRunner` thread runs
                          the device in real time. ``virtual``: no thread; time passes only while
                          ``read()`` waits (a read with timeout T advances the device by T
                          instantly), deterministic and fast for tests
``trace=PATH``            write the ground-truth CSV trace to PATH
``trace_rate=HZ``         decimate the trace to HZ rows per second of device time
``telemetry_hz=N``        telemetry rate at power-up (default 2)
``physics_step_ms=F``     physics step (default 1)
``skin_kohm=F``           resting skin resistance (default: the model's)
``lift_at_s=T``           electrode lift (area -> 0 over 0.3 s, then open circuit)
``contact_return_at_s=T`` contact returns (area -> 1 over 0.2 s)
``impedance_rise_at_s=T`` impedance × 8 over 20 s (reaches compliance)
``short_at_s=T``          20 ohm short across the electrodes
``overcurrent_at_s=T``    regulator fault: output 1.3 × the command
``drop_rate=P``           probability that a byte is lost (both directions)
``corrupt_rate=P``        probability that a byte is corrupted (both directions)
``junk_rate=P``           probability of junk bytes between frames (per frame / write)
``split=1``               device output handed out in small random pieces
``latency_ms=F``          added delivery delay, link (wall) time
``silent_at_s=T``         from T on the host's bytes never reach the device (watchdog test)
``baud=N``                wall clock only: the wire model of a serial line at N baud 8N1
                          (``firmware_sim.wire``): output paced, telemetry beyond it shed
``latency_timer_ms=F``    with ``baud``: a USB-serial chip's latency timer (FTDI: 16)
``logging=LEVEL``         debug, info, warning or error for the ``firmware_sim`` loggers
========================  ==================================================================

The port object exposes the simulation for tests: ``port.device`` (:class:`~firmware_sim.Device`),
``port.runner`` (:class:`~firmware_sim.DeviceRunner`, wall clock only; hold ``port.runner.lock`` while
touching the device), ``port.control`` (:class:`~firmware_sim.control.SimController` on the wall
clock: faults, power, skin at run time; :class:`~firmware_sim.control.DeviceControl` on the virtual clock:
plant faults and skin, at once) and ``port.clock`` (:class:`~firmware_sim.VirtualClock`, virtual clock
only).
Example: ``serial.serial_for_url("sim://hydro-30?speed=50&seed=1&lift_at_s=12", timeout=0.1)`` after
:func:`firmware_sim.register_url_handler`.
"""

from __future__ import annotations

import logging
import numbers
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from ..clock import VirtualClock
from ..control import DeviceControl, SimController
from ..device import Device
from ..options import SimOptions
from ..runner import DeviceRunner
from ..streams import BytePipe, MemoryTransport
from ..wired import WiredTransport

if TYPE_CHECKING:
    from typing_extensions import Buffer

log = logging.getLogger(__name__)

_FLOAT = {
    "speed": "speed",
    "trace_rate": "trace_rate_hz",
    "physics_step_ms": "physics_step_ms",
    "skin_kohm": "skin_kohm",
    "drop_rate": "drop_rate",
    "corrupt_rate": "corrupt_rate",
    "junk_rate": "junk_rate",
    "latency_ms": "latency_ms",
    "silent_at_s": "silent_at_s",
    "latency_timer_ms": "latency_timer_ms",
}
_INT = {"seed": "seed", "telemetry_hz": "telemetry_hz", "baud": "baud"}
_FAULT_LISTS = ("lift_at_s", "contact_return_at_s", "impedance_rise_at_s", "short_at_s", "overcurrent_at_s")
_LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
VIRTUAL_READ_CHUNK_S = 0.05  # virtual time advanced per wait step of a read
VIRTUAL_MAX_BLOCK_S = 3600.0  # a read with timeout=None gives up after this much virtual time


def parse_url(url: str) -> SimOptions:
    """Parse a ``sim://`` URL into :class:`SimOptions`.

    Raises:
        ValueError: wrong scheme, unknown model or option, or a value out of range (the message names it).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "sim":
        raise ValueError(f"expected a URL of the form sim://MODEL?options, not {url!r}")
    opts = SimOptions()
    model = (parts.netloc or parts.path.strip("/")).strip()
    if model:
        opts.model = model.lower()
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        try:
            if key in _FLOAT:
                setattr(opts, _FLOAT[key], float(values[-1]))
            elif key in _INT:
                setattr(opts, _INT[key], int(values[-1]))
            elif key in _FAULT_LISTS:
                times = [float(v) for value in values for v in value.split(",") if v.strip()]
                getattr(opts, key).extend(times)
            elif key == "trace":
                opts.trace = values[-1]
            elif key == "split":
                opts.split = values[-1].strip().lower() in ("1", "true", "yes", "on", "")
            elif key == "clock":
                opts.clock = values[-1].strip().lower()
            elif key == "logging":
                level = _LOG_LEVELS[values[-1].strip().lower()]
                logging.getLogger("firmware_sim").setLevel(level)
            else:
                raise ValueError(f"unknown option {key!r}")
        except KeyError:
            raise ValueError(
                f"logging = {values[-1]!r} is out of range: must be one of {sorted(_LOG_LEVELS)}"
            ) from None
        except ValueError as exc:
            if "unknown option" in str(exc):
                raise
            raise ValueError(f"{key} = {values[-1]!r} is not valid: {exc}") from None
    opts.validate()
    return opts


class Serial(SerialBase):
    """A pyserial port whose other end is a simulated device (see the module docstring for the URL)."""

    BAUDRATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.device: Device | None = None
        self.runner: DeviceRunner | None = None
        self.clock: VirtualClock | None = None
        self.control: SimController | DeviceControl | None = None
        self.options: SimOptions | None = None
        self._to_host = BytePipe()
        self._transport: MemoryTransport | None = None
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------------------------- lifecycle

    def open(self) -> None:
        """Build the device from the URL and start it. Raises SerialException for a bad URL."""
        if self.is_open:
            raise SerialException("Port is already open.")
        if self.port is None:
            raise SerialException("Port must be configured before it can be used.")
        try:
            self.options = parse_url(str(self.port))
            self.device = self.options.build_device()
        except (ValueError, OSError) as exc:
            raise SerialException(f"could not open {self.port!r}: {exc}") from exc
        self._to_host = BytePipe()
        if self.options.clock == "virtual":
            self.clock = VirtualClock()
            self.clock.add_listener(self._on_virtual_time)
            self.control = DeviceControl(self.device)
        else:
            self._transport = MemoryTransport(BytePipe(), self._to_host)
            wired = WiredTransport(self._transport, self.options.wire_settings(), seed=self.options.seed)
            self.runner = DeviceRunner(self.device, wired, speed=self.options.speed)
            self.control = SimController(self.runner, wired)
            self.runner.start()
        self.is_open = True

    def close(self) -> None:
        """Stop the simulation and flush its trace."""
        if not self.is_open:
            return
        self.is_open = False
        error: BaseException | None = None
        if self.runner is not None:
            try:
                self.runner.stop()
            except RuntimeError as exc:
                error = exc
        if self._transport is not None:
            self._transport.close()
        if self.device is not None:
            self.device.close()
        super().close()
        if error is not None:
            raise SerialException(f"simulator failed: {error.__cause__!r}") from error

    def from_url(self, url: str) -> SimOptions:
        return parse_url(url)

    def _reconfigure_port(self, force_update: bool = False) -> None:
        baud = self.baudrate
        if not isinstance(baud, numbers.Integral) or not 0 < int(baud) < 2**32:
            raise ValueError(f"invalid baudrate: {baud!r}")

    # ----------------------------------------------------------------------------------------- data

    def _check(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        if self.runner is not None and self.runner.error is not None:
            raise SerialException(f"simulator failed: {self.runner.error!r}")

    def _on_virtual_time(self, dt: float) -> None:
        assert self.device is not None
        self.device.advance(dt)
        self._pump_virtual()

    def _pump_virtual(self) -> None:
        assert self.device is not None
        while True:
            out = self.device.read_output()
            if not out:
                break
            self._to_host.write(out)

    @property
    def in_waiting(self) -> int:
        self._check()
        if self.clock is not None:
            self._pump_virtual()
        return len(self._to_host)

    @property
    def out_waiting(self) -> int:
        self._check()
        return len(self._transport.to_device) if self._transport is not None else 0

    def read(self, size: int = 1) -> bytes:
        """Read up to ``size`` bytes, waiting per ``timeout`` (wall time, or virtual time if virtual)."""
        self._check()
        if size <= 0:
            return b""
        if self.clock is None:
            return self._to_host.read_exactly(size, self.timeout)
        self._pump_virtual()
        limit = VIRTUAL_MAX_BLOCK_S if self.timeout is None else float(self.timeout)
        waited = 0.0
        data = bytearray(self._to_host.read(size, 0.0))
        while len(data) < size and waited < limit - 1e-12:
            step = min(VIRTUAL_READ_CHUNK_S, limit - waited)
            self.clock.advance(step)
            waited += step
            data += self._to_host.read(size - len(data), 0.0)
        return bytes(data)

    def write(self, data: Buffer, /) -> int:
        self._check()
        payload = bytes(data)
        if self.clock is not None:
            assert self.device is not None
            self.device.receive(payload)
            self._pump_virtual()
        else:
            assert self._transport is not None
            self._transport.to_device.write(payload)
        return len(payload)

    def flush(self) -> None:
        """Wait (briefly) until the runner has taken the written bytes."""
        if not self.is_open or self._transport is None:
            return
        deadline = time.monotonic() + 1.0
        while len(self._transport.to_device) and time.monotonic() < deadline:
            time.sleep(0.0005)

    def reset_input_buffer(self) -> None:
        self._check()
        if self.clock is not None:
            self._pump_virtual()
        self._to_host.clear()

    def reset_output_buffer(self) -> None:
        self._check()
        if self._transport is not None:
            self._transport.to_device.clear()

    def _update_break_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True
