"""The one session engine (issue 18) and its session-level safety (issue 13), end to end.

Against the simulator (progress of a second session, time-based 100 %, pulsed DC's two values, polarity
by name, default record names, a record that cannot be written) and against the hostile-device kit
(start acknowledged then silence, a self-raised current with an ignored Abort, a full disk next to an
over-current, a device that answers nothing but keeps sending telemetry).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile import HostileDevice, wait_until

import firmware_sim
from iontodrive import DeviceFault, IontodriveError, LinkError, LinkLostError, Prescription, Stimulator
from iontodrive.protocol import Abort, DeviceState, Start, Stop
from iontodrive.record import RecordWriter, SessionRecord

SPEED = 200
QUICK = Prescription(current_ma=1.0, dose_ma_min=1.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode")
TIMED = Prescription(current_ma=1.0, duration_s=40, ramp_up_s=5, ramp_down_s=5, polarity="cathode")


@pytest.fixture(scope="module", autouse=True)
def _register() -> None:
    firmware_sim.register_url_handler()


def sim(model: str = "clinic-4", speed: float = SPEED) -> str:
    return f"sim://{model}?speed={speed}&seed=5"


# ------------------------------------------------------------------------------------------ progress


def test_the_first_progress_of_a_second_session_describes_that_session(tmp_path: Path) -> None:
    """Issue 18: the first callback of a second session reported the previous one (DONE, 100 %)."""
    with Stimulator.open(sim()) as stim:
        stim.deliver(QUICK, record_path=tmp_path / "a.jsonl")
        seen: list[Any] = []
        stim.deliver(QUICK, seen.append, record_path=tmp_path / "b.jsonl")
    first = seen[0]
    assert first.state is not DeviceState.DONE
    assert first.fraction < 0.5 and first.delivered_uas < 30_000
    assert first.session_id == seen[-1].session_id
    assert first.elapsed_s < 5.0


def test_a_time_based_session_reaches_100_percent_at_its_end(tmp_path: Path) -> None:
    """Issue 18: time-based sessions ended "completed" at 66.8 %, 75.1 % or 93.4 %."""
    seen: list[Any] = []
    with Stimulator.open(sim()) as stim:
        stim.deliver(TIMED, seen.append, record_path=tmp_path / "t.jsonl")
    assert seen[-1].fraction == 1.0 and seen[-1].time_left_s == 0.0
    assert seen[-1].target_s == 40.0
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions), "the bar never goes backwards"


def test_pulsed_dc_reports_the_pulse_amplitude_and_the_average_as_two_values(tmp_path: Path) -> None:
    """Issue 18: pulsed DC showed `I 7.568 mA (set 15.000)` unexplained."""
    pulsed = Prescription(
        current_ma=10.0,
        duration_s=30,
        ramp_up_s=5,
        ramp_down_s=5,
        polarity="anode",
        waveform="pulsed_dc",
        pulse_frequency_hz=100,
        duty_percent=50,
    )
    seen: list[Any] = []
    with Stimulator.open(sim("hydro-30")) as stim:
        stim.deliver(pulsed, seen.append, record_path=tmp_path / "p.jsonl")
    holding = [p for p in seen if p.state is DeviceState.HOLD]
    assert holding
    averages = sorted(p.average_current_ma for p in holding)
    amplitudes = sorted(p.pulse_amplitude_ma for p in holding)
    assert averages[len(averages) // 2] == pytest.approx(5.0, rel=0.05)  # the median over the hold
    assert amplitudes[len(amplitudes) // 2] == pytest.approx(10.0, rel=0.05)


def test_dc_progress_has_no_pulsed_values(tmp_path: Path) -> None:
    seen: list[Any] = []
    with Stimulator.open(sim()) as stim:
        stim.deliver(QUICK, seen.append, record_path=tmp_path / "d.jsonl")
    assert all(p.pulse_amplitude_ma is None and p.average_current_ma is None for p in seen)


# -------------------------------------------------------------------------------------------- records


def test_the_started_note_writes_polarity_by_name(tmp_path: Path) -> None:
    """Issue 18: the device session wrote polarity as ``2``, the VISA session as ``"CATHODE"``."""
    with Stimulator.open(sim()) as stim:
        stim.deliver(QUICK, record_path=tmp_path / "r.jsonl")
    record = SessionRecord.load(tmp_path / "r.jsonl")
    started = next(n for n in record.notes if n["kind"] == "started")
    assert started["start"]["polarity"] == "CATHODE"
    assert started["start"]["waveform"] == "DC"


def test_two_sessions_in_the_same_second_get_different_default_records() -> None:
    """Issue 18: a second ``deliver()`` in the same second raised a bare FileExistsError."""
    from iontodrive.session import Session

    with Stimulator.open(sim()) as stim:
        first = Session(stim, QUICK)
        second = Session(stim, QUICK)
    assert first.record_path != second.record_path


def test_two_delivers_in_the_same_second_without_a_record_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18: the second ``deliver()`` in the same second raised a bare FileExistsError. Here two
    sessions start within one wall second (speed 500) and both write their own default record."""
    monkeypatch.setenv("IONTODRIVE_RECORD_DIR", str(tmp_path / "records"))
    short = Prescription(current_ma=1.0, duration_s=12, ramp_up_s=5, ramp_down_s=5, polarity="cathode")
    # (not faster: at speed 2000 the device sent 20,000 samples a wall second, more than a loaded host
    # decodes, and the replies waited behind the backlog until requests timed out: CI under load)
    with Stimulator.open(sim(speed=500)) as stim:
        began = time.monotonic()
        first = stim.deliver(short)
        second = stim.deliver(short)
        assert time.monotonic() - began < 1.0 or first.path != second.path
    assert first.path != second.path and first.complete and second.complete
    assert first.path.parent == second.path.parent == tmp_path / "records"


