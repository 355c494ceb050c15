"""encode / decode_body: round trips, the encoder's refusals, sequence rules, catalog invariants."""

from __future__ import annotations

import dataclasses
import math
import threading
from enum import IntEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_strategies import field_values, frames_of, messages_of

from iontodrive.protocol import (
    MAX_FRAME_BYTES,
    MAX_PAYLOAD_BYTES,
    MESSAGE_BY_NAME,
    MESSAGE_BY_TYPE,
    MESSAGE_CLASSES,
    REPLY_TYPES_FOR_REQUEST,
    Ack,
    DecodeError,
    Decoder,
    DeviceState,
    EncodeError,
    Event,
    EventCode,
    FieldRangeError,
    Frame,
    Heartbeat,
    Identify,
    IdentityReport,
    Message,
    MessageKind,
    MessageType,
    Polarity,
    ProtocolError,
    ReplyCache,
    SequenceCounter,
    SequenceError,
    SetCurrent,
    Start,
    StatusFlags,
    Telemetry,
    Waveform,
    WaveformSet,
    decode_body,
    encode,
)
from iontodrive.protocol.constants import HEADER_BYTES, MAX_BODY_BYTES
from iontodrive.protocol.fastpath import COMPILED_BY_CLASS, FieldSpec

ALL_SPECS: list[tuple[type[Message], FieldSpec]] = [
    (cls, spec) for cls in MESSAGE_CLASSES for spec in COMPILED_BY_CLASS[cls].specs
]


def _id(item: Any) -> str:
    if isinstance(item, tuple):
        return f"{item[0].__name__}.{item[1].name}"
    return getattr(item, "__name__", repr(item))


def baseline(cls: type[Message]) -> Message:
    """A valid message of ``cls`` with every field at its simplest valid value."""
    values: dict[str, Any] = {}
    for spec in COMPILED_BY_CLASS[cls].specs:
        if spec.text_bytes is not None:
            values[spec.name] = ""
        elif spec.code == "?":
            values[spec.name] = False
        elif spec.allowed is not None:
            values[spec.name] = next(iter(spec.python_type))  # type: ignore[call-overload]
        elif spec.flag_mask is not None:
            values[spec.name] = spec.python_type(0)
        else:
            values[spec.name] = 0
    return cls(**values)


def seq_for(cls: type[Message]) -> int:
    return 0 if cls.TYPE.kind is MessageKind.UNSOLICITED else 1


# ------------------------------------------------------------------------------------------ round trip


