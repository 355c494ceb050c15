"""Codec speed: our fast path against plain construct, compiled construct and a bare struct path.

All four paths do the same work on the same frame and are checked to give the same result first:

* decode: COBS-decode the frame, verify the CRC, read header and payload, and (except *bare*) return a
  typed message (enum members, flag sets, bools, str);
* encode: from a message (for *bare*, from a tuple of wire values) to the whole frame, delimiter included.

Paths:
  (a) construct: one ``construct.Struct`` for the whole body: ``RawCopy`` of the header fields and the
      message's ``LAYOUT``, then ``Checksum(Int16ub, crc_hqx, ...)``; the container is turned into the
      typed dataclass;
  (b) compiled:  the same Struct after ``.compile()``;
  (c) bare:      ``cobs`` + ``binascii.crc_hqx`` + a precompiled ``struct.Struct``, into/from a plain tuple;
  (d) ours:      ``iontodrive.protocol.decode_body`` / ``encode`` (and ``Decoder.feed``, reported too);
  (e) C ctypes:  the generated C codec (issue 15, ``firmware/c``) called per frame through the ctypes binding
      the differential tests use (``iontodrive.protocol.codegen.binding``), typed message in and out;
  (f) C loop:    the same C functions called n times in one C loop (no Python per frame): what firmware
      pays on the host CPU. Decode: ``ionto_decode_body`` (and the stream decoder on 100 frames); encode:
      ``ionto_encode`` from the decoded C struct. The C library is built with gcc -O2 at start (skipped,
      saying so, without gcc).

Ratios of (e) and (f) are against (d), Python's fast path, measured in the same run.

Every path is timed with ``timeit`` in interleaved rounds (best of ``--repeat``), so that a busy machine
slows all paths alike. Targets (issue 2), checked on Telemetry: ours ≥ 10x faster than (a) and at most 4x
slower than (c), for both decode and encode. Exit status 1 if a target is missed, unless ``--no-check``.

Usage::

    .venv/bin/python bench/codec.py [--number N] [--repeat R] [--no-check]
"""

from __future__ import annotations

import argparse
import binascii
import dataclasses
import struct
import sys
import tempfile
import time
import timeit
import typing
from collections.abc import Callable
from enum import IntEnum, IntFlag
from pathlib import Path
from typing import Any

import construct
from cobs import cobs

from iontodrive.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Decoder,
    DeviceState,
    Frame,
    Message,
    MessageKind,
    MessageType,
    Polarity,
    StatusFlags,
    StatusReport,
    Telemetry,
    decode_body,
    encode,
)
from iontodrive.protocol.codegen.binding import CCodec
from iontodrive.protocol.codegen.toolchain import ToolMissing, build_host_library

DECODE_TARGET_SPEEDUP = 10.0  # ours vs plain construct, at least
MAX_SLOWDOWN_VS_BARE = 4.0  # ours vs bare struct path, at most
TARGET_MESSAGE = "Telemetry"

_CRC_INIT = 0xFFFF
_FEED_BATCH = 100


def _crc(data: bytes) -> int:
    return binascii.crc_hqx(data, _CRC_INIT)