class _Full:
    """Makes every RecordWriter write fail with ENOSPC once ``budget`` lines were written (a disk that
    fills up mid-session)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
        self.budget = budget
        for name in ("telemetry", "event", "note", "summary"):
            original = getattr(RecordWriter, name)
            monkeypatch.setattr(RecordWriter, name, self._wrap(original))

    def _wrap(self, original: Any) -> Any:
        def write(writer: RecordWriter, *args: Any, **kwargs: Any) -> Any:
            if self.budget <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.budget -= 1
            return original(writer, *args, **kwargs)

        return write


def test_a_full_disk_is_an_alarm_at_once_and_the_account_is_the_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18: on a nearly full filesystem the bar reached DONE with no warning, the outcome line said
    1.443 of 40 mA·min while the device had delivered 40."""
    _Full(monkeypatch, budget=20)
    seen: list[Any] = []
    seen_at: list[float] = []
    alarms: list[tuple[float, str]] = []

    def on_progress(p: Any) -> None:
        seen.append(p)
        seen_at.append(time.monotonic())

    with Stimulator.open(sim(speed=20)) as stim:
        stim.deliver(
            QUICK,
            on_progress,
            record_path=tmp_path / "full.jsonl",
            on_alarm=lambda text: alarms.append((time.monotonic(), text)),
        )
        session = stim.last_session
        device_charge = stim.status().charge_uas
    assert session is not None and session.account is not None
    account = session.account
    assert alarms and alarms[0][1].startswith("RECORD NOT WRITTEN")
    shown_at = next(t for t, p in zip(seen_at, seen, strict=True) if p.record_error)
    assert "No space left" in (seen[seen_at.index(shown_at)].record_error or "")
    assert shown_at - alarms[0][0] < 1.0  # on the display within a second
    assert any(a.startswith("RECORD NOT WRITTEN") for a in seen[-1].alarms)
    assert account.record_complete is False and "No space left" in (account.record_error or "")
    assert account.delivered_uas == device_charge  # the device's own figure, not the record's
    assert account.outcome.value == "completed"
    assert account.delivered_uas == pytest.approx(60_000, rel=0.01)