# Parametrised over every message type: a quarter of the profile's examples per type keeps the run short.
PER_TYPE = settings(max_examples=max(10, settings().max_examples // 4))


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=_id)
@PER_TYPE
@given(data=st.data())
def test_every_message_round_trips(cls: type[Message], data: st.DataObject) -> None:
    seq, message = data.draw(frames_of(cls))  # type: ignore[arg-type]  # mypy: type[dataclass] as Hashable
    frame = encode(message, seq)
    layout = COMPILED_BY_CLASS[cls]
    body_size = HEADER_BYTES + layout.payload_size + 2
    assert len(frame) == body_size + 2, "one COBS overhead byte and the delimiter"
    assert frame.index(0) == len(frame) - 1, "the delimiter is the only zero byte"

    decoded = decode_body(frame[:-1])
    assert decoded == Frame(seq, message)
    assert isinstance(decoded, Frame) and type(decoded.message) is cls
    for spec in layout.specs:
        assert isinstance(getattr(decoded.message, spec.name), spec.python_type)
    assert Decoder().feed(frame) == [Frame(seq, message)]
    assert encode(decoded.message, seq) == frame, "re-encoding gives the same bytes"


@given(frames_of(Telemetry))
def test_unsolicited_seq_may_be_omitted(pair: tuple[int, Message]) -> None:
    _, message = pair
    assert encode(message) == encode(message, 0)


def test_sizes_are_within_the_documented_maximum() -> None:
    assert MAX_PAYLOAD_BYTES == 120
    assert MAX_BODY_BYTES == 126
    assert MAX_FRAME_BYTES == 128
    for cls in MESSAGE_CLASSES:
        assert COMPILED_BY_CLASS[cls].payload_size <= MAX_PAYLOAD_BYTES
        assert COMPILED_BY_CLASS[cls].payload_size == cls.LAYOUT.sizeof()


# ---------------------------------------------------------------------------------------- the catalog


def test_type_bytes_fall_in_the_range_of_their_kind() -> None:
    ranges = {
        MessageKind.REQUEST: range(0x01, 0x40),
        MessageKind.REPLY: range(0x80, 0xC0),
        MessageKind.UNSOLICITED: range(0xC0, 0x100),
    }
    for cls in MESSAGE_CLASSES:
        assert int(cls.TYPE) in ranges[cls.TYPE.kind]
    assert set(MESSAGE_BY_TYPE) == {int(t) for t in MessageType}
    assert all(MESSAGE_BY_NAME[cls.__name__] is cls for cls in MESSAGE_CLASSES)


def test_every_request_has_nack_and_one_positive_reply() -> None:
    requests = {cls.TYPE for cls in MESSAGE_CLASSES if cls.TYPE.kind is MessageKind.REQUEST}
    assert set(REPLY_TYPES_FOR_REQUEST) == requests
    for answers in REPLY_TYPES_FOR_REQUEST.values():
        assert MessageType.NACK in answers and len(answers) == 2
        assert all(t.kind is MessageKind.REPLY for t in answers)
    assert REPLY_TYPES_FOR_REQUEST[MessageType.IDENTIFY][1] == MessageType.IDENTITY_REPORT
    assert REPLY_TYPES_FOR_REQUEST[MessageType.START][1] == MessageType.ACK


def test_messages_are_immutable_and_hashable() -> None:
    message = SetCurrent(1000, 5000)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.ramp_ms = 1  # type: ignore[misc]
    assert hash(message) == hash(SetCurrent(1000, 5000))


# ------------------------------------------------------------------------------ the encoder's refusals


def _bad_values(spec: FieldSpec) -> list[Any]:
    """Values docs/protocol.md §3.4 says the encoder must refuse for this field."""
    common: list[Any] = [None, 1.0, math.nan, math.inf, "1", b"\x01", [1]]
    if spec.text_bytes is not None:
        n = spec.text_bytes
        return ["x" * (n + 1), "é", "a\x00b", b"abc", 5, None, True]
    if spec.code == "?":
        return [1, 0, 2, "yes", None, 1.0]
    if spec.allowed is not None:
        outside = max(spec.allowed) + 1
        other_enum = Waveform.PULSED_DC if spec.python_type is not Waveform else Polarity.ANODE
        return [outside, -1, 256, True, False, other_enum, *common]
    if spec.flag_mask is not None:
        assert spec.maximum is not None
        bad: list[Any] = [-1, spec.maximum + 1, True, *common]
        if spec.flag_mask != spec.maximum:
            bad.append(spec.flag_mask + 1)  # the lowest undefined bit
        return bad
    assert spec.minimum is not None and spec.maximum is not None
    return [spec.maximum + 1, spec.minimum - 1, -1 if spec.minimum == 0 else spec.minimum - 10, True, *common]


@pytest.mark.parametrize("item", ALL_SPECS, ids=_id)
def test_encode_refuses_each_bad_value_naming_message_field_and_range(
    item: tuple[type[Message], FieldSpec],
) -> None:
    cls, spec = item
    good = baseline(cls)
    encode(good, seq_for(cls))  # the baseline itself is fine
    for bad in _bad_values(spec):
        message = dataclasses.replace(good, **{spec.name: bad})
        with pytest.raises(FieldRangeError) as caught:
            encode(message, seq_for(cls))
        error = caught.value
        assert isinstance(error, EncodeError) and isinstance(error, ProtocolError)
        assert isinstance(error, ValueError), "callers may catch ValueError"
        assert (error.message, error.field) == (cls.__name__, spec.name)
        assert error.value is bad
        text = str(error)
        assert f"{cls.__name__}.{spec.name}" in text
        if spec.allowed is not None:
            assert error.allowed == tuple(sorted(spec.allowed))
            assert str(list(error.allowed)) in text
        elif spec.text_bytes is not None:
            assert (error.minimum, error.maximum) == (0, spec.text_bytes)
            assert f"at most {spec.text_bytes} characters" in text
        elif spec.code == "?":
            assert "bool" in text
        elif spec.flag_mask is not None:
            assert error.maximum == spec.flag_mask
            assert f"0x{spec.flag_mask:X}" in text
        else:
            assert (error.minimum, error.maximum) == (spec.minimum, spec.maximum)
            assert f"[{spec.minimum}, {spec.maximum}]" in text


def _valid_per_doc(spec: FieldSpec, value: Any) -> bool:
    """The acceptance rules of docs/protocol.md §3.4, written independently of the codec."""
    if spec.text_bytes is not None:
        return (
            isinstance(value, str)
            and value.isascii()
            and "\x00" not in value
            and len(value) <= spec.text_bytes
        )
    if spec.code == "?":
        return isinstance(value, bool)
    if spec.allowed is not None:
        return type(value) is spec.python_type or (type(value) is int and value in spec.allowed)
    if spec.flag_mask is not None:
        return (
            type(value) in (spec.python_type, int) and value >= 0 and value | spec.flag_mask == spec.flag_mask
        )
    assert spec.minimum is not None and spec.maximum is not None
    return isinstance(value, int) and not isinstance(value, bool) and spec.minimum <= value <= spec.maximum


ALL_ENUM_MEMBERS: list[IntEnum] = [m for enum in (DeviceState, Polarity, Waveform, EventCode) for m in enum]
ANY_VALUE = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-300, 70_000),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=4),
    st.none(),
    st.sampled_from(ALL_ENUM_MEMBERS),
    st.sampled_from([*StatusFlags, StatusFlags(0x0FFF), *WaveformSet]),
)


