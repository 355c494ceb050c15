"""The device client against a scripted peer: matching, retries, deadlines, refusals, threads, events."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from peer import IDENTITY, ScriptedPeer

from iontodrive.client import DeviceClient
from iontodrive.errors import (
    DeviceRefusal,
    IncompatibleDeviceError,
    LinkClosedError,
    LinkTimeoutError,
    LocalProtocolError,
)
from iontodrive.protocol import (
    Ack,
    ConfigureTelemetry,
    DeviceState,
    ErrorCode,
    Event,
    EventCode,
    FetchEvents,
    Field,
    GetStatus,
    Heartbeat,
    Identify,
    Message,
    Nack,
    Polarity,
    SetWatchdog,
    StatusFlags,
    Telemetry,
    encode,
)


@pytest.fixture
def peer() -> Iterator[ScriptedPeer]:
    p = ScriptedPeer()
    yield p
    p.close()


def open_client(peer: ScriptedPeer, **options: object) -> DeviceClient:
    return DeviceClient.open(peer.url, timeout_s=0.1, retries=2, **options)  # type: ignore[arg-type]


def telemetry(sample_no: int) -> bytes:
    return encode(
        Telemetry(
            sample_no,
            sample_no,
            DeviceState.HOLD,
            StatusFlags.OUTPUT_ON,
            Polarity.CATHODE,
            4000,
            4000,
            20000,
            5000,
            0,
        )
    )


def test_open_identifies_and_sets_the_watchdog(peer: ScriptedPeer) -> None:
    with open_client(peer, watchdog_ms=3000) as client:
        assert client.identity == IDENTITY
        watchdogs = [m for _, m in peer.requests_of(SetWatchdog)]
        assert watchdogs == [SetWatchdog(3000)]


def test_open_refuses_an_incompatible_protocol_version(peer: ScriptedPeer) -> None:
    import dataclasses

    def handler(p: ScriptedPeer, seq: int, request: Message) -> list[bytes] | None:
        if isinstance(request, Identify):
            return [encode(dataclasses.replace(IDENTITY, protocol_version=9), seq)]
        return None

    peer.handler = handler
    with pytest.raises(IncompatibleDeviceError, match="version 9"):
        open_client(peer)


def test_a_dropped_request_is_retried_with_the_same_sequence_number(peer: ScriptedPeer) -> None:
    client = open_client(peer)
    dropped: list[int] = []

    def handler(p: ScriptedPeer, seq: int, request: Message) -> list[bytes] | None:
        if isinstance(request, GetStatus) and not dropped:
            dropped.append(seq)
            return []  # swallow the first attempt
        return None

    peer.handler = handler
    try:
        client.status()
        attempts = [seq for seq, _ in peer.requests_of(GetStatus)]
        assert attempts[-2:] == [dropped[0], dropped[0]]
        assert client.stats.retries >= 1
    finally:
        client.close()


def test_a_silent_device_raises_link_timeout_within_the_deadline(peer: ScriptedPeer) -> None:
    client = open_client(peer)
    peer.handler = lambda p, seq, request: [] if isinstance(request, GetStatus) else None
    before = len(peer.requests_of(GetStatus))
    try:
        started = time.monotonic()
        with pytest.raises(LinkTimeoutError) as caught:
            client.status()
        elapsed = time.monotonic() - started
        assert caught.value.attempts == 3
        assert 0.25 <= elapsed < 1.0  # three attempts of 0.1 s each, never a hang
        attempts = peer.requests_of(GetStatus)[before:]
        assert len(attempts) == 3
        assert len({seq for seq, _ in attempts}) == 1
    finally:
        client.close()


def test_a_nack_becomes_a_device_refusal_naming_the_field(peer: ScriptedPeer) -> None:
    client = open_client(peer)

    def handler(p: ScriptedPeer, seq: int, request: Message) -> list[bytes] | None:
        if isinstance(request, ConfigureTelemetry):
            return [
                encode(
                    Nack(int(request.TYPE), ErrorCode.OUT_OF_RANGE, Field.RATE_HZ, request.rate_hz, 0, 5000),
                    seq,
                )
            ]
        return None

    peer.handler = handler
    try:
        with pytest.raises(DeviceRefusal, match=r"rate_hz = 9000, allowed \[0, 5000\]") as caught:
            client.configure_telemetry(9000)
        assert caught.value.code is ErrorCode.OUT_OF_RANGE
        assert caught.value.field is Field.RATE_HZ
    finally:
        client.close()


def test_an_unencodable_request_is_a_local_protocol_error_and_sends_nothing(peer: ScriptedPeer) -> None:
    with open_client(peer) as client:
        before = len(peer.received)
        with pytest.raises(LocalProtocolError, match="rate_hz"):
            client.configure_telemetry(70000)
        assert len(peer.received) == before


def test_a_duplicate_answer_is_ignored(peer: ScriptedPeer) -> None:
    def handler(p: ScriptedPeer, seq: int, request: Message) -> list[bytes] | None:
        if isinstance(request, Heartbeat):
            ack = encode(Ack(int(request.TYPE)), seq)
            return [ack, ack]
        return None

    peer.handler = handler
    with open_client(peer) as client:
        client.heartbeat()
        assert client.status().state is DeviceState.IDLE


def test_many_threads_share_one_client(peer: ScriptedPeer) -> None:
    results: list[object] = []
    errors: list[BaseException] = []
    with open_client(peer) as client:

        def work() -> None:
            try:
                for _ in range(20):
                    results.append(client.status().state)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert errors == []
    assert results == [DeviceState.IDLE] * 160


def test_telemetry_reaches_listeners_and_subscriptions_and_counts_gaps(peer: ScriptedPeer) -> None:
    with open_client(peer) as client:
        seen: list[int] = []
        client.add_telemetry_listener(lambda t: seen.append(t.sample_no))
        sub = client.subscribe_telemetry()
        for n in (1, 2, 3, 6):
            peer.send_raw(telemetry(n))
        got = [sub.get(timeout=2.0) for _ in range(4)]
        assert [t.sample_no for t in got if t is not None] == [1, 2, 3, 6]
        deadline = time.monotonic() + 2
        while len(seen) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [1, 2, 3, 6]
        assert client.stats.telemetry_lost == 2


def test_a_gap_in_event_numbers_is_fetched_and_delivered_in_order(peer: ScriptedPeer) -> None:
    with open_client(peer) as client:
        delivered: list[int] = []
        done = threading.Event()

        def on_event(event: Event) -> None:
            delivered.append(event.event_no)
            if event.event_no == 4:
                done.set()

        client.add_event_listener(on_event)
        for n in range(1, 5):
            peer.emit_event(n)
        peer.send_raw(encode(peer.events[0]))  # event 1 arrives live
        peer.send_raw(encode(peer.events[3]))  # event 4 arrives live: 2 and 3 were lost on the wire
        started = time.monotonic()
        assert done.wait(3.0)
        assert time.monotonic() - started < client.timeout_s  # the fill did not sit out a deadline
        deadline = time.monotonic() + 2
        while len(delivered) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert delivered == [1, 2, 3, 4]  # the missed ones before the live one that revealed the gap
        assert len(delivered) == 4  # each exactly once


def test_a_listener_exception_reaches_error_listeners_and_does_not_stop_dispatch(peer: ScriptedPeer) -> None:
    with open_client(peer) as client:
        errors: list[BaseException] = []
        seen: list[int] = []

        def bad(sample: Telemetry) -> None:
            if sample.sample_no == 1:
                raise RuntimeError("listener bug")
            seen.append(sample.sample_no)

        client.add_telemetry_listener(bad)
        client.add_error_listener(errors.append)
        peer.send_raw(telemetry(1))
        peer.send_raw(telemetry(2))
        deadline = time.monotonic() + 2
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [2]
        assert [str(e) for e in errors] == ["listener bug"]


def test_a_dead_link_is_reported_on_the_next_call_in_any_thread(peer: ScriptedPeer) -> None:
    client = open_client(peer)
    errors: list[BaseException] = []
    client.add_error_listener(errors.append)
    peer.close()
    deadline = time.monotonic() + 3
    while client.failure is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.failure is not None
    with pytest.raises(LinkClosedError):
        client.status()
    while not errors and time.monotonic() < deadline:  # delivered by the dispatcher thread
        time.sleep(0.01)
    assert errors and isinstance(errors[0], LinkClosedError)
    client.close()


def test_heartbeats_keep_flowing_while_idle(peer: ScriptedPeer) -> None:
    with open_client(peer, heartbeat_s=0.05):
        time.sleep(0.4)
        assert len(peer.requests_of(Heartbeat)) >= 3


def test_open_fails_cleanly_on_an_unreachable_port() -> None:
    with pytest.raises(LinkClosedError, match="cannot open"):
        DeviceClient.open("socket://127.0.0.1:1", timeout_s=0.05, retries=0)


def test_event_numbering_restart_after_power_on_is_not_a_gap(peer: ScriptedPeer) -> None:
    with open_client(peer) as client:
        delivered: list[tuple[int, EventCode]] = []
        client.add_event_listener(lambda e: delivered.append((e.event_no, e.code)))
        peer.send_raw(encode(Event(1, 0, EventCode.POWER_ON, DeviceState.IDLE, 0, False)))
        deadline = time.monotonic() + 2
        while not delivered and time.monotonic() < deadline:
            time.sleep(0.01)
        assert delivered == [(1, EventCode.POWER_ON)]
        assert peer.requests_of(FetchEvents) == []  # a restart is not a gap: nothing to fetch


def test_the_session_aborts_when_the_device_reports_over_current_without_tripping(
    peer: ScriptedPeer, tmp_path: Path
) -> None:
    """S9 enforced again by the driver: a device that keeps delivering 20 % over its set-point is aborted."""
    from iontodrive import Prescription, Stimulator
    from iontodrive.protocol import Abort, CheckContact, ContactReport, ContactVerdict

    def handler(p: ScriptedPeer, seq: int, request: Message) -> list[bytes] | None:
        if isinstance(request, CheckContact):
            return [encode(ContactReport(3000, ContactVerdict.OK, 200, 10000, 50), seq)]
        return None

    peer.handler = handler
    with Stimulator.open(peer.url, timeout_s=0.2, retries=2) as stim:
        session = stim.start(
            Prescription(current_ma=2.0, dose_ma_min=20.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode"),
            record_path=tmp_path / "r.jsonl",
        )
        for n in range(1, 6):  # measured 2400 uA against a 2000 uA set-point, no trip from the device
            peer.send_raw(
                encode(
                    Telemetry(
                        n,
                        n * 100,
                        DeviceState.HOLD,
                        StatusFlags.OUTPUT_ON,
                        Polarity.CATHODE,
                        2000,
                        2400,
                        9000,
                        3750,
                        n,
                    )
                )
            )
        deadline = time.monotonic() + 3
        while not peer.requests_of(Abort) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert peer.requests_of(Abort), "the driver did not abort an over-current the device ignored"
        assert session.outcome is None or session.outcome.value == "aborted"
