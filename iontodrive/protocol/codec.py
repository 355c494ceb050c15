"""Encode one message into a delimited frame; decode one frame body into a message.

Frame on the wire: ``COBS(version u8 | type u8 | seq u16le | payload | crc16 u16be) 0x00``.
The CRC (CRC-16/CCITT-FALSE over version..payload) is sent most-significant byte first so that the CRC
computed over the whole decoded body, CRC included, is zero.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any, NamedTuple

from cobs.cobs import DecodeError as _CobsDecodeError
from cobs.cobs import decode as _cobs_decode
from cobs.cobs import encode as _cobs_encode

from .constants import (
    CRC_BYTES,
    DELIMITER,
    HEADER_BYTES,
    MAX_BODY_BYTES,
    MAX_SEQ,
    MIN_REQUEST_SEQ,
    PROTOCOL_VERSION,
    UNSOLICITED_SEQ,
)
from .crc import crc16_ccitt_false
from .enums import MessageKind, MessageType
from .errors import DecodeError, DecodeErrorKind, FieldRangeError, SequenceError
from .fastpath import COMPILED, COMPILED_BY_CLASS, CompiledLayout, FieldSpec, InvalidFieldValue
from .messages import Message

_MIN_BODY = HEADER_BYTES + CRC_BYTES
_RAW_KEEP = 32

# Per type byte: 0 request, 1 reply, 2 unsolicited (MessageKind values), for the sequence rule.
_KIND_BY_TYPE: dict[int, int] = {t: int(MessageType(t).kind) for t in COMPILED}


class Frame(NamedTuple):
    """A decoded frame: the header's sequence number and the typed message."""

    seq: int
    message: Message


def _check_value(cls_name: str, spec: FieldSpec, value: Any) -> Any:
    """Validate one field for encoding and return its wire representation (raises FieldRangeError)."""
    if spec.text_bytes is not None:
        if not isinstance(value, str) or not value.isascii() or len(value) > spec.text_bytes:
            raise FieldRangeError(cls_name, spec.name, value, 0, spec.text_bytes)
        return value.encode("ascii")
    if isinstance(value, bool) and spec.code != "?":
        raise FieldRangeError(cls_name, spec.name, value, spec.minimum, spec.maximum)
    if not isinstance(value, int):
        raise FieldRangeError(cls_name, spec.name, value, spec.minimum, spec.maximum)
    if spec.allowed is not None and value not in spec.allowed:
        raise FieldRangeError(cls_name, spec.name, value, allowed=tuple(sorted(spec.allowed)))
    if spec.flag_mask is not None and value & ~spec.flag_mask:
        raise FieldRangeError(cls_name, spec.name, value, 0, spec.flag_mask)
    assert spec.minimum is not None and spec.maximum is not None
    if not spec.minimum <= value <= spec.maximum:
        raise FieldRangeError(cls_name, spec.name, value, spec.minimum, spec.maximum)
    return value


def _raise_precise_error(layout: CompiledLayout, message: Message) -> None:
    """Find the first invalid field of ``message`` and raise FieldRangeError for it (slow path)."""
    name = layout.cls.__name__
    for spec in layout.specs:
        _check_value(name, spec, getattr(message, spec.name))