@given(item=st.sampled_from(ALL_SPECS), value=ANY_VALUE)
def test_encode_accepts_exactly_the_documented_values(
    item: tuple[type[Message], FieldSpec], value: Any
) -> None:
    cls, spec = item
    message = dataclasses.replace(baseline(cls), **{spec.name: value})
    if _valid_per_doc(spec, value):
        frame = encode(message, seq_for(cls))
        decoded = decode_body(frame[:-1])
        assert isinstance(decoded, Frame)
        assert getattr(decoded.message, spec.name) == value
    else:
        with pytest.raises(FieldRangeError) as caught:
            encode(message, seq_for(cls))
        assert (caught.value.message, caught.value.field) == (cls.__name__, spec.name)


@given(cls=st.sampled_from(MESSAGE_CLASSES), data=st.data())
def test_the_first_bad_field_is_the_one_named(cls: type[Message], data: st.DataObject) -> None:
    specs = COMPILED_BY_CLASS[cls].specs
    if not specs:
        return
    message = data.draw(messages_of(cls))  # type: ignore[arg-type]  # mypy: type[dataclass] as Hashable
    index = data.draw(st.integers(0, len(specs) - 1))
    bad = data.draw(st.sampled_from(_bad_values(specs[index])))
    later = {s.name: _bad_values(s)[0] for s in specs[index + 1 :]}
    message = dataclasses.replace(message, **{specs[index].name: bad}, **later)
    with pytest.raises(FieldRangeError) as caught:
        encode(message, seq_for(cls))
    assert caught.value.field == specs[index].name


def test_enum_fields_take_members_or_their_plain_int_values() -> None:
    by_member = Start(4000, 0, 600_000, 30_000, 30_000, Polarity.CATHODE, Waveform.DC)
    by_int = Start(4000, 0, 600_000, 30_000, 30_000, 2, 0)  # type: ignore[arg-type]
    assert encode(by_member, 7) == encode(by_int, 7)
    decoded = decode_body(encode(by_int, 7)[:-1])
    assert isinstance(decoded, Frame)
    assert decoded.message.polarity is Polarity.CATHODE  # type: ignore[attr-defined]


def test_numpy_style_integers_are_accepted_for_plain_integer_fields() -> None:
    class Index:
        """An integer-like object (numpy's integers behave like this)."""

        def __init__(self, value: int) -> None:
            self.value = value

        def __index__(self) -> int:
            return self.value

    frame = encode(SetCurrent(Index(1500), Index(8000)), 3)  # type: ignore[arg-type]
    assert frame == encode(SetCurrent(1500, 8000), 3)
    with pytest.raises(FieldRangeError) as caught:
        encode(SetCurrent(Index(2**32), 8000), 3)  # type: ignore[arg-type]
    assert caught.value.field == "target_current_ua"


def test_identity_model_text_rules() -> None:
    base = baseline(IdentityReport)
    for good in ("", "clinic-4", "x" * 16, "~!@ #$%"):
        frame = encode(dataclasses.replace(base, model=good), 9)  # type: ignore[call-arg]
        decoded = decode_body(frame[:-1])
        assert isinstance(decoded, Frame) and decoded.message.model == good  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------- sequencing


@pytest.mark.parametrize("seq", [None, 0, -1, 65536, 2**40, True, False, 1.0, "1", math.nan])
@pytest.mark.parametrize("message", [Identify(), Ack(4)], ids=["request", "reply"])
def test_requests_and_replies_need_seq_1_to_65535(message: Message, seq: Any) -> None:
    with pytest.raises(SequenceError) as caught:
        encode(message, seq)
    assert type(message).__name__ in str(caught.value)
    assert isinstance(caught.value, EncodeError)


@pytest.mark.parametrize("seq", [1, 2, 255, 256, 65535])
def test_requests_accept_every_valid_seq(seq: int) -> None:
    decoded = decode_body(encode(Heartbeat(), seq)[:-1])
    assert decoded == Frame(seq, Heartbeat())