def test_the_cli_says_the_record_is_incomplete_on_a_real_small_filesystem(tmp_path: Path) -> None:
    """A real tmpfs of 48 KB fills up during the session: the CLI's outcome line and --json give the
    device's own dose and say the record is incomplete."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"mount not permitted here: {done.stderr.decode().strip()}")
    try:
        (mount / "filler").write_bytes(b"x" * 36_000)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "iontodrive.cli",
                "deliver",
                "sim://clinic-4?speed=200&seed=5",
                "--current-ma",
                "1",
                "--dose-ma-min",
                "1",
                "--ramp-up-s",
                "5",
                "--ramp-down-s",
                "5",
                "--polarity",
                "cathode",
                "--telemetry-hz",
                "50",
                "--record",
                str(mount / "full.jsonl"),
                "--json",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            executable=None,
        )
        body = json.loads(result.stdout)
        assert body["record_complete"] is False
        assert "No space left" in body["device"]["record_error"]
        assert body["device"]["delivered_uas"] == pytest.approx(60_000, rel=0.01)
        assert "RECORD NOT WRITTEN" in result.stderr
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# ------------------------------------------------------------------------------- hostile device (13)


@pytest.fixture
def hostile() -> Iterator[HostileDevice]:
    with HostileDevice(telemetry_hz=50) as dev:
        yield dev


def _open(dev: HostileDevice) -> Stimulator:
    return Stimulator.open(dev.url, timeout_s=0.05, retries=1)


def test_start_acknowledged_then_silence_brings_the_device_to_zero(
    hostile: HostileDevice, tmp_path: Path
) -> None:
    """Issue 13 finding 1: start() raised LinkTimeoutError with no Stop or Abort sent and no handle."""
    hostile.silence_after(Start, for_s=2.6)
    with _open(hostile) as stim:
        try:
            session = stim.start(QUICK, record_path=tmp_path / "r.jsonl")
        except LinkError:
            session = None
        if session is not None:
            session.stop()
            with pytest.raises(Exception):  # noqa: B017 (whatever the end, the output must be at zero)
                session.wait(timeout_s=20)
    assert hostile.requests_of(Stop) or hostile.requests_of(Abort)
    assert wait_until(lambda: hostile.setpoint_ua == 0, timeout_s=10)
    record = SessionRecord.load(tmp_path / "r.jsonl")
    assert any(n["kind"] == "starting" for n in record.notes)


def test_a_self_raised_current_with_an_ignored_abort_ends_wait_in_bounded_time(
    hostile: HostileDevice, tmp_path: Path
) -> None:
    """Issue 13 finding 2: a device at 100 mA reporting set-point = measured drew no reaction, and an
    ignored Abort left wait() blocked for ever."""
    with _open(hostile) as stim:
        session = stim.start(QUICK, record_path=tmp_path / "r.jsonl")
        hostile.ignore(Abort, Stop)
        hostile.self_raise(100_000)
        started = time.monotonic()
        with pytest.raises(DeviceFault):
            session.wait(timeout_s=25)
        assert time.monotonic() - started < 20
    assert len(hostile.requests_of(Abort)) >= 2  # repeated, not sent once


def test_a_full_disk_does_not_delay_the_over_current_abort(
    hostile: HostileDevice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 finding 4: the record write came first in each listener and its OSError skipped the
    over-current check (12 s without an abort)."""
    _Full(monkeypatch, budget=8)
    with _open(hostile) as stim:
        session = stim.start(QUICK, record_path=tmp_path / "r.jsonl")
        assert wait_until(lambda: hostile.state is DeviceState.RAMP_UP, timeout_s=2)
        hostile.self_raise(6_000)
        raised = time.monotonic()
        assert hostile.wait_for(Abort, 1, timeout_s=3.0)
        assert time.monotonic() - raised < 2.0
        with pytest.raises(DeviceFault):
            session.wait(timeout_s=25)
        assert any(a.startswith("RECORD NOT WRITTEN") for a in session.alarms)


def test_a_device_that_answers_nothing_but_keeps_sending_cannot_block_wait(
    hostile: HostileDevice, tmp_path: Path
) -> None:
    """Issue 13 finding 6: wait() stayed blocked (40 s watched)."""
    with _open(hostile) as stim:
        session = stim.start(QUICK, record_path=tmp_path / "r.jsonl")
        hostile.drop_replies()
        started = time.monotonic()
        with pytest.raises(LinkLostError):
            session.wait(timeout_s=25)
        assert time.monotonic() - started < 15


