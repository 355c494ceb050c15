"""The hostile-device kit itself: each switch does what it says, through the real client on a real pty."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hostile import HostileDevice, lying_identity, wait_until

from iontodrive.client import DeviceClient
from iontodrive.errors import LinkTimeoutError, RemoteProtocolError
from iontodrive.protocol import Abort, DeviceState, EventCode, Heartbeat, Start, Stop, Telemetry


@pytest.fixture
def device() -> Iterator[HostileDevice]:
    with HostileDevice() as dev:
        yield dev


def client_for(dev: HostileDevice) -> DeviceClient:
    return DeviceClient.open(dev.url, timeout_s=0.05, retries=1)


def test_a_lying_identity_is_what_the_driver_reads() -> None:
    lie = lying_identity(max_current_ua=1_000_000, slew_limit_ua_per_s=0xFFFF_FFFF, min_ramp_ms=0)
    with HostileDevice(identity=lie) as dev, client_for(dev) as client:
        assert client.identity == lie
        assert client.identity.model == "clinic-4"


def test_dropped_replies_time_out_while_telemetry_flows(device: HostileDevice) -> None:
    with client_for(device) as client:
        samples: list[Telemetry] = []
        client.add_telemetry_listener(samples.append)
        device.drop_replies()
        with pytest.raises(LinkTimeoutError):
            client.status()
        device.tick(5)
        assert wait_until(lambda: len(samples) >= 5)
        device.answer_again()
        assert client.status().state is DeviceState.IDLE


def test_silence_after_a_start_answers_the_start_only(device: HostileDevice) -> None:
    with client_for(device) as client:
        device.silence_after(Start, for_s=None)
        client.request(Start(2000, 60_000, 0, 5000, 5000, 2))
        assert device.state is DeviceState.RAMP_UP
        with pytest.raises(LinkTimeoutError):
            client.status()


def test_self_raise_reports_setpoint_equal_to_measured(device: HostileDevice) -> None:
    with client_for(device) as client:
        sub = client.subscribe_telemetry()
        device.self_raise(100_000)
        device.tick(1)
        sample = sub.get(timeout=2.0)
        assert sample is not None
        assert (sample.setpoint_ua, sample.measured_ua) == (100_000, 100_000)


def test_ignored_abort_is_acked_and_does_nothing(device: HostileDevice) -> None:
    with client_for(device) as client:
        client.request(Start(2000, 60_000, 0, 5000, 5000, 2))
        device.ignore(Abort, Stop)
        client.request(Abort())
        device.tick(10, period_ms=1000)
        assert device.state is DeviceState.HOLD and device.measured_ua == 2000


def test_ack_naming_the_wrong_request(device: HostileDevice) -> None:
    with client_for(device) as client:
        device.ack_as(Stop, Heartbeat)
        with pytest.raises(RemoteProtocolError, match="naming Heartbeat"):  # the driver checks it (issue 13)
            client.request(Stop())


def test_event_jump_and_floods_reach_the_host(device: HostileDevice) -> None:
    with client_for(device) as client:
        events = client.subscribe_events()
        device.jump_event_numbers(4_000_000_000)
        device.emit_event(EventCode.STATE_CHANGED)
        numbers = []
        while (event := events.get(timeout=2.0)) is not None:
            numbers.append(event.event_no)
            if event.event_no == 4_000_000_000:
                break
        assert numbers[-1] == 4_000_000_000
        device.flood_telemetry(500)
        assert wait_until(lambda: client.stats.telemetry_received >= 500)
        assert device.wait_for(Heartbeat, 0, timeout_s=0.01)
