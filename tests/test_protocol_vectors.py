"""Golden vectors (docs/vectors.json) and the specification (docs/protocol.md) against the codec.

Every vector is checked in both directions through the reference codec, and again through an independent
implementation written here from docs/protocol.md alone: a bitwise CRC-16/CCITT-FALSE, a COBS decoder
and encoder, and ``struct`` layouts parsed from the markdown tables of §4.2. None of these use
``binascii``, the ``cobs`` package or the protocol package.
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
from dataclasses import fields
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iontodrive.conformance.frames import crc16_reference
from iontodrive.protocol import (
    MAX_FRAME_BYTES,
    MESSAGE_BY_NAME,
    MESSAGE_CLASSES,
    Decoder,
    ErrorCode,
    Frame,
    crc16_ccitt_false,
    encode,
)
from iontodrive.protocol.fastpath import COMPILED_BY_CLASS

ROOT = Path(__file__).resolve().parents[1]
VECTORS_PATH = ROOT / "docs" / "vectors.json"
DOC_PATH = ROOT / "docs" / "protocol.md"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))


def _load_tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------ independent implementation (from the doc)


# crc16_reference: the conformance suite's (iontodrive.conformance.frames), bit by bit from §2.3 and
# independent of the codec's table-driven CRC; one reference implementation serves both.


def cobs_decode_reference(data: bytes) -> bytes:
    """Basic COBS decoding (§2.2); ValueError on a zero byte or a code running past the end."""
    out = bytearray()
    index = 0
    while index < len(data):
        code = data[index]
        if code == 0:
            raise ValueError(f"zero byte at {index}")
        end = index + code
        if end > len(data):
            raise ValueError(f"code 0x{code:02X} at {index} runs past the end")
        block = data[index + 1 : end]
        if 0 in block:
            raise ValueError("zero byte inside a block")
        out += block
        index = end
        if code < 0xFF and index < len(data):
            out.append(0)
    return bytes(out)


def cobs_encode_reference(data: bytes) -> bytes:
    """Basic COBS encoding (§2.2), without the delimiter."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(byte)
            if len(block) == 254:
                out.append(0xFF)
                out += block
                block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def cobs_code_positions(encoded: bytes) -> list[int]:
    """Indices of the code bytes of a COBS encoding (no delimiter)."""
    positions = []
    index = 0
    while index < len(encoded):
        positions.append(index)
        index += encoded[index]
    return positions


_DOC_TYPES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "i8": "b", "i16": "h", "i32": "i", "i64": "q"}


def parse_doc_layouts(text: str) -> dict[str, tuple[int, list[tuple[str, str]]]]:
    """Read §4.2 of docs/protocol.md: message name -> (type byte, [(field, struct code)]).

    Checks on the way that offsets are contiguous from 0 and sizes match types.
    """
    section = text.split("### 4.2 Layouts", 1)[1].split("## 5. Enumerations", 1)[0]
    layouts: dict[str, tuple[int, list[tuple[str, str]]]] = {}
    current: str | None = None
    expected_offset = 0
    for line in section.splitlines():
        heading = re.match(r"#### (\w+) \(0x([0-9A-F]{2})\)$", line)
        if heading:
            current = heading.group(1)
            layouts[current] = (int(heading.group(2), 16), [])
            expected_offset = 0
            continue
        row = re.match(r"\| (\d+) \| (\d+) \| ([^|]+) \| `(\w+)` \|", line)
        if row and current is not None:
            offset, size, wire_type, name = (
                int(row.group(1)),
                int(row.group(2)),
                row.group(3).strip(),
                row.group(4),
            )
            text_type = re.fullmatch(r"char\[(\d+)\]", wire_type)
            if text_type:
                code = f"{text_type.group(1)}s"
            elif wire_type == "bool (u8)":
                code = "?"
            else:
                code = _DOC_TYPES[wire_type]
            assert offset == expected_offset, (current, name)
            assert struct.calcsize("<" + code.replace("?", "B")) == size, (current, name)
            layouts[current][1].append((name, code))
            expected_offset += size
    return layouts


DOC_TEXT = DOC_PATH.read_text(encoding="utf-8")
DOC_LAYOUTS = parse_doc_layouts(DOC_TEXT)


