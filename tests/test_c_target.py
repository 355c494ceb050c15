"""The generated C codec on its targets: the vector runner built natively and for a Cortex-M4 run under
qemu-system-arm (mps2-an386, semihosting, with a time limit), the footprint from arm-none-eabi-size, and
the example device answering requests over its emulated UART.

The qemu runs take well under two seconds together, so they are in the default suite. Where a tool is
missing the test skips with one line naming it (``make firmware-tools`` installs them).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from c_support import ROOT

from iontodrive.protocol import (
    PROTOCOL_VERSION,
    ClearFault,
    Decoder,
    DeviceState,
    ErrorCode,
    Field,
    Frame,
    GetStatus,
    Heartbeat,
    Identify,
    OpenSession,
    Polarity,
    Reset,
    SessionOpened,
    Start,
    Stop,
    encode,
    encode_version_refusal,
)
from iontodrive.protocol.codegen import target
from iontodrive.protocol.codegen.toolchain import Footprint, ToolMissing, run_qemu_after

VECTORS: list[dict[str, Any]] = json.loads((ROOT / "docs" / "vectors.json").read_text(encoding="utf-8"))
FLASH_BUDGET = 16 * 1024  # bytes: the whole codec with every function; a regression gate, not a target
STACK_BUDGET = 512  # bytes: the deepest chain of the public API (docs/firmware.md quotes the measured depth)


def _or_skip(build: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return build(*args, **kwargs)
    except ToolMissing as error:
        pytest.skip(str(error))


def test_vector_runner_on_the_host(tmp_path: Path) -> None:
    result = target.run_host_runner(_or_skip(target.build_host_runner, tmp_path))
    assert result.passed, result.output
    vectors, total, agreed, results = result.counts
    assert vectors == total == len(VECTORS) and agreed == results > 30


def test_vector_runner_on_an_emulated_cortex_m4(tmp_path: Path) -> None:
    image = _or_skip(target.build_target_runner, tmp_path)
    result = _or_skip(target.run_target, image, timeout_s=target.QEMU_TIMEOUT_S)
    assert result.passed, result.output
    vectors, total, agreed, results = result.counts
    assert vectors == total == len(VECTORS) and agreed == results > 30


def test_footprint_on_cortex_m4(tmp_path: Path) -> None:
    """The codec keeps no state of its own (no .data, no .bss) and fits the flash budget."""
    rows = {row.what: row.footprint for row in _or_skip(target.footprints, tmp_path)}
    codec = rows["codec object, every function (CRC table)"]
    bitwise = rows["codec object, every function (bitwise CRC)"]
    assert isinstance(codec, Footprint)
    assert codec.ram == 0 and bitwise.ram == 0
    assert 0 < bitwise.text < codec.text <= FLASH_BUDGET
    assert codec.text - bitwise.text >= 400  # the 512-byte table, less the bitwise loop


def test_stack_depth_on_cortex_m4(tmp_path: Path) -> None:
    """The deepest call chain of the public API stays within a small, stated stack budget."""
    frames = _or_skip(target.stack_frames, tmp_path)
    assert "ionto_decode_body" in frames and "ionto_encode" in frames
    for chain in target.STACK_CHAINS:
        assert 0 < sum(frames.get(name, 0) for name in chain) <= STACK_BUDGET, chain


def test_example_device_answers_over_its_uart(tmp_path: Path) -> None:
    """The example firmware over its emulated UART: Identify, GetStatus and OpenSession answered (a retried
    OpenSession the same), the state table's refusal, a request it does not support, a wrong length, a
    version-1 request (version refusal) and noise handled as docs/protocol.md 3.5 and 9 say; Reset
    acknowledged, then the program stops."""
    image = _or_skip(target.build_example, tmp_path)
    version_1_identify = _frame_with_payload(Identify.TYPE, 9, b"", version=PROTOCOL_VERSION - 1)
    requests = [
        encode(Identify(), 1),
        encode(GetStatus(), 2),
        b"\x00\x13\x37\xff\x00",  # noise: no reply
        encode(Heartbeat(), 3),
        encode(Start(1000, 0, 60_000, 5000, 5000, Polarity.ANODE), 4),
        encode(OpenSession(0x1234), 5),
        encode(OpenSession(0x1234), 5),  # a retry
        _frame_with_payload(Identify.TYPE, 6, b"\x01"),  # one byte too many
        encode(ClearFault(), 7),  # refused in IDLE by the state table
        encode(Stop(), 8),  # a safety command: always accepted
        version_1_identify,
        encode(Reset(), 10),
    ]
    ready = b"example device: ready"
    result = _or_skip(run_qemu_after, image, ready, b"".join(requests), timeout_s=target.QEMU_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    refusal = encode_version_refusal(int(Identify.TYPE), 9)
    assert refusal in result.stdout  # byte for byte the reference refusal, in version-1 format
    replies = Decoder().feed(result.stdout.replace(refusal, b""))
    summary = [(r.seq, type(r.message).__name__) if isinstance(r, Frame) else r for r in replies]
    assert summary == [
        (1, "IdentityReport"),
        (2, "StatusReport"),
        (3, "Ack"),
        (4, "Nack"),
        (5, "SessionOpened"),
        (5, "SessionOpened"),
        (6, "Nack"),
        (7, "Nack"),
        (8, "Ack"),
        (10, "Ack"),
    ]
    messages: list[Any] = [r.message for r in replies if isinstance(r, Frame)]
    assert messages[0].model == "example-c" and messages[0].protocol_version == PROTOCOL_VERSION
    assert messages[1].state is DeviceState.IDLE
    assert messages[3].code is ErrorCode.UNSUPPORTED
    assert messages[4] == messages[5] == SessionOpened(0x1234, 1, 0)
    assert (messages[6].code, messages[6].value, messages[6].maximum) == (ErrorCode.BAD_LENGTH, 1, 0)
    assert (messages[7].code, messages[7].field, messages[7].value) == (ErrorCode.BAD_STATE, Field.STATE, 0)


def _frame_with_payload(type_id: int, seq: int, payload: bytes, version: int = PROTOCOL_VERSION) -> bytes:
    """A correctly framed request with any payload and version byte (e.g. a BAD_LENGTH frame)."""
    cobs = importlib.import_module("cobs.cobs")  # untyped package: through importlib, typed as a module

    from iontodrive.protocol import crc16_ccitt_false

    body = bytes([version, int(type_id)]) + seq.to_bytes(2, "little") + payload
    return bytes(cobs.encode(body + crc16_ccitt_false(body).to_bytes(2, "big"))) + b"\x00"
