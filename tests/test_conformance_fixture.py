"""Load fixtures of the conformance suite (iontodrive/conformance/fixture.py; docs/conformance.md §3.1).

* Without a fixture the rules that change the load are NOT_RUN and say what to pass; a fixture that
  cannot do one thing leaves only that rule NOT_RUN; a fixture that breaks stops the run.
* ``HOST-CACHE-GONE`` does not apply to a link that cannot make its host go away.
* The simulator's fixture drives the simulator's load through its control API, in-process
  (``DeviceControl``) and over HTTP (``ControlServer``), and ``--fixture`` accepts the three forms.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import conformance_variants as cv
import pytest
from hostile import wait_until
from test_conformance import FIXTURE_RULES, run

from firmware_sim import Device, DeviceRunner, OverCurrent
from firmware_sim.control import ControlError, DeviceControl, SimController
from firmware_sim.streams import MemoryTransport
from firmware_sim.wired import WiredTransport
from iontodrive.cli import main
from iontodrive.conformance import (
    ALL_RULES,
    FixtureError,
    FixtureUnsupported,
    Outcome,
    Probe,
    SimFixture,
    open_fixture,
    run_suite,
    select_rules,
)
from iontodrive.conformance.command import host_reconnect
from iontodrive.conformance.fixture import HttpSimControl


def test_without_a_fixture_the_rules_that_change_the_load_are_not_run_and_say_why() -> None:
    rules = select_rules(ALL_RULES, sorted(FIXTURE_RULES | {"CONTACT-REPORT"}))
    report = run(Device("clinic-4", seed=1), rules, fixture=False)
    by_id = {r.rule_id: r for r in report.results}
    assert by_id["CONTACT-REPORT"].outcome is Outcome.PASS
    for rule_id in FIXTURE_RULES:
        assert by_id[rule_id].outcome is Outcome.NOT_RUN
        assert by_id[rule_id].evidence.startswith("needs a load fixture: --fixture")
    assert not report.ok


class _CannotTrip(SimFixture):
    def trip(self) -> None:
        raise FixtureUnsupported("this bench has no over-current injector")


class _BreaksOnRestore(SimFixture):
    def restore(self) -> None:
        raise FixtureError("relay 3 does not answer")


def _probe(device: Device, fixture: SimFixture | None) -> Probe:
    link = cv.VirtualLink(device)
    return Probe(link, link.clock.now, seed=1, fixture=fixture)


def test_a_fixture_that_cannot_trip_leaves_only_the_fault_row_not_run() -> None:
    device = Device("hydro-30", seed=1)
    probe = _probe(device, _CannotTrip(DeviceControl(device)))
    report = run_suite(probe, select_rules(ALL_RULES, ["STATE-TABLE-FAULT", "CONTACT-OPEN"]))
    by_id = {r.rule_id: r for r in report.results}
    assert by_id["CONTACT-OPEN"].outcome is Outcome.PASS
    fault = by_id["STATE-TABLE-FAULT"]
    assert fault.outcome is Outcome.NOT_RUN and "no over-current injector" in fault.evidence
    assert report.fatal is None and report.fixture == "simulator control API"


def test_a_fixture_that_breaks_stops_the_run() -> None:
    device = Device("clinic-4", seed=1)
    probe = _probe(device, _BreaksOnRestore(DeviceControl(device)))
    report = run_suite(probe, select_rules(ALL_RULES, ["RAMP-UP", "CONTACT-HIGH", "CONTACT-LOW"]))
    by_id = {r.rule_id: r for r in report.results}
    assert by_id["RAMP-UP"].outcome is Outcome.PASS  # needs no fixture: nothing to restore after it
    high = by_id["CONTACT-HIGH"]
    assert high.outcome is Outcome.ERROR and "the fixture failed: relay 3" in high.evidence
    assert by_id["CONTACT-LOW"].outcome is Outcome.NOT_RUN
    assert report.fatal is not None and "relay 3 does not answer" in report.fatal and not report.ok


def test_host_cache_gone_does_not_apply_to_a_link_that_cannot_lose_its_host() -> None:
    report = run_suite(_probe(Device("clinic-4", seed=1), None), select_rules(ALL_RULES, ["HOST-CACHE-GONE"]))
    [row] = report.results
    assert row.outcome is Outcome.NOT_APPLICABLE and "cannot make its host go away" in row.evidence


def test_the_simulators_fixture_scales_its_load_lifts_and_trips() -> None:
    device = Device("clinic-4", seed=1)
    fixture = SimFixture(DeviceControl(device))
    assert fixture.nominal_ohm == 4800  # 800 ohm series + 4 kohm skin
    fixture.set_load_ohm(48_000)
    assert device.load.resting_impedance_ohm == pytest.approx(48_000)
    fixture.open_circuit()
    fixture.trip()
    assert [type(f).__name__ for f in device.injected] == ["ElectrodeLift", "OverCurrent"]
    fixture.restore()
    assert device.load.resting_impedance_ohm == pytest.approx(4800)
    assert type(device.injected[-1]).__name__ == "ContactReturn"
    fixture.restore()  # idempotent: nothing more to undo
    assert len(device.injected) == 3


def test_device_control_refuses_what_needs_the_loop_and_checks_arguments() -> None:
    control = DeviceControl(Device("clinic-4", seed=1))
    with pytest.raises(ControlError, match="needs the simulator's loop"):
        control.act("unplug", {})
    with pytest.raises(ControlError, match="not known"):
        control.act("levitate", {})
    with pytest.raises(ControlError, match="r_skin_kohm"):
        control.act("skin", {"r_skin_kohm": -1})
    assert control.snapshot()["load"]["resting_impedance_ohm"] == 4800


@pytest.fixture
def control_server() -> Iterator[tuple[str, DeviceRunner]]:
    pytest.importorskip("aiohttp", reason="the control API needs aiohttp (pip install '.[sim]')")
    from firmware_sim.control_http import ControlServer

    device = Device("hydro-30", seed=1)
    transport = WiredTransport(MemoryTransport())
    runner = DeviceRunner(device, transport, speed=50.0).start()
    try:
        with ControlServer(SimController(runner, transport), "127.0.0.1", 0, token="t0ken") as server:
            yield server.url, runner
    finally:
        runner.stop()
        device.close()


def test_the_http_fixture_drives_the_simulator_through_its_control_api(
    control_server: tuple[str, DeviceRunner],
) -> None:
    url, runner = control_server
    with pytest.raises(FixtureError, match="401"):
        SimFixture(HttpSimControl(url))  # without the token
    fixture = open_fixture(url + "?token=t0ken")
    assert isinstance(fixture, SimFixture) and fixture.nominal_ohm == 1500
    fixture.trip()
    assert any(isinstance(f, OverCurrent) for f in runner.call(lambda d: d.injected))
    fixture.set_load_ohm(15_000)  # the skin action runs at the loop's next tick

    def resting_is(ohm: float) -> bool:
        return bool(runner.call(lambda d: abs(d.load.resting_impedance_ohm - ohm) < 1e-6 * ohm))

    assert wait_until(lambda: resting_is(15_000), timeout_s=10), "the simulator's loop never applied it"
    fixture.restore()
    assert wait_until(lambda: resting_is(1500), timeout_s=10), "the simulator's loop never applied it"


def test_open_fixture_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="needs a sim:// PORT"):
        open_fixture("sim", object())
    with pytest.raises(ValueError, match="must be"):
        open_fixture("relay-ladder")
    with pytest.raises(ValueError, match="not a Fixture"):
        open_fixture("os:getcwd")
    (tmp_path / "bench_fixture_c14.py").write_text(
        textwrap.dedent(
            """
            from iontodrive.conformance import Fixture

            class Ladder(Fixture):
                name = "relay ladder"
                nominal_ohm = 1000
                def set_load_ohm(self, load_ohm): pass
                def open_circuit(self): pass
                def restore(self): pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fixture = open_fixture("bench_fixture_c14:Ladder")
    assert fixture.name == "relay ladder" and fixture.nominal_ohm == 1000
    with pytest.raises(FixtureUnsupported, match="cannot provoke"):
        fixture.trip()
    sys.modules.pop("bench_fixture_c14", None)


