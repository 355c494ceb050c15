"""The stream decoder: resynchronisation, garbage, chunking, corruption, bounded memory, error kinds.

What is guaranteed, and therefore asserted exactly:

* A valid frame preceded by a delimiter is always recovered, whatever came before it.
* A chunk that fails the independent COBS+CRC check (tests/test_protocol_vectors.py) always gives exactly
  one DecodeError; an empty chunk gives nothing.
* Results never depend on how the stream is split into ``feed`` calls.
* A truncated frame is always an error: its COBS decoding is a strict prefix of the body, so it fails COBS,
  TOO_SHORT, the CRC, or (same header, shorter payload) BAD_LENGTH.
* CRC-16/CCITT-FALSE detects every 1-, 2- and 3-bit error in a body of up to 126 bytes (proved below by
  exhaustion over the syndromes), every odd number of bit errors, and every burst of up to 16 bits.
* Arbitrary corruption on the wire (including COBS code bytes) carries no such guarantee (about 2^-16 per
  corrupted frame); there we assert that nothing raises and that every Frame the decoder does return is
  the exact, canonical encoding of its message.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from protocol_strategies import ANY_FRAME
from test_protocol_vectors import (
    cobs_code_positions,
    cobs_decode_reference,
    cobs_encode_reference,
    crc16_reference,
)

from iontodrive.protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    DecodeError,
    DecodeErrorKind,
    Decoder,
    DeviceState,
    Frame,
    Heartbeat,
    Message,
    SetCurrent,
    Telemetry,
    crc16_ccitt_false,
    decode_body,
    encode,
)
from iontodrive.protocol.constants import MAX_BODY_BYTES

MAX_PENDING = MAX_FRAME_BYTES - 1


def passes_integrity(chunk: bytes) -> bool:
    """True if ``chunk`` (no delimiter) is valid COBS whose body passes the CRC: it could be a frame."""
    try:
        body = cobs_decode_reference(chunk)
    except ValueError:
        return False
    return len(body) >= 2 and crc16_reference(body) == 0


def feed_all(chunks: list[bytes], decoder: Decoder | None = None) -> list[Frame | DecodeError]:
    decoder = decoder or Decoder()
    out: list[Frame | DecodeError] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
        assert decoder.pending_bytes <= MAX_PENDING
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


def assert_canonical(chunk: bytes, result: Frame | DecodeError) -> None:
    """A Frame must be exactly what encode() makes of its message (no alternative encodings accepted)."""
    if isinstance(result, Frame):
        assert encode(result.message, result.seq) == chunk + b"\x00"


# Garbage: random bytes, truncated frames and frames with flipped bits: the likely junk on a real line.
def _truncated(pair: tuple[int, Message], cut: int) -> bytes:
    frame = encode(pair[1], pair[0])[:-1]
    return frame[: cut % len(frame)]


def _flipped(pair: tuple[int, Message], position: int, bit: int) -> bytes:
    frame = bytearray(encode(pair[1], pair[0])[:-1])
    frame[position % len(frame)] ^= 1 << bit
    return bytes(frame)


GARBAGE = st.one_of(
    st.binary(max_size=300),
    st.builds(_truncated, ANY_FRAME, st.integers(0, 200)),
    st.builds(_flipped, ANY_FRAME, st.integers(0, 200), st.integers(0, 7)),
)


# ------------------------------------------------------------------------------------------- garbage


@given(st.lists(st.tuples(GARBAGE, ANY_FRAME), max_size=8), GARBAGE)
def test_delimited_garbage_between_frames_yields_every_frame_and_one_error_per_chunk(
    items: list[tuple[bytes, tuple[int, Message]]], trailing: bytes
) -> None:
    stream = b""
    expected: list[Any] = []  # a Frame, or DecodeError for "some decode error"
    for garbage, pair in [*items, (trailing, None)]:
        chunks = [c for c in garbage.split(b"\x00") if c]
        assume(not any(passes_integrity(c) for c in chunks))  # else the garbage is itself a frame
        stream += b"\x00" + garbage + b"\x00"
        expected += [DecodeError] * len(chunks)
        if pair is not None:
            seq, message = pair
            stream += encode(message, seq)
            expected.append(Frame(seq, message))
    results = Decoder().feed(stream)
    assert [r if isinstance(r, Frame) else DecodeError for r in results] == expected


@given(st.lists(st.tuples(st.binary(max_size=200), ANY_FRAME), max_size=8))
def test_undelimited_garbage_never_yields_a_phantom_frame(
    items: list[tuple[bytes, tuple[int, Message]]],
) -> None:
    stream = b"".join(garbage + encode(message, seq) for garbage, (seq, message) in items)
    inserted = {encode(message, seq)[:-1] for _, (seq, message) in items}
    chunks = [c for c in stream.split(b"\x00") if c]
    assume(not any(passes_integrity(c) for c in chunks if c not in inserted))
    results = Decoder().feed(stream)
    assert len(results) == len(chunks), "one result per non-empty chunk (none here is oversize-split)"
    for chunk, result in zip(chunks, results, strict=True):
        if chunk in inserted:
            assert isinstance(result, Frame) and encode(result.message, result.seq)[:-1] == chunk
        else:
            assert isinstance(result, DecodeError)
    # Every frame whose previous byte is a delimiter (or the stream start) is recovered.
    for garbage, (seq, message) in items:
        if not garbage or garbage.endswith(b"\x00"):
            assert Frame(seq, message) in results


# ------------------------------------------------------------------------------------------- chunking


@given(
    st.lists(st.one_of(GARBAGE, ANY_FRAME.map(lambda p: encode(p[1], p[0]))), max_size=10),
    st.lists(st.integers(0, 3000), max_size=30),
)
def test_results_do_not_depend_on_how_the_stream_is_split(pieces: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(pieces)
    whole = Decoder()
    expected = whole.feed(stream)
    split = Decoder()
    assert feed_all(split_at(stream, cuts), split) == expected
    assert (split.frames_ok, split.frames_bad, split.pending_bytes) == (
        whole.frames_ok,
        whole.frames_bad,
        whole.pending_bytes,
    )


@given(ANY_FRAME)
def test_byte_by_byte_feeding_decodes_a_frame(pair: tuple[int, Message]) -> None:
    seq, message = pair
    frame = encode(message, seq)
    decoder = Decoder()
    for index, byte in enumerate(frame):
        out = decoder.feed(bytes([byte]))
        assert out == ([] if index < len(frame) - 1 else [Frame(seq, message)])
    assert decoder.pending_bytes == 0


# ---------------------------------------------------------------------------------- memory, no raising


@given(st.lists(st.binary(max_size=400), max_size=20))
def test_decoder_never_raises_and_holds_at_most_one_frame(chunks: list[bytes]) -> None:
    decoder = Decoder()
    results = feed_all(chunks, decoder)  # asserts the pending bound after every feed
    assert all(isinstance(r, Frame | DecodeError) for r in results)
    assert decoder.frames_ok + decoder.frames_bad == len(results)
    stream = b"".join(chunks)
    complete = [c for c in stream.split(b"\x00")[:-1] if c]
    whole = Decoder().feed(stream)
    tail_overflow = len(stream.split(b"\x00")[-1]) > MAX_PENDING
    assert len(whole) == len(complete) + tail_overflow, "one result per chunk"
    for chunk, result in zip(complete, whole, strict=False):
        assert_canonical(chunk, result)


@given(st.binary(max_size=300))
def test_decoder_accepts_bytearray_and_memoryview(data: bytes) -> None:
    assert Decoder().feed(bytearray(data)) == Decoder().feed(data) == Decoder().feed(memoryview(data))


def test_long_run_without_delimiter_is_one_oversize_error_and_bounded() -> None:
    decoder = Decoder()
    out = []
    for _ in range(100):
        out += decoder.feed(b"\x01" * 1000)
        assert decoder.pending_bytes <= MAX_PENDING
    assert [r.kind for r in out if isinstance(r, DecodeError)] == [DecodeErrorKind.OVERSIZE]
    frame = encode(SetCurrent(2000, 6000), 12)
    assert decoder.feed(frame) == [], "the frame is glued to the run: both are dropped"
    assert decoder.feed(frame) == [Frame(12, SetCurrent(2000, 6000))], "resynchronised at the delimiter"


@pytest.mark.parametrize("length", [126, 127, 128, 129, 500])
def test_oversize_boundary_is_127_encoded_bytes(length: int) -> None:
    run = bytes([0xFF]) * length
    for chunks in ([run + b"\x00"], [bytes([b]) for b in run + b"\x00"]):
        out = feed_all(chunks)
        assert len(out) == 1 and isinstance(out[0], DecodeError)
        assert (out[0].kind is DecodeErrorKind.OVERSIZE) == (length > MAX_PENDING)


def test_a_well_formed_frame_with_a_121_byte_payload_is_oversize() -> None:
    body = bytes([PROTOCOL_VERSION, 0xC0, 0, 0]) + b"\x11" * 121
    encoded = cobs_encode_reference(body + crc16_reference(body).to_bytes(2, "big"))
    assert len(encoded) == MAX_FRAME_BYTES
    out = Decoder().feed(encoded + b"\x00")
    assert len(out) == 1 and isinstance(out[0], DecodeError) and out[0].kind is DecodeErrorKind.OVERSIZE
    direct = decode_body(encoded)
    assert isinstance(direct, DecodeError) and direct.kind is DecodeErrorKind.OVERSIZE


def test_lone_delimiters_flush_and_are_not_errors() -> None:
    decoder = Decoder()
    assert decoder.feed(b"\x00\x00\x00") == []
    assert decoder.feed(b"\x05partial") == []
    assert decoder.pending_bytes == 8
    out = decoder.feed(b"\x00" + encode(Heartbeat(), 3))
    assert len(out) == 2 and isinstance(out[0], DecodeError) and out[1] == Frame(3, Heartbeat())
    assert (decoder.frames_ok, decoder.frames_bad) == (1, 1)


def test_reset_drops_a_partial_frame() -> None:
    frame = encode(Heartbeat(), 4)
    decoder = Decoder()
    decoder.feed(b"\x09junk")
    decoder.reset()
    assert decoder.pending_bytes == 0
    assert decoder.feed(frame) == [Frame(4, Heartbeat())]
    decoder.feed(b"\x01" * 300)
    decoder.reset()
    assert decoder.feed(frame) == [Frame(4, Heartbeat())], "reset also ends an oversize run"


# --------------------------------------------------------------------------------------- truncation


@given(ANY_FRAME, st.integers(1, 200))
def test_truncated_frames_are_always_errors(pair: tuple[int, Message], cut: int) -> None:
    seq, message = pair
    frame = encode(message, seq)
    prefix = frame[: 1 + cut % (len(frame) - 2)]  # 1 .. len-2 bytes: a strict prefix of the encoding
    out = Decoder().feed(prefix + b"\x00" + frame)
    assert len(out) == 2
    assert isinstance(out[0], DecodeError)
    assert out[0].kind in {
        DecodeErrorKind.BAD_COBS,
        DecodeErrorKind.TOO_SHORT,
        DecodeErrorKind.BAD_CRC,
        DecodeErrorKind.BAD_LENGTH,
    }
    assert out[1] == Frame(seq, message)


# --------------------------------------------------------------------------------------- bit errors


def _syndromes(bits: int) -> list[int]:
    """x^d mod G for d = 0 .. bits-1: the CRC change caused by flipping the bit d places from the end."""
    out = []
    remainder = 1
    for _ in range(bits):
        out.append(remainder)
        remainder = ((remainder << 1) ^ 0x11021) if remainder & 0x8000 else remainder << 1
    return out


def test_crc_detects_every_1_2_and_3_bit_error_in_a_maximum_body() -> None:
    # CRC(body ^ e) = CRC(body) ^ CRC0(e) and CRC0(e) = 0 iff e(x) is divisible by G(x). With s_d = x^d
    # mod G: 1-bit errors are missed iff some s_d = 0, 2-bit iff s_i = s_j, 3-bit iff s_i ^ s_j = s_k.
    # Positions count from the end of the body, so this covers every body length up to 126 bytes.
    syndromes = _syndromes(MAX_BODY_BYTES * 8)
    assert all(syndromes), "1-bit"
    values = set(syndromes)
    assert len(values) == len(syndromes), "2-bit"
    assert not any(a ^ b in values for a, b in itertools.combinations(syndromes, 2)), "3-bit"


@given(ANY_FRAME, st.data())
def test_syndrome_model_matches_the_implementation(pair: tuple[int, Message], data: st.DataObject) -> None:
    body = cobs_decode_reference(encode(pair[1], pair[0])[:-1])
    bit = data.draw(st.integers(0, len(body) * 8 - 1))  # counted from the end
    flipped = bytearray(body)
    flipped[len(body) - 1 - bit // 8] ^= 1 << (bit % 8)
    # The CRC register of the corrupted body equals the syndrome times x^16 mod G.
    expected = _syndromes(bit + 17)[bit + 16]
    assert crc16_ccitt_false(bytes(flipped)) == expected


def _flip_body_bits(pair: tuple[int, Message], positions: set[int]) -> bytes:
    body = bytearray(cobs_decode_reference(encode(pair[1], pair[0])[:-1]))
    for position in positions:
        body[position // 8] ^= 1 << (position % 8)
    return cobs_encode_reference(bytes(body)) + b"\x00"


@given(ANY_FRAME, st.data())
def test_one_to_three_bit_errors_in_the_body_are_bad_crc(
    pair: tuple[int, Message], data: st.DataObject
) -> None:
    size_bits = (len(encode(pair[1], pair[0])) - 2) * 8
    positions = data.draw(st.sets(st.integers(0, size_bits - 1), min_size=1, max_size=3))
    out = Decoder().feed(_flip_body_bits(pair, positions))
    assert len(out) == 1 and isinstance(out[0], DecodeError) and out[0].kind is DecodeErrorKind.BAD_CRC


@given(ANY_FRAME, st.data())
def test_odd_numbers_of_bit_errors_are_bad_crc(pair: tuple[int, Message], data: st.DataObject) -> None:
    size_bits = (len(encode(pair[1], pair[0])) - 2) * 8
    positions = data.draw(st.sets(st.integers(0, size_bits - 1), min_size=1, max_size=size_bits))
    assume(len(positions) % 2 == 1)
    out = Decoder().feed(_flip_body_bits(pair, positions))
    assert len(out) == 1 and isinstance(out[0], DecodeError) and out[0].kind is DecodeErrorKind.BAD_CRC


@given(ANY_FRAME, st.data())
def test_bursts_of_up_to_16_bits_are_bad_crc(pair: tuple[int, Message], data: st.DataObject) -> None:
    size_bits = (len(encode(pair[1], pair[0])) - 2) * 8
    length = data.draw(st.integers(1, 16))
    start = data.draw(st.integers(0, size_bits - length))
    inner = data.draw(st.sets(st.integers(start + 1, start + length - 2))) if length > 2 else set()
    positions = {start, start + length - 1} | inner  # a burst: first and last bit flipped
    out = Decoder().feed(_flip_body_bits(pair, positions))
    assert len(out) == 1 and isinstance(out[0], DecodeError) and out[0].kind is DecodeErrorKind.BAD_CRC


@given(ANY_FRAME, st.data())
def test_a_flipped_data_byte_on_the_wire_is_caught(pair: tuple[int, Message], data: st.DataObject) -> None:
    encoded = bytearray(encode(pair[1], pair[0])[:-1])
    codes = set(cobs_code_positions(bytes(encoded)))
    data_positions = [i for i in range(len(encoded)) if i not in codes]
    position = data.draw(st.sampled_from(data_positions))
    encoded[position] ^= 1 << data.draw(st.integers(0, 7))
    out = Decoder().feed(bytes(encoded) + b"\x00")
    assert isinstance(out[0], DecodeError)
    if encoded[position]:
        assert len(out) == 1 and out[0].kind is DecodeErrorKind.BAD_CRC, "one bit changed in the body"
    else:  # the byte became a delimiter: the head is cut inside a COBS block
        assert out[0].kind is DecodeErrorKind.BAD_COBS
        for chunk, result in zip(bytes(encoded).split(b"\x00"), out, strict=False):
            assert_canonical(chunk, result)


@given(st.lists(ANY_FRAME, min_size=1, max_size=4), st.data())
def test_arbitrary_wire_corruption_never_raises_or_forges(
    pairs: list[tuple[int, Message]], data: st.DataObject
) -> None:
    stream = bytearray(b"".join(encode(m, s) for s, m in pairs))
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(stream) - 1))
        stream[position] ^= data.draw(st.integers(1, 255))
    parts = bytes(stream).split(b"\x00")
    complete = [c for c in parts[:-1] if c]
    results = feed_all([bytes(stream)])
    assert len(results) == len(complete) + (len(parts[-1]) > MAX_PENDING)
    for chunk, result in zip(complete, results, strict=False):
        assert_canonical(chunk, result)


# ------------------------------------------------------------------------------ every decode error kind


def _frame(version: int, type_id: int, seq: int, payload: bytes) -> bytes:
    body = bytes([version, type_id]) + seq.to_bytes(2, "little") + payload
    return cobs_encode_reference(body + crc16_reference(body).to_bytes(2, "big"))


TELEMETRY_PAYLOAD = encode(Telemetry(1, 2, DeviceState.HOLD, 0, 1, 3, 4, 5, 6, 7))[:-1]  # type: ignore[arg-type]
TELEMETRY_BODY = cobs_decode_reference(TELEMETRY_PAYLOAD)[4:-2]


def _with(offset: int, value: bytes) -> bytes:
    return TELEMETRY_BODY[:offset] + value + TELEMETRY_BODY[offset + len(value) :]


ERROR_CASES: list[tuple[str, bytes, DecodeErrorKind, int | None, int | None]] = [
    ("code past the end", b"\x05ab", DecodeErrorKind.BAD_COBS, None, None),
    ("empty body", b"\x01", DecodeErrorKind.TOO_SHORT, None, None),
    ("5-byte body", cobs_encode_reference(b"\x01\x0a\x01\x00\x00"), DecodeErrorKind.TOO_SHORT, None, None),
    ("bad CRC", _frame(PROTOCOL_VERSION, 0x0A, 5, b"")[:-1] + b"\x77", DecodeErrorKind.BAD_CRC, None, None),
    ("version 1", _frame(1, 0x0A, 5, b""), DecodeErrorKind.WRONG_VERSION, 5, 0x0A),
    ("version 3", _frame(3, 0x0A, 5, b""), DecodeErrorKind.WRONG_VERSION, 5, 0x0A),
    ("version 0", _frame(0, 0xC0, 0, TELEMETRY_BODY), DecodeErrorKind.WRONG_VERSION, 0, 0xC0),
    ("type 0x3F", _frame(PROTOCOL_VERSION, 0x3F, 9, b""), DecodeErrorKind.UNKNOWN_TYPE, 9, 0x3F),
    ("type 0x00", _frame(PROTOCOL_VERSION, 0x00, 9, b""), DecodeErrorKind.UNKNOWN_TYPE, 9, 0x00),
    ("payload too long", _frame(PROTOCOL_VERSION, 0x0A, 5, b"\x00"), DecodeErrorKind.BAD_LENGTH, 5, 0x0A),
    (
        "payload too short",
        _frame(PROTOCOL_VERSION, 0x05, 5, b"\x01" * 7),
        DecodeErrorKind.BAD_LENGTH,
        5,
        0x05,
    ),
    ("request with seq 0", _frame(PROTOCOL_VERSION, 0x0A, 0, b""), DecodeErrorKind.BAD_SEQUENCE, 0, 0x0A),
    ("reply with seq 0", _frame(PROTOCOL_VERSION, 0x80, 0, b"\x0a"), DecodeErrorKind.BAD_SEQUENCE, 0, 0x80),
    (
        "telemetry with seq 1",
        _frame(PROTOCOL_VERSION, 0xC0, 1, TELEMETRY_BODY),
        DecodeErrorKind.BAD_SEQUENCE,
        1,
        0xC0,
    ),
    ("state 10", _frame(PROTOCOL_VERSION, 0xC0, 0, _with(8, b"\x0a")), DecodeErrorKind.BAD_VALUE, 0, 0xC0),
    (
        "reserved flag bit",
        _frame(PROTOCOL_VERSION, 0xC0, 0, _with(9, b"\x00\x10")),
        DecodeErrorKind.BAD_VALUE,
        0,
        0xC0,
    ),
    ("polarity 3", _frame(PROTOCOL_VERSION, 0xC0, 0, _with(11, b"\x03")), DecodeErrorKind.BAD_VALUE, 0, 0xC0),
    (
        "nack code 0",
        _frame(PROTOCOL_VERSION, 0x81, 3, b"\x04\x00" + b"\x00" * 25),
        DecodeErrorKind.BAD_VALUE,
        3,
        0x81,
    ),
    (
        "event replayed 2",
        _frame(PROTOCOL_VERSION, 0xC1, 0, b"\x01" * 8 + b"\x01\x00" + b"\x00" * 8 + b"\x02"),
        DecodeErrorKind.BAD_VALUE,
        0,
        0xC1,
    ),
    (
        "model non-ASCII",
        _frame(PROTOCOL_VERSION, 0x82, 1, b"\xe9" + b"\x00" * 72),
        DecodeErrorKind.BAD_VALUE,
        1,
        0x82,
    ),
    (
        "model NUL inside",
        _frame(PROTOCOL_VERSION, 0x82, 1, b"a\x00b" + b"\x00" * 70),
        DecodeErrorKind.BAD_VALUE,
        1,
        0x82,
    ),
    (
        "waveforms bit 2",
        _frame(PROTOCOL_VERSION, 0x82, 1, b"\x00" * 56 + b"\x04" + b"\x00" * 16),
        DecodeErrorKind.BAD_VALUE,
        1,
        0x82,
    ),
]


@pytest.mark.parametrize(
    ("name", "encoded", "kind", "seq", "type_id"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES]
)
def test_each_decode_error_kind(
    name: str, encoded: bytes, kind: DecodeErrorKind, seq: int | None, type_id: int | None
) -> None:
    for result in (decode_body(encoded), *Decoder().feed(encoded + b"\x00")):
        assert isinstance(result, DecodeError), name
        assert (result.kind, result.seq, result.type_id) == (kind, seq, type_id)
        assert result.raw == encoded[:32]
        assert result.detail


def test_every_decode_error_kind_is_covered() -> None:
    covered = {case[2] for case in ERROR_CASES} | {DecodeErrorKind.OVERSIZE}
    assert covered == set(DecodeErrorKind)
