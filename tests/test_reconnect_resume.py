"""Reconnect, reconcile, resume (issue 19 item 5): the driver against a real-time simulator on a stable
pty link, driven through the simulator's control API.

* a lost link (unplug) during a session: the driver reaches the same device again, writes the device's
  time, charge and state in the record, ends the device's paused session and completes the record with the
  device's own charge; no current comes back (the device is DONE);
* no replug within the configured time: a typed ``ReconnectFailedError`` and a record that says so;
* a different device answering: a typed ``DifferentDeviceError`` (``reach_same_device`` and the record);
* after an electrode lift: resuming with the electrode still off is refused by the contact check, with
  nothing started; once contact is back, ``resume_session`` runs a contact check, ramps up from zero at the
  prescription's ramp, and the chain's combined dose is within 1 % of the prescription.

Time passes on the simulator's side (a real-time runner at speed 25); the tests themselves never sleep:
they block on the driver's own calls, and faults are scheduled at device times.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from firmware_sim import Device, DeviceRunner, TraceRecorder
from firmware_sim.bridge_pty import PtyTransport
from firmware_sim.control import SimController
from firmware_sim.faults import ContactReturn
from firmware_sim.wired import WiredTransport
from iontodrive import DeviceFault, Prescription, Stimulator
from iontodrive.cli import main
from iontodrive.errors import LinkLostError, SafetyRefusal, SessionInterrupted
from iontodrive.protocol import ContactVerdict, DeviceState, EventCode, IdentityReport
from iontodrive.record import RecordWriter, SessionRecord
from iontodrive.sessions import reconnect
from iontodrive.sessions.reconnect import (
    DifferentDeviceError,
    ReconnectFailedError,
    ReconnectPolicy,
    SessionReconnected,
    reach_same_device,
)
from iontodrive.sessions.resume import resume_session
from iontodrive.units import UAS_PER_MA_MIN

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX pseudo-terminals")

SPEED = 25.0
RX = Prescription(current_ma=2.0, dose_ma_min=2.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode")
PRESCRIBED_UAS = round(2.0 * UAS_PER_MA_MIN)


@dataclass
class Bench:
    link: str
    device: Device
    runner: DeviceRunner
    control: SimController
    trace: TraceRecorder
    wired: WiredTransport

    def now_s(self) -> float:
        return float(self.runner.call(lambda d: d.session_time_s))

    def state(self) -> DeviceState:
        return DeviceState(self.runner.call(lambda d: d.state))


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    trace = TraceRecorder()
    device = Device("clinic-4", seed=7, trace=trace)
    link = str(tmp_path / "usb-iontodrive-sim-if00")
    wired = WiredTransport(PtyTransport(link_path=link))
    runner = DeviceRunner(device, wired, speed=SPEED).start()
    try:
        yield Bench(link, device, runner, SimController(runner, wired), trace, wired)
    finally:
        runner.stop()
        wired.close()
        device.close()


def _until_contact(stim: Stimulator) -> None:
    """Ask the device's contact check until it passes (the contact returns over 0.2 s of device time;
    each check is a round trip, so no sleep is needed), at most 500 times."""
    for _ in range(500):
        if stim.check_contact(2000).verdict is ContactVerdict.OK:
            return
    raise AssertionError("the contact never came back")


def _notes(record: SessionRecord, kind: str) -> list[dict[str, object]]:
    return [n for n in record.notes if n.get("kind") == kind]


def test_unplug_reconnects_to_the_same_device_and_reconciles_the_record(bench: Bench, tmp_path: Path) -> None:
    path = tmp_path / "part1.jsonl"
    with Stimulator.open(bench.link, reconnect_s=15, watchdog_ms=500) as stim:
        session = stim.start(RX, record_path=path)
        bench.control.act("unplug", {"at_s": bench.now_s() + 10.0, "duration_s": 1.5})
        with pytest.raises(SessionReconnected) as caught:
            session.wait(timeout_s=60)
        found = caught.value.reconciliation
        device_charge = bench.runner.call(lambda d: d.charge_uas)
        assert stim.client.identity.serial_number == found.record.identity["serial_number"]
        assert stim.status().state is DeviceState.DONE  # current did not come back by itself
    assert found.same_session and found.found_state is DeviceState.PAUSED  # the watchdog paused it (S10)
    record = SessionRecord.load(path)
    assert record.complete and record.summary is not None
    assert record.summary["device_confirmed"] is True and record.summary["end_state"] == "DONE"
    assert record.delivered_uas == found.delivered_uas
    assert abs(found.delivered_uas - device_charge) <= 1  # the device's own count (reported in whole µA·s)
    (note,) = _notes(record, "reconciled")
    assert note["state"] == "PAUSED" and note["charge_uas"] == found.found_charge_uas
    assert isinstance(note["device_time_ms"], int) and note["device_time_ms"] > 10_000
    assert 0 < record.delivered_uas < PRESCRIBED_UAS
    assert any(e["code"] == "LINK_LOST" for e in record.events)  # fetched from the device afterwards
    assert bench.state() is DeviceState.DONE


def test_a_link_back_before_the_watchdog_acted_is_ramped_down_never_continued(
    bench: Bench, tmp_path: Path
) -> None:
    path = tmp_path / "glitch.jsonl"
    with Stimulator.open(bench.link, reconnect_s=15, watchdog_ms=3000) as stim:
        session = stim.start(RX, record_path=path)
        unplug_at = bench.now_s() + 10.0
        bench.control.act("unplug", {"at_s": unplug_at, "duration_s": 0.05})  # back well within 3 s
        with pytest.raises(SessionReconnected) as caught:
            session.wait(timeout_s=60)
    found = caught.value.reconciliation
    assert found.found_state is DeviceState.HOLD  # still delivering when the driver came back
    assert found.device_confirmed and found.record.summary is not None
    assert found.record.summary["end_state"] == "DONE"
    cols = bench.runner.call(lambda _d: bench.trace.columns)
    after = cols["t_s"] >= unplug_at
    down = after & (cols["state"] == int(DeviceState.RAMP_DOWN))
    assert down.any()  # ended by a ramp (Stop), at the prescription's 5 s ramp-down, never a step
    slope = np.diff(cols["setpoint_ua"][down]) / np.maximum(np.diff(cols["t_s"][down]), 1e-9)
    assert slope.min() >= -2000 / 5.0 * 1.01
    assert not (after & (cols["state"] == int(DeviceState.RAMP_UP))).any()  # nothing resumed


def test_no_replug_gives_up_after_the_configured_time_and_the_record_says_so(
    bench: Bench, tmp_path: Path
) -> None:
    path = tmp_path / "lost.jsonl"
    with Stimulator.open(bench.link, reconnect_s=0.6, watchdog_ms=500) as stim:
        session = stim.start(RX, record_path=path)
        bench.control.act("unplug", {"at_s": bench.now_s() + 6.0})  # never plugged back
        with pytest.raises(ReconnectFailedError) as caught:
            session.wait(timeout_s=60)
    assert caught.value.attempts >= 2 and caught.value.waited_s >= 0.6
    record = SessionRecord.load(path)
    assert not record.complete  # the device holds the dose; recover completes the record later
    (note,) = _notes(record, "reconnect_failed")
    assert note["attempts"] == caught.value.attempts
    bench.runner.call(lambda _d: bench.wired.replug())  # at once, on this thread (under the loop's lock)
    with Stimulator.open(bench.link) as stim:
        assert stim.status().state is DeviceState.PAUSED  # the watchdog paused it; nothing resumed it
        completed = stim.recover(path)
    assert completed.complete and completed.summary is not None
    assert completed.summary["device_confirmed"] is True


def test_a_different_device_is_refused_typed() -> None:
    identity = _identity()
    stranger = dataclasses.replace(identity, serial_number=identity.serial_number + 1)
    with pytest.raises(DifferentDeviceError) as caught:
        reach_same_device("sim://clinic-4?clock=virtual", {}, stranger, ReconnectPolicy(1.0))
    assert caught.value.found_serial == identity.serial_number
    assert caught.value.expected_serial == identity.serial_number + 1


def test_giving_up_is_bounded_by_the_policy_on_a_virtual_clock() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(ReconnectFailedError) as caught:
        reach_same_device(
            "/nonexistent/iontodrive-test-port",
            {},
            _identity(),
            ReconnectPolicy(1.0, interval_s=0.25),
            clock=lambda: now[0],
            sleep=sleep,
        )
    assert caught.value.attempts == 5 and caught.value.waited_s == pytest.approx(1.0)
    assert now[0] == pytest.approx(1.0)


def _identity() -> IdentityReport:
    import firmware_sim

    firmware_sim.register_url_handler()
    with Stimulator.open("sim://clinic-4?clock=virtual") as stim:
        return stim.identity


@pytest.mark.parametrize("bad", [0, -1, float("nan"), 1e9, True])
def test_reconnect_time_out_of_range_is_refused_before_opening(bad: float) -> None:
    with pytest.raises(SafetyRefusal) as caught:
        Stimulator.open("/nonexistent/never-opened", reconnect_s=bad)
    assert caught.value.field == "reconnect_s"


def test_after_a_lift_resume_checks_contact_and_ramps_and_the_chain_meets_the_dose(
    bench: Bench, tmp_path: Path
) -> None:
    first, second = tmp_path / "part1.jsonl", tmp_path / "part2.jsonl"
    with Stimulator.open(bench.link) as stim:
        session = stim.start(RX, record_path=first)
        bench.control.act("electrode_lift", {"at_s": bench.now_s() + 12.0})
        with pytest.raises(DeviceFault) as lifted:
            session.wait(timeout_s=60)
        assert lifted.value.code is EventCode.ELECTRODE_LIFT
        # the electrode is still off: the new contact check refuses, nothing is started
        with pytest.raises(SafetyRefusal) as refused:
            resume_session(stim, first, new_record_path=second)
        assert refused.value.field == "impedance_ohm"
        assert bench.state() is DeviceState.DONE and not second.exists()
        bench.control.act("contact_return", {})
        _until_contact(stim)
        resumed_at = bench.now_s()
        resumed = resume_session(stim, first, new_record_path=second)
        record = resumed.wait(timeout_s=60)
    chain = record.chain()
    assert [p.path for p in chain.parts] == [first, second]
    assert record.labels["continues_record"] == str(first.resolve()) and record.labels["part"] == "2"
    assert chain.device_confirmed
    assert abs(chain.delivered_uas - PRESCRIBED_UAS) <= 0.01 * PRESCRIBED_UAS
    assert SessionRecord.load(first).delivered_uas == chain.parts[0].delivered_uas
    # the remainder ramped up from zero at the prescription's rate (S1, S4), after its contact check
    cols = bench.runner.call(lambda _d: bench.trace.columns)
    after = cols["t_s"] >= resumed_at
    states = cols["state"][after]
    setpoint = cols["setpoint_ua"][after]
    t = cols["t_s"][after]
    ramp = states == int(DeviceState.RAMP_UP)
    assert ramp.any() and (states == int(DeviceState.CONTACT_CHECK)).any()
    first_ramp = np.argmax(ramp)
    assert np.argmax(states == int(DeviceState.CONTACT_CHECK)) < first_ramp
    assert setpoint[first_ramp] <= 2000 / 5.0 * 0.01 + 1  # from zero
    slope = np.diff(setpoint[ramp]) / np.maximum(np.diff(t[ramp]), 1e-9)
    assert slope.max() <= 2000 / 5.0 * 1.01  # 2 mA over 5 s


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_recover_completes_a_record_only_from_the_device(
    bench: Bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lost.jsonl"
    with Stimulator.open(bench.link, watchdog_ms=500) as stim:  # no reconnect: LinkLostError at once
        session = stim.start(RX, record_path=path)
        bench.control.act("unplug", {"at_s": bench.now_s() + 6.0})
        with pytest.raises(LinkLostError):
            session.wait(timeout_s=60)
    assert main(["recover", str(path)]) == 2  # without the device nothing is completed
    assert "INCOMPLETE" in capsys.readouterr().out and not SessionRecord.load(path).complete
    bench.runner.call(lambda _d: bench.wired.replug())
    assert main(["recover", str(path), bench.link]) == 0
    out = capsys.readouterr().out
    assert "the device confirms the session ended (DONE)" in out
    record = SessionRecord.load(path)
    assert record.complete and record.summary is not None and record.summary["device_confirmed"] is True
    assert abs(record.delivered_uas - bench.runner.call(lambda d: d.charge_uas)) <= 1  # type: ignore[operator]
    assert main(["recover", str(path), bench.link]) == 0
    assert "complete already" in capsys.readouterr().out


def test_cli_recover_refuses_another_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    identity = _identity()
    path = tmp_path / "other.jsonl"
    writer = RecordWriter(
        path,
        prescription=RX.to_dict(),
        identity={"model": identity.model, "serial_number": identity.serial_number + 1},
        durable=False,
    )
    writer.note("started", session_id=1, first_event_no=0, start={"dose_uas": PRESCRIBED_UAS})
    writer.close()
    before = path.read_bytes()
    assert main(["recover", str(path), "sim://clinic-4?clock=virtual"]) == 3
    assert "not the session's" in capsys.readouterr().err
    assert path.read_bytes() == before  # nothing written


def test_cli_resume_delivers_the_remainder_after_a_lift(
    bench: Bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "part1.jsonl", tmp_path / "part2.jsonl"
    with Stimulator.open(bench.link) as stim:
        session = stim.start(RX, record_path=first)
        bench.control.act("electrode_lift", {"at_s": bench.now_s() + 20.0})
        with pytest.raises(DeviceFault):
            session.wait(timeout_s=60)
    assert main(["resume", str(first), bench.link, "--record", str(second), "--quiet"]) == 3  # contact open
    assert "contact check failed" in capsys.readouterr().err and not second.exists()
    bench.runner.call(lambda _d: bench.device.inject(ContactReturn(at_s=None, duration_s=0.01)))
    with Stimulator.open(bench.link) as stim:
        _until_contact(stim)
    assert main(["resume", str(first), bench.link, "--record", str(second), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "session: 2 parts" in out and f"record: {second}" in out
    chain = SessionRecord.load(second).chain()
    assert abs(chain.delivered_uas - PRESCRIBED_UAS) <= 0.01 * PRESCRIBED_UAS and chain.device_confirmed
    assert main(["resume", str(second), bench.link, "--quiet"]) == 0
    assert "nothing to resume" in capsys.readouterr().out


# ------------------------------------------------------------------- after_link_loss, without a device


class _DeadClient:
    def __init__(self, identity: IdentityReport) -> None:
        self.identity = identity
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Stim:
    def __init__(self, identity: IdentityReport) -> None:
        self.client = _DeadClient(identity)
        self.reconnect_policy = ReconnectPolicy(1.0)
        self.reopen_with = ("/nonexistent/iontodrive-port", {"watchdog_ms": 500})


def _open_record(path: Path, identity: IdentityReport) -> Path:
    writer = RecordWriter(path, prescription=RX.to_dict(), identity=identity, durable=False)
    writer.note("started", session_id=3, first_event_no=0, start={"dose_uas": PRESCRIBED_UAS})
    writer.close()
    return path


@pytest.mark.parametrize("what", ["refused", "interrupted"])
def test_after_link_loss_notes_a_refusal_or_an_interrupt_in_the_record(
    what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = _identity()
    path = _open_record(tmp_path / "r.jsonl", identity)

    def reach(*_args: object, **_kw: object) -> object:
        if what == "refused":
            raise DifferentDeviceError("/nonexistent/iontodrive-port", 1, 2, "clinic-4", "clinic-4")
        raise KeyboardInterrupt

    monkeypatch.setattr(reconnect, "reach_same_device", reach)
    stim = _Stim(identity)
    result = reconnect.after_link_loss(stim, path, LinkLostError("gone"))  # type: ignore[arg-type]
    record = SessionRecord.load(path)
    assert stim.client.closed and not record.complete
    assert _notes(record, "reconnecting")
    if what == "refused":
        assert isinstance(result, DifferentDeviceError) and result.found_serial == 2
        (note,) = _notes(record, "reconnect_refused")
        assert (note["expected_serial"], note["found_serial"]) == (1, 2)
    else:
        assert isinstance(result, SessionInterrupted)
        assert _notes(record, "reconnect_interrupted")


def test_cli_deliver_reconnects_after_an_unplug_and_the_record_is_the_devices(
    bench: Bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``iontodrive deliver --reconnect-s``: the same reconnect as the API's, from the command line; the
    command ends with the link-error code and the record holds the device's own final count."""
    from iontodrive.cli.exitcodes import LINK_ERROR

    path = tmp_path / "part1.jsonl"
    bench.control.act("unplug", {"at_s": bench.now_s() + 10.0, "duration_s": 1.5})
    argv = ["deliver", bench.link, "--current-ma", "2", "--dose-ma-min", "2", "--ramp-up-s", "5"]
    argv += ["--ramp-down-s", "5", "--polarity", "cathode", "--record", str(path), "--reconnect-s", "15"]
    assert main([*argv, "--quiet"]) == LINK_ERROR
    record = SessionRecord.load(path)
    assert record.complete and record.summary is not None and record.summary["device_confirmed"] is True
    assert _notes(record, "reconciled")  # reconciled with the same device after the link came back
    assert abs(record.delivered_uas - bench.runner.call(lambda d: d.charge_uas)) <= 1
    assert bench.state() is DeviceState.DONE  # no current came back by itself
