"""Errors of the protocol core.

Two families, kept apart as h11 keeps local and remote errors apart:

* :class:`EncodeError` (an exception) -- *we* tried to send something that cannot be represented. Raised by
  :func:`iontodrive.protocol.encode`; nothing is emitted.
* :class:`DecodeError` (a value, not an exception) -- the *peer* sent bytes that are not a valid frame.
  The :class:`~iontodrive.protocol.Decoder` returns these alongside messages and never raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ProtocolError(Exception):
    """Base of every exception raised by the protocol core."""


class EncodeError(ProtocolError, ValueError):
    """A message could not be encoded."""


class FieldRangeError(EncodeError):
    """A field value does not fit its wire type or is not a member of its enumeration.

    Attributes name the message class, the field, the offending value and the allowed range (inclusive), or
    the allowed members for enumerations. ``expected`` replaces the generated description of what is
    allowed where a range alone would mislead (text, booleans, flag sets); for text, ``minimum``/``maximum``
    bound the length.
    """

    def __init__(
        self,
        message: str,
        field: str,
        value: object,
        minimum: int | None = None,
        maximum: int | None = None,
        allowed: tuple[int, ...] | None = None,
        expected: str | None = None,
    ) -> None:
        self.message = message
        self.field = field
        self.value = value
        self.minimum = minimum
        self.maximum = maximum
        self.allowed = allowed
        if expected is not None:
            limits = expected
        elif allowed is not None:
            limits = f"one of {list(allowed)}"
        else:
            limits = f"an integer in [{minimum}, {maximum}]"
        super().__init__(f"{message}.{field} = {value!r} is out of range: must be {limits}")


class SequenceError(EncodeError):
    """The sequence number does not fit the message kind (requests need 1-65535, unsolicited 0)."""


class DecodeErrorKind(Enum):
    BAD_COBS = "bad_cobs"  # the frame is not valid COBS
    TOO_SHORT = "too_short"  # fewer bytes than a header and a CRC
    OVERSIZE = "oversize"  # more than MAX_FRAME_BYTES before a delimiter
    BAD_CRC = "bad_crc"
    WRONG_VERSION = "wrong_version"
    UNKNOWN_TYPE = "unknown_type"
    BAD_LENGTH = "bad_length"  # payload length does not match the message's layout
    BAD_VALUE = "bad_value"  # an enumerated field holds a value with no meaning
    BAD_SEQUENCE = "bad_sequence"  # unsolicited message with a sequence number, or request with 0


@dataclass(frozen=True, slots=True)
class DecodeError:
    """A frame that failed to decode, returned as a value by the decoder.

    ``raw`` holds at most the first 32 bytes of the offending frame (before COBS decoding) for diagnosis;
    ``seq`` and ``type_id`` are set when the header could be read. What the check found is carried as
    values, so that no caller parses ``detail`` (text for people):

    * ``version``: the header's protocol version (set from ``WRONG_VERSION`` on, i.e. when the CRC held);
    * ``payload_bytes``: the payload length received (``BAD_LENGTH``, ``BAD_VALUE``, ``BAD_SEQUENCE``) or
      the body length (``TOO_SHORT``, ``OVERSIZE`` of a decoded body);
    * ``expected_bytes``: the payload length the type's layout has (``BAD_LENGTH``);
    * ``field`` and ``value``: the first field holding an undefined value and that raw value
      (``BAD_VALUE``).
    """

    kind: DecodeErrorKind
    detail: str
    raw: bytes = b""
    seq: int | None = None
    type_id: int | None = None
    version: int | None = None
    payload_bytes: int | None = None
    expected_bytes: int | None = None
    field: str | None = None
    value: int | None = None
