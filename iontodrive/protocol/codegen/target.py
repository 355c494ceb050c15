"""The generated codec on the host and on an emulated Cortex-M4: the vector runner, the example device,
and the footprint table. ``python -m iontodrive.protocol.codegen.target`` (``make firmware-check``) runs
it all and prints the figures ``docs/firmware.md`` quotes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .emit_c import SOURCE_NAME
from .emit_vectors import render_vector_table
from .generate import REPO_ROOT
from .model import load_schema
from .toolchain import (
    FIRMWARE_DIR,
    Footprint,
    ToolMissing,
    build_host_program,
    cross_compile,
    link_image,
    run_qemu,
    size,
)

VECTORS_PATH = REPO_ROOT / "docs" / "vectors.json"
TEST_DIR = FIRMWARE_DIR / "test"
EXAMPLE_DIR = FIRMWARE_DIR / "example"
QEMU_TIMEOUT_S = 30.0
_SUMMARY = re.compile(r"vectors: (\d+) of (\d+) agree.*\nstream: (\d+) of (\d+) results", re.S)


@dataclass(frozen=True)
class RunnerResult:
    """What the vector runner printed and how it ended."""

    returncode: int
    output: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and self.output.rstrip().endswith("PASS")

    @property
    def counts(self) -> tuple[int, int, int, int]:
        """(vectors agreed, vectors, stream results agreed, stream results)."""
        match = _SUMMARY.search(self.output)
        if match is None:
            return (0, 0, 0, 0)
        a, b, c, d = (int(g) for g in match.groups())
        return (a, b, c, d)


def write_vector_table(out_dir: Path, vectors_path: Path = VECTORS_PATH) -> Path:
    vectors: list[dict[str, Any]] = json.loads(vectors_path.read_text(encoding="utf-8"))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "vector_table.h"
    path.write_text(render_vector_table(load_schema(), vectors), encoding="utf-8")
    return path


def build_host_runner(work: Path, source_dir: Path = FIRMWARE_DIR, *, sanitize: bool = False) -> Path:
    write_vector_table(work)
    sources = [TEST_DIR / "vector_runner.c", TEST_DIR / "platform_host.c", source_dir / SOURCE_NAME]
    return build_host_program(
        work / "vector_runner", sources, [work, source_dir, TEST_DIR], sanitize=sanitize
    )


def run_host_runner(program: Path) -> RunnerResult:
    import subprocess

    start = time.perf_counter()
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=60, check=False)
    return RunnerResult(result.returncode, result.stdout + result.stderr, time.perf_counter() - start)


def build_target_runner(work: Path, source_dir: Path = FIRMWARE_DIR) -> Path:
    write_vector_table(work)
    sources = [TEST_DIR / "vector_runner.c", TEST_DIR / "platform_target.c", source_dir / SOURCE_NAME]
    return link_image(work / "vector_runner.elf", sources, [work, source_dir, TEST_DIR])


def run_target(image: Path, *, stdin: bytes = b"", timeout_s: float = QEMU_TIMEOUT_S) -> RunnerResult:
    start = time.perf_counter()
    result = run_qemu(image, stdin=stdin, timeout_s=timeout_s)
    output = (result.stdout + result.stderr).decode("ascii", "replace")
    return RunnerResult(result.returncode, output, time.perf_counter() - start)


def build_example(work: Path, source_dir: Path = FIRMWARE_DIR, *, stop_on_reset: bool = True) -> Path:
    """The example device (``firmware/c/example/example_device.c``) as an MPS2-AN386 image. With
    ``stop_on_reset`` (the tests) a Reset ends the program, so that the emulator exits."""
    sources = [EXAMPLE_DIR / "example_device.c", source_dir / SOURCE_NAME]
    extra = ("-DEXAMPLE_STOP_ON_RESET",) if stop_on_reset else ()
    name = "example_device.elf" if stop_on_reset else "example_device_running.elf"
    return link_image(work / name, sources, [source_dir, EXAMPLE_DIR], extra)


@dataclass(frozen=True)
class FootprintRow:
    what: str
    footprint: Footprint


def footprints(work: Path, source_dir: Path = FIRMWARE_DIR) -> list[FootprintRow]:
    """arm-none-eabi-size of the codec object (table and bitwise CRC) and of the linked example."""
    source = source_dir / SOURCE_NAME
    rows = [
        FootprintRow(
            "codec object, every function (CRC table)", size(cross_compile(work / "codec.o", source, []))
        ),
        FootprintRow(
            "codec object, every function (bitwise CRC)",
            size(cross_compile(work / "codec_bitwise.o", source, [], ("-DIONTO_CRC_BITWISE",))),
        ),
        FootprintRow(
            "example device image (codec + start-up + UART, linked)", size(build_example(work, source_dir))
        ),
    ]
    return rows


STACK_CHAINS: tuple[tuple[str, ...], ...] = (
    ("ionto_decoder_feed", "ionto_decoder_push", "ionto_decode_body", "decode_payload"),
    ("ionto_encode_status_report", "ionto_encode", "encode_frame", "encode_payload"),
    ("ionto_encode", "encode_frame", "encode_payload"),
)
"""Call chains of the public API, outermost first (names absent from the object were inlined)."""


def stack_frames(work: Path, source_dir: Path = FIRMWARE_DIR) -> dict[str, int]:
    """Stack frame of every function left in the Cortex-M4 object (``-fstack-usage``), in bytes. Static
    helpers inlined at -Os have no frame of their own: their use is in their caller's."""
    obj = cross_compile(work / "codec_su.o", source_dir / SOURCE_NAME, [], ("-fstack-usage",))
    frames: dict[str, int] = {}
    for line in obj.with_suffix(".su").read_text(encoding="utf-8").splitlines():
        where, size_text, _kind = line.split("\t")
        frames[where.rsplit(":", 1)[-1]] = int(size_text)
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m iontodrive.protocol.codegen.target",
        description="Run the C codec's vectors on the host and under qemu; print its Cortex-M4 footprint.",
    )
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "build" / "firmware", help="build directory")
    args = parser.parse_args(argv)
    work: Path = args.work
    ok = True
    try:
        host = run_host_runner(build_host_runner(work / "host"))
        print(f"host gcc:   {host.output.strip().splitlines()[-3]}  ({host.seconds:.2f} s)")
        ok &= host.passed
        image = build_target_runner(work / "target")
        target = run_target(image)
        vectors, total, agreed, results = target.counts
        print(
            f"qemu {image.name} on mps2-an386 (Cortex-M4): {vectors} of {total} vectors both ways, "
            f"{agreed} of {results} stream results agree, {'PASS' if target.passed else 'FAIL'} "
            f"in {target.seconds:.2f} s (limit {QEMU_TIMEOUT_S:.0f} s)"
        )
        ok &= target.passed
        print("\nCortex-M4 footprint (-mcpu=cortex-m4 -mthumb -Os), bytes:")
        print(f"  {'what':<58} {'.text':>7} {'.data':>6} {'.bss':>6} {'flash':>7} {'RAM':>6}")
        for row in footprints(work / "size"):
            fp = row.footprint
            print(f"  {row.what:<58} {fp.text:>7} {fp.data:>6} {fp.bss:>6} {fp.flash:>7} {fp.ram:>6}")
        frames = stack_frames(work / "size")
        print("\nStack, bytes (sum of the frames along the deepest call chain):")
        for chain in STACK_CHAINS:
            depth = sum(frames.get(name, 0) for name in chain)
            print(f"  {' -> '.join(n for n in chain if n in frames):<84} {depth:>5}")
    except ToolMissing as error:
        print(error, file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