def encode(message: Message, seq: int | None = None) -> bytes:
    """Encode ``message`` as one complete frame, delimiter included.

    ``seq`` is required for requests (1-65535) and replies (the request's number); unsolicited messages
    (telemetry, events) always carry 0 and may omit it.

    Raises:
        FieldRangeError: a field does not fit its wire type, is not a member of its enumeration, or is not
            an integer; nothing is encoded.
        SequenceError: ``seq`` does not fit the message kind.
        TypeError: ``message`` is not a protocol message.
    """
    layout = COMPILED_BY_CLASS.get(type(message))
    if layout is None:
        raise TypeError(f"not a protocol message: {type(message).__name__}")
    type_id = message.TYPE
    if seq is None:
        seq = UNSOLICITED_SEQ
    if type_id >= 0xC0:
        if seq != UNSOLICITED_SEQ:
            raise SequenceError(f"{type(message).__name__} is unsolicited and must carry seq 0, not {seq!r}")
    elif not (isinstance(seq, int) and MIN_REQUEST_SEQ <= seq <= MAX_SEQ):
        raise SequenceError(f"{type(message).__name__}.seq = {seq!r} is out of range: must be in [1, 65535]")
    try:
        body = layout.frame_struct.pack(PROTOCOL_VERSION, type_id, seq, *layout.getter(message))
    except (struct.error, InvalidFieldValue, AttributeError, UnicodeError):
        _raise_precise_error(layout, message)
        raise  # unreachable unless the fast and slow checks disagree
    return _cobs_encode(body + crc16_ccitt_false(body).to_bytes(2, "big")) + DELIMITER


def decode_body(encoded: bytes) -> Frame | DecodeError:
    """Decode one COBS-encoded frame (without its delimiter). Never raises on any input."""
    try:
        body = _cobs_decode(encoded)
    except _CobsDecodeError as exc:
        return DecodeError(DecodeErrorKind.BAD_COBS, str(exc), bytes(encoded[:_RAW_KEEP]))
    size = len(body)
    if size < _MIN_BODY:
        return DecodeError(DecodeErrorKind.TOO_SHORT, f"{size} bytes", bytes(encoded[:_RAW_KEEP]))
    if size > MAX_BODY_BYTES:
        return DecodeError(DecodeErrorKind.OVERSIZE, f"{size} bytes", bytes(encoded[:_RAW_KEEP]))
    if crc16_ccitt_false(body):
        return DecodeError(DecodeErrorKind.BAD_CRC, "CRC mismatch", bytes(encoded[:_RAW_KEEP]))
    version = body[0]
    type_id = body[1]
    seq = body[2] | (body[3] << 8)
    if version != PROTOCOL_VERSION:
        return DecodeError(
            DecodeErrorKind.WRONG_VERSION,
            f"version {version}, expected {PROTOCOL_VERSION}",
            bytes(encoded[:_RAW_KEEP]),
            seq,
            type_id,
        )
    layout = COMPILED.get(type_id)
    if layout is None:
        return DecodeError(
            DecodeErrorKind.UNKNOWN_TYPE, f"type 0x{type_id:02X}", bytes(encoded[:_RAW_KEEP]), seq, type_id
        )
    if size - _MIN_BODY != layout.payload_size:
        return DecodeError(
            DecodeErrorKind.BAD_LENGTH,
            f"{layout.cls.__name__} payload is {size - _MIN_BODY} bytes, expected {layout.payload_size}",
            bytes(encoded[:_RAW_KEEP]),
            seq,
            type_id,
        )
    kind = _KIND_BY_TYPE[type_id]
    if (seq == UNSOLICITED_SEQ) != (kind == MessageKind.UNSOLICITED):
        return DecodeError(
            DecodeErrorKind.BAD_SEQUENCE,
            f"{layout.cls.__name__} with seq {seq}",
            bytes(encoded[:_RAW_KEEP]),
            seq,
            type_id,
        )
    try:
        message = layout.build(layout.frame_struct.unpack_from(body))
    except (KeyError, UnicodeDecodeError) as exc:
        return DecodeError(
            DecodeErrorKind.BAD_VALUE,
            f"{layout.cls.__name__}: {exc!r}",
            bytes(encoded[:_RAW_KEEP]),
            seq,
            type_id,
        )
    return Frame(seq, message)


def field_enum(message: Message, name: str) -> type[IntEnum] | None:
    """Return the enumeration type of a field, or None (used by documentation and vector tooling)."""
    layout = COMPILED_BY_CLASS[type(message)]
    for spec in layout.specs:
        if spec.name == name and spec.allowed is not None:
            return spec.python_type  # type: ignore[return-value]
    return None
