"""One behaviour suite over both drivers of the client core: the threaded ``DeviceClient`` and the asyncio
``AsyncDeviceClient``, against the hostile-device kit (a scriptable fake device on a real pty).

The asyncio client runs on a loop in a thread of its own; the test calls it through a small blocking
facade (``run_coroutine_threadsafe``), so the same test body serves both."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hostile import HostileDevice, lying_identity, wait_until

from iontodrive.aio import AsyncDeviceClient
from iontodrive.client import DeviceClient
from iontodrive.clientcore import FETCH_BATCH, MAX_GAP_REQUESTS
from iontodrive.errors import EventsLostError, LinkTimeoutError, RemoteProtocolError
from iontodrive.protocol import Event, EventCode, FetchEvents, Heartbeat, Message, StatusReport, Stop

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX pseudo-terminals")

T = TypeVar("T")
OPTIONS: dict[str, Any] = {"timeout_s": 0.1, "retries": 1}


class AsyncFacade:
    """The asyncio client, driven from the test thread through its own loop thread."""

    def __init__(self, url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()
        self.client: AsyncDeviceClient = self._run(AsyncDeviceClient.open(url, **options))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def _on_loop(self, function: Callable[[], T]) -> T:
        async def call() -> T:
            return function()

        return self._run(call())

    def request(self, message: Message) -> Message:
        return self._run(self.client.request(message))

    def status(self) -> StatusReport:
        return self._run(self.client.status())

    def add_event_listener(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        return self._on_loop(lambda: self.client.add_event_listener(callback))

    def add_error_listener(self, callback: Callable[[BaseException], None]) -> Callable[[], None]:
        return self._on_loop(lambda: self.client.add_error_listener(callback))

    def gate_heartbeats(self, is_live: Callable[[], bool]) -> Callable[[], None]:
        return self._on_loop(lambda: self.client.gate_heartbeats(is_live))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def close(self) -> None:
        self._run(self.client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def open_threads(url: str, **options: Any) -> Any:
    return DeviceClient.open(url, **options)


OPENERS: dict[str, Callable[..., Any]] = {"threads": open_threads, "asyncio": AsyncFacade}


@pytest.fixture
def device() -> Iterator[HostileDevice]:
    with HostileDevice() as dev:
        yield dev


@pytest.fixture(params=list(OPENERS))
def opener(request: pytest.FixtureRequest) -> Callable[..., Any]:
    return OPENERS[request.param]


def test_an_ack_naming_another_request_is_not_accepted(device: HostileDevice, opener: Any) -> None:
    client = opener(device.url, **OPTIONS)
    try:
        device.ack_as(Stop, Heartbeat)
        with pytest.raises(RemoteProtocolError, match=r"Stop .* naming Heartbeat"):
            client.request(Stop())
        assert client.stats.bad_replies == 1
        assert client.status().state.name == "IDLE"  # the client carries on
    finally:
        client.close()


def test_a_silent_device_with_live_telemetry_times_out_in_bounded_time(
    device: HostileDevice, opener: Any
) -> None:
    client = opener(device.url, **OPTIONS)
    try:
        device.start_telemetry(1000)
        device.drop_replies()
        started = time.monotonic()
        with pytest.raises(LinkTimeoutError):
            client.status()
        assert time.monotonic() - started < 0.2 + 0.5  # two attempts of 0.1 s, with slack
        assert wait_until(lambda: client.stats.telemetry_received > 50)  # telemetry kept flowing
        device.answer_again()
        assert client.status().state.name == "IDLE"
    finally:
        client.close()


def test_a_lost_event_is_fetched_and_delivered_once_in_order(device: HostileDevice, opener: Any) -> None:
    client = opener(device.url, **OPTIONS)
    try:
        seen: list[int] = []
        client.add_event_listener(lambda e: seen.append(e.event_no))
        lost = device.emit_event(EventCode.STATE_CHANGED, live=False)  # lost on the wire: a gap
        after = device.emit_event(EventCode.STATE_CHANGED)  # reveals it
        assert wait_until(lambda: after.event_no in seen)
        assert seen[-2:] == [lost.event_no, after.event_no]
        assert len(device.requests_of(FetchEvents)) >= 1
    finally:
        client.close()


def test_an_event_number_jump_is_bounded_and_reported(device: HostileDevice, opener: Any) -> None:
    client = opener(device.url, timeout_s=0.25, retries=1)
    try:
        seen: list[int] = []
        errors: list[BaseException] = []
        client.add_event_listener(lambda e: seen.append(e.event_no))
        client.add_error_listener(errors.append)
        device.bottomless_ring()
        device.jump_event_numbers(4_000_000_000)
        device.emit_event(EventCode.STATE_CHANGED)
        assert wait_until(lambda: 4_000_000_000 in seen, timeout_s=10.0)
        assert len(device.requests_of(FetchEvents)) <= MAX_GAP_REQUESTS
        assert len(seen) <= 1 + MAX_GAP_REQUESTS * FETCH_BATCH
        assert wait_until(lambda: any(isinstance(e, EventsLostError) for e in errors))
        assert client.stats.events_lost > 3_999_000_000
    finally:
        client.close()


def test_a_gate_that_says_no_stops_the_heartbeats(device: HostileDevice, opener: Any) -> None:
    client = opener(device.url, heartbeat_s=0.05, **OPTIONS)
    try:
        device.start_telemetry(100)
        assert wait_until(lambda: len(device.requests_of(Heartbeat)) >= 3)  # idle: heartbeats flow
        live = [True]
        client.gate_heartbeats(lambda: live[0])
        live[0] = False
        assert wait_until(lambda: "not live" in (client.heartbeat_withheld or ""))
        count = len(device.requests_of(Heartbeat))
        assert not wait_until(lambda: len(device.requests_of(Heartbeat)) > count, timeout_s=0.4)
        live[0] = True
        assert wait_until(lambda: len(device.requests_of(Heartbeat)) > count)  # the controller is back
    finally:
        client.close()


def test_a_lying_identity_is_what_the_client_reads(opener: Any) -> None:
    liar = lying_identity(max_current_ua=1_000_000)
    with HostileDevice(identity=liar) as device:
        client = opener(device.url, **OPTIONS)
        try:
            assert client.identity.max_current_ua == 1_000_000  # the client reports; ceilings judge (13)
        finally:
            client.close()
