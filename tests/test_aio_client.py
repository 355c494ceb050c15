"""The asyncio client over its three transports (pty, socket://, the in-process simulator), with asyncio's
debug mode on and a slow-callback threshold: any call that blocks the loop is logged by asyncio and
fails the test."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import firmware_sim
from firmware_sim import Device
from firmware_sim.bridge_pty import PtyTransport
from firmware_sim.bridge_tcp import TcpTransport
from firmware_sim.runner import DeviceRunner
from iontodrive.aio import AsyncDeviceClient
from iontodrive.errors import DeviceRefusal, LinkClosedError, LinkTimeoutError, PortInUseError
from iontodrive.protocol import DeviceState, Event, EventCode, Polarity, Start, StatusReport, Stop, Telemetry

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX pseudo-terminals")

SLOW_CALLBACK_S = 0.25  # asyncio logs every callback or task step that holds the loop longer. The simulator
# runs in this process (its physics thread shares the GIL) on a loaded 2-core machine, where a step was
# once measured at 0.100 s with nothing blocking; pyserial's socket close (a 0.3 s sleep) is still caught,
# and test_the_detector_catches_a_blocking_call shows a 0.3 s block is.


class Sim:
    """A simulated device on a pty or a TCP port, run by the simulator's real-time runner."""

    def __init__(self, kind: str, telemetry_hz: int = 0) -> None:
        self.device = Device("clinic-4", telemetry_hz=telemetry_hz)
        if kind == "pty":
            self.transport: Any = PtyTransport()
            self.url = self.transport.path
        else:
            self.transport = TcpTransport("127.0.0.1", 0)
            self.url = f"socket://127.0.0.1:{self.transport.port}"
        self.runner = DeviceRunner(self.device, self.transport).start()

    def close(self) -> None:
        if self.runner.alive:
            self.runner.stop()
        self.transport.close()


