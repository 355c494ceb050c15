"""The generated C codec against the Python reference: generation is current, the code builds under the
strict warning set, every golden vector in both directions, and hypothesis differential tests (valid
messages both ways, field and sequence rules on encode, garbage, truncated and bit-flipped streams).

The same differential tests run again in a child process against an ASan/UBSan build
(``test_differential_under_sanitizers``), and against a stale build in ``test_c_stale.py``.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from c_support import (
    ROOT,
    SANITIZED_ENV,
    build_or_skip,
    c_codec_for_tests,
    child_environment,
    pytest_command,
)
from hypothesis import given
from hypothesis import strategies as st
from protocol_strategies import ANY_FRAME, frames_of

from iontodrive.protocol import (
    MESSAGE_BY_NAME,
    MESSAGE_CLASSES,
    PROTOCOL_VERSION,
    DecodeError,
    Decoder,
    EncodeError,
    Frame,
    MessageKind,
    crc16_ccitt_false,
    decode_body,
    encode,
)
from iontodrive.protocol.codegen.binding import CCodec
from iontodrive.protocol.codegen.emit_c import HEADER_KNOWN_KINDS
from iontodrive.protocol.fastpath import COMPILED, COMPILED_BY_CLASS, FieldSpec
from iontodrive.protocol.messages import Message

VECTORS: list[dict[str, Any]] = json.loads((ROOT / "docs" / "vectors.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def c_codec(tmp_path_factory: pytest.TempPathFactory) -> CCodec:
    codec = c_codec_for_tests(tmp_path_factory.mktemp("c-codec"))
    if os.environ.get(SANITIZED_ENV) == "1":
        codec = CCodec(codec.library, check_fingerprint=False, exact_buffers=True)
    return codec


def comparable(item: Frame | DecodeError) -> tuple[Any, ...]:
    """What both codecs must agree on: the frame; or the error's kind, the header it could read and what
    the check found (``version``, ``payload_bytes``, ``expected_bytes``, ``field``, ``value``). The body
    length Python also reports for TOO_SHORT and OVERSIZE is not compared: C reports no header for those."""
    if isinstance(item, Frame):
        return ("frame", item.seq, item.message)
    if item.kind.name not in HEADER_KNOWN_KINDS:
        return ("error", item.kind, item.seq, item.type_id)
    found = (item.version, item.payload_bytes, item.expected_bytes, item.field, item.value)
    return ("error", item.kind, item.seq, item.type_id, *found)


# ------------------------------------------------------------------------------------------ generation


def test_generated_files_are_current() -> None:
    """``--check`` is the gate of ``make test``: it fails when firmware/c lags the Python definitions."""
    result = subprocess.run(
        [sys.executable, "-m", "iontodrive.protocol.codegen", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_check_reports_a_stale_file(tmp_path: Path) -> None:
    from iontodrive.protocol.codegen import check, generate

    generate(tmp_path)
    assert check(tmp_path) == []
    header = tmp_path / "ionto_protocol.h"
    header.write_text(header.read_text(encoding="utf-8").replace("#define", "#define  ", 1), encoding="utf-8")
    problems = check(tmp_path)
    assert len(problems) == 1 and "ionto_protocol.h: stale" in problems[0]


def test_generated_files_carry_the_banner() -> None:
    from iontodrive.protocol.codegen import GENERATED_DIR, render_all

    for name in render_all():
        assert "GENERATED FILE - DO NOT EDIT" in (GENERATED_DIR / name).read_text(encoding="utf-8")[:400]


def test_strict_build_and_sanitized_build(tmp_path: Path) -> None:
    """Both builds pass -std=c99 -Wall -Wextra -Werror -pedantic -Wconversion (and a few more)."""
    build_or_skip(tmp_path / "plain.so")
    build_or_skip(tmp_path / "sanitized.so", sanitize=True)


def test_codec_uses_only_freestanding_headers() -> None:
    from iontodrive.protocol.codegen import GENERATED_DIR

    for name in ("ionto_protocol.h", "ionto_protocol.c"):
        text = (GENERATED_DIR / name).read_text(encoding="utf-8")
        includes = {line.split()[1] for line in text.splitlines() if line.startswith("#include")}
        assert includes <= {"<stdbool.h>", "<stddef.h>", "<stdint.h>", '"ionto_protocol.h"'}, includes
        assert "malloc" not in text


# --------------------------------------------------------------------------------------------- vectors


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{v['name']}-{i}" for i, v in enumerate(VECTORS)])
def test_vector_both_directions(c_codec: CCodec, vector: dict[str, Any]) -> None:
    frame = bytes.fromhex(vector["hex"])
    cls = MESSAGE_BY_NAME[vector["name"]]
    values: list[int | bytes] = []
    for spec in COMPILED_BY_CLASS[cls].specs:
        value = vector["fields"][spec.name]
        values.append(value.encode("ascii") if isinstance(value, str) else int(value))
    status, encoded = c_codec.encode_values(int(cls.TYPE), vector["seq"], values)
    assert (status, encoded.hex()) == ("OK", vector["hex"])
    decoded = c_codec.decode_body(frame[:-1])
    assert isinstance(decoded, Frame), decoded
    assert decoded.seq == vector["seq"]
    assert type(decoded.message) is cls
    for spec in COMPILED_BY_CLASS[cls].specs:
        got = getattr(decoded.message, spec.name)
        assert (got if isinstance(got, bool | str) else int(got)) == vector["fields"][spec.name], spec.name
    assert c_codec.decoder().feed(frame) == [decoded]


def test_every_message_type_has_a_vector() -> None:
    assert {v["name"] for v in VECTORS} == {cls.__name__ for cls in MESSAGE_CLASSES}


def test_crc_check_value(c_codec: CCodec) -> None:
    assert c_codec.crc16(b"123456789") == 0x29B1 == crc16_ccitt_false(b"123456789")


# -------------------------------------------------------------------------------- differential: valid


@given(ANY_FRAME)
def test_differential_valid_messages_both_ways(c_codec: CCodec, frame: tuple[int, Message]) -> None:
    seq, message = frame
    python_bytes = encode(message, seq)
    assert c_codec.encode(message, seq) == python_bytes
    assert c_codec.decode_body(python_bytes[:-1]) == Frame(seq, message)
    assert decode_body(c_codec.encode(message, seq)[:-1]) == Frame(seq, message)


def _extreme_value(spec: FieldSpec, high: bool) -> Any:
    """The largest (or smallest) valid value of a field, in the dataclass's type."""
    if spec.text_bytes is not None:
        return "~" * spec.text_bytes if high else ""
    if spec.code == "?":
        return high
    if spec.allowed is not None:
        members = sorted(spec.python_type, key=int)  # type: ignore[call-overload]
        return members[-1] if high else members[0]
    if spec.flag_mask is not None:
        return spec.python_type(spec.flag_mask if high else 0)
    return spec.maximum if high else spec.minimum


