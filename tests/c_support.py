"""Shared helpers of the C codec tests: building the host library once, and how a subprocess is told which
library to load (the sanitized run and the stale-codec demonstration re-run the differential tests in a
child process).

Environment variables read by :func:`c_codec_for_tests`:

* ``IONTO_C_LIBRARY``: load this shared object instead of building one from ``firmware/c``;
* ``IONTO_C_IGNORE_FINGERPRINT=1``: load it even if it was generated from other definitions (stale);
* ``IONTO_C_SANITIZED=1``: the library is built with ASan/UBSan (the child asserts it really is).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from iontodrive.protocol.codegen.binding import CCodec
from iontodrive.protocol.codegen.toolchain import ToolMissing, build_host_library, sanitizer_runtime

ROOT = Path(__file__).resolve().parents[1]
LIBRARY_ENV = "IONTO_C_LIBRARY"
IGNORE_FINGERPRINT_ENV = "IONTO_C_IGNORE_FINGERPRINT"
SANITIZED_ENV = "IONTO_C_SANITIZED"


def skip_without(error: ToolMissing) -> None:
    pytest.skip(str(error))


def build_or_skip(out: Path, source_dir: Path | None = None, *, sanitize: bool = False) -> Path:
    try:
        if source_dir is None:
            return build_host_library(out, sanitize=sanitize)
        return build_host_library(out, source_dir, sanitize=sanitize)
    except ToolMissing as error:
        pytest.skip(str(error))


def c_codec_for_tests(build_dir: Path) -> CCodec:
    """The codec under test: the one named by ``IONTO_C_LIBRARY``, else a fresh build of ``firmware/c``."""
    named = os.environ.get(LIBRARY_ENV)
    library = Path(named) if named else build_or_skip(build_dir / "libionto_protocol.so")
    return CCodec(library, check_fingerprint=os.environ.get(IGNORE_FINGERPRINT_ENV) != "1")


def child_environment(
    library: Path, *, sanitized: bool = False, ignore_fingerprint: bool = False
) -> dict[str, str]:
    """Environment for a child pytest that tests ``library`` (preloading ASan's runtime if sanitized)."""
    env = dict(os.environ)
    env[LIBRARY_ENV] = str(library)
    env.pop(SANITIZED_ENV, None)
    env.pop(IGNORE_FINGERPRINT_ENV, None)
    if ignore_fingerprint:
        env[IGNORE_FINGERPRINT_ENV] = "1"
    if sanitized:
        try:
            runtime = sanitizer_runtime()
        except ToolMissing as error:
            pytest.skip(str(error))
        env[SANITIZED_ENV] = "1"
        env["LD_PRELOAD"] = str(runtime)
        # Python's own allocations are not ours to judge (leaks); every byte buffer comes from malloc so that
        # ASan sees its exact bounds.
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0:exitcode=99"
        env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:exitcode=98"
        env["PYTHONMALLOC"] = "malloc"
    return env


def pytest_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args]
