"""Encode one message into a delimited frame; decode one frame body into a message.

Frame on the wire: ``COBS(version u8 | type u8 | seq u16le | payload | crc16 u16be) 0x00``.
The CRC (CRC-16/CCITT-FALSE over version..payload) is sent most-significant byte first so that the CRC
computed over the whole decoded body, CRC included, is zero.
"""

from __future__ import annotations

import operator
import struct
import typing
from binascii import crc_hqx as _crc
from collections.abc import Callable
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
    PREVIOUS_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    UNSOLICITED_SEQ,
)
from .crc import CRC_INIT
from .enums import ErrorCode, Field, MessageType
from .errors import DecodeError, DecodeErrorKind, FieldRangeError, SequenceError
from .fastpath import COMPILED, COMPILED_BY_CLASS, CompiledLayout, FieldSpec
from .messages import Message

_MIN_BODY = HEADER_BYTES + CRC_BYTES
_RAW_KEEP = 32
_FRAME_NEW = tuple.__new__  # Frame(seq, message) without NamedTuple's Python-level __new__

# Per type byte: (header+payload struct, body size, unsolicited?, builder) for the decode fast path.
_DECODE_TABLE: dict[int, tuple[struct.Struct, int, bool, Callable[[tuple[Any, ...]], Message]]] = {
    type_id: (layout.frame_struct, layout.payload_size + _MIN_BODY, layout.unsolicited, layout.build)
    for type_id, layout in COMPILED.items()
}

# Anything the generated packer may raise on a bad field value (UnicodeError is a ValueError).
_PACK_ERRORS = (struct.error, TypeError, ValueError, AttributeError)


class Frame(NamedTuple):
    """A decoded frame: the header's sequence number and the typed message."""

    seq: int
    message: Message


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_value(cls_name: str, spec: FieldSpec, value: Any) -> None:
    """Validate one field for encoding (raises FieldRangeError); the rules of ``docs/protocol.md`` §3.4.

    Mirrors the checks generated in :mod:`.fastpath` plus the integer ranges :mod:`struct` enforces there.
    """
    if spec.text_bytes is not None:
        if (
            not isinstance(value, str)
            or not value.isascii()
            or "\x00" in value
            or len(value) > spec.text_bytes
        ):
            raise FieldRangeError(
                cls_name,
                spec.name,
                value,
                0,
                spec.text_bytes,
                expected=f"an ASCII string of at most {spec.text_bytes} characters, without NUL",
            )
        return
    if spec.code == "?":
        if not isinstance(value, bool):
            raise FieldRangeError(cls_name, spec.name, value, 0, 1, expected="a bool (True or False)")
        return
    if spec.allowed is not None:
        if not (type(value) is spec.python_type or (type(value) is int and value in spec.allowed)):
            raise FieldRangeError(cls_name, spec.name, value, allowed=tuple(sorted(spec.allowed)))
        return
    if spec.flag_mask is not None:
        if not (type(value) in (spec.python_type, int) and value >= 0 and not value & ~spec.flag_mask):
            raise FieldRangeError(
                cls_name,
                spec.name,
                value,
                0,
                spec.flag_mask,
                expected=f"a {spec.python_type.__name__} (or int) with no bits outside 0x{spec.flag_mask:X}",
            )
        return
    assert spec.minimum is not None and spec.maximum is not None
    try:  # struct accepts any integer-like object (one with __index__), except that we refuse bool
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or not spec.minimum <= number <= spec.maximum:
        raise FieldRangeError(cls_name, spec.name, value, spec.minimum, spec.maximum)


def _raise_precise_error(layout: CompiledLayout, message: Message) -> None:
    """Find the first invalid field of ``message`` and raise FieldRangeError for it (slow path)."""
    name = layout.cls.__name__
    for spec in layout.specs:
        _check_value(name, spec, getattr(message, spec.name))


def _check_seq(message: Message, unsolicited: bool, seq: object) -> int:
    """Return the header sequence number for ``message`` or raise SequenceError (slow path)."""
    name = type(message).__name__
    if unsolicited:
        if seq is None or (_is_int(seq) and seq == UNSOLICITED_SEQ):
            return UNSOLICITED_SEQ
        raise SequenceError(f"{name} is unsolicited and must carry seq 0 (or None), not {seq!r}")
    if isinstance(seq, int) and not isinstance(seq, bool) and MIN_REQUEST_SEQ <= seq <= MAX_SEQ:
        return int(seq)
    raise SequenceError(f"{name}.seq = {seq!r} is out of range: must be an integer in [1, 65535]")


