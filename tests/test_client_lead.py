"""Who reads the link: requesting threads read their own replies over a pty (the "lead"), the reader thread
reads telemetry and events between requests, and nothing is lost, reordered or left hanging either way.

The simulator runs in-process on a real pseudo-terminal (:class:`firmware_sim.bridge_pty.PtyTransport`
with a :class:`firmware_sim.runner.DeviceRunner`), so the client takes the same path as with hardware.
"""

from __future__ import annotations

import inspect
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from interrupts import interrupt_at, lines_of

from firmware_sim import Device
from firmware_sim.bridge_pty import PtyTransport
from firmware_sim.runner import DeviceRunner
from iontodrive import client as client_module
from iontodrive.client import DeviceClient
from iontodrive.errors import LinkClosedError, LinkTimeoutError
from iontodrive.protocol import DeviceState, GetStatus, StatusReport, Telemetry

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX pseudo-terminals")


class PtyDevice:
    def __init__(self, telemetry_hz: int = 0) -> None:
        self.device = Device("clinic-4", telemetry_hz=telemetry_hz)
        self.transport = PtyTransport()
        self.runner = DeviceRunner(self.device, self.transport).start()
        self.path = self.transport.path

    def close(self) -> None:
        if self.runner.alive:
            self.runner.stop()
        self.transport.close()


@pytest.fixture
def pty_device() -> Iterator[PtyDevice]:
    sim = PtyDevice()
    yield sim
    sim.close()


def test_a_requesting_thread_reads_its_own_reply(pty_device: PtyDevice) -> None:
    with DeviceClient.open(pty_device.path, telemetry_hz=0) as stim:
        assert stim.link.interruptible
        before = stim.stats.caller_reads
        for _ in range(50):
            assert stim.status().state is DeviceState.IDLE
        assert stim.stats.caller_reads - before >= 45  # the odd one may be read by the reader thread
        assert stim.stats.timeouts == 0 and stim.stats.retries == 0


def test_many_threads_get_their_own_replies_while_telemetry_streams() -> None:
    sim = PtyDevice(telemetry_hz=1000)
    try:
        with DeviceClient.open(sim.path, telemetry_hz=1000) as stim:
            samples = stim.subscribe_telemetry()
            errors: list[BaseException] = []
            watchdogs: list[int] = []

            def worker(k: int) -> None:
                try:
                    for i in range(100):
                        if i % 10 == k % 10:  # a request with a reply that is checkably ours
                            watchdog_ms = 1000 + 100 * k + i
                            stim.set_watchdog(watchdog_ms)
                            watchdogs.append(watchdog_ms)
                        assert stim.status().state is DeviceState.IDLE
                        assert stim.identify().model == "clinic-4"
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
            assert len(watchdogs) == 8 * 10
            assert stim.stats.timeouts == 0
            got = []
            deadline = time.monotonic() + 5.0
            while len(got) <= 100 and time.monotonic() < deadline:  # telemetry still streams at 1 kHz
                if (sample := samples.get(timeout=0.05)) is not None:
                    got.append(sample)
            while (sample := samples.get(timeout=0.0)) is not None:
                got.append(sample)
            assert len(got) > 100
            assert all(isinstance(s, Telemetry) for s in got)
            numbers = [s.sample_no for s in got]
            assert numbers == sorted(numbers)  # decoded in order, whichever thread read them
            assert stim.stats.telemetry_lost == 0 and stim.stats.telemetry_gaps == 0
    finally:
        sim.close()


def test_telemetry_keeps_arriving_between_requests() -> None:
    sim = PtyDevice(telemetry_hz=200)
    try:
        with DeviceClient.open(sim.path, telemetry_hz=200) as stim:
            stim.status()  # a caller took the lead; the reader thread must take it back afterwards
            with stim.subscribe_telemetry() as samples:
                first = samples.get(timeout=1.0)
                assert first is not None
                deadline = time.monotonic() + 0.5
                count = 0
                while time.monotonic() < deadline:
                    if samples.get(timeout=0.1) is not None:
                        count += 1
                assert count >= 50  # about 100 in 0.5 s at 200 Hz, read by the reader thread alone
    finally:
        sim.close()


def ask_in_thread(stim: DeviceClient) -> tuple[threading.Thread, list[BaseException | object]]:
    """Start ``stim.status()`` in a thread; return once its request is on the wire (the thread then waits
    for the reply, reading the link itself). The list receives the reply or the exception."""
    outcome: list[BaseException | object] = []

    def ask() -> None:
        try:
            outcome.append(stim.status())
        except BaseException as exc:
            outcome.append(exc)

    sent_before = stim.stats.requests
    asker = threading.Thread(target=ask)
    asker.start()
    deadline = time.monotonic() + 5.0
    while stim.stats.requests == sent_before and time.monotonic() < deadline:
        time.sleep(0.001)
    assert stim.stats.requests > sent_before, "the request was never sent"
    return asker, outcome


