"""README.md's quick start, run as written: list ports, start the simulator, look at it, deliver a dose with
progress, report and plot. Only the simulator's speed is raised so that the dose takes seconds."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from iontodrive.record import SessionRecord

ROOT = Path(__file__).resolve().parents[1]
TEST_SPEED = "100"
LOADED_HOST_ENV = {"IONTODRIVE_TIMEOUT_S": "1.0"}  # the suite shares two cores with other work


def quick_start_commands() -> list[list[str]]:
    """The `iontodrive ...` lines of README's first shell block that starts with `iontodrive ports`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
        commands = [shlex.split(line.rstrip("&").strip()) for line in lines if line.startswith("iontodrive ")]
        if commands and commands[0][:2] == ["iontodrive", "ports"]:
            return commands
    raise AssertionError("README.md has no quick-start block starting with `iontodrive ports`")


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iontodrive.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **LOADED_HOST_ENV},
    )


# About 15 s (the preset has 30 s ramps and a pty). It runs in `make test`: issue 6 asks the tests to show it.
def test_readme_quick_start_works_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = quick_start_commands()
    verbs = [c[1] for c in commands]
    assert verbs[:2] == ["ports", "sim"] and "deliver" in verbs and "report" in verbs
    monkeypatch.setenv("IONTODRIVE_SIM_DIR", str(tmp_path / "run"))  # `ports` sees only this simulator
    sim_proc: subprocess.Popen[str] | None = None
    port = ""
    outputs: dict[str, str] = {}
    try:
        for command in commands:
            args = command[1:]
            if args[0] == "sim":
                if "--speed" in args:
                    args[args.index("--speed") + 1] = TEST_SPEED
                sim_proc = subprocess.Popen(
                    [sys.executable, "-m", "iontodrive.cli", *args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    cwd=tmp_path,
                )
                assert sim_proc.stdout is not None
                line = sim_proc.stdout.readline().strip()
                assert line.startswith("PORT "), line
                port = line.split(" ", 1)[1]
                listing = json.loads(run(["ports", "--json", "--no-visa"], tmp_path).stdout)
                assert port in [s["port"] for s in listing["simulators"]]
                continue
            args = [port if a == "/dev/pts/N" else a for a in args]
            result = run(args, tmp_path)
            assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
            outputs[args[0]] = result.stdout
    finally:
        if sim_proc is not None:
            sim_proc.send_signal(signal.SIGINT)
            try:
                sim_proc.wait(10)
            except subprocess.TimeoutExpired:
                sim_proc.kill()
    assert "Serial ports:" in outputs["ports"]
    assert "clinic-4" in outputs["info"]
    assert "] SESSION_STARTED " in outputs["deliver"] and "outcome: completed" in outputs["deliver"]
    assert "HOLD" in outputs["deliver"] and "mA·min" in outputs["deliver"]  # progress was shown
    record = SessionRecord.load(tmp_path / "session.jsonl")
    assert record.complete and record.delivered_uas == pytest.approx(40 * 60_000, rel=0.01)
    png = (tmp_path / "session.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert "outcome       completed" in outputs["report"]
