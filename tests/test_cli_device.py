"""`ports`, `info`, `check`, `monitor`, `sim` and PORT routing, end to end as subprocesses against a
simulator subprocess."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from iontodrive.cli import exitcodes, main
from iontodrive.cli.ports_open import is_visa_resource, normalise_port
from iontodrive.cli.simproc import SimulatorProcess

# The suite shares two cores with other work: give each request a 1 s reply deadline (the CLI's
# --timeout-s, via its environment variable) so that a busy host is not mistaken for a dead link.
LOADED_HOST_ENV = {"IONTODRIVE_TIMEOUT_S": "1.0"}


def cli(
    *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iontodrive.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **LOADED_HOST_ENV, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("simdir")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory, sim_dir: Path) -> Iterator[str]:
    """One hydro-30 simulator for the read-only commands (they change nothing on it)."""
    logs = tmp_path_factory.mktemp("sim")
    old = os.environ.get("IONTODRIVE_SIM_DIR")
    os.environ["IONTODRIVE_SIM_DIR"] = str(sim_dir)  # so `ports` can find it, isolated from others
    try:
        with SimulatorProcess(
            "--tcp", "127.0.0.1:0", "--model", "hydro-30", "--speed", "5", log_path=logs / "sim.log"
        ) as proc:
            yield proc.url
    finally:
        if old is None:
            os.environ.pop("IONTODRIVE_SIM_DIR", None)
        else:
            os.environ["IONTODRIVE_SIM_DIR"] = old


def test_info_text_and_json(sim: str) -> None:
    text = cli("info", sim)
    assert text.returncode == 0, text.stderr
    assert "hydro-30" in text.stdout
    assert "max current      30 mA" in text.stdout and "compliance       60 V" in text.stdout
    assert "state              IDLE" in text.stdout
    body = cli("info", sim, "--json")
    assert body.returncode == 0
    info = json.loads(body.stdout)
    identity = info["identity"]
    assert identity["model"] == "hydro-30" and identity["max_current_ua"] == 30_000
    assert identity["protocol_version"] >= 1
    assert info["status"]["state"] == "IDLE" and info["status"]["setpoint_ua"] == 0


def test_check_reports_impedance_and_both_verdicts(sim: str) -> None:
    result = cli("check", sim, "--current-ma", "15", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["device_verdict"] == "OK"
    low, high = report["driver_limits_ohm"]
    assert low <= report["impedance_ohm"] <= high
    assert high == min(10_000, 4 * 60_000 * 1000 // (5 * 15_000))  # S3: min(10 kΩ, 0.8 V/I)
    text = cli("check", sim)
    assert text.returncode == 0 and "verdict            PASS" in text.stdout
    too_much = cli("check", sim, "--current-ma", "31")
    assert too_much.returncode == exitcodes.USAGE and "outside (0, 30] mA" in too_much.stderr


def test_check_fails_on_a_high_impedance_load(tmp_path: Path) -> None:
    # A 20 kΩ skin (plus the series resistance) is above the 10 kΩ start limit (S3): a start would be refused.
    with SimulatorProcess(
        "--tcp", "127.0.0.1:0", "--speed", "5", "--skin-kohm", "20", log_path=tmp_path / "s.log"
    ) as sim:  # fmt: skip
        text = cli("check", sim.url, "--current-ma", "2")
        body = cli("check", sim.url, "--current-ma", "2", "--json")
    assert text.returncode == exitcodes.REFUSED, text.stderr
    assert "verdict            FAIL: impedance too high" in text.stdout
    report = json.loads(body.stdout)
    assert report["ok"] is False and report["device_verdict"] == "HIGH"
    assert report["impedance_ohm"] > report["driver_limits_ohm"][1] == 10_000


def test_monitor_csv_streams_samples(sim: str) -> None:
    result = cli("monitor", sim, "--csv", "--duration-s", "3", "--rate-hz", "20")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows, result.stdout
    assert list(rows[0]) == [
        "host_time_s", "sample_no", "device_time_s", "state", "flags", "polarity",
        "setpoint_ma", "current_ma", "voltage_v", "impedance_ohm", "dose_ma_min",
    ]  # fmt: skip
    numbers = [int(r["sample_no"]) for r in rows]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert all(r["state"] == "IDLE" and float(r["setpoint_ma"]) == 0.0 for r in rows)
    assert max(float(r["host_time_s"]) for r in rows) <= 3 + 1.0
    text = cli("monitor", sim, "--duration-s", "1", "--rate-hz", "10")
    assert text.returncode == 0 and "IDLE" in text.stdout and text.stdout.rstrip().endswith("samples")


def test_ports_lists_the_running_simulator(sim: str, sim_dir: Path) -> None:
    result = cli("ports", "--json", "--no-visa", env=dict(os.environ, IONTODRIVE_SIM_DIR=str(sim_dir)))
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert sim in [s["port"] for s in listing["simulators"]]
    text = cli("ports", "--no-visa", env=dict(os.environ, IONTODRIVE_SIM_DIR=str(sim_dir)))
    assert "Serial ports:" in text.stdout and sim in text.stdout and "hydro-30" in text.stdout


def test_ports_visa_scan_reports_resources_or_why_not() -> None:
    result = cli("ports", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["visa"] or listing["visa_note"]


def test_sim_subcommand_passes_its_arguments_through() -> None:
    result = cli("sim", "--help")
    assert result.returncode == 0
    assert "--pty" in result.stdout and "--tcp" in result.stdout and "--speed" in result.stdout


def test_port_forms_are_routed() -> None:
    resources = [
        "GPIB0::24::INSTR",
        "USB0::0x05E6::0x2450::04096331::INSTR",
        "TCPIP0::10.0.0.5::inst0::INSTR",
        "ASRL/dev/ttyUSB1::INSTR",
    ]
    for resource in resources:
        assert is_visa_resource(resource), resource
    for port in ("/dev/ttyUSB0", "socket://127.0.0.1:7000", "sim://clinic-4?speed=5", "COM3", "loop://"):
        assert not is_visa_resource(port), port
    assert normalise_port("127.0.0.1:7000") == "socket://127.0.0.1:7000"
    assert normalise_port("/dev/pts/4") == "/dev/pts/4"


def test_visa_resource_goes_to_the_visa_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = Path(__file__).parent / "visa_sim" / "bench.yaml"
    simulated = {"IONTODRIVE_VISA_LIBRARY": f"{bench}@sim"}
    info = cli("info", "GPIB0::24::INSTR", env=simulated)  # end to end, as a user runs it
    assert info.returncode == 0, info.stderr
    assert "Keithley 2400" in info.stdout and "NONE: output stays on if this host dies" in info.stdout
    # The error paths in-process (same code, no interpreter start-up each time).
    monkeypatch.setenv("IONTODRIVE_VISA_LIBRARY", f"{bench}@sim")
    assert main(["ports", "--json"]) == 0
    assert "GPIB0::24::INSTR" in json.loads(capsys.readouterr().out)["visa"]
    assert main(["check", "GPIB0::24::INSTR"]) == exitcodes.USAGE
    assert "needs a stimulator" in capsys.readouterr().err
    # An instrument that does not answer *IDN?: one error line naming the problem, no traceback.
    assert main(["info", "GPIB0::29::INSTR"]) not in (0, exitcodes.USAGE)
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("iontodrive: error:")]
    assert len(errors) == 1 and "IDN" in errors[0] and "Traceback" not in err
    # A malformed resource string is refused before anything is opened, naming the part that is wrong.
    assert main(["info", "GPIB0::99::INSTR"]) == exitcodes.REFUSED
    assert "primary address '99' must be 0-30" in capsys.readouterr().err
    # Without a usable VISA library: a link error (nothing could be opened), on one line.
    monkeypatch.setenv("IONTODRIVE_VISA_LIBRARY", f"{tmp_path / 'no.yaml'}@sim")
    assert main(["info", "GPIB0::24::INSTR"]) == exitcodes.LINK_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("iontodrive: error: cannot load the VISA library")
