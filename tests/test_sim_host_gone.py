"""A reply cache never outlives its host: every transport ends the host session when its host goes.

Protocol v2 (docs/protocol.md §7.3, S17): the device's memory of answers belongs to one host session. A
host that vanishes (TCP close, the last close of a pty, an unplug) must leave nothing a later host could be
answered from. Each test lets a first host send ``SetWatchdog(1000)`` with sequence number 5, then change
the watchdog to 3000 ms, and go away; a second host sends the very same bytes (number 5, same content,
no ``OpenSession``). Answered from the first host's cache it would change nothing (3000 ms stays); with
the host session ended it runs (1000 ms). The runner's hook is observed through an event, not a sleep.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import tty
from collections.abc import Callable

import pytest

from firmware_sim import Device, DeviceRunner
from firmware_sim.bridge_pty import PtyTransport
from firmware_sim.bridge_tcp import TcpTransport
from firmware_sim.host_presence import HostPresence, watch_host
from firmware_sim.wired import WiredTransport
from iontodrive.protocol import Ack, Decoder, Frame, SetWatchdog, encode

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX pseudo-terminals")

FIRST = encode(SetWatchdog(1000), 5)
SECOND = encode(SetWatchdog(3000), 6)
WAIT_S = 5.0


def _runner_with_event(device: Device, transport: object) -> tuple[DeviceRunner, threading.Event]:
    runner = DeviceRunner(device, transport)  # type: ignore[arg-type]
    gone = threading.Event()
    original = runner._host_gone

    def observed() -> None:
        original()
        gone.set()

    runner._host_gone = observed  # type: ignore[method-assign]
    return runner, gone


def _replies(read: Callable[[], bytes], want: int) -> list[Ack]:
    decoder = Decoder()
    found: list[Ack] = []
    while len(found) < want:
        data = read()
        assert data, "the simulator stopped answering"
        found += [
            i.message for i in decoder.feed(data) if isinstance(i, Frame) and isinstance(i.message, Ack)
        ]
    return found


def _watchdog_ms(runner: DeviceRunner) -> int:
    return int(runner.call(lambda d: d.firmware.watchdog_ms))


def test_tcp_close_ends_the_host_session() -> None:
    device = Device(seed=1)
    transport = TcpTransport()
    runner, gone = _runner_with_event(device, transport)
    with runner:
        with socket.create_connection(("127.0.0.1", transport.port), timeout=WAIT_S) as first:
            first.sendall(FIRST)
            _replies(lambda: first.recv(4096), 1)
            first.sendall(SECOND)
            _replies(lambda: first.recv(4096), 1)
            assert _watchdog_ms(runner) == 3000
        assert gone.wait(WAIT_S), "the runner was never told that the host went away"
        with socket.create_connection(("127.0.0.1", transport.port), timeout=WAIT_S) as second:
            second.sendall(FIRST)  # number 5 again, same bytes: a retry only within the same host session
            _replies(lambda: second.recv(4096), 1)
            assert _watchdog_ms(runner) == 1000  # ran afresh: not answered from the first host's cache


@posix_only
@pytest.mark.parametrize("how", ["last close", "unplug"])
def test_pty_close_or_unplug_ends_the_host_session(how: str, tmp_path: object) -> None:
    device = Device(seed=1)
    link = os.path.join(str(tmp_path), "stim")
    pty = PtyTransport(link_path=link)
    transport = WiredTransport(pty)  # the runner's hook reaches the wrapped transport
    runner, gone = _runner_with_event(device, transport)
    with runner:
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)

        def read() -> bytes:
            ready, _, _ = select.select([fd], [], [], WAIT_S)
            return os.read(fd, 4096) if ready else b""

        try:
            os.write(fd, FIRST)
            _replies(read, 1)
            os.write(fd, SECOND)
            _replies(read, 1)
            assert _watchdog_ms(runner) == 3000
            if how == "unplug":
                runner.call(lambda _d: transport.unplug())
                assert gone.wait(WAIT_S)
                runner.call(lambda _d: transport.replug())
        finally:
            os.close(fd)
        assert gone.wait(WAIT_S), "the runner was never told that the host went away"
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        try:
            os.write(fd, FIRST)
            _replies(read, 1)
            assert _watchdog_ms(runner) == 1000
        finally:
            os.close(fd)


def test_watch_host_reaches_wrapped_transports_and_unwatches() -> None:
    class Inner(HostPresence):
        pass

    class Outer:
        def __init__(self, inner: object) -> None:
            self.inner = inner

    inner = Inner()
    calls: list[int] = []
    unwatch = watch_host(Outer(Outer(inner)), lambda: calls.append(1))
    inner._host_gone()
    unwatch()
    inner._host_gone()
    assert calls == [1]