def encode(message: Message, seq: int | None = None) -> bytes:
    """Encode ``message`` as one complete frame, delimiter included.

    ``seq`` is required for requests (1-65535) and replies (the request's number); unsolicited messages
    (telemetry, events) always carry 0 and may omit it.

    Raises:
        FieldRangeError: a field does not fit its wire type, is not a member of its enumeration, has the
            wrong Python type (e.g. ``bool`` or ``float`` for an integer), or is text that is not short
            ASCII; it names the message, the field and the allowed range. Nothing is encoded.
        SequenceError: ``seq`` does not fit the message kind.
        TypeError: ``message`` is not a protocol message.
    """
    layout = COMPILED_BY_CLASS.get(message.__class__)
    if layout is None:
        raise TypeError(f"not a protocol message: {type(message).__name__}")
    if layout.unsolicited:
        if seq is not None and not (seq.__class__ is int and seq == UNSOLICITED_SEQ):
            seq = _check_seq(message, True, seq)
        seq = UNSOLICITED_SEQ
    elif not (seq.__class__ is int and MIN_REQUEST_SEQ <= seq <= MAX_SEQ):  # type: ignore[operator,unused-ignore]
        seq = _check_seq(message, False, seq)
    assert seq is not None  # for the type checker: both branches above leave an int
    try:
        body = layout.pack(message, seq)
    except _PACK_ERRORS:
        _raise_precise_error(layout, message)
        raise  # unreachable unless the fast and slow checks disagree (the test suite asserts they agree)
    return bytes(_cobs_encode(body + _crc(body, CRC_INIT).to_bytes(2, "big"))) + DELIMITER


def decode_body(encoded: bytes | bytearray | memoryview) -> Frame | DecodeError:
    """Decode one COBS-encoded frame (without its delimiter). Never raises on any input bytes.

    Returns a :class:`Frame`, or a :class:`DecodeError` whose kind is the first failed check in the order
    of ``docs/protocol.md`` §3.5: COBS, length bounds, CRC, version, type, payload length, sequence rule,
    enumerated values.
    """
    try:
        body = _cobs_decode(encoded)
    except _CobsDecodeError as exc:
        return DecodeError(DecodeErrorKind.BAD_COBS, str(exc), bytes(encoded[:_RAW_KEEP]))
    except BufferError:  # the cobs extension refuses some memoryviews; bytes() copies any buffer
        return decode_body(bytes(encoded))
    size = len(body)
    if _MIN_BODY <= size <= MAX_BODY_BYTES and not _crc(body, CRC_INIT) and body[0] == PROTOCOL_VERSION:
        entry = _DECODE_TABLE.get(body[1])
        if entry is not None and entry[1] == size:
            values = entry[0].unpack_from(body)
            seq = values[2]
            if (seq == UNSOLICITED_SEQ) is entry[2]:
                try:
                    return _FRAME_NEW(Frame, (seq, entry[3](values)))  # type: ignore[no-any-return,unused-ignore]
                except (KeyError, ValueError) as exc:  # undefined enum value or flag bit, bad bool or text
                    layout = COMPILED[body[1]]
                    field, value = _bad_field(layout, values)
                    return DecodeError(
                        DecodeErrorKind.BAD_VALUE,
                        f"{layout.cls.__name__}: {exc!r}",
                        bytes(encoded[:_RAW_KEEP]),
                        seq,
                        body[1],
                        version=body[0],
                        payload_bytes=layout.payload_size,
                        field=field,
                        value=value,
                    )
    return _diagnose(encoded, body)


def _bad_field(layout: CompiledLayout, values: tuple[Any, ...]) -> tuple[str | None, int | None]:
    """The first field of an unpacked frame holding an undefined value, and that raw value (None for text)."""
    for spec, raw in zip(layout.specs, values[3:], strict=True):
        if spec.allowed is not None and raw not in spec.allowed:
            return spec.name, int(raw)
        if spec.flag_mask is not None and raw & ~spec.flag_mask:
            return spec.name, int(raw)
        if spec.code == "?" and raw not in (0, 1):
            return spec.name, int(raw)
        if spec.text_bytes is not None:
            text = bytes(raw).rstrip(b"\x00")
            if b"\x00" in text or not text.isascii():
                return spec.name, None
    return None, None