def test_cli_fixture_option(capsys: pytest.CaptureFixture[str]) -> None:
    url = "sim://clinic-4?clock=virtual"
    assert (
        main(["conformance", url, "--fixture", "sim", "--rule", "CONTACT-OPEN", "--rule", "HOST-CACHE-"]) == 0
    )
    out = capsys.readouterr().out
    assert "load fixture: the in-process simulator" in out and "CONTACT-OPEN" in out and "CONFORMS" in out
    assert main(["conformance", url, "--fixture", "relay-ladder", "--rule", "CONTACT-OPEN"]) == 2
    assert "--fixture relay-ladder" in capsys.readouterr().err
    assert main(["conformance", "--list"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("CONTACT-HIGH")]
    assert listed and listed[0].endswith("[load] [fixture]")


def test_the_command_reopens_tcp_and_ptys_but_not_serial_ports() -> None:
    class _Link:
        port = object()  # not a simulator

    links: list[Any] = [_Link()]
    assert host_reconnect(links, "/dev/ttyUSB0", 115_200) is None  # a UART cannot see its host go
    assert host_reconnect(links, "socket://127.0.0.1:7", 115_200) is not None
    if hasattr(os, "openpty"):
        master, slave = os.openpty()
        try:
            assert host_reconnect(links, os.ttyname(slave), 115_200) is not None
        finally:
            os.close(master)
            os.close(slave)