class Paths:
    """The four encode and decode paths for one message, and the inputs they take."""

    def __init__(self, message: Message, seq: int, c_codec: CCodec | None = None) -> None:
        cls = type(message)
        self.c_codec = c_codec
        self.name = cls.__name__
        self.message = message
        self.seq = seq
        self.frame = encode(message, seq)
        self.encoded = self.frame[:-1]
        self.field_names = [f.name for f in dataclasses.fields(cls)]
        hints = typing.get_type_hints(cls)
        self.converters: list[tuple[str, Callable[[Any], Any] | None]] = [
            (
                name,
                hints[name]
                if isinstance(hints[name], type) and issubclass(hints[name], IntEnum | IntFlag)
                else None,
            )
            for name in self.field_names
        ]
        self.cls = cls
        self.body_struct = construct.Struct(
            "fields"
            / construct.RawCopy(
                construct.Struct(
                    "version" / construct.Int8ul,
                    "type" / construct.Int8ul,
                    "seq" / construct.Int16ul,
                    "payload" / cls.LAYOUT,
                )
            ),
            "crc" / construct.Checksum(construct.Int16ub, _crc, construct.this.fields.data),
        )
        self.compiled_struct = self.body_struct.compile()
        payload_format = "".join(
            "B" if isinstance(sc.subcon, type(construct.Flag)) else _struct_code(sc.subcon)
            for sc in cls.LAYOUT.subcons
        )
        self.bare_struct = struct.Struct("<BBH" + payload_format)
        self.bare_values = self.bare_struct.unpack_from(cobs.decode(self.encoded))
        self.feed_stream = self.frame * _FEED_BATCH

    # ------------------------------------------------------------------------------------------ decode

    def _typed(self, container: construct.Container) -> Frame:
        header = container.fields.value
        if header.version != PROTOCOL_VERSION or header.type != int(self.cls.TYPE):
            raise ValueError("wrong header")
        payload = header.payload
        values = {
            name: (convert(payload[name]) if convert is not None else payload[name])
            for name, convert in self.converters
        }
        return Frame(header.seq, self.cls(**values))

    def decode_construct(self) -> Frame:
        return self._typed(self.body_struct.parse(cobs.decode(self.encoded)))

    def decode_compiled(self) -> Frame:
        return self._typed(self.compiled_struct.parse(cobs.decode(self.encoded)))

    def decode_bare(self) -> tuple[Any, ...]:
        body = cobs.decode(self.encoded)
        if _crc(body):
            raise ValueError("bad CRC")
        return self.bare_struct.unpack_from(body)

    def decode_ours(self) -> Frame:
        return decode_body(self.encoded)  # type: ignore[return-value]

    def decode_ours_feed(self) -> list[Any]:
        return Decoder().feed(self.frame)

    def decode_ours_feed_batch(self) -> list[Any]:
        return Decoder().feed(self.feed_stream)

    # ------------------------------------------------------------------------------------------ encode

    def _container(self) -> dict[str, Any]:
        message = self.message
        payload = {name: getattr(message, name) for name in self.field_names}
        header = {
            "version": PROTOCOL_VERSION,
            "type": int(self.cls.TYPE),
            "seq": self.seq,
            "payload": payload,
        }
        return {"fields": {"value": header}}

    def encode_construct(self) -> bytes:
        return bytes(cobs.encode(self.body_struct.build(self._container()))) + b"\x00"

    def encode_compiled(self) -> bytes:
        return bytes(cobs.encode(self.compiled_struct.build(self._container()))) + b"\x00"

    def encode_bare(self) -> bytes:
        body = self.bare_struct.pack(*self.bare_values)
        return bytes(cobs.encode(body + _crc(body).to_bytes(2, "big"))) + b"\x00"

    def encode_ours(self) -> bytes:
        return encode(self.message, self.seq)

    def decode_c(self) -> Any:
        assert self.c_codec is not None
        return self.c_codec.decode_body(self.encoded)

    def encode_c(self) -> bytes:
        assert self.c_codec is not None
        return self.c_codec.encode(self.message, self.seq)

    def verify(self) -> None:
        """All paths agree before anything is timed."""
        expected = Frame(self.seq, self.message)
        if self.c_codec is not None:
            assert self.decode_c() == expected, self.name
            assert self.encode_c() == self.frame, self.name
            assert self.c_codec.decode_loop(self.encoded, 10) == 10, self.name
            assert self.c_codec.encode_loop(self.frame, 10) == 10, self.name
            assert self.c_codec.feed_loop(self.feed_stream, 1) == _FEED_BATCH, self.name
        assert self.decode_construct() == expected, self.name
        assert self.decode_compiled() == expected, self.name
        assert self.decode_ours() == expected, self.name
        assert self.decode_ours_feed() == [expected], self.name
        assert self.decode_ours_feed_batch() == [expected] * _FEED_BATCH, self.name
        assert self.decode_bare()[2] == self.seq and len(self.decode_bare()) == 3 + len(self.field_names)
        for path in (self.encode_construct, self.encode_compiled, self.encode_bare, self.encode_ours):
            assert path() == self.frame, (self.name, path.__name__)