@pytest.mark.parametrize("seq", [1, -1, 65535, True, 0.0, "0"])
def test_unsolicited_messages_carry_seq_0_only(seq: Any) -> None:
    event = Event(1, 0, EventCode.POWER_ON, DeviceState.IDLE)
    with pytest.raises(SequenceError) as caught:
        encode(event, seq)
    assert "Event" in str(caught.value)


def test_encode_refuses_objects_that_are_not_protocol_messages() -> None:
    class NotAMessage:
        pass

    class SubclassedAck(Ack):
        pass

    for obj in (NotAMessage(), Message(), SubclassedAck(4), b"\x00"):
        with pytest.raises(TypeError):
            encode(obj, 1)  # type: ignore[arg-type]


def test_sequence_counter_runs_1_to_65535_and_wraps_to_1() -> None:
    counter = SequenceCounter()
    assert [counter.next() for _ in range(3)] == [1, 2, 3]
    counter = SequenceCounter(65534)
    assert [counter.next() for _ in range(4)] == [65534, 65535, 1, 2]
    for start in (0, 65536, -1):
        with pytest.raises(ValueError):
            SequenceCounter(start)


def test_sequence_counter_shared_by_threads_never_hands_out_a_number_twice() -> None:
    counter = SequenceCounter(60_000)
    taken: list[list[int]] = [[] for _ in range(4)]

    def take(into: list[int]) -> None:
        for _ in range(10_000):
            into.append(counter.next())

    threads = [threading.Thread(target=take, args=(into,)) for into in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    numbers = [n for into in taken for n in into]
    assert sorted(numbers) == sorted([*range(60_000, 65_536), *range(1, 40_000 - 5_536 + 1)])


def test_reply_cache_keys_on_sequence_number_and_identical_request() -> None:
    cache = ReplyCache(capacity=2)
    start = Start(4000, 0, 600_000, 30_000, 30_000, Polarity.CATHODE)
    ack = encode(Ack(int(MessageType.START)), 7)
    assert cache.lookup(7, start) is None
    cache.store(7, start, ack)
    assert cache.lookup(7, start) == ack
    assert cache.lookup(7, dataclasses.replace(start, target_current_ua=3000)) is None, (
        "same seq, new request"
    )
    assert cache.lookup(8, start) is None, "same request, new seq"
    cache.store(8, Heartbeat(), encode(Ack(int(MessageType.HEARTBEAT)), 8))
    cache.store(9, Heartbeat(), encode(Ack(int(MessageType.HEARTBEAT)), 9))
    assert len(cache) == 2
    assert cache.lookup(7, start) is None, "oldest evicted"
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError):
        ReplyCache(0)


def test_reply_cache_answer_to_a_reused_number_replaces_the_remembered_one() -> None:
    """Protocol §7.3: a request reusing a remembered seq with new content is new, and replaces the answer."""
    cache = ReplyCache(capacity=3)
    first = SetCurrent(1000, 5000)
    second = SetCurrent(2000, 5000)
    cache.store(7, first, b"first")
    cache.store(8, Heartbeat(), b"heartbeat")
    cache.store(7, second, b"second")
    assert len(cache) == 2, "one answer per number"
    assert cache.lookup(7, first) is None, "replaced: a late retry of the first runs as a new request"
    assert cache.lookup(7, second) == b"second"
    cache.store(9, Heartbeat(), b"nine")
    cache.store(10, Heartbeat(), b"ten")
    assert cache.lookup(8, Heartbeat()) is None, "8 became the oldest number when 7 was re-stored: evicted"
    assert cache.lookup(7, second) == b"second"


def test_decode_body_never_raises_on_non_bytes_wire_types() -> None:
    frame = encode(SetCurrent(1000, 5000), 5)[:-1]
    assert decode_body(bytearray(frame)) == Frame(5, SetCurrent(1000, 5000))
    assert decode_body(memoryview(frame)) == Frame(5, SetCurrent(1000, 5000))
    assert isinstance(decode_body(b""), DecodeError)


@given(st.sampled_from(ALL_SPECS).flatmap(lambda item: st.tuples(st.just(item), field_values(item[1]))))
def test_every_valid_field_value_survives_the_wire(item: tuple[tuple[type[Message], FieldSpec], Any]) -> None:
    (cls, spec), value = item
    message = dataclasses.replace(baseline(cls), **{spec.name: value})
    decoded = decode_body(encode(message, seq_for(cls))[:-1])
    assert isinstance(decoded, Frame)
    assert getattr(decoded.message, spec.name) == value