@pytest.mark.parametrize("high", [True, False], ids=["highest", "lowest"])
@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=[cls.__name__ for cls in MESSAGE_CLASSES])
def test_differential_every_type(c_codec: CCodec, cls: type[Message], high: bool) -> None:
    """Every message type, deterministically (hypothesis might not draw each one): each field at the top
    (or bottom) of its range, both directions."""
    specs = COMPILED_BY_CLASS[cls].specs
    message = cls(**{spec.name: _extreme_value(spec, high) for spec in specs})
    seq = 0 if cls.TYPE.kind is MessageKind.UNSOLICITED else (0xFFFF if high else 1)
    python_bytes = encode(message, seq)
    assert c_codec.encode(message, seq) == python_bytes
    assert c_codec.decode_body(python_bytes[:-1]) == Frame(seq, message)


def _raw_field_values(spec: FieldSpec) -> st.SearchStrategy[int | bytes]:
    """Any value the field's wire type holds, valid for the enumeration, bit set or text rule or not."""
    if spec.text_bytes is not None:
        # interior NULs excluded: a C string ends at its first NUL, so C cannot even express that case
        return st.binary(max_size=spec.text_bytes + 1).map(lambda b: b.replace(b"\x00", b"a"))
    if spec.code == "?":
        return st.sampled_from([0, 1])
    assert spec.minimum is not None and spec.maximum is not None
    return st.integers(spec.minimum, spec.maximum)


