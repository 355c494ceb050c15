"""The fast path derived from the construct layouts agrees with construct itself, for every message type."""

from __future__ import annotations

import dataclasses
import functools
import struct
from typing import Any, ClassVar

import construct
import pytest
from cobs.cobs import encode as cobs_encode
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_strategies import frames_of, wire_value

from iontodrive.protocol import (
    MESSAGE_CLASSES,
    PROTOCOL_VERSION,
    DecodeError,
    DecodeErrorKind,
    Frame,
    Message,
    MessageKind,
    MessageType,
    StatusFlags,
    crc16_ccitt_false,
    decode_body,
    encode,
)
from iontodrive.protocol.fastpath import (
    COMPILED,
    COMPILED_BY_CLASS,
    CompiledLayout,
    compile_layout,
    trusted_constructor,
)


def _id(cls: type[Message]) -> str:
    return cls.__name__


def _wire_dict(message: Message) -> dict[str, Any]:
    return {f.name: wire_value(getattr(message, f.name)) for f in dataclasses.fields(message)}


def _container_dict(container: construct.Container) -> dict[str, Any]:
    return {key: value for key, value in container.items() if not key.startswith("_")}


def test_every_message_class_is_compiled_once() -> None:
    assert set(COMPILED) == {int(cls.TYPE) for cls in MESSAGE_CLASSES}
    assert set(COMPILED_BY_CLASS) == set(MESSAGE_CLASSES)
    for cls in MESSAGE_CLASSES:
        layout = COMPILED_BY_CLASS[cls]
        assert layout.unsolicited == (cls.TYPE.kind is MessageKind.UNSOLICITED)
        assert [spec.name for spec in layout.specs] == [sc.name for sc in cls.LAYOUT.subcons]


