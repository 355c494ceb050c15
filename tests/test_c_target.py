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
    Decoder,
    DeviceState,
    ErrorCode,
    Frame,
    GetStatus,
    Heartbeat,
    Identify,
    Polarity,
    Reset,
    Start,
    encode,
)
from iontodrive.protocol.codegen import target
from iontodrive.protocol.codegen.toolchain import Footprint, ToolMissing, run_qemu_after

VECTORS: list[dict[str, Any]] = json.loads((ROOT / "docs" / "vectors.json").read_text(encoding="utf-8"))
FLASH_BUDGET = 16 * 1024  # bytes: the whole codec with every function; a regression gate, not a target


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


def _replies(output: bytes) -> list[Frame]:
    results = Decoder().feed(output)
    assert all(isinstance(item, Frame) for item in results), results
    return [item for item in results if isinstance(item, Frame)]


def test_example_device_answers_over_its_uart(tmp_path: Path) -> None:
    """Identify and GetStatus answered; a request it does not support, a frame with a wrong length and
    garbage handled as docs/protocol.md 3.5 says; Reset acknowledged, then the program stops."""
    image = _or_skip(target.build_example, tmp_path)
    requests = [
        encode(Identify(), 1),
        encode(GetStatus(), 2),
        b"\x00\x13\x37\xff\x00",  # noise: no reply
        encode(Heartbeat(), 3),
        encode(Start(1000, 0, 60_000, 5000, 5000, Polarity.ANODE), 4),
        _frame_with_payload(Identify.TYPE, 6, b"\x01"),
        encode(Reset(), 7),
    ]
    ready = b"example device: ready"
    result = _or_skip(run_qemu_after, image, ready, b"".join(requests), timeout_s=target.QEMU_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    replies = _replies(result.stdout)
    assert [(frame.seq, type(frame.message).__name__) for frame in replies] == [
        (1, "IdentityReport"),
        (2, "StatusReport"),
        (3, "Ack"),
        (4, "Nack"),
        (6, "Nack"),
        (7, "Ack"),
    ]
    identity = replies[0].message
    assert identity.model == "example-c" and identity.protocol_version == PROTOCOL_VERSION  # type: ignore[attr-defined]
    assert replies[1].message.state is DeviceState.IDLE  # type: ignore[attr-defined]
    assert replies[3].message.code is ErrorCode.UNSUPPORTED  # type: ignore[attr-defined]
    bad_length = replies[4].message
    assert (bad_length.code, bad_length.value, bad_length.maximum) == (ErrorCode.BAD_LENGTH, 1, 0)  # type: ignore[attr-defined]


def _frame_with_payload(type_id: int, seq: int, payload: bytes) -> bytes:
    """A correctly framed request whose payload is longer than its layout (a BAD_LENGTH frame)."""
    cobs = importlib.import_module("cobs.cobs")  # untyped package: through importlib, typed as a module

    from iontodrive.protocol import crc16_ccitt_false

    body = bytes([PROTOCOL_VERSION, int(type_id)]) + seq.to_bytes(2, "little") + payload
    return bytes(cobs.encode(body + crc16_ccitt_false(body).to_bytes(2, "big"))) + b"\x00"