@st.composite
def raw_frames(draw: st.DrawFn) -> tuple[type[Message], int, list[int | bytes]]:
    cls = draw(st.sampled_from(MESSAGE_CLASSES))
    specs = COMPILED_BY_CLASS[cls].specs
    values = [draw(_raw_field_values(spec)) for spec in specs]
    seq = draw(st.sampled_from([0, 1, 0xFFFF]) | st.integers(0, 0xFFFF))
    return cls, seq, values


def _python_value(spec: FieldSpec, raw: int | bytes) -> Any:
    if isinstance(raw, bytes):
        return raw.decode("latin-1")
    if spec.code == "?":
        return bool(raw)
    return raw


@given(raw_frames())
def test_differential_encoder_rules(
    c_codec: CCodec, case: tuple[type[Message], int, list[int | bytes]]
) -> None:
    """Out-of-enumeration values, undefined bits, long or non-ASCII text, a wrong sequence number: C
    refuses exactly what Python's encode refuses, and what both accept is the same frame."""
    cls, seq, raw = case
    specs = COMPILED_BY_CLASS[cls].specs
    message = cls(**{spec.name: _python_value(spec, value) for spec, value in zip(specs, raw, strict=True)})
    try:
        python_bytes: bytes | None = encode(message, seq)
    except EncodeError:
        python_bytes = None
    status, c_bytes = c_codec.encode_values(int(cls.TYPE), seq, raw)
    assert (status == "OK") == (python_bytes is not None), (status, message, seq)
    if python_bytes is not None:
        assert c_bytes == python_bytes
    else:
        assert status in ("BAD_VALUE", "BAD_SEQUENCE")


# ------------------------------------------------------------------------------ differential: garbage


def _mutated(frame: bytes, data: st.DataObject) -> bytes:
    choice = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "as is"]))
    if choice == "flip":
        at = data.draw(st.integers(0, len(frame) - 1))
        return frame[:at] + bytes([frame[at] ^ (1 << data.draw(st.integers(0, 7)))]) + frame[at + 1 :]
    if choice == "truncate":
        return frame[: data.draw(st.integers(0, len(frame) - 1))]
    if choice == "insert":
        at = data.draw(st.integers(0, len(frame)))
        return frame[:at] + bytes([data.draw(st.integers(0, 255))]) + frame[at:]
    if choice == "delete":
        at = data.draw(st.integers(0, len(frame) - 1))
        return frame[:at] + frame[at + 1 :]
    return frame


_COBS = importlib.import_module("cobs.cobs")  # untyped package: through importlib, typed as a module
_TYPES = sorted(int(cls.TYPE) for cls in MESSAGE_CLASSES)


def _framed(version: int, type_id: int, seq: int, payload: bytes) -> bytes:
    head = bytes([version, type_id]) + seq.to_bytes(2, "little") + payload
    return bytes(_COBS.encode(head + crc16_ccitt_false(head).to_bytes(2, "big"))) + b"\x00"


def _ruled_fields(cls: type[Message]) -> list[int]:
    """Indexes of the fields a receiver checks: enumerations, bit sets, bools and text."""
    specs = COMPILED_BY_CLASS[cls].specs
    return [
        i
        for i, s in enumerate(specs)
        if s.allowed or s.flag_mask is not None or s.minimum is None or s.code == "?"
    ]


_RULED = [cls for cls in MESSAGE_CLASSES if _ruled_fields(cls)]


@st.composite
def undefined_value_frames(draw: st.DrawFn) -> bytes:
    """A valid message's frame with one byte of a checked field replaced: mostly BAD_VALUE."""
    cls = draw(st.sampled_from(_RULED))
    seq, message = draw(typing.cast(Any, frames_of)(cls))  # functools.cache hides the signature
    specs = COMPILED_BY_CLASS[cls].specs
    body = bytearray(_COBS.decode(encode(message, seq)[:-1]))[4:-2]
    index = draw(st.sampled_from(_ruled_fields(cls)))
    sizes = [struct.calcsize("<" + spec.code.replace("?", "B")) for spec in specs]
    body[sum(sizes[:index]) + draw(st.integers(0, sizes[index] - 1))] = draw(st.integers(0, 255))
    return _framed(PROTOCOL_VERSION, int(cls.TYPE), seq, bytes(body))


