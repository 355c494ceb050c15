"""Raw frames, built and taken apart byte by byte, for the rules that must step outside the codec.

The codec (:func:`iontodrive.protocol.encode`) only makes valid frames. Framing rules also need frames
that are wrong in one chosen way -- a CRC in the wrong byte order, a flipped CRC bit, another version, a
sequence number of 0, an unknown type, a payload one byte short -- and an independent reading of what
the device sent. The CRC here is the bitwise reference of ``docs/protocol.md`` §2.3, not the codec's
``binascii`` one, so that the suite does not share a CRC implementation with the code it checks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cobs.cobs import DecodeError as CobsDecodeError
from cobs.cobs import decode as cobs_decode
from cobs.cobs import encode as cobs_encode

from iontodrive.protocol import PROTOCOL_VERSION

DELIMITER = b"\x00"
_HEADER = struct.Struct("<BBH")


def crc16_reference(data: bytes) -> int:
    """CRC-16/CCITT-FALSE, bit by bit as in ``docs/protocol.md`` §2.3 (poly 0x1021, init 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def body(type_id: int, seq: int, payload: bytes = b"", *, version: int = PROTOCOL_VERSION) -> bytes:
    """Header and payload, without CRC: ``version u8 | type u8 | seq u16 LE | payload``."""
    return _HEADER.pack(version, type_id, seq) + payload


def frame(
    type_id: int,
    seq: int,
    payload: bytes = b"",
    *,
    version: int = PROTOCOL_VERSION,
    crc_order: str = "big",
    crc_xor: int = 0,
) -> bytes:
    """A whole frame on the wire, delimiter included.

    ``crc_order`` is ``"big"`` (the spec) or ``"little"`` (the classic mistake); ``crc_xor`` flips CRC
    bits (0 for a good CRC).
    """
    head = body(type_id, seq, payload, version=version)
    crc = (crc16_reference(head) ^ crc_xor) & 0xFFFF
    encoded: bytes = cobs_encode(head + crc.to_bytes(2, "big" if crc_order == "big" else "little"))
    return encoded + DELIMITER


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One delimited run of bytes from the device, as read, and what an independent reading made of it."""

    encoded: bytes  # without the delimiter
    body: bytes | None  # COBS-decoded, or None if not valid COBS

    @property
    def crc_ok(self) -> bool:
        """The last two body bytes are the reference CRC of the rest, big-endian."""
        b = self.body
        return b is not None and len(b) >= 6 and crc16_reference(b[:-2]) == int.from_bytes(b[-2:], "big")

    @property
    def crc_swapped(self) -> bool:
        """The CRC is right but sent little-endian (and the two bytes differ)."""
        b = self.body
        if b is None or len(b) < 6 or b[-1] == b[-2]:
            return False
        return crc16_reference(b[:-2]) == int.from_bytes(b[-2:], "little")

    @property
    def cobs_canonical(self) -> bool:
        """Decoding then re-encoding gives the same bytes (the encoding is unique, §2.2)."""
        return self.body is not None and cobs_encode(self.body) == self.encoded


def split_raw(stream: bytes) -> list[RawFrame]:
    """Split everything read from the device at the delimiters; empty runs are skipped (§3.5)."""
    out: list[RawFrame] = []
    for part in stream.split(DELIMITER)[:-1]:
        if not part:
            continue
        try:
            decoded: bytes | None = cobs_decode(part)
        except CobsDecodeError:
            decoded = None
        out.append(RawFrame(part, decoded))
    return out
