"""Plain-language messages of the command line: what was asked, the allowed range in the user's units, what
to do, and no Python class names (without ``--debug``).

The refusals are checked end to end (the real CLI in a subprocess, against the in-process simulator, so that
the device's own limits are in play); the wording rules are checked on the message functions directly.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from iontodrive.cli import exitcodes
from iontodrive.cli.messages import allowed_range, option_for, plain_message, unit_of, user_words
from iontodrive.errors import IontodriveError, SafetyRefusal, SessionInterrupted
from iontodrive.presets import PresetError, PresetModelError

ENV = {"IONTODRIVE_TIMEOUT_S": "1.0"}
CLINIC = "sim://clinic-4?speed=50"
# A Python class name as a message would show it: `SafetyRefusal`, `LinkClosedError`, `KeyboardInterrupt`.
CLASS_NAME = re.compile(r"\b[A-Z][a-z]+(?:[A-Z][a-z]+)+(?:Error|Refusal|Interrupt|Exception)?\b")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iontodrive.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ENV},
        stdin=subprocess.DEVNULL,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("iontodrive: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not CLASS_NAME.search(lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("value", "allowed"),
    [("-2", "allowed more than 0 mA"), ("1e9", "allowed 0.001 to 4 mA")],
)
def test_a_current_out_of_range_reads_the_same_way_either_side(
    value: str, allowed: str, tmp_path: Path
) -> None:
    result = cli(
        "deliver", CLINIC, "--current-ma", value, "--dose-ma-min", "10", "--polarity", "cathode",
        "--record", str(tmp_path / "r.jsonl"),
    )  # fmt: skip
    assert result.returncode == exitcodes.REFUSED
    line = error_line(result)
    shown = f"{float(value):g}"
    assert f"--current-ma {shown} mA refused; {allowed}" in line
    assert "iontodrive info PORT" in line  # what to do
    assert "current_ma" not in line and not re.search(r"\binf\b", line)


def test_pulse_hz_on_a_dc_only_model_names_the_option_as_spelled(tmp_path: Path) -> None:
    result = cli(
        "deliver", CLINIC, "--current-ma", "2", "--dose-ma-min", "10", "--polarity", "cathode",
        "--pulse-hz", "100", "--record", str(tmp_path / "r.jsonl"),
    )  # fmt: skip
    assert result.returncode == exitcodes.REFUSED
    line = error_line(result)
    assert "--waveform pulsed-dc (implied by --pulse-hz) refused" in line
    assert "pulsed_dc" not in line and "clinic-4" in line


def test_a_preset_for_another_model_says_so(tmp_path: Path) -> None:
    result = cli("deliver", CLINIC, "--preset", "tap-water-15", "--record", str(tmp_path / "r.jsonl"))
    assert result.returncode == exitcodes.USAGE
    line = error_line(result)
    assert "preset tap-water-15 is for hydro-30, not this clinic-4 (--current-ma 15 mA refused" in line
    assert "dexamethasone-40" in line  # the presets that fit
    assert not (tmp_path / "r.jsonl").exists()


def test_a_wrong_port_says_run_ports() -> None:
    result = cli("info", "/dev/ttyNOPE17")
    assert result.returncode == exitcodes.LINK_ERROR
    line = error_line(result)
    assert line == (
        "iontodrive: error: cannot open port /dev/ttyNOPE17: no such file or directory; "
        "run `iontodrive ports` to list serial ports and running simulators"
    )


def test_the_area_hint_appears_once_and_names_the_option(tmp_path: Path) -> None:
    result = cli(
        "deliver", CLINIC, "--current-ma", "1", "--dose-ma-min", "0.3", "--ramp-up-s", "5", "--ramp-down-s",
        "5", "--polarity", "cathode", "--record", str(tmp_path / "r.jsonl"), "--quiet",
    )  # fmt: skip
    assert result.returncode == exitcodes.OK, result.stderr
    hints = [ln for ln in result.stderr.splitlines() if "electrode area" in ln or "electrode_area" in ln]
    assert len(hints) == 1 and hints[0].startswith("iontodrive: hint:") and "--area-cm2" in hints[0]


# ------------------------------------------------------------------------------------------ the words


def test_units_and_options_follow_the_field_names() -> None:
    assert [unit_of(f) for f in ("current_ma", "dose_ma_min", "duration_s", "pulse_frequency_hz")] == [
        "mA",
        "mA·min",
        "s",
        "Hz",
    ]
    assert unit_of("duty_percent") == "%" and unit_of("electrode_area_cm2") == "cm²"
    assert (
        option_for("pulse_frequency_hz") == "--pulse-hz" and option_for("electrode_area_cm2") == "--area-cm2"
    )
    assert user_words("give exactly one of dose_ma_min and duration_s; waveform 'pulsed_dc'") == (
        "give exactly one of --dose-ma-min and --duration-s; --waveform 'pulsed-dc'"
    )
    assert allowed_range(0.001, 4, "mA") == "0.001 to 4 mA"
    assert allowed_range(0, None, "mA") == "more than 0 mA"
    assert allowed_range(10, None, "s") == "at least 10 s"
    assert allowed_range(None, 4, "mA") == "at most 4 mA"


def test_interrupts_read_as_what_happened_to_the_output() -> None:
    assert plain_message(SessionInterrupted("KeyboardInterrupt")) == (
        "stopped by Ctrl-C; the output was ramped down to 0 mA and the record is complete"
    )
    assert plain_message(SessionInterrupted("SIGTERM")).startswith("stopped by SIGTERM;")
    assert "KeyboardInterrupt" not in plain_message(KeyboardInterrupt())


def test_no_class_names_in_any_message() -> None:
    refusal = SafetyRefusal("ramp_up_s", 2.0, 5, 60, reason="outside S1's 5-60 s")
    text = plain_message(refusal)
    assert text.startswith("--ramp-up-s 2 s refused; allowed 5 to 60 s (outside S1's 5-60 s)")
    assert plain_message(RuntimeError("")) == "unexpected error (run with --debug for the details)"
    assert (
        plain_message(FileNotFoundError(2, "No such file or directory", "x.jsonl")) == "x.jsonl: no such file"
    )


def test_preset_errors_are_driver_errors() -> None:
    assert issubclass(PresetError, IontodriveError) and issubclass(PresetModelError, PresetError)
    assert exitcodes.exit_code_for(PresetError("unknown preset")) == exitcodes.USAGE