def test_a_link_that_dies_while_a_caller_reads_raises_within_the_deadline(pty_device: PtyDevice) -> None:
    stim = DeviceClient.open(pty_device.path, telemetry_hz=0, watchdog_ms=None)
    try:
        pty_device.runner.stop()  # the device stops answering
        asker, outcome = ask_in_thread(stim)
        started = time.monotonic()
        pty_device.transport.close()  # the port goes away under it (EIO)
        asker.join(5)
        assert not asker.is_alive()
        assert time.monotonic() - started < stim.timeout_s * (stim.retries + 1)
        assert len(outcome) == 1 and isinstance(outcome[0], LinkClosedError)
        with pytest.raises(LinkClosedError):
            stim.status()  # the failure sticks, in any thread
    finally:
        stim.close()


def wait_until_the_reader_thread_reads(stim: DeviceClient) -> None:
    """Wait (up to 5 s) until another thread -- the reader thread, no request being made -- holds the lead."""
    deadline = time.monotonic() + 5.0
    while stim._lead.acquire(blocking=False):
        stim._lead.release()
        assert time.monotonic() < deadline, "the reader thread never took the lead"
        time.sleep(0.001)


def test_time_spent_waiting_for_the_lead_counts_against_the_deadline(
    pty_device: PtyDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that has to wait for the reader thread to hand over the lead has that much less time left
    for its reply: the deadline is the request's, not the read's."""
    stim = DeviceClient.open(
        pty_device.path, telemetry_hz=0, watchdog_ms=None, timeout_s=0.5, retries=0, read_timeout_s=0.4
    )
    try:
        pty_device.runner.stop()  # the device stops answering
        wait_until_the_reader_thread_reads(stim)  # the lease has run out: it holds the lead, reading
        # the reader thread is woken 0.3 s late, and then stays out of the way
        wake = stim.link.interrupt
        monkeypatch.setattr(stim.link, "interrupt", lambda: threading.Timer(0.3, wake).start())
        monkeypatch.setattr(client_module, "LEASE_S", 1.0)
        started = time.monotonic()
        with pytest.raises(LinkTimeoutError):
            stim.status()
        elapsed = time.monotonic() - started
    finally:
        stim.close()
    assert elapsed < 0.5 + 0.15, f"{elapsed:.3f} s for a 0.5 s deadline"


def test_closing_the_client_releases_a_caller_waiting_with_the_lead(pty_device: PtyDevice) -> None:
    stim = DeviceClient.open(pty_device.path, telemetry_hz=0, watchdog_ms=None, timeout_s=5.0, retries=0)
    pty_device.runner.stop()
    asker, outcome = ask_in_thread(stim)
    started = time.monotonic()
    stim.close()
    asker.join(5)
    assert time.monotonic() - started < 1.0  # not the 5 s deadline
    assert len(outcome) == 1 and isinstance(outcome[0], LinkClosedError)


def _lines_after_the_lead_is_taken() -> list[int]:
    """Line numbers of DeviceClient._await_reply from the first acquire of the lead to its end."""
    from iontodrive.client import DeviceClient

    code = DeviceClient._await_reply.__code__
    lines = lines_of(code)
    source = inspect.getsource(DeviceClient._await_reply).splitlines()
    first = code.co_firstlineno
    taken = min(first + i for i, text in enumerate(source) if "lead.acquire(" in text)
    return [line for line in lines if line >= taken]


def test_an_interrupt_anywhere_after_the_lead_is_taken_leaves_the_link_usable(pty_device: PtyDevice) -> None:
    """Ctrl-C and SIGTERM (raised in the main thread wherever it is) must never leave the link unusable: a
    KeyboardInterrupt is raised, by a trace hook, at each line of the request's read path in turn; every
    time the next request from that thread is answered, and then the lead is free for other threads."""
    from iontodrive.client import DeviceClient

    code = DeviceClient._await_reply.__code__
    with DeviceClient.open(pty_device.path, telemetry_hz=0) as stim:
        for line in _lines_after_the_lead_is_taken():
            sys.settrace(interrupt_at(code, line))
            try:
                stim.status()
            except KeyboardInterrupt:
                pass
            finally:
                sys.settrace(None)
            try:
                reply = stim.request(GetStatus(), timeout_s=0.5, retries=0)
            except Exception as exc:
                raise AssertionError(f"interrupted at line {line}: {exc!r}") from exc
            assert isinstance(reply, StatusReport), f"interrupted at line {line}"
            taken_elsewhere: list[bool] = []

            def try_lead(out: list[bool] = taken_elsewhere) -> None:  # another thread, as the reader would
                got = stim._lead.acquire(timeout=0.5)
                out.append(got)
                if got:
                    stim._lead.release()

            helper = threading.Thread(target=try_lead)
            helper.start()
            helper.join()
            assert taken_elsewhere == [True], f"lead kept after an interrupt at line {line}"
