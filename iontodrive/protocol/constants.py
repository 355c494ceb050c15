"""Fixed numbers of protocol version 1. ``docs/protocol.md`` §2 explains each."""

from __future__ import annotations

from typing import Final

PROTOCOL_VERSION: Final = 1

DELIMITER: Final = b"\x00"
HEADER_BYTES: Final = 4  # version u8, type u8, sequence u16 (little-endian)
CRC_BYTES: Final = 2  # CRC-16/CCITT-FALSE, big-endian (most significant byte first)
MAX_PAYLOAD_BYTES: Final = 120
MAX_BODY_BYTES: Final = HEADER_BYTES + MAX_PAYLOAD_BYTES + CRC_BYTES  # 126
# COBS adds one byte per started 254-byte block; the delimiter adds one more.
MAX_FRAME_BYTES: Final = MAX_BODY_BYTES + (MAX_BODY_BYTES + 253) // 254 + 1  # 128

UNSOLICITED_SEQ: Final = 0  # telemetry and events carry no request sequence
MIN_REQUEST_SEQ: Final = 1
MAX_SEQ: Final = 0xFFFF

OPEN_CIRCUIT_OHM: Final = 0xFFFF_FFFF  # impedance reported when no current can flow