@pytest.fixture(params=["pty", "socket", "sim"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sim":
        firmware_sim.register_url_handler()
        yield "sim://clinic-4"
        return
    sim = Sim(request.param)
    yield sim.url
    sim.close()


def run(coro_fn: Callable[[], Awaitable[None]], caplog: pytest.LogCaptureFixture) -> None:
    """Run ``coro_fn()`` in a fresh loop in debug mode; fail on any slow callback asyncio reports."""

    async def main() -> None:
        asyncio.get_running_loop().slow_callback_duration = SLOW_CALLBACK_S
        await coro_fn()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        asyncio.run(main(), debug=True)
    slow = [r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()]
    assert not slow, f"the loop was blocked: {slow}"


def test_the_detector_catches_a_blocking_call(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        threading.Event().wait(0.3)  # a blocking call on the loop, as a careless driver would make

    with pytest.raises(AssertionError, match="the loop was blocked"):
        run(body, caplog)


START = Start(
    target_current_ua=1000,
    dose_uas=0,
    duration_ms=600_000,
    ramp_up_ms=5_000,
    ramp_down_ms=5_000,
    polarity=Polarity.ANODE,
)


def test_open_status_and_concurrent_requests(url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with await AsyncDeviceClient.open(url, telemetry_hz=0) as client:
            assert client.identity.model == "clinic-4"
            replies = await asyncio.gather(*(client.status() for _ in range(20)))
            assert all(isinstance(r, StatusReport) and r.state is DeviceState.IDLE for r in replies)
            assert client.stats.timeouts == 0 and client.stats.bad_replies == 0
        assert client.closed
        with pytest.raises(LinkClosedError):
            await client.status()

    run(body, caplog)


def test_telemetry_iterator_and_events_in_order(url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with await AsyncDeviceClient.open(url, telemetry_hz=100) as client:
            events: list[Event] = []
            client.add_event_listener(events.append)
            safety_seen: list[int] = []
            client.add_telemetry_listener(lambda s: safety_seen.append(s.sample_no), safety=True)
            samples: list[Telemetry] = []
            async with client.telemetry() as sub:
                await client.request(START)
                async for sample in sub:
                    samples.append(sample)
                    if len(samples) >= 30:
                        break
            await client.request(Stop())
            for _ in range(100):
                if any(e.code is EventCode.STOPPED for e in events):
                    break
                await asyncio.sleep(0.01)
            numbers = [s.sample_no for s in samples]
            assert numbers == sorted(numbers) and len(numbers) == 30
            assert set(numbers) <= set(safety_seen)
            event_numbers = [e.event_no for e in events]
            assert event_numbers == sorted(set(event_numbers)) and event_numbers
            assert any(e.code is EventCode.STOPPED for e in events), [e.code for e in events]

    run(body, caplog)


def test_a_refusal_is_typed_and_changes_nothing(url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with await AsyncDeviceClient.open(url, telemetry_hz=0) as client:
            with pytest.raises(DeviceRefusal):
                await client.configure_telemetry(60_000)
            assert (await client.status()).state is DeviceState.IDLE

    run(body, caplog)


def test_a_silent_device_times_out_with_retries_of_one_frame(caplog: pytest.LogCaptureFixture) -> None:
    sim = Sim("pty")
    try:

        async def body() -> None:
            async with await AsyncDeviceClient.open(
                sim.url, telemetry_hz=0, timeout_s=0.05, retries=2
            ) as client:
                sim.runner.stop()  # the device goes silent; the pty stays open
                before = client.stats.requests
                with pytest.raises(LinkTimeoutError):
                    await client.status()
                assert client.stats.requests - before == 3 and client.stats.retries >= 2

        run(body, caplog)
    finally:
        sim.close()


def test_a_port_in_use_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    sim = Sim("pty")
    try:

        async def body() -> None:
            async with await AsyncDeviceClient.open(sim.url, telemetry_hz=0):
                with pytest.raises(PortInUseError):
                    await AsyncDeviceClient.open(sim.url, telemetry_hz=0)

        run(body, caplog)
    finally:
        sim.close()


def test_heartbeats_keep_the_watchdog_fed_and_the_gate_stops_them(caplog: pytest.LogCaptureFixture) -> None:
    sim = Sim("pty", telemetry_hz=50)
    try:

        async def body() -> None:
            async with await AsyncDeviceClient.open(sim.url, watchdog_ms=500, heartbeat_s=0.05) as client:
                await asyncio.sleep(0.3)
                sent = client.stats.requests
                await asyncio.sleep(0.3)
                assert client.stats.requests - sent >= 3  # heartbeats flow while idle
                live = [True]
                client.gate_heartbeats(lambda: live[0])
                await asyncio.sleep(0.2)
                assert client.heartbeat_withheld is None
                live[0] = False
                await asyncio.sleep(0.2)
                assert client.heartbeat_withheld is not None and "not live" in client.heartbeat_withheld
                sent = client.stats.requests
                await asyncio.sleep(0.3)
                assert client.stats.requests == sent  # withheld: the watchdog would act

        run(body, caplog)
    finally:
        sim.close()


def test_events_the_full_dispatch_queue_dropped_are_fetched_again_in_order() -> None:
    """The threaded client's overflow policy, on the loop: an event that finds the dispatch queue full is
    dropped there and fetched again (FetchEvents) when dispatch reaches it, so a listener still sees each
    event once, in order, and nothing is reported lost."""
    from hostile import HostileDevice

    from iontodrive.client import TIER_EVENT_CAP
    from iontodrive.errors import EventsLostError
    from iontodrive.protocol import FetchEvents

    total = TIER_EVENT_CAP + 300
    seen: list[int] = []
    errors: list[BaseException] = []

    async def main(device: HostileDevice) -> None:
        release = asyncio.Event()
        client = await AsyncDeviceClient.open(device.url, timeout_s=0.5, retries=2)
        try:

            async def slow_listener(event: Event) -> None:  # holds the dispatch task until released
                await release.wait()
                seen.append(event.event_no)

            client.add_event_listener(slow_listener)
            client.add_error_listener(errors.append)
            device.bottomless_ring()  # the device's ring still has every event when it is asked again
            device.flood_events(total)
            async with asyncio.timeout(20):
                while client.dropped_events < 299:
                    await asyncio.sleep(0.05)
                release.set()
                while len(seen) < total:
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    with HostileDevice() as device:
        asyncio.run(main(device))
        assert device.requests_of(FetchEvents)  # fetched again from the device
    assert seen == sorted(seen) and len(set(seen)) == total
    assert not [e for e in errors if isinstance(e, EventsLostError)]


def test_plain_and_coroutine_listeners_see_every_sample_in_order(caplog: pytest.LogCaptureFixture) -> None:
    """Samples reach plain listeners in the reader callback while nothing waits for dispatch, and through
    the dispatch task while a coroutine listener is registered: either way each sample once, in order;
    a coroutine listener that raises is reported to error listeners and delivery goes on."""
    plain: list[int] = []
    awaited: list[int] = []
    errors: list[BaseException] = []

    async def main() -> None:
        firmware_sim.register_url_handler()
        async with await AsyncDeviceClient.open("sim://clinic-4", telemetry_hz=100) as client:
            client.add_telemetry_listener(lambda s: plain.append(s.sample_no))
            client.add_error_listener(errors.append)
            while len(plain) < 20:  # the reader-callback path
                await asyncio.sleep(0.01)

            async def slow(sample: Telemetry) -> None:
                await asyncio.sleep(0)
                awaited.append(sample.sample_no)
                if len(awaited) == 5:
                    raise ValueError("a coroutine listener failed")

            remove = client.add_telemetry_listener(slow)  # from here on: the dispatch task
            while len(awaited) < 20:
                await asyncio.sleep(0.01)
            remove()
            mark = len(plain)
            while len(plain) < mark + 20:  # back on the reader-callback path
                await asyncio.sleep(0.01)

    run(main, caplog)
    assert plain == list(range(plain[0], plain[0] + len(plain)))  # once each, in order, across both paths
    assert awaited == list(range(awaited[0], awaited[0] + len(awaited)))
    assert [str(e) for e in errors if isinstance(e, ValueError)] == ["a coroutine listener failed"]
