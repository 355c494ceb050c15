"""Load a host build of the generated C codec into Python through ``ctypes``.

Messages cross the boundary as arrays of ``ionto_test_value_t`` (see :mod:`.emit_shim`), converted with
the *Python* definitions of now. A library generated from older definitions is refused at load
(:class:`StaleCodecError`, by its schema fingerprint) unless ``check_fingerprint=False``, with which it
still runs safely and its results simply differ from Python's: the differential tests use that to show
that a stale side is caught.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import MESSAGE_BY_TYPE
from ..codec import Frame
from ..errors import DecodeError, DecodeErrorKind
from ..fastpath import COMPILED, COMPILED_BY_CLASS, FieldSpec
from ..messages import Message
from .emit_c import ENCODE_STATUSES, HEADER_KNOWN_KINDS
from .model import load_schema

_U64 = (1 << 64) - 1
ENCODE_STATUS = tuple(name for name, _ in ENCODE_STATUSES)
"""``ionto_encode_status_t`` by value; ``ionto_test_encode`` returns -1 for a wrong field count."""

_DECODE_KINDS = tuple(DecodeErrorKind)  # C status k (1-based) is the k-th kind; 0 is OK
DECODE_PENDING = len(_DECODE_KINDS) + 1
C_DETAIL = "C codec"


class StaleCodecError(RuntimeError):
    """The C library was generated from other protocol definitions than the Python ones loaded."""


class CEncodeError(ValueError):
    """The C encoder refused a frame; ``status`` is the ``ionto_encode_status_t`` name."""

    def __init__(self, status: str) -> None:
        super().__init__(f"C encoder: {status}")
        self.status = status


def _wire_number(spec: FieldSpec, value: Any) -> int:
    return int(value) & _U64


class CCodec:
    """The C codec of one shared object (built by :func:`.toolchain.build_host_library`)."""

    def __init__(self, library: Path, *, check_fingerprint: bool = True, exact_buffers: bool = False) -> None:
        """Load ``library``. With ``exact_buffers``, every input is copied into a ``malloc`` block of exactly
        its length first, so that a sanitizer sees any read past its end (bytes objects have slack)."""
        lib = ctypes.CDLL(str(library))
        self._exact = _ExactBuffers() if exact_buffers else None
        self.library = library
        self._lib = lib
        lib.ionto_test_sizes.restype = ctypes.c_size_t
        lib.ionto_test_sizes.argtypes = [ctypes.c_size_t]
        value_size, frame_size, decoder_size, text_bytes = (lib.ionto_test_sizes(i) for i in range(4))

        class Value(ctypes.Structure):
            _fields_ = [("number", ctypes.c_uint64), ("text", ctypes.c_char * (text_bytes + 1))]

        if ctypes.sizeof(Value) != value_size:
            raise StaleCodecError(
                f"ionto_test_value_t is {value_size} bytes, ctypes says {ctypes.sizeof(Value)}"
            )
        self._value_type = Value
        self._values = (Value * 64)()
        self._frame = ctypes.create_string_buffer(frame_size)
        self.frame_size = frame_size
        self.decoder_size = decoder_size
        self._out = ctypes.create_string_buffer(256)
        self._out_len = ctypes.c_size_t()
        lib.ionto_test_fingerprint.restype = ctypes.c_uint32
        self.fingerprint = int(lib.ionto_test_fingerprint())
        expected = load_schema().fingerprint
        if check_fingerprint and self.fingerprint != expected:
            raise StaleCodecError(
                f"{library} was generated from other definitions (fingerprint 0x{self.fingerprint:08X}, "
                f"Python's 0x{expected:08X}): regenerate with python -m iontodrive.protocol.codegen"
            )
        lib.ionto_test_encode.restype = ctypes.c_int
        lib.ionto_test_encode.argtypes = [
            ctypes.c_uint8,
            ctypes.c_uint16,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_size_t),
        ]
        lib.ionto_test_values.restype = ctypes.c_int
        lib.ionto_test_values.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.ionto_decode_body.restype = ctypes.c_int
        lib.ionto_decode_body.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        lib.ionto_decoder_init.argtypes = [ctypes.c_void_p]
        lib.ionto_decoder_init.restype = None
        lib.ionto_decoder_feed.restype = ctypes.c_size_t
        lib.ionto_decoder_feed.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_void_p,
        ]
        for name in ("ionto_test_decode_loop", "ionto_test_feed_loop"):
            getattr(lib, name).restype = ctypes.c_uint32
            getattr(lib, name).argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32]
        lib.ionto_test_encode_loop.restype = ctypes.c_uint32
        lib.ionto_test_encode_loop.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        self._header = (ctypes.c_uint32 * 6)()
        lib.ionto_test_header.restype = None
        lib.ionto_test_header.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.ionto_payload_bytes.restype = ctypes.c_bool
        lib.ionto_payload_bytes.argtypes = [ctypes.c_uint32, ctypes.POINTER(ctypes.c_size_t)]
        lib.ionto_crc16.restype = ctypes.c_uint16
        lib.ionto_crc16.argtypes = [ctypes.c_char_p, ctypes.c_size_t]

    # ------------------------------------------------------------------------------------------ encode

    def encode_values(self, type_id: int, seq: int, values: Sequence[int | bytes]) -> tuple[str, bytes]:
        """Encode raw wire values (ints, or bytes for text) with the C encoder: (status name, frame)."""
        for index, value in enumerate(values):
            if isinstance(value, bytes):
                self._values[index].number = 0
                self._values[index].text = value
            else:
                self._values[index].number = value & _U64
        status = self._lib.ionto_test_encode(
            type_id, seq, self._values, len(values), self._out, len(self._out), ctypes.byref(self._out_len)
        )
        if status < 0:
            return "FIELD_COUNT", b""
        return ENCODE_STATUS[status], self._out.raw[: self._out_len.value]

    def message_values(self, message: Message) -> list[int | bytes]:
        """A message's fields as the shim takes them (text as ASCII bytes, signed in two's complement)."""
        values: list[int | bytes] = []
        for spec in COMPILED_BY_CLASS[type(message)].specs:
            value = getattr(message, spec.name)
            values.append(value.encode("ascii") if spec.text_bytes is not None else _wire_number(spec, value))
        return values

    def encode(self, message: Message, seq: int | None = None) -> bytes:
        """Encode like :func:`iontodrive.protocol.encode`, with the C encoder; :class:`CEncodeError`."""
        status, frame = self.encode_values(int(type(message).TYPE), seq or 0, self.message_values(message))
        if status != "OK":
            raise CEncodeError(status)
        return frame

    # ------------------------------------------------------------------------------------------ decode

    def _result(self, status: int) -> Frame | DecodeError:
        """Turn a C decode status and the frame buffer into what the Python codec returns."""
        self._lib.ionto_test_header(self._frame, self._header)
        type_id, version, seq, payload_bytes, bad_field, bad_value = self._header
        if status != 0:
            kind = _DECODE_KINDS[status - 1]
            if kind.name not in HEADER_KNOWN_KINDS:
                return DecodeError(kind, C_DETAIL)
            if kind is DecodeErrorKind.WRONG_VERSION:
                return DecodeError(kind, C_DETAIL, b"", seq, type_id, version=version)
            expected = ctypes.c_size_t()
            known = bool(self._lib.ionto_payload_bytes(type_id, ctypes.byref(expected)))
            field: str | None = None
            value: int | None = None
            if kind is DecodeErrorKind.BAD_VALUE:
                layout = COMPILED.get(type_id)
                if layout is None or bad_field >= len(layout.specs):
                    raise StaleCodecError(f"C reports field {bad_field} of type 0x{type_id:02X}")
                spec = layout.specs[bad_field]
                field, value = spec.name, None if spec.text_bytes is not None else int(bad_value)
            return DecodeError(
                kind,
                C_DETAIL,
                b"",
                seq,
                type_id,
                version=version,
                payload_bytes=payload_bytes,
                expected_bytes=int(expected.value) if known and kind is DecodeErrorKind.BAD_LENGTH else None,
                field=field,
                value=value,
            )
        count = self._lib.ionto_test_values(self._frame, self._values, len(self._values))
        layout = COMPILED.get(type_id)
        if layout is None or count != len(layout.specs):
            raise StaleCodecError(
                f"C decoded type 0x{type_id:02X} with {count} fields; Python knows otherwise"
            )
        fields: dict[str, Any] = {}
        for index, spec in enumerate(layout.specs):
            fields[spec.name] = self._python_value(spec, self._values[index])
        return Frame(seq, MESSAGE_BY_TYPE[type_id](**fields))

    def _python_value(self, spec: FieldSpec, value: Any) -> Any:
        if spec.text_bytes is not None:
            return bytes(value.text).split(b"\x00", 1)[0].decode("ascii")
        number = int(value.number)
        if spec.code == "?":
            return bool(number)
        if spec.minimum is not None and spec.minimum < 0 and number > spec.maximum:  # type: ignore[operator]
            number -= 1 << 64
        if spec.allowed is not None or spec.flag_mask is not None:
            return spec.python_type(number)
        return number

    def decode_body(self, encoded: bytes) -> Frame | DecodeError:
        """Like :func:`iontodrive.protocol.decode_body` (``detail`` and ``raw`` are not reproduced)."""
        if self._exact is None:
            return self._result(self._lib.ionto_decode_body(encoded, len(encoded), self._frame))
        with self._exact.copy(encoded) as pointer:
            return self._result(self._lib.ionto_decode_body(pointer, len(encoded), self._frame))

    def decoder(self) -> CDecoder:
        return CDecoder(self)

    # ------------------------------------------------------------------------------------------- bench

    def decode_loop(self, encoded: bytes, n: int) -> int:
        """Decode the same frame body ``n`` times inside C; returns how many decoded OK."""
        return int(self._lib.ionto_test_decode_loop(encoded, len(encoded), n))

    def feed_loop(self, stream: bytes, n: int) -> int:
        """Feed the stream through one C stream decoder ``n`` times; returns the frames decoded OK."""
        return int(self._lib.ionto_test_feed_loop(stream, len(stream), n))

    def encode_loop(self, frame: bytes, n: int) -> int:
        """Encode, ``n`` times inside C, the frame that the C decoder makes of ``frame`` (delimiter "
        "included)."""
        status = self._lib.ionto_decode_body(frame[:-1], len(frame) - 1, self._frame)
        if status != 0:
            raise CEncodeError(f"decode status {status}")
        return int(self._lib.ionto_test_encode_loop(self._frame, n))

    def crc16(self, data: bytes) -> int:
        return int(self._lib.ionto_crc16(data, len(data)))

    # ----------------------------------------------------------------------- request helpers and rules

    def reply_type(self, request_type: int) -> int | None:
        """``ionto_reply_type``: the type byte of the request's data reply, or None."""
        reply = ctypes.c_uint8()
        fn = self._lib.ionto_reply_type
        fn.restype, fn.argtypes = ctypes.c_bool, [ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint8)]
        return int(reply.value) if fn(request_type, ctypes.byref(reply)) else None

    def is_safety_request(self, type_id: int) -> bool:
        fn = self._lib.ionto_is_safety_request
        fn.restype, fn.argtypes = ctypes.c_bool, [ctypes.c_uint32]
        return bool(fn(type_id))

    def nack_field(self, type_id: int, index: int) -> int:
        """``ionto_nack_field``: the Field value a Nack names for field ``index`` of a request."""
        fn = self._lib.ionto_nack_field
        fn.restype, fn.argtypes = ctypes.c_uint8, [ctypes.c_uint32, ctypes.c_uint32]
        return int(fn(type_id, index))

    def is_request(self, type_id: int) -> bool:
        fn = self._lib.ionto_is_request
        fn.restype, fn.argtypes = ctypes.c_bool, [ctypes.c_uint32]
        return bool(fn(type_id))

    def request_rule(self, request_type: int, state: int) -> tuple[int, bool] | None:
        """``ionto_request_rule``: (refusal code or 0, needs zero output), or None outside the table."""

        class Rule(ctypes.Structure):
            _fields_ = [("refusal", ctypes.c_uint8), ("needs_zero_output", ctypes.c_bool)]

        rule = Rule()
        fn = self._lib.ionto_request_rule
        fn.restype, fn.argtypes = ctypes.c_bool, [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p]
        if not fn(request_type, state, ctypes.byref(rule)):
            return None
        return int(rule.refusal), bool(rule.needs_zero_output)

    def encode_version_refusal(self, request_type: int, seq: int) -> tuple[str, bytes]:
        fn = self._lib.ionto_encode_version_refusal
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_uint8, ctypes.c_uint16, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        status = fn(request_type, seq, self._out, len(self._out), ctypes.byref(self._out_len))
        return ENCODE_STATUS[status], self._out.raw[: self._out_len.value]