@st.composite
def crafted_frames(draw: st.DrawFn) -> bytes:
    """Frames with a good CRC and COBS but any header and payload: every check after the CRC is reached
    (wrong version, unknown type, wrong length, sequence rule, undefined values)."""
    if draw(st.integers(0, 3)) == 0:
        return draw(undefined_value_frames())
    version = draw(st.sampled_from([PROTOCOL_VERSION] * 6 + [PROTOCOL_VERSION - 1, 0, 0xFF]))
    type_id = draw(st.sampled_from(_TYPES) | st.integers(0, 0xFF))
    seq = draw(st.sampled_from([0, 1, 0xFFFF]) | st.integers(0, 0xFFFF))
    layout = COMPILED.get(type_id)
    size = layout.payload_size if layout is not None and draw(st.booleans()) else draw(st.integers(0, 40))
    return _framed(version, type_id, seq, draw(st.binary(min_size=size, max_size=size)))


@given(crafted_frames())
def test_differential_crafted_frames(c_codec: CCodec, frame: bytes) -> None:
    """Every kind after the CRC, with what the check found, the same on both sides."""
    python = decode_body(frame[:-1])
    assert comparable(c_codec.decode_body(frame[:-1])) == comparable(python)
    assert [comparable(item) for item in c_codec.decoder().feed(frame)] == [comparable(python)]


@st.composite
def hostile_streams(draw: st.DrawFn) -> bytes:
    """Valid frames, crafted and mutated frames, random bytes, zeros and overlong runs, concatenated."""
    data = draw(st.data())
    pieces = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["frame", "mutated", "crafted", "random", "zeros", "long run"]))
        if kind == "crafted":
            pieces.append(draw(crafted_frames()))
        elif kind in ("frame", "mutated"):
            seq, message = draw(ANY_FRAME)
            frame = encode(message, seq)
            pieces.append(frame if kind == "frame" else _mutated(frame, data))
        elif kind == "random":
            pieces.append(draw(st.binary(max_size=160)))
        elif kind == "zeros":
            pieces.append(b"\x00" * draw(st.integers(1, 3)))
        else:
            pieces.append(draw(st.binary(min_size=120, max_size=300)).replace(b"\x00", b"\x01"))
    return b"".join(pieces)


@given(hostile_streams(), st.lists(st.integers(1, 64), max_size=8))
def test_differential_hostile_streams(c_codec: CCodec, stream: bytes, cuts: list[int]) -> None:
    """Same frames and the same error kinds, in the same order, whatever the chunking."""
    python = Decoder()
    c_decoder = c_codec.decoder()
    python_results: list[tuple[Any, ...]] = []
    c_results: list[tuple[Any, ...]] = []
    at = 0
    for size in [*cuts, len(stream)]:
        chunk = stream[at : at + size]
        at += size
        python_results += [comparable(item) for item in python.feed(chunk)]
        c_results += [comparable(item) for item in c_decoder.feed(chunk)]
        assert c_decoder.counts == (python.frames_ok, python.frames_bad, python.pending_bytes)
    assert c_results == python_results


@given(st.binary(max_size=300))
def test_differential_decode_body_any_bytes(c_codec: CCodec, encoded: bytes) -> None:
    """decode_body on any bytes at all, zeros and overlong inputs included."""
    assert comparable(c_codec.decode_body(encoded)) == comparable(decode_body(encoded))


@given(ANY_FRAME, st.data())
def test_differential_mutated_frames(
    c_codec: CCodec, frame: tuple[int, Message], data: st.DataObject
) -> None:
    seq, message = frame
    mutated = _mutated(encode(message, seq), data)
    body = mutated[:-1] if mutated.endswith(b"\x00") else mutated
    assert comparable(c_codec.decode_body(body)) == comparable(decode_body(body))


# ------------------------------------------------------------------------------------------ sanitizers


