"""Opening a source (issue 18 item 2, issue 17 item 4): one factory, one resource grammar, no circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from iontodrive.cli.simproc import SimulatorProcess
from iontodrive.resources import InvalidResourceError, backend_for, normalise_resource

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_sim_urls_work_as_soon_as_iontodrive_is_imported() -> None:
    """Issue 17: ``sim://`` failed with "protocol 'sim' not known" unless the handler was registered."""
    done = _run(
        "import iontodrive\n"
        "with iontodrive.open_source('sim://clinic-4?speed=100') as s:\n"
        "    print(s.identity.model)\n"
        "with iontodrive.Stimulator.open('sim://hydro-30?speed=100') as s:\n"
        "    print(s.identity.model)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["clinic-4", "hydro-30"]


def test_importing_iontodrive_or_the_visa_source_loads_neither_pyserial_nor_the_simulator() -> None:
    done = _run(
        "import sys, iontodrive, iontodrive.visa.source, iontodrive.sessions\n"
        "from iontodrive import Progress, SessionOutcome\n"
        "print(sorted(m for m in ('serial', 'firmware_sim', 'iontodrive.client') if m in sys.modules))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_bare_host_port_works_in_the_api_as_in_the_cli() -> None:
    """Issue 17: a bare ``127.0.0.1:7000`` worked in the CLI and failed in the API."""
    with SimulatorProcess("--tcp", "127.0.0.1:0", "--speed", "100") as sim:
        bare = sim.url.removeprefix("socket://")
        done = _run(
            "import iontodrive\n"
            f"with iontodrive.open_source({bare!r}) as s:\n"
            "    print(s.identity.model, s.url)\n"
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["clinic-4", f"socket://{bare}"]


@pytest.mark.parametrize(
    ("resource", "backend"),
    [
        ("GPIB0::24::INSTR", "visa"),
        ("myalias::INSTR", "visa"),  # one grammar: the two old ones disagreed on an alias
        ("TCPIP0::10.0.0.5::5025::SOCKET", "visa"),
        ("/dev/ttyUSB0", "device"),
        ("socket://127.0.0.1:7000", "device"),
        ("spy:///dev/pts/3?file=log.txt", "device"),
        ("127.0.0.1:7000", "device"),
    ],
)
def test_one_grammar_picks_the_backend(resource: str, backend: str) -> None:
    assert backend_for(resource) == backend


def test_the_cli_and_the_api_share_the_grammar() -> None:
    from iontodrive.cli import ports_open

    for resource in ("myalias::INSTR", "GPIB0::24::INSTR", "/dev/ttyUSB0", "127.0.0.1:7000"):
        assert ports_open.is_visa_resource(resource) == (backend_for(resource) == "visa")


def test_normalising_keeps_pyserial_urls_and_completes_host_port() -> None:
    assert normalise_resource("127.0.0.1:7000") == "socket://127.0.0.1:7000"
    assert normalise_resource("spy:///dev/pts/3?file=x") == "spy:///dev/pts/3?file=x"
    with pytest.raises(InvalidResourceError, match="resource"):
        normalise_resource("GPIB0::24::INSTR", for_backend="device")
    with pytest.raises(InvalidResourceError):
        normalise_resource("GPIB0::31::INSTR")
    with pytest.raises(InvalidResourceError):
        normalise_resource("   ")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_opening_modules_import_no_circle() -> None:
    """Issue 18: ``source.py`` <-> ``visa/source.py`` <-> ``visa/session.py`` imported each other."""
    pkg = ROOT / "iontodrive"
    assert "iontodrive.source" not in _imports(pkg / "visa" / "source.py")
    assert "iontodrive.source" not in _imports(pkg / "visa" / "session.py")
    assert "iontodrive.source" not in _imports(pkg / "sessions" / "device.py")
    source_imports = _imports(pkg / "source.py")
    assert not {"iontodrive.visa.source", "iontodrive.sessions.device", "iontodrive.session"} & source_imports


def test_stimulator_holds_its_client_instead_of_being_one() -> None:
    from iontodrive import Stimulator
    from iontodrive.client import DeviceClient

    assert not issubclass(Stimulator, DeviceClient)


def test_pyserials_spy_wrapper_logs_the_traffic(tmp_path: Path) -> None:
    """Issue 17: ``spy://PORT?file=...`` opened and ran but logged nothing (the driver read the fd beneath
    it)."""
    from hostile import HostileDevice

    from iontodrive import Stimulator

    log = tmp_path / "spy.txt"
    with HostileDevice(telemetry_hz=10) as dev, Stimulator.open(f"spy://{dev.url}?file={log}") as stim:
        stim.status()
    text = log.read_text()
    assert "TX" in text.upper() or "RX" in text.upper() or "write" in text.lower()
    assert len(text) > 100