def test_a_host_that_dies_between_the_start_ack_and_the_started_note_is_recovered(tmp_path: Path) -> None:
    """Issue 13 finding 1: a host dying in that window made recover() write 0 µA·s against the device's
    39,599 and leave it PAUSED (the next session refused as busy)."""
    from iontodrive.cli.simproc import SimulatorProcess

    record_path = tmp_path / "r.jsonl"
    script = (
        "import os, sys\n"
        "from iontodrive import Prescription, Stimulator\n"
        "try:\n"
        "    from iontodrive.sessions.device import DeviceSession as S\n"
        "except ImportError:  # the first wave's engine (to check this test against it)\n"
        "    from iontodrive.session import Session as S\n"
        "S._first_status = lambda self: os._exit(9)  # the host dies right after the Start ack\n"
        "p = Prescription(current_ma=1.0, dose_ma_min=1.0, ramp_up_s=5, ramp_down_s=5, polarity='cathode')\n"
        "with Stimulator.open(sys.argv[1]) as stim:\n"
        "    stim.start(p, record_path=sys.argv[2])\n"
    )
    with SimulatorProcess("--pty", "--speed", "20", "--seed", "4") as sim:
        died = subprocess.run([sys.executable, "-c", script, sim.url, str(record_path)], timeout=60)
        assert died.returncode == 9
        with Stimulator.open(sim.url) as stim:
            # the device's session has delivered something (its watchdog may have paused it meanwhile)
            assert wait_until(lambda: stim.status().charge_uas > 0, timeout_s=10)
            record = stim.recover(record_path)
            status = stim.status()
    assert record.complete and record.summary is not None
    assert record.summary["delivered_uas"] == status.charge_uas > 0
    assert status.state is not DeviceState.PAUSED and status.setpoint_ua == 0


def test_a_session_leaves_the_telemetry_rate_as_it_found_it(tmp_path: Path) -> None:
    """Issue 17 item 3: ``deliver`` left the device at 10 Hz, so ``monitor`` printed 590 lines in 3 s."""
    with Stimulator.open(sim()) as stim:
        before = stim.status().telemetry_hz
        stim.deliver(QUICK, record_path=tmp_path / "r.jsonl", telemetry_hz=50)
        assert stim.status().telemetry_hz == before != 50


def test_the_visa_source_writes_polarity_by_name_too(tmp_path: Path) -> None:
    from test_visa_support import K2450, copy_bench, open_bench

    bench = open_bench(copy_bench(tmp_path), K2450)
    with bench.source as source:
        source.deliver(QUICK, record_path=tmp_path / "v.jsonl")
    started = next(n for n in SessionRecord.load(tmp_path / "v.jsonl").notes if n["kind"] == "started")
    assert started["start"]["polarity"] == "CATHODE"