def test_differential_under_sanitizers(tmp_path: Path) -> None:
    """The vector and differential tests again, in a child process, against an ASan + UBSan build."""
    if os.environ.get(SANITIZED_ENV) == "1":
        pytest.skip("already the sanitized run")
    library = build_or_skip(tmp_path / "libionto_sanitized.so", sanitize=True)
    env = child_environment(library, sanitized=True)
    env["HYPOTHESIS_PROFILE"] = "default"
    result = subprocess.run(
        pytest_command(__file__, "-s", "-k", "vector or differential or sanitizer_is_active"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=240,
        check=False,
    )
    tail = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and "failed" not in result.stdout, tail


def test_sanitizer_is_active(c_codec: CCodec) -> None:
    """In the sanitized child: the library really is instrumented (ASan's runtime resolves through it)."""
    if os.environ.get(SANITIZED_ENV) != "1":
        pytest.skip("only meaningful in the sanitized child run")
    lib = c_codec._lib
    assert hasattr(lib, "__asan_report_load1") and hasattr(lib, "__ubsan_handle_add_overflow")


# ------------------------------------------------------------------- request helpers, rules, refusal


def test_reply_types_safety_and_requests_match_python(c_codec: CCodec) -> None:
    for type_id in range(256):
        cls = COMPILED[type_id].cls if type_id in COMPILED else None
        reply = getattr(cls, "REPLY", None)
        assert c_codec.reply_type(type_id) == (int(reply.TYPE) if reply is not None else None), type_id
        assert c_codec.is_safety_request(type_id) == bool(getattr(cls, "SAFETY", False)), type_id
        is_request = cls is not None and cls.TYPE.kind is MessageKind.REQUEST
        assert c_codec.is_request(type_id) == is_request, type_id


def test_request_state_table_matches_python(c_codec: CCodec) -> None:
    rules = pytest.importorskip("iontodrive.protocol.rules")
    for request_type in range(256):
        for state in range(16):
            row = rules.RULES.get(request_type)
            cell = row.get(state) if row is not None else None
            expected = None
            if cell is not None:
                expected = (int(cell.refusal) if cell.refusal is not None else 0, cell.needs_zero_output)
            assert c_codec.request_rule(request_type, state) == expected, (request_type, state)


@given(st.integers(0, 0xFF), st.integers(0, 0xFFFF))
def test_differential_version_refusal(c_codec: CCodec, request_type: int, seq: int) -> None:
    from iontodrive.protocol import encode_version_refusal

    status, frame = c_codec.encode_version_refusal(request_type, seq)
    if seq == 0:
        assert status == "BAD_SEQUENCE"
        with pytest.raises(ValueError):
            encode_version_refusal(request_type, seq)
    else:
        assert (status, frame) == ("OK", encode_version_refusal(request_type, seq))


def test_nack_field_names_request_fields_like_python(c_codec: CCodec) -> None:
    from iontodrive.protocol import Field

    for cls in MESSAGE_CLASSES:
        for index, spec in enumerate(COMPILED_BY_CLASS[cls].specs):
            named = Field.__members__.get(spec.name.upper()) if cls.TYPE.kind is MessageKind.REQUEST else None
            assert c_codec.nack_field(int(cls.TYPE), index) == int(named or Field.NONE), (cls, spec.name)


@pytest.mark.slow
@pytest.mark.parametrize("sanitized", [False, True], ids=["plain", "asan-ubsan"])
def test_differential_thorough(tmp_path: Path, sanitized: bool) -> None:
    """The differential tests at hypothesis's ``thorough`` profile (2000 examples each), plain and under the
    sanitizers, in a child process (``make test-slow``)."""
    if os.environ.get(SANITIZED_ENV) == "1":
        pytest.skip("already a child run")
    library = build_or_skip(tmp_path / "libionto.so", sanitize=sanitized)
    env = child_environment(library, sanitized=sanitized)
    env["HYPOTHESIS_PROFILE"] = "thorough"
    result = subprocess.run(
        pytest_command(__file__, "-s", "-k", "differential and not thorough and not under_sanitizers"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=1800,
        check=False,
    )
    tail = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0 and " passed" in result.stdout and "failed" not in result.stdout, tail
