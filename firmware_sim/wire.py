"""Wire model of a serial line: baud rate, framing, the device's transmit buffer and a USB latency timer.

Sans-I/O: every method takes the present *link* time (seconds) from the caller, so the same model runs on
the wall clock (:class:`~firmware_sim.wired.WiredTransport`) and on a virtual clock in tests.

Device to host
    The firmware hands frames to its UART's transmit buffer (``tx_buffer_bytes``, 512 by default). The
    UART sends one character per ``bits_per_char / baud`` seconds (8N1: 10 bit times), back to back. A
    *telemetry* frame that does not fit in what is left of the buffer is shed whole (counted in
    :attr:`WireModel.shed_telemetry`); replies and events are never shed (a firmware blocks for them,
    so the buffer may run over by them). With ``latency_timer_ms`` set, the bytes then pass a USB-serial
    chip that forwards them in USB packets of up to 62 bytes: a packet leaves when it is full or when
    the latency timer has run since its first byte came in (FTDI-style; 16 ms is FTDI's default).

Host to device
    The host's bytes reach the device one character time after another (the USB side adds nothing that
    matters here).

Frame sizes and byte rates come from :mod:`iontodrive.protocol.budget`, the one definition the driver
uses too.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from iontodrive.protocol.budget import FRAMING_8N1, Framing, bytes_per_second

from .outbuffer import is_telemetry_frame

DEFAULT_BAUD = 115_200
DEFAULT_TX_BUFFER_BYTES = 512
FTDI_LATENCY_TIMER_MS = 16.0
USB_PACKET_PAYLOAD_BYTES = 62  # a 64-byte full-speed bulk packet less FTDI's two status bytes
_DELIMITER = 0


@dataclass(frozen=True, slots=True)
class WireSettings:
    """Settings of the line. ``latency_timer_ms=None``: no USB-serial chip in between.

    Raises:
        ValueError: a setting out of range (named in the message).
    """

    baud: int = DEFAULT_BAUD
    framing: Framing = FRAMING_8N1
    latency_timer_ms: float | None = None
    tx_buffer_bytes: int = DEFAULT_TX_BUFFER_BYTES

    def __post_init__(self) -> None:
        if not (isinstance(self.baud, int) and 50 <= self.baud <= 20_000_000):
            raise ValueError(f"baud = {self.baud!r} is out of range: must be an integer in [50, 20000000]")
        if self.latency_timer_ms is not None and not 1.0 <= self.latency_timer_ms <= 255.0:
            raise ValueError(
                f"latency_timer_ms = {self.latency_timer_ms!r} is out of range: must be in [1, 255] (FTDI)"
            )
        if not 64 <= self.tx_buffer_bytes <= 1 << 20:
            raise ValueError(
                f"tx_buffer_bytes = {self.tx_buffer_bytes!r} is out of range: must be in [64, 1048576]"
            )

    @property
    def char_time_s(self) -> float:
        """Seconds one byte takes on the wire."""
        return 1.0 / bytes_per_second(self.baud, self.framing)


class _Direction:
    """Bytes serialised onto a line: each queued segment starts when the line is free."""

    def __init__(self, char_s: float) -> None:
        self.char_s = char_s
        self.segments: deque[tuple[float, bytes]] = deque()  # (start time, bytes)
        self.free_at = 0.0  # when the last queued byte has left
        self.queued = 0  # bytes not yet completely sent

    def push(self, data: bytes, now: float) -> None:
        start = max(now, self.free_at)
        self.segments.append((start, data))
        self.free_at = start + len(data) * self.char_s
        self.queued += len(data)

    def waiting(self, now: float) -> int:
        """Bytes queued and not yet on the wire by ``now``."""
        if self.free_at <= now:
            return 0
        return min(self.queued, int((self.free_at - now) / self.char_s + 0.999999))

    def next_done_s(self) -> float | None:
        """When the head segment has been sent completely."""
        if not self.segments:
            return None
        start, data = self.segments[0]
        return start + len(data) * self.char_s

    def done(self, now: float) -> list[tuple[float, bytes]]:
        """(completion time of the last byte, bytes) of what has been sent by ``now``, in order."""
        out: list[tuple[float, bytes]] = []
        segs = self.segments
        char = self.char_s
        while segs:
            start, data = segs[0]
            end = start + len(data) * char
            if end <= now + 1e-12:
                segs.popleft()
                out.append((end, data))
                self.queued -= len(data)
                continue
            n = int((now - start) / char + 1e-9)
            if n > 0:
                out.append((start + n * char, data[:n]))
                segs[0] = (start + n * char, data[n:])
                self.queued -= n
            break
        return out


class WireModel:
    """Both directions of one serial line (see the module docstring). Not thread-safe."""

    def __init__(self, settings: WireSettings | None = None) -> None:
        self.settings = settings if settings is not None else WireSettings()
        char = self.settings.char_time_s
        self._out = _Direction(char)
        self._in = _Direction(char)
        self._partial = bytearray()  # the device's unfinished frame (output may come in pieces)
        self._usb = bytearray()  # bytes in the USB-serial chip, waiting for a packet
        self._usb_first_s = 0.0  # when the first of them came off the wire
        self.shed_telemetry = 0  # telemetry frames shed because the line could not carry them
        self.shed_bytes = 0
        self.sent_frames = 0
        self.delivered_bytes = 0

    # ------------------------------------------------------------------------------ device to host

    def device_send(self, data: bytes, now: float) -> None:
        """The firmware sends ``data`` (whole frames or pieces of them) at link time ``now``."""
        buf = self._partial
        buf += data
        start = 0
        cap = self.settings.tx_buffer_bytes
        out = self._out
        while True:
            end = buf.find(_DELIMITER, start)
            if end < 0:
                break
            frame = bytes(buf[start : end + 1])
            start = end + 1
            if is_telemetry_frame(frame) and out.waiting(now) + len(frame) > cap:
                self.shed_telemetry += 1
                self.shed_bytes += len(frame)
                continue
            out.push(frame, now)
            self.sent_frames += 1
        del buf[:start]

    def next_host_delivery_s(self) -> float | None:
        """Link time at which the host next receives bytes (None: nothing on the way)."""
        done = self._out.next_done_s()
        if self.settings.latency_timer_ms is None:
            return done
        latency = self.settings.latency_timer_ms / 1000.0
        candidates = [t for t in (done, self._usb_first_s + latency if self._usb else None) if t is not None]
        return min(candidates) if candidates else None

    def host_receive(self, now: float) -> list[tuple[float, bytes]]:
        """What reaches the host by ``now``: (delivery time, bytes) pieces in order."""
        sent = self._out.done(now)
        if self.settings.latency_timer_ms is None:
            for _, data in sent:
                self.delivered_bytes += len(data)
            return sent
        return self._through_usb(sent, now)

    def _through_usb(self, sent: list[tuple[float, bytes]], now: float) -> list[tuple[float, bytes]]:
        latency = self.settings.latency_timer_ms
        assert latency is not None
        latency_s = latency / 1000.0
        char = self.settings.char_time_s
        out: list[tuple[float, bytes]] = []
        usb = self._usb
        for end, data in sent:  # byte k of `data` came off the wire at end - (len - 1 - k) * char
            first_t = end - (len(data) - 1) * char
            for k in range(len(data)):
                t = first_t + k * char
                if usb and t >= self._usb_first_s + latency_s:  # the timer ran out before this byte
                    out.append((self._usb_first_s + latency_s, bytes(usb)))
                    usb.clear()
                if not usb:
                    self._usb_first_s = t
                usb.append(data[k])
                if len(usb) >= USB_PACKET_PAYLOAD_BYTES:
                    out.append((t, bytes(usb)))
                    usb.clear()
        if usb and now >= self._usb_first_s + latency_s - 1e-12:
            out.append((self._usb_first_s + latency_s, bytes(usb)))
            usb.clear()
        for _, data in out:
            self.delivered_bytes += len(data)
        return out

    @property
    def output_waiting(self) -> int:
        """Bytes queued for the host (on the line or in the USB chip)."""
        return self._out.queued + len(self._usb)

    # ------------------------------------------------------------------------------ host to device

    def host_send(self, data: bytes, now: float) -> None:
        """The host writes ``data`` at link time ``now``."""
        if data:
            self._in.push(bytes(data), now)

    def next_device_delivery_s(self) -> float | None:
        return self._in.next_done_s()

    def device_receive(self, now: float) -> bytes:
        """Host bytes that have reached the device by ``now``."""
        return b"".join(data for _, data in self._in.done(now))

    def next_event_s(self) -> float | None:
        """The earlier of the next delivery in either direction."""
        times = [t for t in (self.next_host_delivery_s(), self.next_device_delivery_s()) if t is not None]
        return min(times) if times else None

    def reset(self) -> None:
        """Forget everything on the line (the cable was pulled); counters are kept."""
        char = self.settings.char_time_s
        self._out = _Direction(char)
        self._in = _Direction(char)
        self._partial.clear()
        self._usb.clear()