# Parametrised over all 23 types: a quarter of the profile's examples per type keeps the run short.
PER_TYPE = settings(max_examples=max(10, settings().max_examples // 4))


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=_id)
@PER_TYPE
@given(data=st.data())
def test_fast_path_equals_construct_both_ways(cls: type[Message], data: st.DataObject) -> None:
    seq, message = data.draw(frames_of(cls))
    layout = COMPILED_BY_CLASS[cls]
    # Encode: the fast packer's payload is what construct builds from the same values.
    body = layout.pack(message, seq)
    assert body[:4] == struct.pack("<BBH", PROTOCOL_VERSION, int(cls.TYPE), seq)
    payload = body[4:]
    assert payload == cls.LAYOUT.build(_wire_dict(message))
    assert body == layout.frame_struct.pack(PROTOCOL_VERSION, int(cls.TYPE), seq, *layout.getter(message))
    # Decode: construct (plain and compiled) parses the payload into the values the fast decoder returns.
    decoded = decode_body(encode(message, seq)[:-1])
    assert isinstance(decoded, Frame)
    parsed = _container_dict(cls.LAYOUT.parse(payload))
    assert parsed == _wire_dict(decoded.message) == _wire_dict(message)
    assert _container_dict(_compiled_construct(cls).parse(payload)) == parsed


@functools.cache
def _compiled_construct(cls: type[Message]) -> construct.Construct:
    return cls.LAYOUT.compile()


def _valid_raw(cls: type[Message], raw: dict[str, Any]) -> bool:
    """Whether construct-parsed raw values are meaningful (docs/protocol.md §3.2-3.3)."""
    for spec in COMPILED_BY_CLASS[cls].specs:
        value = raw[spec.name]
        if spec.allowed is not None and value not in spec.allowed:
            return False
        if spec.flag_mask is not None and value & ~spec.flag_mask:
            return False
        if spec.code == "?" and value not in (0, 1):
            return False
        if spec.text_bytes is not None and b"\x00" in value.rstrip(b"\x00"):
            return False
        if spec.text_bytes is not None and not value.isascii():
            return False
    return True


@pytest.mark.parametrize("cls", [c for c in MESSAGE_CLASSES if c.LAYOUT.sizeof()], ids=_id)
@PER_TYPE
@given(data=st.data())
def test_arbitrary_payload_bytes_decode_as_construct_reads_them(
    cls: type[Message], data: st.DataObject
) -> None:
    layout = COMPILED_BY_CLASS[cls]
    payload = data.draw(st.binary(min_size=layout.payload_size, max_size=layout.payload_size))
    # Read raw integers with construct: booleans as their byte, text as its bytes.
    raw_struct = construct.Struct(
        *[
            spec.name / (construct.Int8ul if spec.code == "?" else construct.Bytes(spec.text_bytes))
            if spec.code == "?" or spec.text_bytes is not None
            else sc
            for spec, sc in zip(layout.specs, cls.LAYOUT.subcons, strict=True)
        ]
    )
    raw = _container_dict(raw_struct.parse(payload))
    seq = 0 if layout.unsolicited else 77
    body = struct.pack("<BBH", PROTOCOL_VERSION, int(cls.TYPE), seq) + payload
    body += crc16_ccitt_false(body).to_bytes(2, "big")
    decoded = decode_body(cobs_encode(body))
    if _valid_raw(cls, raw):
        assert isinstance(decoded, Frame)
        assert _wire_dict(decoded.message) == _container_dict(cls.LAYOUT.parse(payload))
    else:
        assert isinstance(decoded, DecodeError) and decoded.kind is DecodeErrorKind.BAD_VALUE


def test_decoded_messages_are_real_frozen_instances() -> None:
    for cls in MESSAGE_CLASSES:
        layout = COMPILED_BY_CLASS[cls]
        values = [0] * (len(layout.specs))
        for index, spec in enumerate(layout.specs):
            if spec.allowed is not None:
                values[index] = min(spec.allowed)
            elif spec.text_bytes is not None:
                values[index] = b"abc"
        built = layout.build((PROTOCOL_VERSION, int(cls.TYPE), 1, *values))
        assert type(built) is cls
        assert built.__class__ is cls
        reference = decode_body(encode(built, 0 if layout.unsolicited else 1)[:-1])
        assert isinstance(reference, Frame) and reference.message == built
        assert hash(built) == hash(reference.message)
        if layout.specs:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(built, layout.specs[0].name, 1)


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=_id)
@PER_TYPE
@given(data=st.data())
def test_trusted_constructor_builds_what_the_dataclass_and_the_decoder_build(
    cls: type[Message], data: st.DataObject
) -> None:
    """Same values, same message: a frozen instance of ``cls``, with plain ints turned into enum members."""
    _, message = data.draw(frames_of(cls))
    names = [spec.name for spec in COMPILED_BY_CLASS[cls].specs]
    values = [getattr(message, name) for name in names]
    as_plain_ints = [int(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]
    built = trusted_constructor(cls)(*as_plain_ints)
    assert type(built) is cls
    assert built == message == cls(*values)
    for name in names:
        assert type(getattr(built, name)) is type(getattr(message, name)), name
    if names:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(built, names[0], getattr(built, names[0]))


def test_flag_table_caches_only_valid_values() -> None:
    layout = COMPILED_BY_CLASS[next(c for c in MESSAGE_CLASSES if c.TYPE == MessageType.TELEMETRY)]
    flags_index = [spec.name for spec in layout.specs].index("flags")
    values = [0] * len(layout.specs)
    values[flags_index] = 0x0203
    built = layout.build((1, 0xC0, 0, *values))
    assert built.flags == StatusFlags.OUTPUT_ON | StatusFlags.SESSION_ACTIVE | StatusFlags.CONTACT_OK  # type: ignore[attr-defined]
    assert type(built.flags) is StatusFlags  # type: ignore[attr-defined]
    values[flags_index] = 0x1000
    with pytest.raises(KeyError):
        layout.build((1, 0xC0, 0, *values))


# -------------------------------------------------------------------- what the derivation refuses


def _message_class(name: str, layout: construct.Struct, annotations: dict[str, Any]) -> type[Message]:
    namespace: dict[str, Any] = {
        "__annotations__": {
            "TYPE": ClassVar[MessageType],
            "LAYOUT": ClassVar[construct.Struct],
            **annotations,
        },
        "TYPE": MessageType.HEARTBEAT,
        "LAYOUT": layout,
    }
    return dataclasses.dataclass(frozen=True, slots=True)(type(name, (Message,), namespace))


@pytest.mark.parametrize(
    ("layout", "annotations", "reason"),
    [
        (construct.Struct("x" / construct.Int32ub), {"x": int}, "little-endian"),
        (construct.Struct("x" / construct.Float32l), {"x": float}, "not an integer"),
        (construct.Struct("x" / construct.GreedyBytes), {"x": bytes}, "no fast path"),
        (construct.Struct("x" / construct.Int8ul), {"y": int}, "dataclass fields"),
        (construct.Struct("x" / construct.PaddedString(construct.this.n, "ascii")), {"x": str}, "constant"),
    ],
    ids=["big-endian", "float", "greedy", "names", "variable-text"],
)
def test_compile_layout_refuses_what_it_cannot_derive(
    layout: construct.Struct, annotations: dict[str, Any], reason: str
) -> None:
    cls = _message_class("Probe", layout, annotations)
    with pytest.raises(TypeError, match=reason):
        compile_layout(cls)


def test_compile_layout_accepts_a_new_well_formed_message() -> None:
    cls = _message_class(
        "Probe",
        construct.Struct("a" / construct.Int16ul, "b" / construct.Flag, "c" / construct.Int64sl),
        {"a": int, "b": bool, "c": int},
    )
    layout: CompiledLayout = compile_layout(cls)
    assert layout.payload_size == 11
    message = cls(a=513, b=True, c=-2)  # type: ignore[call-arg]
    assert layout.pack(message, 9)[4:] == cls.LAYOUT.build({"a": 513, "b": True, "c": -2})
    built = layout.build(layout.frame_struct.unpack(layout.pack(message, 9)))
    assert built == message and type(built) is cls
