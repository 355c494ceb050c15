"""Build and run the generated C: the host shared library (plain or sanitized), Cortex-M4 objects and
images, their footprint, and runs under ``qemu-system-arm``.

Every function raises :class:`ToolMissing` (one line, naming the tool and how to get it) when a compiler
or emulator is not installed, so that tests can skip with that line; and :class:`BuildFailed` with the
compiler's output when a build fails.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .emit_c import SOURCE_NAME
from .emit_shim import SHIM_NAME
from .generate import GENERATED_DIR

FIRMWARE_DIR = GENERATED_DIR
"""``firmware/c``: the generated codec and, beside it, the hand-written target support and example."""

STRICT_FLAGS: tuple[str, ...] = (
    "-std=c99",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-pedantic",
    "-Wconversion",
    "-Wshadow",
    "-Wstrict-prototypes",
    "-Wmissing-prototypes",
    "-Wcast-qual",
    "-Wundef",
)
"""The warning set every build of the codec passes (the issue asks for the first six)."""

SANITIZE_FLAGS: tuple[str, ...] = (
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
)

CORTEX_M4_FLAGS: tuple[str, ...] = (
    "-mcpu=cortex-m4",
    "-mthumb",
    "-Os",
    "-ffunction-sections",
    "-fdata-sections",
)
"""Target flags of the footprint figures (``docs/firmware.md``)."""

INSTALL_HINT = (
    "`make firmware-tools` installs it "
    "(Debian: gcc, gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm)"
)


class ToolMissing(RuntimeError):
    """A compiler, binutil or emulator is not installed."""


class BuildFailed(RuntimeError):
    """The compiler refused the code (its output is the message)."""


def tool(name: str) -> str:
    """Absolute path of an executable on PATH, or :class:`ToolMissing`."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"{name} not found; {INSTALL_HINT}")
    return path


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildFailed(f"{' '.join(command)}\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr


def build_host_library(out: Path, source_dir: Path = FIRMWARE_DIR, *, sanitize: bool = False) -> Path:
    """Compile codec + shim into the shared object ``out`` with :data:`STRICT_FLAGS` (and the sanitizers)."""
    gcc = tool("gcc")
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = [*STRICT_FLAGS, "-O2", "-fPIC", "-shared"]
    if sanitize:
        sanitizer_runtime()  # ToolMissing (a skip, not a link error) where gcc has no sanitizer runtime
        flags += SANITIZE_FLAGS
    _run([gcc, *flags, str(source_dir / SOURCE_NAME), str(source_dir / SHIM_NAME), "-o", str(out)])
    return out


def build_host_program(
    out: Path, sources: list[Path], include: list[Path], *, sanitize: bool = False
) -> Path:
    """Compile and link a host program (e.g. the vector runner) with :data:`STRICT_FLAGS`."""
    gcc = tool("gcc")
    flags = [*STRICT_FLAGS, "-O2", *(f"-I{path}" for path in include)]
    if sanitize:
        flags += SANITIZE_FLAGS
    _run([gcc, *flags, *map(str, sources), "-o", str(out)])
    return out


def sanitizer_runtime() -> Path:
    """The ``libasan`` a Python process must preload to load an ASan-instrumented shared object
    (:class:`ToolMissing` if it, or UBSan's ``libubsan``, is not installed with gcc)."""
    gcc = tool("gcc")
    paths = [Path(_run([gcc, f"-print-file-name={name}"]).strip()) for name in ("libasan.so", "libubsan.so")]
    for path in paths:
        if not path.is_absolute() or not path.exists():
            raise ToolMissing(
                f"{path.name} not found with {gcc}; install gcc's sanitizer runtimes (libasan, libubsan)"
            )
    return paths[0]


# ------------------------------------------------------------------------------------------- the target

TARGET_DIR = FIRMWARE_DIR / "target"
"""Hand-written support for the emulated board: start-up, linker script, semihosting."""

QEMU_MACHINE = "mps2-an386"  # ARM MPS2 with the AN386 image: a Cortex-M4 with 4 MiB of code RAM


@dataclass(frozen=True)
class Footprint:
    """``arm-none-eabi-size`` of one object or image, in bytes."""

    text: int
    data: int
    bss: int

    @property
    def flash(self) -> int:
        """What the code costs in flash: ``.text`` (code and constants) plus ``.data``'s initial values."""
        return self.text + self.data

    @property
    def ram(self) -> int:
        return self.data + self.bss


def cross_compile(out: Path, source: Path, include: list[Path], extra: tuple[str, ...] = ()) -> Path:
    """Compile one C file to a Cortex-M4 object with :data:`STRICT_FLAGS` and :data:`CORTEX_M4_FLAGS`."""
    gcc = tool("arm-none-eabi-gcc")
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = [*STRICT_FLAGS, *CORTEX_M4_FLAGS, *extra, *(f"-I{path}" for path in include)]
    _run([gcc, *flags, "-c", str(source), "-o", str(out)])
    return out


def link_image(out: Path, sources: list[Path], include: list[Path], extra: tuple[str, ...] = ()) -> Path:
    """Build a bare-metal image for the MPS2 board: our start-up code and linker script, no C library."""
    gcc = tool("arm-none-eabi-gcc")
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = [
        *STRICT_FLAGS,
        *CORTEX_M4_FLAGS,
        *extra,
        *(f"-I{path}" for path in include),
        f"-I{TARGET_DIR}",
        "-nostdlib",
        "-fno-tree-loop-distribute-patterns",  # or GCC turns the start-up memcpy loop into a memcpy call
        "-Wl,--gc-sections",
        f"-T{TARGET_DIR / 'mps2_an386.ld'}",
    ]
    _run(
        [
            gcc,
            *flags,
            str(TARGET_DIR / "startup.c"),
            str(TARGET_DIR / "semihost.c"),
            *map(str, sources),
            "-o",
            str(out),
            "-lgcc",
        ]
    )
    return out


def size(path: Path) -> Footprint:
    """Parse ``arm-none-eabi-size`` (Berkeley format) of an object or image."""
    output = _run([tool("arm-none-eabi-size"), str(path)])
    text, data, bss = (int(value) for value in output.splitlines()[1].split()[:3])
    return Footprint(text, data, bss)


@dataclass(frozen=True)
class QemuRun:
    returncode: int
    stdout: bytes
    stderr: bytes


def qemu_command(image: Path, serial: str = "stdio") -> list[str]:
    """The emulator command line: no display, no monitor, UART0 on ``serial`` (a qemu chardev: ``stdio``,
    ``tcp:127.0.0.1:PORT,server=on,wait=off``, ...), semihosting on (its console is qemu's stderr)."""
    return [
        tool("qemu-system-arm"),
        "-M",
        QEMU_MACHINE,
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        serial,
        "-semihosting-config",
        "enable=on,target=native",
        "-kernel",
        str(image),
    ]


def run_qemu_after(image: Path, ready: bytes, stdin: bytes, *, timeout_s: float = 20.0) -> QemuRun:
    """Start an image, wait until its semihosting console (qemu's stderr) prints ``ready``, then send
    ``stdin`` to its UART and wait for it to exit. The emulated UART drops what arrives before the firmware
    enables it, so a host must not talk first. :class:`subprocess.TimeoutExpired` past the limit."""
    deadline = time.monotonic() + timeout_s
    process = subprocess.Popen(
        qemu_command(image), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None and process.stderr is not None
    try:
        seen = b""
        while ready not in seen:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([process.stderr], [], [], max(remaining, 0))
            chunk = os.read(process.stderr.fileno(), 4096) if readable else b""
            if not chunk:
                raise subprocess.TimeoutExpired(process.args, timeout_s, stderr=seen)
            seen += chunk
        process.stdin.write(stdin)
        process.stdin.close()
        process.stdin = None  # communicate() must not flush the closed pipe
        stdout, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 0.1))
    except BaseException:
        process.kill()
        process.wait()
        raise
    return QemuRun(process.returncode, stdout, seen + stderr)


def run_qemu(image: Path, *, stdin: bytes = b"", timeout_s: float = 20.0) -> QemuRun:
    """Run an image until it exits through semihosting; :class:`subprocess.TimeoutExpired` past the limit."""
    result = subprocess.run(
        qemu_command(image), input=stdin, capture_output=True, timeout=timeout_s, check=False
    )
    return QemuRun(result.returncode, result.stdout, result.stderr)