def parse_frame_reference(frame: bytes) -> tuple[int, str, dict[str, Any]]:
    """Decode one whole frame with the independent implementation: (seq, message name, fields)."""
    assert frame[-1] == 0 and 0 not in frame[:-1], "exactly one zero byte, the delimiter, at the end"
    body = cobs_decode_reference(frame[:-1])
    assert crc16_reference(body) == 0, "CRC over body and CRC is the residue 0"
    assert crc16_reference(body[:-2]) == int.from_bytes(body[-2:], "big"), "CRC is sent big-endian"
    version, type_id, seq = struct.unpack_from("<BBH", body)
    assert version == 2  # this document's version
    names = [name for name, (doc_type, _) in DOC_LAYOUTS.items() if doc_type == type_id]
    assert len(names) == 1, f"type 0x{type_id:02X} documented once"
    name = names[0]
    layout = DOC_LAYOUTS[name][1]
    payload = body[4:-2]
    fmt = "<" + "".join(code.replace("?", "B") for _, code in layout)
    assert len(payload) == struct.calcsize(fmt), "payload length per the doc table"
    values: dict[str, Any] = {}
    for (field, code), raw in zip(layout, struct.unpack(fmt, payload), strict=True):
        if code == "?":
            assert raw in (0, 1)
            values[field] = bool(raw)
        elif code.endswith("s"):
            text = raw.rstrip(b"\x00")
            assert b"\x00" not in text
            values[field] = text.decode("ascii")
        else:
            values[field] = raw
    return seq, name, values


# ----------------------------------------------------------------------------- the reference itself


def test_crc_reference_check_value_and_residue() -> None:
    assert crc16_reference(b"123456789") == 0x29B1
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    data = b"123456789"
    assert crc16_reference(data + (0x29B1).to_bytes(2, "big")) == 0


@given(st.binary(max_size=300))
def test_independent_crc_agrees_with_library(data: bytes) -> None:
    assert crc16_reference(data) == crc16_ccitt_false(data)


@given(st.binary(max_size=600))
def test_independent_cobs_round_trips_and_agrees_with_library(data: bytes) -> None:
    from cobs.cobs import decode
    from cobs.cobs import encode as lib_encode

    encoded = cobs_encode_reference(data)
    assert 0 not in encoded
    assert cobs_decode_reference(encoded) == data
    assert decode(encoded) == data
    if len(data) < 254:  # the only sizes version 1 uses; encoders differ only on the optional final 0x01
        assert lib_encode(data) == encoded


def test_cobs_reference_rejects_a_truncated_block() -> None:
    with pytest.raises(ValueError):
        cobs_decode_reference(b"\x05ab")


# ------------------------------------------------------------------------------------ the vector file


def test_vector_file_covers_every_message_class() -> None:
    assert {v["name"] for v in VECTORS} == {cls.__name__ for cls in MESSAGE_CLASSES}
    assert len(MESSAGE_CLASSES) >= 25  # the version-2 catalog (a new message needs no edit here)
    nack_codes = {v["fields"]["code"] for v in VECTORS if v["name"] == "Nack"}
    assert nack_codes == {int(code) for code in ErrorCode}, "one Nack per error code"
    for vector in VECTORS:
        assert set(vector) == {"name", "seq", "fields", "hex", "note"}
        assert re.fullmatch(r"([0-9a-f]{2})+", vector["hex"]), "lowercase hex, whole bytes"
        assert vector["hex"].endswith("00")
        cls = MESSAGE_BY_NAME[vector["name"]]
        assert list(vector["fields"]) == [f.name for f in fields(cls)], "every field, in layout order"


def _body(vector: dict[str, Any]) -> bytes:
    return cobs_decode_reference(bytes.fromhex(vector["hex"])[:-1])


