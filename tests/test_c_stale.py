"""Issue 15's "done means": a change to one message layout in Python regenerates the C code, and the
differential tests fail if either side is left behind.

The change is real: a copy of the ``iontodrive`` package with one edit to ``messages.py`` (Telemetry's
``sample_no`` from u32 to u16), imported by child processes through ``PYTHONPATH``. Then:

* Python changed, C left behind: ``--check`` fails on ``firmware/c``, and the differential tests, run
  against a build of the committed C, fail;
* C regenerated, Python left behind: the binding refuses the library by its fingerprint, and the
  differential tests, made to run against it anyway, fail;
* both sides regenerated: the same differential tests pass (so the failures above come from the lag alone).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from c_support import ROOT, build_or_skip, child_environment, pytest_command

from iontodrive.protocol.codegen import GENERATED_DIR
from iontodrive.protocol.codegen.binding import CCodec, StaleCodecError

ORIGINAL = '        "sample_no" / Int32ul,'
CHANGED = '        "sample_no" / Int16ul,'
DIFFERENTIAL = "differential_every_type or differential_valid or differential_hostile"


@pytest.fixture(scope="module")
def changed_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package whose Telemetry layout differs in one field; returns the PYTHONPATH entry."""
    root = tmp_path_factory.mktemp("changed-python")
    shutil.copytree(ROOT / "iontodrive", root / "iontodrive", ignore=shutil.ignore_patterns("__pycache__"))
    messages = root / "iontodrive" / "protocol" / "messages.py"
    text = messages.read_text(encoding="utf-8")
    telemetry_at = text.index("class Telemetry(")
    edit_at = text.index(ORIGINAL, telemetry_at)
    messages.write_text(text[:edit_at] + CHANGED + text[edit_at + len(ORIGINAL) :], encoding="utf-8")
    return root


def _env_with(python_path: Path | None, env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    if python_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(python_path), str(ROOT / "tests")])
        env["PYTHONSAFEPATH"] = "1"  # no working directory at the front of sys.path: the copy must win
    return env


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=240, check=False
    )


def test_the_copy_is_what_the_children_import(changed_package: Path) -> None:
    probe = "import iontodrive.protocol as p; print(p.__file__, p.Telemetry.LAYOUT.sizeof())"
    result = _run([sys.executable, "-c", probe], _env_with(changed_package))
    assert result.returncode == 0, result.stderr
    path, size = result.stdout.split()
    assert path.startswith(str(changed_package)) and int(size) == 30  # 32 bytes before the edit


def test_python_changed_c_left_behind(changed_package: Path, tmp_path: Path) -> None:
    check = _run(
        [sys.executable, "-m", "iontodrive.protocol.codegen", "--check", "--out", str(GENERATED_DIR)],
        _env_with(changed_package),
    )
    assert check.returncode == 1 and "stale" in check.stderr, check.stdout + check.stderr
    library = build_or_skip(tmp_path / "committed.so", GENERATED_DIR)
    env = _env_with(changed_package, child_environment(library, ignore_fingerprint=True))
    result = _run(pytest_command("tests/test_c_codec.py", "-x", "-k", DIFFERENTIAL), env)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "Telemetry" in result.stdout and "AssertionError" in result.stdout, result.stdout[-2000:]
    assert "1 failed" in result.stdout


def test_c_regenerated_python_left_behind(changed_package: Path, tmp_path: Path) -> None:
    generated = tmp_path / "c"
    out = _run(
        [sys.executable, "-m", "iontodrive.protocol.codegen", "--out", str(generated)],
        _env_with(changed_package),
    )
    assert out.returncode == 0, out.stderr
    library = build_or_skip(tmp_path / "regenerated.so", generated)
    with pytest.raises(StaleCodecError, match="regenerate"):
        CCodec(library)
    result = _run(
        pytest_command("tests/test_c_codec.py", "-x", "-k", DIFFERENTIAL),
        child_environment(library, ignore_fingerprint=True),
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert "Telemetry" in result.stdout and "AssertionError" in result.stdout, result.stdout[-2000:]
    assert "1 failed" in result.stdout


def test_both_sides_regenerated_agree(changed_package: Path, tmp_path: Path) -> None:
    generated = tmp_path / "c"
    out = _run(
        [sys.executable, "-m", "iontodrive.protocol.codegen", "--out", str(generated)],
        _env_with(changed_package),
    )
    assert out.returncode == 0, out.stderr
    library = build_or_skip(tmp_path / "regenerated.so", generated)
    env = _env_with(changed_package, child_environment(library))
    result = _run(pytest_command("tests/test_c_codec.py", "-k", DIFFERENTIAL), env)
    assert result.returncode == 0, result.stdout[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
