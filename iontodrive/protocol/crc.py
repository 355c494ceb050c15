"""CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final XOR; check("123456789") = 0x29B1."""

from __future__ import annotations

from binascii import crc_hqx
from typing import Final

CRC_INIT: Final = 0xFFFF


def crc16_ccitt_false(data: bytes | bytearray | memoryview) -> int:
    """Return the 16-bit CRC of ``data`` (``binascii.crc_hqx`` seeded with 0xFFFF)."""
    return crc_hqx(data, CRC_INIT)