def test_vector_file_has_the_interesting_cases() -> None:
    nack_values = [v["fields"] for v in VECTORS if v["name"] == "Nack"]
    assert any(f["value"] < 0 for f in nack_values), "a Nack with a negative i64"
    assert any(f["minimum"] == -(2**63) and f["maximum"] == 2**63 - 1 for f in nack_values)
    assert any(v["seq"] == 0xFFFF for v in VECTORS), "the largest sequence number"
    assert any(0 in _body(v)[2:4] for v in VECTORS), "a zero byte in the sequence number"
    assert any(0 in _body(v)[-2:] for v in VECTORS), "a zero byte in the CRC"
    code_bytes = [len(cobs_code_positions(bytes.fromhex(v["hex"])[:-1])) for v in VECTORS]
    assert max(code_bytes) >= 30, "a frame whose COBS needs many code bytes"
    assert any(v["name"] == "Event" and v["fields"]["replayed"] for v in VECTORS)
    assert any(v["fields"].get("impedance_ohm") == 0xFFFF_FFFF for v in VECTORS)
    models = [v["fields"]["model"] for v in VECTORS if v["name"] == "IdentityReport"]
    assert any(len(m) == 16 for m in models) and any(len(m) < 16 for m in models)


def test_vector_file_is_exactly_what_the_tool_generates() -> None:
    tool = _load_tool("make_vectors")
    assert tool.render() == VECTORS_PATH.read_text(encoding="utf-8")
    assert tool.render() == tool.render(), "deterministic"


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['name']}-{v['seq']}")
def test_vector_encodes_to_its_hex(vector: dict[str, Any]) -> None:
    cls = MESSAGE_BY_NAME[vector["name"]]
    message = cls(**vector["fields"])  # plain ints for enums: encode accepts a member's value
    assert encode(message, vector["seq"]).hex() == vector["hex"]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['name']}-{v['seq']}")
def test_vector_decodes_to_its_fields(vector: dict[str, Any]) -> None:
    cls = MESSAGE_BY_NAME[vector["name"]]
    results = Decoder().feed(bytes.fromhex(vector["hex"]))
    assert len(results) == 1
    frame = results[0]
    assert isinstance(frame, Frame)
    assert frame.seq == vector["seq"]
    assert type(frame.message) is cls
    for spec in COMPILED_BY_CLASS[cls].specs:
        value = getattr(frame.message, spec.name)
        assert value == vector["fields"][spec.name]
        assert isinstance(value, spec.python_type), f"{spec.name} decodes to {spec.python_type.__name__}"
        if spec.code == "?":
            assert type(value) is bool


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['name']}-{v['seq']}")
def test_vector_verifies_with_the_independent_implementation(vector: dict[str, Any]) -> None:
    frame = bytes.fromhex(vector["hex"])
    assert len(frame) <= MAX_FRAME_BYTES
    seq, name, values = parse_frame_reference(frame)
    assert (seq, name) == (vector["seq"], vector["name"])
    assert values == vector["fields"]
    assert cobs_encode_reference(_body(vector)) + b"\x00" == frame, "the canonical COBS encoding"


# --------------------------------------------------------------------------------- the specification


def test_doc_generated_blocks_are_up_to_date() -> None:
    tool = _load_tool("make_protocol_tables")
    assert tool.undocumented() == []
    assert tool.render_document(DOC_TEXT) == DOC_TEXT, "run python tools/make_protocol_tables.py"


def test_doc_tables_describe_every_message_as_the_code_does() -> None:
    assert set(DOC_LAYOUTS) == {cls.__name__ for cls in MESSAGE_CLASSES}
    for cls in MESSAGE_CLASSES:
        type_id, layout = DOC_LAYOUTS[cls.__name__]
        assert type_id == int(cls.TYPE)
        compiled = COMPILED_BY_CLASS[cls]
        assert [name for name, _ in layout] == [spec.name for spec in compiled.specs]
        doc_format = "<BBH" + "".join(code.replace("?", "B") for _, code in layout)
        assert struct.calcsize(doc_format) == compiled.frame_struct.size
        assert doc_format.replace("L", "I") == compiled.frame_struct.format.replace("L", "I")


def test_doc_worked_example_decodes_independently() -> None:
    match = re.search(r"Frame on the wire \(\d+ bytes, delimiter included\): `([0-9A-F ]+)`", DOC_TEXT)
    assert match is not None
    frame = bytes.fromhex(match.group(1))
    seq, name, values = parse_frame_reference(frame)
    assert (seq, name, values) == (0x0106, "SetCurrent", {"target_current_ua": 3000, "ramp_ms": 10_000})


def test_doc_states_the_crc_check_value_and_sizes() -> None:
    for needle in ("0x29B1", "0x1021", "0xFFFF", "MAX_PAYLOAD_BYTES", "126", "128"):
        assert needle in DOC_TEXT
