"""Issue 13, driver side: a hostile device (tests/hostile) against the client's own line of defence.

Findings covered here (the session-level ones are in the session engine's tests):

* 3 -- hard limits taken from the device: a "clinic-4" claiming 1 A, an unbounded slew and no minimum
  ramp is refused before any Start (API and ``deliver --current-ma 100``); ``set_current`` ramps no faster
  than S1's 5 s.
* 5 -- the dispatcher deadlocking on its own queue: an event flood behind a gap, an event number jump
  0 -> 4,000,000,000 on a device whose ring answers every fetch, 0.2 % byte loss with 5 kHz telemetry
  and a 0.5 ms callback, and a 3 ms callback at 1 kHz that must not delay the safety checks.
* 6 -- replies checked fully: an Ack (or Nack) naming another request, a reply of the wrong type; a device
  that answers nothing while telemetry flows makes requests fail in bounded time.
* S19 -- heartbeats prove a live controller: a gate that says no, a safety listener that raised or lags,
  a wedged dispatcher or no fresh telemetry stops them, and the device's watchdog then acts.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import HostileDevice, lying_identity, wait_until

from iontodrive import Prescription, Stimulator, clientcore
from iontodrive import client as client_module
from iontodrive.client import DeviceClient
from iontodrive.errors import (
    EventsLostError,
    IncompatibleDeviceError,
    LinkTimeoutError,
    RemoteProtocolError,
)
from iontodrive.protocol import (
    Abort,
    Event,
    EventCode,
    FetchEvents,
    Heartbeat,
    Pause,
    SetCurrent,
    Start,
    Stop,
    Telemetry,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the hostile device needs a POSIX pty")

UNBOUNDED = 0xFFFF_FFFF


def open_client(dev: HostileDevice, **options: object) -> DeviceClient:
    settings: dict[str, object] = {"timeout_s": 0.1, "retries": 1, **options}
    return DeviceClient.open(dev.url, **settings)  # type: ignore[arg-type]


def slow(seconds: float) -> None:
    """Stand-in for a slow callback (a display, a record write): blocks this thread for ``seconds``."""
    threading.Event().wait(seconds)


@pytest.fixture
def device() -> Iterator[HostileDevice]:
    with HostileDevice() as dev:
        yield dev


# ------------------------------------------------------------------------------- finding 3: ceilings


LIAR = lying_identity(max_current_ua=1_000_000, slew_limit_ua_per_s=UNBOUNDED, min_ramp_ms=0)
LOW_OHM = 500  # a load the contact check (S3) accepts even at 100 mA: 0.8 x 80 V / 100 mA = 640 ohm


def test_a_clinic_claiming_one_ampere_gets_no_start_from_the_api(tmp_path: Path) -> None:
    with (
        HostileDevice(identity=LIAR, impedance_ohm=LOW_OHM) as dev,
        Stimulator.open(dev.url, timeout_s=0.2, retries=1) as stim,
    ):
        rx = Prescription(current_ma=100.0, dose_ma_min=10.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode")
        with pytest.raises(IncompatibleDeviceError, match="clinic-4"):
            stim.start(rx, record_path=tmp_path / "r.jsonl")
        assert dev.requests_of(Start) == []


@pytest.mark.timeout(60)  # (4013fbb starts the session and then waits for a device that never ends it)
def test_a_clinic_claiming_one_ampere_gets_no_start_from_deliver(tmp_path: Path) -> None:
    from iontodrive.cli import exitcodes, main

    with HostileDevice(identity=LIAR, impedance_ohm=LOW_OHM) as dev:
        args = ["deliver", dev.url, "--current-ma", "100", "--dose-ma-min", "20", "--ramp-up-s", "5"]
        args += ["--ramp-down-s", "5", "--polarity", "cathode", "--quiet", "--record", str(tmp_path / "r")]
        assert main(args) == exitcodes.REFUSED
        assert dev.requests_of(Start) == []


def test_a_device_reporting_more_than_the_cap_gets_the_cap() -> None:
    # 6 mA on a clinic-4 (1.5 x its 4 mA cap): plausible, but the driver never uses the headroom.
    generous = lying_identity(max_current_ua=6_000, trip_current_ua=6_600)
    with HostileDevice(identity=generous) as dev, Stimulator.open(dev.url, timeout_s=0.2, retries=1) as stim:
        too_much = Prescription(
            current_ma=5.0, dose_ma_min=10.0, ramp_up_s=5, ramp_down_s=5, polarity="anode"
        )
        from iontodrive.errors import SafetyRefusal

        with pytest.raises(SafetyRefusal) as caught:
            stim.start(too_much, record_path=None)
        assert caught.value.field == "current_ma" and caught.value.maximum == 4.0
        assert "driver's cap" in caught.value.reason
        assert dev.requests_of(Start) == []


def test_set_current_never_ramps_faster_than_five_seconds(tmp_path: Path) -> None:
    # A clinic-4 that claims a 1 s minimum ramp and twice the slew: plausible, so used, but S1 holds.
    quick = lying_identity(min_ramp_ms=1_000, slew_limit_ua_per_s=10_000)
    with HostileDevice(identity=quick) as dev, Stimulator.open(dev.url, timeout_s=0.2, retries=1) as stim:
        rx = Prescription(current_ma=2.0, dose_ma_min=20.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode")
        session = stim.start(rx, record_path=tmp_path / "r.jsonl")
        dev.tick(60, period_ms=100)  # 6 s of device time: at the set-point
        session.set_current(2.5)
        sent = [m for _, m in dev.requests_of(SetCurrent)]
        assert sent and all(m.ramp_ms >= 5_000 for m in sent), sent  # type: ignore[attr-defined]
        session.stop()
        dev.tick(100, period_ms=100)  # the ramp-down, in device time


# --------------------------------------------------------------------------- finding 6: replies checked


@pytest.mark.parametrize("caller_reads", [True, False])
def test_an_ack_naming_another_request_is_not_accepted(device: HostileDevice, caller_reads: bool) -> None:
    with open_client(device, caller_reads=caller_reads) as client:
        device.ack_as(Stop, Heartbeat)
        with pytest.raises(RemoteProtocolError, match=r"Stop .* naming Heartbeat"):
            client.request(Stop())
        assert client.stats.bad_replies == 1
        assert client.status().state.name == "IDLE"  # the client carries on


def test_a_nack_naming_another_request_and_a_reply_of_the_wrong_type_are_not_accepted(
    device: HostileDevice,
) -> None:
    from iontodrive.protocol import ErrorCode, Field, Nack, StatusReport, encode

    with open_client(device) as client:
        client.request(Start(2000, 60_000, 0, 5000, 5000, 2))

        def nack_for_heartbeat(seq: int) -> list[bytes]:
            return [encode(Nack(int(Heartbeat.TYPE), ErrorCode.BAD_STATE, Field.STATE, 3, 0, 0), seq)]

        device.script(Pause, nack_for_heartbeat)
        with pytest.raises(RemoteProtocolError, match="naming Heartbeat"):
            client.request(Pause())
        device.script(Abort, lambda seq: [encode(device.status_report(), seq)])
        with pytest.raises(RemoteProtocolError, match="StatusReport"):
            client.request(Abort())
        assert isinstance(client.status(), StatusReport)


@pytest.mark.parametrize("caller_reads", [True, False])
def test_a_device_that_answers_nothing_but_streams_telemetry_times_out_in_bounded_time(
    device: HostileDevice, caller_reads: bool
) -> None:
    with open_client(device, caller_reads=caller_reads) as client:
        device.start_telemetry(1000)
        device.drop_replies()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(LinkTimeoutError):
                client.status()
            assert time.monotonic() - started < 0.2 * 2 + 0.5  # two attempts of 0.1 s, with slack
        assert client.stats.telemetry_received > 100  # telemetry kept flowing the whole time
        device.answer_again()
        assert client.status().state.name == "IDLE"
        started = time.monotonic()
    assert time.monotonic() - started < 2.5  # close() returns


# --------------------------------------------------------------------------- finding 5: bounded queues


def test_an_event_flood_during_a_gap_fetch_does_not_deadlock(device: HostileDevice) -> None:
    """The issue's event flood: a gap is being fetched (the device answers it late) while 130,000 events
    pour in. Main (4013fbb) deadlocks: its dispatcher reads the flood itself while fetching, and blocks on
    its own full 100,000-item queue; every request then times out and close() hangs."""
    with open_client(device, timeout_s=1.0, retries=3) as client:
        seen: list[int] = []
        errors: list[BaseException] = []
        client.add_event_listener(lambda e: seen.append(e.event_no))
        client.add_error_listener(errors.append)
        device.delay_replies(FetchEvents, 3.0)  # the flood is all in before the fetch is answered
        lost = device.emit_event(EventCode.STATE_CHANGED, live=False)  # lost on the wire: a gap
        device.emit_event(EventCode.STATE_CHANGED)  # reveals it: the fetch starts, answered late
        device.flood_events(130_000)
        last = lost.event_no + 130_001
        started = time.monotonic()
        assert client.status() is not None  # requests still work during the flood
        assert time.monotonic() - started < 1.0
        assert wait_until(lambda: bool(seen) and seen[-1] == last, timeout_s=20.0)
        assert seen == sorted(seen) and len(set(seen)) == len(seen)  # in order, once each
        # every event reached the listener, or its loss was reported (never silently lost)
        reported = lambda: sum(e.count for e in errors if isinstance(e, EventsLostError))  # noqa: E731
        assert wait_until(lambda: 130_002 - len(seen) <= reported(), timeout_s=5.0), (
            130_002 - len(seen),
            reported(),
            client.delivery_stats,
        )
        started = time.monotonic()
    assert time.monotonic() - started < 2.5


def test_events_a_full_tier_dropped_are_fetched_again_in_order(device: HostileDevice) -> None:
    """Policy for events on overflow: dropped for that tier, then fetched again by the tier's own thread
    (FetchEvents) when it gets there, so its listener still sees each once, in order."""
    with open_client(device, timeout_s=0.5, retries=2) as client:
        seen: list[int] = []
        release = threading.Event()

        def slow_listener(event: Event) -> None:
            release.wait(10.0)
            seen.append(event.event_no)

        client.add_event_listener(slow_listener)
        device.bottomless_ring()  # the device's ring still has every event when the tier asks again
        total = client_module.TIER_EVENT_CAP + 300
        device.flood_events(total)
        assert wait_until(lambda: client.delivery_stats["dispatch"]["dropped_events"] >= 299, timeout_s=10.0)
        release.set()
        assert wait_until(lambda: len(seen) >= total, timeout_s=10.0), len(seen)
        assert seen == sorted(seen) and len(set(seen)) == total
        assert client.delivery_stats["dispatch"]["refilled_events"] >= 299
        assert device.requests_of(FetchEvents)  # fetched again from the device


def test_an_event_number_jump_to_four_billion_is_bounded(device: HostileDevice) -> None:
    """A device that jumps 0 -> 4,000,000,000 and whose ring 'holds' every number: main fetches for ever
    (125 million FetchEvents); the driver fetches the newest MAX_GAP_FETCH and reports the rest lost."""
    with open_client(device) as client:
        seen: list[int] = []
        errors: list[BaseException] = []
        client.add_event_listener(lambda e: seen.append(e.event_no))
        client.add_error_listener(errors.append)
        device.bottomless_ring()
        device.jump_event_numbers(4_000_000_000)
        device.emit_event(EventCode.STATE_CHANGED)
        assert wait_until(lambda: 4_000_000_000 in seen, timeout_s=5.0)
        assert len(device.requests_of(FetchEvents)) <= client_module.MAX_GAP_REQUESTS
        assert len(seen) <= 1 + client_module.MAX_GAP_REQUESTS * client_module.FETCH_BATCH
        assert wait_until(lambda: any(isinstance(e, EventsLostError) for e in errors))
        assert client.stats.events_lost > 3_999_000_000
        assert client.status().last_event_no == 4_000_000_000
        started = time.monotonic()
    assert time.monotonic() - started < 2.5


def test_byte_loss_with_5_khz_telemetry_and_a_slow_callback_never_wedges(device: HostileDevice) -> None:
    """The issue's soak case, three seconds of it: 0.2 % byte loss, 5 kHz telemetry, a 0.5 ms callback."""
    with open_client(device, timeout_s=0.2, retries=2) as client:
        client.add_telemetry_listener(lambda sample: slow(0.0005))
        events: list[int] = []
        client.add_event_listener(lambda e: events.append(e.event_no))
        device.lose_bytes(0.002, seed=7)
        device.start_telemetry(5000)
        deadline = time.monotonic() + 3.0
        failures = requests = 0
        while time.monotonic() < deadline:
            device.emit_event(EventCode.SETPOINT_CHANGED)
            requests += 1
            started = time.monotonic()
            try:
                client.status()
            except LinkTimeoutError:  # a reply torn by the loss on every attempt: rare, never a hang
                failures += 1
            assert time.monotonic() - started < 3 * 0.2 + 0.5  # bounded: three attempts of 0.2 s
        assert failures <= max(3, requests // 20)
        assert client.stats.telemetry_received > 3000  # telemetry streamed (torn frames aside)
        assert client.stats.decode_errors > 0  # and the loss was real
        device.lose_bytes(0.0)
        assert client.status() is not None
        started = time.monotonic()
    assert time.monotonic() - started < 2.5


def test_a_slow_ordinary_callback_does_not_delay_the_safety_checks(device: HostileDevice) -> None:
    """3 ms per sample at 1 kHz: the ordinary tier falls behind (and sheds), the safety tier does not."""
    with open_client(device) as client:
        lags: list[float] = []
        safety_seen: list[int] = []
        client.add_telemetry_listener(lambda sample: slow(0.003))
        client.add_telemetry_listener(lambda sample: safety_seen.append(sample.sample_no), safety=True)
        device.start_telemetry(1000)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            lags.append(client.safety_lag_s)
            slow(0.01)
        assert max(lags) < client_module.SAFETY_LAG_MAX_S
        assert len(safety_seen) > 1000
        assert safety_seen == sorted(safety_seen) and len(set(safety_seen)) == len(safety_seen)
        assert client._ordinary.lag_s() > 0.5  # the ordinary tier really was behind


# ---------------------------------------------------------------------------------- S19: live heartbeat


def heartbeats_during(dev: HostileDevice, seconds: float) -> int:
    before = len(dev.requests_of(Heartbeat))
    slow(seconds)
    return len(dev.requests_of(Heartbeat)) - before


def test_heartbeats_flow_while_the_controller_is_live_and_stop_when_a_gate_says_no(
    device: HostileDevice,
) -> None:
    with open_client(device, heartbeat_s=0.05) as client:
        live = [True]
        client.add_telemetry_listener(lambda s: None, safety=True)
        remove = client.gate_heartbeats(lambda: live[0])
        device.start_telemetry(200)
        assert heartbeats_during(device, 0.3) >= 3
        live[0] = False
        assert wait_until(lambda: client.heartbeat_withheld is not None)
        assert heartbeats_during(device, 0.3) == 0
        assert "gate" in (client.heartbeat_withheld or "")
        remove()
        assert heartbeats_during(device, 0.3) >= 3  # no gate: heartbeats as before


def test_no_fresh_telemetry_stops_heartbeats(device: HostileDevice) -> None:
    with open_client(device, heartbeat_s=0.05) as client:
        client.add_telemetry_listener(lambda s: None, safety=True)
        client.gate_heartbeats(lambda: True)
        assert heartbeats_during(device, 0.3) == 0  # no telemetry at all yet
        assert "telemetry" in (client.heartbeat_withheld or "")
        device.start_telemetry(100)
        assert wait_until(lambda: len(device.requests_of(Heartbeat)) >= 2)


def test_a_safety_listener_that_raised_stops_heartbeats_until_the_gate_goes(device: HostileDevice) -> None:
    with open_client(device, heartbeat_s=0.05) as client:
        errors: list[BaseException] = []
        client.add_error_listener(errors.append)

        def check(sample: Telemetry) -> None:
            if sample.sample_no == 20:
                raise RuntimeError("over-current check bug")

        client.add_telemetry_listener(check, safety=True)
        remove = client.gate_heartbeats(lambda: True)
        device.start_telemetry(200)
        assert wait_until(lambda: bool(errors))
        assert wait_until(lambda: "safety listener raised" in (client.heartbeat_withheld or ""))
        assert heartbeats_during(device, 0.3) == 0
        before = len(device.requests_of(Heartbeat))
        remove()  # the session that owned the failed listener is gone: heartbeats as before
        assert wait_until(lambda: len(device.requests_of(Heartbeat)) > before)


def test_a_lagging_safety_listener_stops_heartbeats(device: HostileDevice) -> None:
    with open_client(device, heartbeat_s=0.05) as client:
        release = threading.Event()
        client.add_telemetry_listener(lambda s: release.wait(5.0) and None, safety=True)
        client.gate_heartbeats(lambda: True)
        device.start_telemetry(200)
        assert wait_until(lambda: client.safety_lag_s > client_module.SAFETY_LAG_MAX_S)
        assert wait_until(lambda: "behind telemetry" in (client.heartbeat_withheld or ""))
        assert heartbeats_during(device, 0.3) == 0
        release.set()


def test_a_wedged_dispatcher_stops_heartbeats(device: HostileDevice, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clientcore, "DISPATCH_WEDGED_S", 0.2)  # the heartbeat rule lives in the core
    with open_client(device, heartbeat_s=0.05) as client:
        release = threading.Event()
        client.add_telemetry_listener(lambda s: None, safety=True)
        client.add_telemetry_listener(lambda s: release.wait(5.0) and None)  # a record write that hangs
        client.gate_heartbeats(lambda: True)
        device.start_telemetry(200)
        assert wait_until(lambda: "wedged" in (client.heartbeat_withheld or ""))
        assert heartbeats_during(device, 0.3) == 0
        release.set()


def test_withheld_heartbeats_let_the_real_watchdog_ramp_down() -> None:
    """The simulator's own watchdog (S10) acts once the gate says no: LINK_LOST, output ramping down."""
    from firmware_sim import Device
    from firmware_sim.bridge_pty import PtyTransport
    from firmware_sim.runner import DeviceRunner
    from iontodrive.protocol import CheckContact, DeviceState

    device = Device("clinic-4", telemetry_hz=100)
    transport = PtyTransport()
    runner = DeviceRunner(device, transport).start()
    try:
        with DeviceClient.open(transport.path, watchdog_ms=500, timeout_s=0.2, retries=2) as client:
            events: list[EventCode] = []
            client.add_event_listener(lambda e: events.append(e.code))
            client.add_telemetry_listener(lambda s: None, safety=True)
            live = [True]
            client.gate_heartbeats(lambda: live[0])
            client.request(CheckContact(50, 2000))
            client.request(Start(2000, 0, 60_000, 5000, 5000, 2))
            assert wait_until(lambda: client.status().state is DeviceState.RAMP_UP)
            slow(0.6)  # heartbeats flow: the watchdog (0.5 s) stays fed
            assert EventCode.LINK_LOST not in events
            live[0] = False  # the controller stops being live; nothing else is sent
            assert wait_until(lambda: EventCode.LINK_LOST in events, timeout_s=3.0)
            status = client.status()
            assert status.state in (DeviceState.PAUSING, DeviceState.PAUSED)
    finally:
        runner.stop()
        transport.close()


# ------------------------------------------------------------------------- contract 6: exclusive ports


def test_a_second_open_of_the_same_simulator_pty_is_refused_before_a_byte_is_written() -> None:
    import subprocess

    from firmware_sim import Device
    from firmware_sim.bridge_pty import PtyTransport
    from firmware_sim.runner import DeviceRunner
    from iontodrive.errors import LinkClosedError, PortInUseError

    device = Device("clinic-4")
    transport = PtyTransport()
    runner = DeviceRunner(device, transport).start()
    try:
        with DeviceClient.open(transport.path, timeout_s=0.2, retries=2, heartbeat_s=10) as first:
            before = runner.call(lambda d: (d.frames_in, d.bad_frames_in))
            with pytest.raises(PortInUseError, match="in use"):
                DeviceClient.open(transport.path, timeout_s=0.2, retries=0)
            assert issubclass(PortInUseError, LinkClosedError)  # callers that catch "cannot open" still do
            other = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys\n"
                    "from iontodrive.link import SerialLink\n"
                    "from iontodrive.errors import PortInUseError\n"
                    "try:\n"
                    f"    SerialLink.open({transport.path!r})\n"
                    "except PortInUseError:\n"
                    "    sys.exit(7)\n",
                ],
                timeout=30,
            )
            assert other.returncode == 7  # another process is refused too
            assert runner.call(lambda d: (d.frames_in, d.bad_frames_in)) == before  # not a byte from either
            assert first.status().state.name == "IDLE"  # the first client is undisturbed
        with DeviceClient.open(transport.path, timeout_s=0.2, retries=2) as again:  # free once closed
            assert again.status().state.name == "IDLE"
    finally:
        runner.stop()
        transport.close()
