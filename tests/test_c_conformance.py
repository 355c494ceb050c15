"""The example firmware under qemu against the conformance suite (issue 14's ``iontodrive conformance``),
over a TCP serial port: the rules the generated codec answers for (framing, CRC, COBS, version refusal,
decode-error NACKs, one reply per request, the reply deadline) must pass.

Slow (about 15 s of emulated serial traffic), so behind the ``slow`` marker; skipped, saying so, where the
conformance suite or the tools are not there. ``docs/firmware.md`` §9 gives a whole run's results.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from c_support import ROOT

from iontodrive.protocol.codegen import target
from iontodrive.protocol.codegen.toolchain import ToolMissing, qemu_command

pytestmark = pytest.mark.slow

CODEC_RULES = ("FRAME-", "VERSION-REFUSAL", "SEQ-ONE-REPLY", "NACK-DECODE", "REPLY-DEADLINE")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_example_device_passes_the_codec_rules(tmp_path: Path) -> None:
    pytest.importorskip(
        "iontodrive.conformance", reason="the conformance suite (issue 14) is not in this tree"
    )
    try:
        image = target.build_example(tmp_path, stop_on_reset=False)
        command = qemu_command(image, serial=f"tcp:127.0.0.1:{(port := _free_port())},server=on,wait=off")
    except ToolMissing as error:
        pytest.skip(str(error))
    qemu = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        assert qemu.stderr is not None
        seen, deadline = b"", time.monotonic() + 20
        while b"example device: ready" not in seen and time.monotonic() < deadline:
            if select.select([qemu.stderr], [], [], 1)[0]:
                seen += os.read(qemu.stderr.fileno(), 4096)
        assert b"ready" in seen, seen
        rules = [arg for rule in CODEC_RULES for arg in ("--rule", rule)]
        suite = subprocess.run(
            [
                sys.executable,
                "-m",
                "iontodrive.cli",
                "conformance",
                f"socket://127.0.0.1:{port}",
                "--no-load",
                *rules,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
            check=False,
        )
    finally:
        qemu.kill()
        qemu.wait()
    assert suite.returncode == 0, suite.stdout + suite.stderr
    assert "CONFORMS" in suite.stdout and "FAIL" not in suite.stdout, suite.stdout
