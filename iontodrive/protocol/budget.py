"""Link budget of a serial line: how many frames per second a baud rate carries (sans-I/O, no clock).

A UART sends each byte as a character of ``1 + data_bits + parity + stop_bits`` bit times (8N1: 10), so a
line at ``baud`` carries ``baud / bits_per_char`` bytes a second in each direction. A frame's size on the
wire follows from the protocol's declared layouts: header + payload (``LAYOUT.sizeof()``) + CRC, COBS
encoded (one code byte more for a body under 254 bytes; every body is) and the 0x00 delimiter.

Telemetry shares the device-to-host direction with replies and events, so :func:`link_budget` keeps a
reserve (:data:`DEFAULT_RESERVE`, 20 %) for them: a telemetry rate up to :attr:`LinkBudget.max_telemetry_hz`
fits; up to :attr:`LinkBudget.full_telemetry_hz` the line is full and replies wait behind telemetry;
above it the rate cannot be carried at all (the device or a link in between must shed frames).

Used by the simulator's wire model (``firmware_sim.wire``) and by the driver
(``DeviceClient.configure_telemetry``). ``docs/simulator.md`` §11 has the table per baud rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .constants import CRC_BYTES, HEADER_BYTES
from .messages import Message, Telemetry

DEFAULT_RESERVE = 0.2  # share of the device-to-host direction kept for replies and events
COMMON_BAUD_RATES = (9_600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600, 1_000_000, 3_000_000)
_PARITIES = ("N", "E", "O", "M", "S")


@dataclass(frozen=True, slots=True)
class Framing:
    """Character framing of a UART: data bits (5..8), parity (``N``, ``E``, ``O``, ``M``, ``S``), stop bits
    (1, 1.5 or 2). :meth:`parse` reads the usual ``8N1`` notation.

    Raises:
        ValueError: a field out of range (named in the message).
    """

    data_bits: int = 8
    parity: str = "N"
    stop_bits: float = 1.0

    def __post_init__(self) -> None:
        if self.data_bits not in (5, 6, 7, 8):
            raise ValueError(f"data_bits = {self.data_bits!r} is out of range: must be 5, 6, 7 or 8")
        if self.parity not in _PARITIES:
            raise ValueError(f"parity = {self.parity!r} is out of range: must be one of {_PARITIES}")
        if self.stop_bits not in (1, 1.5, 2):
            raise ValueError(f"stop_bits = {self.stop_bits!r} is out of range: must be 1, 1.5 or 2")

    @classmethod
    def parse(cls, text: str) -> Framing:
        """``"8N1"``, ``"7E2"``, ``"8N1.5"`` -> a Framing. Raises ValueError naming the text."""
        t = text.strip().upper()
        if len(t) < 3 or not t[0].isdigit():
            raise ValueError(f"framing = {text!r} is not valid: expected e.g. 8N1")
        try:
            return cls(int(t[0]), t[1], float(t[2:]))
        except ValueError as exc:
            raise ValueError(f"framing = {text!r} is not valid: {exc}") from None

    @property
    def bits_per_char(self) -> float:
        """Bit times per byte on the wire: start bit + data + parity + stop."""
        return 1 + self.data_bits + (0 if self.parity == "N" else 1) + self.stop_bits

    def __str__(self) -> str:
        return f"{self.data_bits}{self.parity}{self.stop_bits:g}"


FRAMING_8N1 = Framing()


def cobs_encoded_bytes(body_bytes: int) -> int:
    """Bytes of a COBS-encoded body of ``body_bytes`` bytes, without the delimiter (exact: COBS adds one
    code byte, plus one per full 254-byte run)."""
    if body_bytes < 0:
        raise ValueError(f"body_bytes = {body_bytes!r} is out of range: must be >= 0")
    return body_bytes + 1 + body_bytes // 254


def frame_bytes(message: type[Message]) -> int:
    """Bytes one frame of ``message`` occupies on the wire, delimiter included (from its ``LAYOUT``)."""
    body = HEADER_BYTES + message.LAYOUT.sizeof() + CRC_BYTES
    return cobs_encoded_bytes(body) + 1


def bytes_per_second(baud: float, framing: Framing = FRAMING_8N1) -> float:
    """Bytes a second the line carries in one direction. Raises ValueError for a baud rate <= 0."""
    if not (baud > 0 and math.isfinite(baud)):
        raise ValueError(f"baud = {baud!r} is out of range: must be a finite number > 0")
    return baud / framing.bits_per_char


def wire_time_s(n_bytes: int, baud: float, framing: Framing = FRAMING_8N1) -> float:
    """Seconds ``n_bytes`` take on the wire at ``baud``."""
    return n_bytes / bytes_per_second(baud, framing)


@dataclass(frozen=True, slots=True)
class LinkBudget:
    """What one baud rate carries. Rates in frames per second, sizes in bytes.

    ``full_telemetry_hz``: telemetry frames a second that fill the device-to-host direction alone;
    ``max_telemetry_hz``: what fits with ``reserve`` of the line left for replies and events.
    """

    baud: float
    framing: Framing
    bytes_per_s: float
    telemetry_frame_bytes: int
    full_telemetry_hz: int
    max_telemetry_hz: int
    reserve: float

    def verdict(self, rate_hz: float) -> str:
        """``"fits"``, ``"tight"`` (above the reserve, below the full line) or ``"too_fast"``."""
        if rate_hz <= self.max_telemetry_hz:
            return "fits"
        if rate_hz <= self.full_telemetry_hz:
            return "tight"
        return "too_fast"


def link_budget(
    baud: float, framing: Framing = FRAMING_8N1, *, reserve: float = DEFAULT_RESERVE
) -> LinkBudget:
    """The :class:`LinkBudget` of a line at ``baud`` with ``framing``.

    Raises:
        ValueError: ``baud`` not > 0, or ``reserve`` outside [0, 1).
    """
    if not 0.0 <= reserve < 1.0:
        raise ValueError(f"reserve = {reserve!r} is out of range: must be in [0, 1)")
    per_s = bytes_per_second(baud, framing)
    size = frame_bytes(Telemetry)
    return LinkBudget(
        baud=baud,
        framing=framing,
        bytes_per_s=per_s,
        telemetry_frame_bytes=size,
        full_telemetry_hz=math.floor(per_s / size),
        max_telemetry_hz=math.floor(per_s * (1.0 - reserve) / size),
        reserve=reserve,
    )


def budget_table(rates: tuple[int, ...] = COMMON_BAUD_RATES, framing: Framing = FRAMING_8N1) -> str:
    """A Markdown table of :func:`link_budget` for ``rates`` (used by ``docs/simulator.md``)."""
    rows = [
        f"| baud ({framing}) | bytes/s | telemetry frame (bytes) | telemetry Hz, full line | "
        f"telemetry Hz with {DEFAULT_RESERVE:.0%} reserve |",
        "|---:|---:|---:|---:|---:|",
    ]
    for baud in rates:
        b = link_budget(baud, framing)
        rows.append(
            f"| {baud:,} | {b.bytes_per_s:,.0f} | {b.telemetry_frame_bytes} | {b.full_telemetry_hz:,} | "
            f"{b.max_telemetry_hz:,} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - prints the table for the docs
    print(budget_table())