class CDecoder:
    """The C stream decoder with :class:`iontodrive.protocol.Decoder`'s ``feed`` interface."""

    def __init__(self, codec: CCodec) -> None:
        self._codec = codec
        self._state = ctypes.create_string_buffer(codec.decoder_size)
        self._status = ctypes.c_int()
        codec._lib.ionto_decoder_init(self._state)

    @property
    def counts(self) -> tuple[int, int, int]:
        """(frames_ok, frames_bad, pending bytes), as ``Decoder`` has them."""
        out = (ctypes.c_uint32 * 3)()
        fn = self._codec._lib.ionto_test_counts
        fn.restype, fn.argtypes = None, [ctypes.c_void_p, ctypes.c_void_p]
        fn(self._state, out)
        return int(out[0]), int(out[1]), int(out[2])

    def feed(self, data: bytes) -> list[Frame | DecodeError]:
        codec = self._codec
        results: list[Frame | DecodeError] = []
        at = 0
        exact = codec._exact
        while at < len(data):
            chunk = data[at:]
            if exact is None:
                at += codec._lib.ionto_decoder_feed(
                    self._state, chunk, len(chunk), ctypes.byref(self._status), codec._frame
                )
            else:
                with exact.copy(chunk) as pointer:
                    at += codec._lib.ionto_decoder_feed(
                        self._state, pointer, len(chunk), ctypes.byref(self._status), codec._frame
                    )
            if self._status.value != DECODE_PENDING:
                results.append(codec._result(self._status.value))
        return results


class _ExactBuffers:
    """``malloc``'d copies of inputs, exactly as long as the data (freed on leaving the ``with``)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None)
        self._malloc = libc.malloc
        self._malloc.restype = ctypes.c_void_p
        self._malloc.argtypes = [ctypes.c_size_t]
        self._free = libc.free
        self._free.argtypes = [ctypes.c_void_p]
        self._free.restype = None

    @contextlib.contextmanager
    def copy(self, data: bytes) -> Iterator[int]:
        pointer = self._malloc(max(len(data), 1))
        if not pointer:
            raise MemoryError(len(data))
        try:
            ctypes.memmove(pointer, data, len(data))
            yield pointer
        finally:
            self._free(pointer)
