"""Sans-I/O core of the iontodrive wire protocol (version 2).

No serial ports, threads or clocks live here: :func:`encode` turns a message into bytes, and
:class:`Decoder` turns bytes into :class:`Frame` values and :class:`DecodeError` values. Both the driver
and the firmware simulator use this package. The specification is ``docs/protocol.md``.
"""

from . import messages
from .codec import Frame, decode_body, encode, encode_version_probe, encode_version_refusal
from .constants import (
    DEFAULT_REPLY_TIMEOUT_MS,
    DEFAULT_RETRIES,
    DEFAULT_TELEMETRY_HZ,
    DEFAULT_WATCHDOG_MS,
    HEARTBEAT_DIVISOR,
    MAX_FRAME_BYTES,
    MAX_HOST_NONCE,
    MAX_PAYLOAD_BYTES,
    MAX_PROBE_CURRENT_UA,
    MAX_SEQ,
    MAX_WATCHDOG_MS,
    MIN_WATCHDOG_MS,
    OPEN_CIRCUIT_OHM,
    PREVIOUS_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    REPLY_CACHE_SIZE,
    UNSOLICITED_SEQ,
)
from .crc import crc16_ccitt_false
from .decoder import Decoder
from .enums import (
    ContactVerdict,
    DeviceState,
    ErrorCode,
    EventCode,
    Field,
    MessageKind,
    MessageType,
    Polarity,
    StatusFlags,
    Waveform,
    WaveformSet,
)
from .errors import DecodeError, DecodeErrorKind, EncodeError, FieldRangeError, ProtocolError, SequenceError
from .fastpath import trusted_constructor
from .messages import *  # noqa: F403 - every message class; a new one is exported with no edit here
from .sequencing import ReplyCache, SequenceCounter

__all__ = [
    "DEFAULT_REPLY_TIMEOUT_MS",
    "DEFAULT_RETRIES",
    "DEFAULT_TELEMETRY_HZ",
    "DEFAULT_WATCHDOG_MS",
    "HEARTBEAT_DIVISOR",
    "MAX_FRAME_BYTES",
    "MAX_HOST_NONCE",
    "MAX_PAYLOAD_BYTES",
    "MAX_PROBE_CURRENT_UA",
    "MAX_SEQ",
    "MAX_WATCHDOG_MS",
    "MIN_WATCHDOG_MS",
    "OPEN_CIRCUIT_OHM",
    "PREVIOUS_PROTOCOL_VERSION",
    "PROTOCOL_VERSION",
    "REPLY_CACHE_SIZE",
    "UNSOLICITED_SEQ",
    "ContactVerdict",
    "DecodeError",
    "DecodeErrorKind",
    "Decoder",
    "DeviceState",
    "EncodeError",
    "ErrorCode",
    "EventCode",
    "Field",
    "FieldRangeError",
    "Frame",
    "MessageKind",
    "MessageType",
    "Polarity",
    "ProtocolError",
    "ReplyCache",
    "SequenceCounter",
    "SequenceError",
    "StatusFlags",
    "Waveform",
    "WaveformSet",
    "crc16_ccitt_false",
    "decode_body",
    "encode",
    "encode_version_probe",
    "encode_version_refusal",
    "trusted_constructor",
]
__all__ += messages.__all__