def test_the_abort_repeats_end_quietly_when_the_link_is_closed_under_them(
    hostile: HostileDevice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault campaign (hostile_self_raise, 2026-12-02): the thread repeating the driver's Abort raised
    LinkClosedError out of its loop when the link was closed between two repeats."""
    escaped: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", escaped.append)
    stim = _open(hostile)
    try:
        session = stim.start(QUICK, record_path=tmp_path / "r.jsonl")
        hostile.ignore(Abort, Stop)
        hostile.self_raise(100_000)
        assert hostile.wait_for(Abort, 2, timeout_s=10)  # the repeats are under way, on their own thread
        repeaters = [t for t in threading.enumerate() if t.name == "iontodrive-abort"]
        assert repeaters
    finally:
        stim.link.close()  # under the session and its repeats, as a pulled cable or a closing host does
    for thread in repeaters:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in repeaters)
    assert [f"{a.exc_type.__name__}: {a.exc_value}" for a in escaped] == []
    with pytest.raises(IontodriveError):
        session.wait(timeout_s=25)
    stim.close()


def test_a_frozen_host_process_is_not_taken_for_wedged_safety_checks(tmp_path: Path) -> None:
    """A host process stopped whole (SIGSTOP, a suspended laptop) froze its waiting thread with its safety
    tier; when it ran again, the waiting thread could look first and abort for "safety checks behind",
    ending as ``aborted`` a session the device had paused for its lost link (campaign ``host_sigstop``,
    3 runs in 25). Here the safety tier and the waiting thread are frozen together for 2.5 s, and the
    waiting thread runs first: the session must end as the device saw it, ``link_lost``, with no alarm."""
    from trace_tools import load_trace

    release = threading.Event()
    wedged = threading.Event()

    def wedge(sample: Any) -> None:
        if sample.state is DeviceState.HOLD and not release.is_set():
            wedged.set()
            release.wait(30)

    url = f"sim://clinic-4?speed=20&seed=5&trace={tmp_path / 'trace.csv'}"
    try:
        with Stimulator.open(url) as stim:
            stim.add_telemetry_listener(wedge, safety=True)
            session = stim.start(QUICK, record_path=tmp_path / "f.jsonl")
            outcome: list[Any] = []
            waiter = threading.Thread(target=lambda: outcome.append(session.wait(timeout_s=60)))
            waiter.start()
            assert wedged.wait(20)
            freeze = session._changed
            # Take the session's lock while the waiting thread sleeps in its wait (it is then among the
            # condition's waiters), so that its wait oversleeps: the whole process "stopped".
            deadline = time.monotonic() + 10
            while True:
                freeze.acquire()
                if getattr(freeze, "_waiters", None):
                    break
                freeze.release()
                assert time.monotonic() < deadline, "the waiting thread never slept in its wait"
                threading.Event().wait(0.005)
            try:
                time.sleep(2.5)  # the freeze itself: its length is what the safety tier's lag measures
            finally:
                thawed_at = time.monotonic()
                freeze.release()

            # The waiting thread runs again first, while the safety tier is still behind: wait until it has
            # judged the lag (the old code raised its alarm, the new one noted the freeze); then free the
            # safety tier.
            def judged() -> bool:
                return bool(session.alarms) or getattr(session, "_awake_since_s", 0.0) >= thawed_at

            assert wait_until(judged, timeout_s=5)
            release.set()
            waiter.join(60)
            assert outcome, "wait() did not return"
            assert not any("SAFETY CHECKS" in alarm for alarm in session.alarms), session.alarms
            assert session.outcome is not None and session.outcome.value == "link_lost", session.alarms
    finally:
        release.set()
    trace = load_trace(tmp_path / "trace.csv")
    assert trace.output_ua[-1] == 0


def test_wedged_safety_checks_end_the_session_instead_of_polling_on_blind(tmp_path: Path) -> None:
    """S19: with the safety tier wedged, the heartbeats stop, but the session's status backstop poll is a
    valid frame too and kept the device's watchdog fed while nothing checked the telemetry. The waiting
    thread now aborts (a ramp at the slew limit) once the safety checks are a second behind."""
    from trace_tools import load_trace, max_slew_ua_per_s

    trace_path = tmp_path / "trace.csv"
    release = threading.Event()
    wedged = threading.Event()

    def wedge(sample: Any) -> None:
        if sample.state is DeviceState.HOLD and not release.is_set():
            wedged.set()
            release.wait(30)  # a safety listener that hangs

    url = f"sim://clinic-4?speed=20&seed=5&trace={trace_path}"
    try:
        with Stimulator.open(url) as stim:
            stim.add_telemetry_listener(wedge, safety=True)
            session = stim.start(QUICK, record_path=tmp_path / "w.jsonl")
            started = time.monotonic()
            outcome: Any = None
            try:
                record = session.wait(timeout_s=60)
                outcome = record.summary.get("end_reason") if record.summary else None
            except IontodriveError as exc:
                outcome = exc
            assert wedged.is_set()
            assert time.monotonic() - started < 30
            assert any("SAFETY CHECKS" in alarm for alarm in session.alarms)
            assert session.outcome is not None and session.outcome.value == "aborted", outcome
            release.set()
    finally:
        release.set()
    trace = load_trace(trace_path)
    assert trace.output_ua[-1] == 0
    identity = firmware_sim.MODELS["clinic-4"]
    assert max_slew_ua_per_s(trace, identity.compliance_mv) <= 1.05 * identity.slew_limit_ua_per_s
