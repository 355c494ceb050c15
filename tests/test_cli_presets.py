"""Presets as data, the `presets` subcommand, exit-code mapping and simulator discovery (no device needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim import discovery
from iontodrive import Prescription, SafetyRefusal
from iontodrive.cli import exitcodes, main
from iontodrive.presets import PRESCRIPTION_FIELDS, PresetError, build_prescription, load_presets

PRESETS_FILE = Path(__file__).resolve().parents[1] / "iontodrive" / "presets.json"


def test_every_shipped_preset_builds_a_valid_prescription_with_a_source() -> None:
    presets = load_presets()
    assert {"dexamethasone-40", "tap-water-15"} <= set(presets)
    raw = json.loads(PRESETS_FILE.read_text(encoding="utf-8"))["presets"]
    assert [p["name"] for p in raw] == list(presets)
    for preset in presets.values():
        assert preset.source.strip() and preset.description.strip()
        prescription = build_prescription(preset.name)
        assert isinstance(prescription, Prescription)
        for key, value in preset.prescription.items():
            got = prescription.to_dict()[key]
            assert got == value, (preset.name, key, got, value)


def test_issue_presets_have_the_issue_numbers() -> None:
    dex = build_prescription("dexamethasone-40")
    assert (dex.current_ma, dex.dose_ma_min, dex.polarity.name) == (4.0, 40.0, "CATHODE")
    tap = build_prescription("tap-water-15")
    assert (tap.current_ma, tap.duration_s, tap.dose_ma_min) == (15.0, 1200.0, None)
    assert load_presets()["tap-water-15"].model == "hydro-30"


def test_override_replaces_fields_and_switches_dose_for_duration() -> None:
    p = build_prescription("dexamethasone-40", {"current_ma": 2.5, "ramp_up_s": 10, "polarity": None})
    assert (p.current_ma, p.ramp_up_s, p.dose_ma_min, p.polarity.name) == (2.5, 10.0, 40.0, "CATHODE")
    timed = build_prescription("dexamethasone-40", {"duration_s": 600})
    assert (timed.dose_ma_min, timed.duration_s) == (None, 600.0)


def test_unknown_preset_and_field_are_refused_by_name() -> None:
    with pytest.raises(PresetError, match=r"unknown preset 'nope'.*dexamethasone-40"):
        build_prescription("nope")
    with pytest.raises(PresetError) as info:
        build_prescription("dexamethasone-40", {"curent_ma": 3})
    assert info.value.field == "curent_ma"
    with pytest.raises(SafetyRefusal) as refusal:
        build_prescription("dexamethasone-40", {"ramp_up_s": 1})
    assert refusal.value.field == "ramp_up_s"


def test_malformed_presets_file_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"presets": [{"name": "x", "description": "d", "prescription": {}}]}))
    with pytest.raises(PresetError, match="'source'"):
        load_presets(bad)
    bad.write_text(
        json.dumps(
            {
                "presets": [
                    {
                        "name": "x",
                        "description": "d",
                        "source": "s",
                        "prescription": {"current_ma": 1, "dose_ma_min": 1, "duration_s": 60},
                    }
                ]
            }
        )
    )
    with pytest.raises(PresetError, match="exactly one of"):
        load_presets(bad)


def test_preset_fields_match_the_prescription_dataclass() -> None:
    import dataclasses

    assert set(PRESCRIPTION_FIELDS) == {f.name for f in dataclasses.fields(Prescription)}


def test_presets_command_json_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in listed] == list(load_presets())
    assert all(p["source"] for p in listed)
    assert main(["presets", "tap-water-15"]) == 0
    out = capsys.readouterr().out
    assert "tap-water-15" in out and "15 mA" in out and "1200 s" in out and "source:" in out
    assert main(["presets", "nope"]) == exitcodes.USAGE
    assert "unknown preset" in capsys.readouterr().err


def test_user_presets_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "mine.json"
    own.write_text(
        json.dumps(
            {
                "presets": [
                    {
                        "name": "bench-1ma",
                        "description": "bench check",
                        "source": "our lab SOP 12",
                        "prescription": {"current_ma": 1, "duration_s": 60, "polarity": "anode"},
                    }
                ]
            }
        )
    )
    monkeypatch.setenv("IONTODRIVE_PRESETS", str(own))
    assert list(load_presets()) == ["bench-1ma"]
    assert build_prescription("bench-1ma").duration_s == 60.0


def test_exit_codes_are_distinct_and_mapped() -> None:
    from iontodrive.errors import (
        DeviceFault,
        DeviceRefusal,
        LinkLostError,
        LinkTimeoutError,
        SessionInterrupted,
    )
    from iontodrive.protocol import ErrorCode, EventCode, MessageType

    codes = [
        exitcodes.OK,
        exitcodes.FAILURE,
        exitcodes.USAGE,
        exitcodes.REFUSED,
        exitcodes.DEVICE_FAULT,
        exitcodes.LINK_ERROR,
        exitcodes.INTERRUPTED,
    ]
    assert len(set(codes)) == len(codes)
    assert exitcodes.exit_code_for(SafetyRefusal("current_ma", 9, 0, 4)) == exitcodes.REFUSED
    assert exitcodes.exit_code_for(DeviceRefusal(MessageType.START, ErrorCode.BAD_STATE)) == exitcodes.REFUSED
    assert exitcodes.exit_code_for(DeviceFault(EventCode.OVERCURRENT_TRIP, 5000)) == exitcodes.DEVICE_FAULT
    assert exitcodes.exit_code_for(LinkLostError("gone")) == exitcodes.LINK_ERROR
    assert exitcodes.exit_code_for(LinkTimeoutError("GetStatus", 1, 4, 0.25)) == exitcodes.LINK_ERROR
    assert exitcodes.exit_code_for(SessionInterrupted("KeyboardInterrupt")) == exitcodes.INTERRUPTED
    assert exitcodes.exit_code_for(KeyboardInterrupt()) == exitcodes.INTERRUPTED
    assert exitcodes.exit_code_for(PresetError("x")) == exitcodes.USAGE
    assert exitcodes.exit_code_for(RuntimeError("x")) == exitcodes.FAILURE


def test_usage_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deliver", "socket://127.0.0.1:9", "--current-ma", "2"]) == exitcodes.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "iontodrive: error: deliver needs --dose-ma-min or --duration-s, --polarity (or a --preset)"
    ]
    assert main(["deliver", "x", "--dose-ma-min", "1", "--duration-s", "2"]) == exitcodes.USAGE
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["no-such-command"]) == exitcodes.USAGE
    assert main(["--help"]) == 0


def test_help_of_every_subcommand_states_units(capsys: pytest.CaptureFixture[str]) -> None:
    expectations = {
        "ports": ["--json", "--no-visa"],
        "info": ["PORT"],
        "check": ["mA", "microampere", "default"],
        "deliver": ["mA·min", "seconds", "cm²", "default: 30", "Ctrl-C", "percent"],
        "monitor": ["--csv", "seconds", "Hz"],
        "report": ["--plot", "--json"],
        "presets": ["mA", "--json"],
        "demo": ["default: 100", "demo-output"],
    }
    for command, words in expectations.items():
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        for word in words:
            assert word in text, (command, word)


# ------------------------------------------------------------------------------------------- discovery


def test_discovery_announces_lists_and_prunes_dead_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(discovery.ENV_DIR, str(tmp_path / "run"))
    assert discovery.list_running() == []
    mine = discovery.announce("socket://127.0.0.1:4000", "clinic-4", os.getpid())
    dead_proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(dead_proc.stdout)
    dead = discovery.announce("/dev/pts/99", "hydro-30", dead_pid)
    (tmp_path / "run" / "garbage.json").write_text("{not json")
    running = discovery.list_running()
    assert [(e["url"], e["model"], e["pid"]) for e in running] == [
        ("socket://127.0.0.1:4000", "clinic-4", os.getpid())
    ]
    assert not dead.exists() and not (tmp_path / "run" / "garbage.json").exists()
    discovery.withdraw(mine)
    discovery.withdraw(mine)  # twice is fine
    assert discovery.list_running() == []


def test_ports_lists_an_announced_simulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(discovery.ENV_DIR, str(tmp_path))
    path = discovery.announce("socket://127.0.0.1:4321", "hydro-30", os.getpid())
    try:
        result = subprocess.run(
            [sys.executable, "-m", "iontodrive.cli", "ports", "--json", "--no-visa"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, IONTODRIVE_SIM_DIR=str(tmp_path)),
        )
    finally:
        discovery.withdraw(path)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert {"serial", "simulators", "visa", "visa_note"} <= set(listing)
    assert [s["port"] for s in listing["simulators"]] == ["socket://127.0.0.1:4321"]
    assert listing["simulators"][0]["model"] == "hydro-30"


# ------------------------------------------------------------------------------------------------ docs

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_safety_doc_cites_only_tests_that_exist() -> None:
    import re

    text = (DOCS / "safety.md").read_text(encoding="utf-8")
    cited = re.findall(r"`(tests/[\w/]+\.py)::(\w+)", text)
    assert len(cited) > 40
    root = Path(__file__).resolve().parents[1]
    for path, name in cited:
        source = (root / path).read_text(encoding="utf-8")
        assert re.search(rf"^\s*(def|class) {name}\b", source, re.MULTILINE), f"{path}::{name} not found"
    for hazard in ("Abrupt change", "Electrode lift", "Host crash", "Link loss", "Over-current",
                   "Wrong polarity", "Over-density", "Resistance limit", "Bad input"):  # fmt: skip
        assert f"{hazard}" in text, hazard


def test_cli_reference_documents_every_subcommand_and_option() -> None:
    import argparse

    from iontodrive.cli import build_parser

    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    parser = build_parser()
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text, option
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                assert f"## {name}" in text, name
                for sub_action in sub._actions:
                    for option in sub_action.option_strings:
                        if option not in ("-h", "--help"):
                            assert option in text, f"{name} {option}"
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 5 |", "| 130 |"):
        assert code in text