def encode_version_refusal(request_type: int, seq: int, version: int = PREVIOUS_PROTOCOL_VERSION) -> bytes:
    """The frame a version-2 device answers a version-1 request with (``docs/protocol.md`` §9).

    A version-1 ``Nack`` (its layout is byte for byte the version-2 one, only header byte 0 differs):
    ``request_type``, code ``UNSUPPORTED``, field ``NONE``, value = the peer's version, minimum = maximum
    = :data:`PROTOCOL_VERSION`. Every value is one a version-1 host decodes.

    Raises:
        ValueError: ``version`` is not :data:`PREVIOUS_PROTOCOL_VERSION` (no other layout is known) or
            ``seq`` / ``request_type`` are out of range.
    """
    if version != PREVIOUS_PROTOCOL_VERSION:
        raise ValueError(f"version = {version!r} is out of range: only {PREVIOUS_PROTOCOL_VERSION} is known")
    if not (MIN_REQUEST_SEQ <= seq <= MAX_SEQ and 0 <= request_type <= 0xFF):
        raise ValueError(f"seq = {seq!r} / request_type = {request_type!r} is out of range")
    layout = COMPILED[int(MessageType.NACK)]
    body = layout.frame_struct.pack(
        version,
        int(MessageType.NACK),
        seq,
        request_type,
        int(ErrorCode.UNSUPPORTED),
        int(Field.NONE),
        version,
        PROTOCOL_VERSION,
        PROTOCOL_VERSION,
    )
    return bytes(_cobs_encode(body + _crc(body, CRC_INIT).to_bytes(2, "big")) + DELIMITER)


def encode_version_probe(seq: int, version: int = PREVIOUS_PROTOCOL_VERSION) -> bytes:
    """A version-1 ``Identify`` frame (header byte 0 = ``version``, type 0x01, empty payload).

    A host sends it when a device does not answer ``OpenSession``: a version-1 device answers it with a
    version-1 IdentityReport, which the host's decoder reports as ``WRONG_VERSION`` with ``version`` 1, so
    the host can name the device's version (``docs/protocol.md`` §9). Identify changes nothing on any
    device; a version-2 device answers the probe with its version refusal.

    Raises:
        ValueError: ``seq`` is not in 1..65535 or ``version`` is this version.
    """
    if not MIN_REQUEST_SEQ <= seq <= MAX_SEQ or version == PROTOCOL_VERSION or not 0 <= version <= 0xFF:
        raise ValueError(f"seq = {seq!r} / version = {version!r} is out of range")
    body = bytes([version, int(MessageType.IDENTIFY)]) + seq.to_bytes(2, "little")
    return bytes(_cobs_encode(body + _crc(body, CRC_INIT).to_bytes(2, "big")) + DELIMITER)


def _diagnose(encoded: bytes | bytearray | memoryview, body: bytes) -> DecodeError:
    """Name the first check a COBS-decoded body fails (slow path of :func:`decode_body`)."""
    raw = bytes(encoded[:_RAW_KEEP])
    size = len(body)
    if size < _MIN_BODY:
        return DecodeError(DecodeErrorKind.TOO_SHORT, f"{size} bytes", raw, payload_bytes=size)
    if size > MAX_BODY_BYTES:
        return DecodeError(DecodeErrorKind.OVERSIZE, f"{size} bytes", raw, payload_bytes=size)
    if _crc(body, CRC_INIT):
        return DecodeError(DecodeErrorKind.BAD_CRC, "CRC mismatch", raw)
    version = body[0]
    type_id = body[1]
    seq = body[2] | (body[3] << 8)
    if version != PROTOCOL_VERSION:
        detail = f"version {version}, expected {PROTOCOL_VERSION}"
        return DecodeError(DecodeErrorKind.WRONG_VERSION, detail, raw, seq, type_id, version=version)
    payload = size - _MIN_BODY
    layout = COMPILED.get(type_id)
    if layout is None:
        detail = f"type 0x{type_id:02X}"
        return DecodeError(
            DecodeErrorKind.UNKNOWN_TYPE, detail, raw, seq, type_id, version=version, payload_bytes=payload
        )
    if payload != layout.payload_size:
        return DecodeError(
            DecodeErrorKind.BAD_LENGTH,
            f"{layout.cls.__name__} payload is {payload} bytes, expected {layout.payload_size}",
            raw,
            seq,
            type_id,
            version=version,
            payload_bytes=payload,
            expected_bytes=layout.payload_size,
        )
    detail = f"{layout.cls.__name__} with seq {seq}"
    return DecodeError(
        DecodeErrorKind.BAD_SEQUENCE, detail, raw, seq, type_id, version=version, payload_bytes=payload
    )


def field_enum(message: Message, name: str) -> type[IntEnum] | None:
    """Return the enumeration type of a field, or None (used by documentation and vector tooling)."""
    layout = COMPILED_BY_CLASS[type(message)]
    for spec in layout.specs:
        if spec.name == name and spec.allowed is not None:
            return typing.cast(type[IntEnum], spec.python_type)
    return None