def _struct_code(subcon: construct.Construct) -> str:
    if isinstance(subcon, construct.FormatField):
        return str(subcon.fmtstr[-1])
    if isinstance(subcon, construct.StringEncoded):
        return f"{subcon.subcon.length}s"
    raise TypeError(type(subcon).__name__)


def best_seconds_per_call(paths: dict[str, Callable[[], Any]], number: int, repeat: int) -> dict[str, float]:
    """Time every path ``repeat`` times in interleaved rounds; best time per call, in seconds."""
    timers = {name: timeit.Timer(fn) for name, fn in paths.items()}
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(repeat):
        for name, timer in timers.items():
            calls = max(1, number // 20) if name in ("construct", "compiled") else number
            best[name] = min(best[name], timer.timeit(calls) / calls)
    return best


def best_seconds_per_frame_in_c(
    loop: Callable[[int], int], frames_per_call: int, number: int, repeat: int
) -> float:
    """Best time per frame of a C loop doing ``n`` calls' work (``frames_per_call`` frames each)."""
    calls = max(1, number * 10 // frames_per_call)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        loop(calls)
        best = min(best, (time.perf_counter() - start) / (calls * frames_per_call))
    return best


def measure(paths_for: Paths, number: int, repeat: int) -> tuple[dict[str, float], dict[str, float]]:
    decode_paths: dict[str, Callable[[], Any]] = {
        "construct": paths_for.decode_construct,
        "compiled": paths_for.decode_compiled,
        "bare": paths_for.decode_bare,
        "ours": paths_for.decode_ours,
        "ours feed": paths_for.decode_ours_feed,
    }
    encode_paths: dict[str, Callable[[], Any]] = {
        "construct": paths_for.encode_construct,
        "compiled": paths_for.encode_compiled,
        "bare": paths_for.encode_bare,
        "ours": paths_for.encode_ours,
    }
    if paths_for.c_codec is not None:
        decode_paths["C ctypes"] = paths_for.decode_c
        encode_paths["C ctypes"] = paths_for.encode_c
    decode = best_seconds_per_call(decode_paths, number, repeat)
    batch = best_seconds_per_call(
        {"batch": paths_for.decode_ours_feed_batch}, max(1, number // _FEED_BATCH), repeat
    )
    decode["ours feed x100"] = batch["batch"] / _FEED_BATCH
    encode_times = best_seconds_per_call(encode_paths, number, repeat)
    c_codec = paths_for.c_codec
    if c_codec is not None:
        encoded, frame, stream = paths_for.encoded, paths_for.frame, paths_for.feed_stream
        decode["C loop"] = best_seconds_per_frame_in_c(
            lambda n: c_codec.decode_loop(encoded, n), 1, number, repeat
        )
        decode["C loop feed x100"] = best_seconds_per_frame_in_c(
            lambda n: c_codec.feed_loop(stream, n), _FEED_BATCH, number, repeat
        )
        encode_times["C loop"] = best_seconds_per_frame_in_c(
            lambda n: c_codec.encode_loop(frame, n), 1, number, repeat
        )
    return decode, encode_times


def _report(title: str, times: dict[str, float]) -> tuple[float, float]:
    print(f"  {title}")
    for name, seconds in times.items():
        print(f"    {name:<16} {1 / seconds:>12,.0f} frames/s  {seconds * 1e6:>8.2f} us/frame")
    speedup = times["construct"] / times["ours"]
    slowdown = times["ours"] / times["bare"]
    print(
        f"    ours vs construct: {speedup:6.1f}x faster (target >= {DECODE_TARGET_SPEEDUP:.0f}x);"
        f"  ours vs compiled: {times['compiled'] / times['ours']:6.1f}x faster;"
        f"  ours vs bare: {slowdown:4.2f}x slower (target <= {MAX_SLOWDOWN_VS_BARE:.0f}x)"
    )
    c_paths = [name for name in times if name.startswith("C ")]
    if c_paths:
        ratios = ";  ".join(f"{name} {times['ours'] / times[name]:6.1f}x" for name in c_paths)
        print(f"    C codec vs ours (frames/s ratio, >1 is faster than Python's fast path): {ratios}")
    return speedup, slowdown


def sample_messages() -> list[tuple[Message, int]]:
    flags = (
        StatusFlags.OUTPUT_ON | StatusFlags.SESSION_ACTIVE | StatusFlags.DOSE_BASED | StatusFlags.CONTACT_OK
    )
    return [
        (
            Telemetry(
                246, 123_000, DeviceState.HOLD, flags, Polarity.CATHODE, 4000, 4002, 18_510, 4625, 238_000
            ),
            0,
        ),
        (Ack(int(MessageType.START)), 4),
        (
            StatusReport(
                123_456,
                DeviceState.HOLD,
                flags,
                Polarity.CATHODE,
                4000,
                4000,
                3998,
                18_500,
                4625,
                240_000,
                2_400_000,
                570_000,
                1,
                7,
                2000,
                2,
            ),
            2,
        ),
    ]


def _c_codec() -> CCodec | None:
    """Build the generated C codec (gcc -O2) in a temporary directory; None, said in one line, without gcc."""
    try:
        library = build_host_library(Path(tempfile.mkdtemp(prefix="bench-codec-")) / "libionto_protocol.so")
    except ToolMissing as error:
        print(f"C codec left out: {error}")
        return None
    return CCodec(library)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Codec speed against construct and a bare struct path.")
    parser.add_argument("--number", type=int, default=20_000, help="calls per timing of the fast paths")
    parser.add_argument("--repeat", type=int, default=7, help="rounds; the best round counts")
    parser.add_argument("--no-check", action="store_true", help="always exit 0, even if a target is missed")
    parser.add_argument("--no-c", action="store_true", help="leave out the generated C codec")
    args = parser.parse_args(argv)
    c_codec = None if args.no_c else _c_codec()

    print(
        f"Python {sys.version.split()[0]}, construct {construct.version_string}, best of {args.repeat} rounds"
    )
    missed: list[str] = []
    for message, seq in sample_messages():
        paths = Paths(message, seq, c_codec)
        paths.verify()
        kind = type(message).TYPE.kind
        payload = type(message).LAYOUT.sizeof()
        print(
            f"\n{paths.name} ({'unsolicited' if kind is MessageKind.UNSOLICITED else kind.name.lower()}, "
            f"payload {payload} bytes, frame {len(paths.frame)} bytes on the wire)"
        )
        decode_times, encode_times = measure(paths, args.number, args.repeat)
        for title, times in (("decode", decode_times), ("encode", encode_times)):
            speedup, slowdown = _report(title, times)
            if paths.name == TARGET_MESSAGE:
                if speedup < DECODE_TARGET_SPEEDUP:
                    missed.append(f"{paths.name} {title}: {speedup:.1f}x faster than construct")
                if slowdown > MAX_SLOWDOWN_VS_BARE:
                    missed.append(f"{paths.name} {title}: {slowdown:.2f}x slower than bare")
    print()
    if missed:
        print("TARGETS MISSED: " + "; ".join(missed))
        return 0 if args.no_check else 1
    print(f"targets met on {TARGET_MESSAGE} (decode and encode)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
