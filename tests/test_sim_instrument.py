"""The simulator as a bench instrument: one host at a time (TCP and pty), access beyond loopback, unplug and
replug under a stable path with the firmware running, the control API (Python and HTTP).

Issue 13 finding 7 and issue 19 items 2 and 4. The TCP, pty-exclusivity and remote-listen tests fail on
4013fbb (a second client replaced the first; a second open of the pty succeeded; ``--tcp 0.0.0.0:0``
listened without a word).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hostile import wait_for

from firmware_sim import Device, DeviceRunner, TraceRecorder
from firmware_sim.bridge_tcp import RemoteListenRefused, TcpTransport
from firmware_sim.control import ControlError, SimController
from firmware_sim.streams import MemoryTransport
from firmware_sim.wired import WiredTransport
from iontodrive.protocol import (
    Decoder,
    DeviceState,
    EventCode,
    Frame,
    GetStatus,
    Heartbeat,
    Polarity,
    SetCurrent,
    Start,
    StatusFlags,
    StatusReport,
    encode,
)

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX pseudo-terminals")
S = DeviceState


class SocketHost:
    """A protocol-level host on a socket (the driver is not needed to see what the device does)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = Decoder()
        self.seq = 0
        self.frames: list[Frame] = []

    def request(self, message: Any, timeout_s: float = 3.0) -> Any:
        self.seq += 1
        self.sock.sendall(encode(message, self.seq))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the simulator")
            for item in self.decoder.feed(data):
                if isinstance(item, Frame):
                    self.frames.append(item)
                    if item.seq == self.seq:
                        return item.message
        raise TimeoutError(f"no reply to {message!r}")


def closed_on_us(sock: socket.socket) -> bool:
    """True once the simulator has closed ``sock`` (EOF, or a reset when our bytes were unread)."""
    sock.settimeout(3.0)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


START_2MA = Start(2000, 0, 600_000, 5000, 5000, Polarity.CATHODE)


@pytest.fixture
def tcp_sim() -> Iterator[tuple[TcpTransport, DeviceRunner]]:
    recorder = TraceRecorder()
    device = Device("clinic-4", seed=3, trace=recorder)
    tcp = TcpTransport("127.0.0.1", 0)
    runner = DeviceRunner(device, tcp, speed=20.0).start()
    runner.trace = recorder  # type: ignore[attr-defined]
    try:
        yield tcp, runner
    finally:
        runner.stop()
        tcp.close()
        device.close()


# ----------------------------------------------------------------------------- one host at a time (TCP)


def test_tcp_refuses_a_second_client_and_the_first_keeps_its_session(
    tcp_sim: tuple[TcpTransport, DeviceRunner],
) -> None:
    tcp, runner = tcp_sim
    first = SocketHost(socket.create_connection(("127.0.0.1", tcp.port)))
    assert isinstance(first.request(START_2MA), object)
    wait_for(lambda: runner.call(lambda d: d.state) is S.HOLD, what="HOLD")
    intruder = socket.create_connection(("127.0.0.1", tcp.port))
    intruder.settimeout(3.0)
    intruder.sendall(encode(SetCurrent(4000, 5000), 1))  # would raise the current if it were heard
    assert closed_on_us(intruder)  # refused: closed at once, nothing answered
    wait_for(lambda: tcp.refused_clients == 1, what="the refusal")
    for _ in range(5):  # the first host is still the one the device hears
        status = first.request(GetStatus())
        assert isinstance(status, StatusReport)
        assert status.target_current_ua == 2000
        first.request(Heartbeat())
    assert tcp.connects == 1
    assert runner.call(lambda d: d.state) is S.HOLD
    first.sock.close()


def test_tcp_serves_the_next_client_once_the_first_has_gone(
    tcp_sim: tuple[TcpTransport, DeviceRunner],
) -> None:
    tcp, _runner = tcp_sim
    first = SocketHost(socket.create_connection(("127.0.0.1", tcp.port)))
    first.request(GetStatus())
    first.sock.close()
    wait_for(lambda: not tcp.connected, what="the first client gone")
    second = SocketHost(socket.create_connection(("127.0.0.1", tcp.port)))
    assert isinstance(second.request(GetStatus()), StatusReport)
    assert tcp.refused_clients == 0
    second.sock.close()


def test_tcp_beyond_loopback_needs_the_flag_and_a_token() -> None:
    with pytest.raises(RemoteListenRefused, match="--allow-remote and a --token"):
        TcpTransport("0.0.0.0", 0)
    with pytest.raises(RemoteListenRefused, match="a --token"):
        TcpTransport("0.0.0.0", 0, allow_remote=True)
    with pytest.raises(RemoteListenRefused, match="--allow-remote"):
        TcpTransport("0.0.0.0", 0, token="s3cret")
    TcpTransport("localhost", 0).close()  # loopback needs nothing


def test_cli_refuses_tcp_on_every_interface_without_flag_and_token() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "firmware_sim", "--tcp", "0.0.0.0:0", "--run-for", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "IONTODRIVE_SIM_TOKEN": ""},
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "beyond loopback" in proc.stderr and "PORT" not in proc.stdout


def test_a_token_is_asked_of_every_tcp_client() -> None:
    device = Device("clinic-4", seed=1)
    tcp = TcpTransport("0.0.0.0", 0, token="s3cret", allow_remote=True)
    with DeviceRunner(device, tcp, speed=1.0):
        wrong = socket.create_connection(("127.0.0.1", tcp.port))
        wrong.sendall(b"guess\n" + encode(GetStatus(), 1))
        assert closed_on_us(wrong)
        wait_for(lambda: tcp.rejected_tokens == 1, what="the rejection")
        right = SocketHost(socket.create_connection(("127.0.0.1", tcp.port)))
        right.sock.sendall(b"s3cret\n")
        assert isinstance(right.request(GetStatus()), StatusReport)
        right.sock.close()
    tcp.close()
    device.close()
    local = TcpTransport("127.0.0.1", 0, token="s3cret")  # on loopback the token is not asked for
    with DeviceRunner(Device("clinic-4", seed=1), local, speed=1.0) as runner:
        plain = SocketHost(socket.create_connection(("127.0.0.1", local.port)))
        assert isinstance(plain.request(GetStatus()), StatusReport)
        plain.sock.close()
    local.close()
    runner.device.close()


# ------------------------------------------------------------------------------ one host at a time (pty)


@posix_only
def test_the_pty_refuses_a_second_open_while_a_host_has_it(tmp_path: Path) -> None:
    from firmware_sim.bridge_pty import PtyTransport

    device = Device("clinic-4", seed=1)
    pty = PtyTransport(link_path=str(tmp_path / "sim-port"))
    os.chmod(pty.path, 0o666)  # so that an unprivileged second opener is refused by the flag, not the mode
    probe = (
        "import os, sys\n"
        "if os.geteuid() == 0: os.setuid(65534)\n"
        "try:\n    os.close(os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)); print('opened')\n"
        "except OSError as e:\n    print('refused', e.errno)\n"
    )

    def second_open() -> str:
        return subprocess.run(
            [sys.executable, "-c", probe, pty.path], capture_output=True, text=True, timeout=30
        ).stdout.strip()

    with DeviceRunner(device, pty, speed=1.0):
        host = os.open(pty.stable_path, os.O_RDWR | os.O_NOCTTY)
        wait_for(lambda: pty.connected, what="the host seen")
        assert second_open() == "refused 16"  # EBUSY, as a serial port held by another program
        os.close(host)
        wait_for(lambda: not pty.connected, what="the host gone")
        assert second_open() == "opened"  # free again for the next host
    pty.close()
    device.close()


# ------------------------------------------------------------------------------------- unplug / replug


@posix_only
def test_unplug_gives_the_driver_a_typed_link_error_and_the_firmware_pauses_then_replug_keeps_the_path(
    tmp_path: Path,
) -> None:
    from firmware_sim.bridge_pty import PtyTransport
    from iontodrive import Prescription, Stimulator
    from iontodrive.errors import LinkError

    recorder = TraceRecorder()
    device = Device("clinic-4", seed=2, trace=recorder)
    link = tmp_path / "by-id" / "usb-iontodrive_sim-if00"
    link.parent.mkdir()
    pty = PtyTransport(link_path=str(link))
    transport = WiredTransport(pty)
    runner = DeviceRunner(device, transport, speed=10.0).start()
    control = SimController(runner, transport)
    try:
        stim = Stimulator.open(str(link))
        rx = Prescription(current_ma=1.0, duration_s=300, ramp_up_s=5, ramp_down_s=5, polarity="cathode")
        session = stim.start(rx)
        wait_for(lambda: runner.call(lambda d: d.state) is S.HOLD, what="HOLD")
        unplugged_at = control.act("unplug")["at_s"]
        wait_for(lambda: not link.exists(), what="the path gone")
        with pytest.raises(LinkError):
            session.wait(timeout_s=30)
        stim.close()
        # the firmware kept running: its watchdog paused the session, the dose kept
        wait_for(lambda: runner.call(lambda d: d.state) is S.PAUSED, timeout_s=20, what="PAUSED")
        assert runner.call(lambda d: d.flags) & StatusFlags.LINK_LOST
        codes = [e.code for e in runner.call(lambda d: d.events)]
        assert EventCode.LINK_LOST in codes
        cols = runner.call(lambda d: dict(recorder.columns))
        after = cols["t_s"] >= unplugged_at
        output, setpoint = cols["output_ua"][after], cols["setpoint_ua"][after]
        assert output[0] > 900  # still flowing when the plug was pulled
        assert output[-1] < 1.0
        assert np.abs(np.diff(setpoint)).max() / device.dt <= 5000 * 1.001  # ramped, never stepped (S2)
        charge = runner.call(lambda d: d.charge_uas)
        control.act("replug")
        wait_for(lambda: link.exists(), what="the path back")
        assert os.path.realpath(link) == pty.path
        with Stimulator.open(str(link)) as again:
            status = again.status()
            assert status.state is S.PAUSED and abs(status.charge_uas - charge) <= 2
    finally:
        runner.stop()
        transport.close()
        device.close()


# ------------------------------------------------------------------------------------------ control API


@pytest.fixture
def memory_sim() -> Iterator[tuple[SimController, DeviceRunner]]:
    device = Device("clinic-4", seed=1)
    transport = WiredTransport(MemoryTransport())
    runner = DeviceRunner(device, transport, speed=50.0).start()
    try:
        yield SimController(runner, transport), runner
    finally:
        runner.stop()
        device.close()


def _start_session(runner: DeviceRunner) -> None:
    runner.call(lambda d: d.receive(encode(START_2MA, 1)))
    wait_for(lambda: runner.call(lambda d: d.state) is S.HOLD, what="HOLD")


def test_control_injects_a_lift_now_and_the_session_pauses(
    memory_sim: tuple[SimController, DeviceRunner],
) -> None:
    control, runner = memory_sim
    _start_session(runner)
    done = control.act("electrode_lift")
    assert done["action"] == "electrode_lift" and done["at_s"] > 0
    wait_for(lambda: runner.call(lambda d: d.state) is S.PAUSED, what="PAUSED")
    assert "ELECTRODE_LIFT" in control.snapshot()["alarms"]
    assert [e["code"] for e in control.events()].count("ELECTRODE_LIFT") == 1


def test_control_actions_happen_at_the_device_time_asked(
    memory_sim: tuple[SimController, DeviceRunner],
) -> None:
    control, runner = memory_sim
    now = control.snapshot()["t_s"]
    control.act("power_cut", {"at_s": now + 10.0})  # 10 device seconds = 0.2 s of wall time at speed 50
    assert control.snapshot()["boot_count"] == 1 and runner.scheduled == 1
    wait_for(lambda: control.snapshot()["boot_count"] == 2, what="the power cut")
    assert [e["code"] for e in control.events()] == ["POWER_ON"]
    t_cut = control.snapshot()["t_s"]
    assert now + 10.0 <= t_cut


def test_control_skin_change_reaches_the_plant(memory_sim: tuple[SimController, DeviceRunner]) -> None:
    control, runner = memory_sim
    _start_session(runner)
    before = control.snapshot()["voltage_mv"]
    control.act("skin", {"r_skin_kohm": 5.5})  # +35 % at once: below the lift detector's 50 % (S6)
    wait_for(lambda: control.snapshot()["voltage_mv"] > before * 1.15, what="the voltage to rise")
    assert control.snapshot()["state"] == "HOLD"


def test_host_silence_trips_the_watchdog_and_is_undone(
    memory_sim: tuple[SimController, DeviceRunner],
) -> None:
    control, _runner = memory_sim
    transport = control.transport
    assert transport is not None
    control.act("host_silence")
    wait_for(lambda: transport.host_silent, what="silence")
    inner = transport.inner
    assert isinstance(inner, MemoryTransport)
    inner.to_device.write(encode(GetStatus(), 5))
    wait_for(lambda: transport.silenced_bytes > 0, what="bytes silenced")
    control.act("host_heard")
    wait_for(lambda: not transport.host_silent, what="heard again")


@pytest.mark.parametrize(
    ("action", "params", "match"),
    [
        ("electrode_lift", {"duration_s": -1}, "duration_s"),
        ("electrode_lift", {"colour": 1}, "no parameter 'colour'"),
        ("link_faults", {"drop_rate": 2}, r"drop_rate = 2 is out of range: must be in \[0, 1\]"),
        ("skin", {}, "at least one"),
        ("power_cut", {"at_s": -5}, "at_s"),
        ("warp_drive", {}, "not known"),
    ],
)
def test_bad_control_requests_are_refused_by_name_and_change_nothing(
    memory_sim: tuple[SimController, DeviceRunner], action: str, params: dict[str, Any], match: str
) -> None:
    control, runner = memory_sim
    with pytest.raises(ControlError, match=match):
        control.act(action, params)
    assert runner.scheduled == 0 and control.log == [] and runner.call(lambda d: d.injected) == []


def test_http_api_is_a_shell_over_the_controller_and_guards_its_token(
    memory_sim: tuple[SimController, DeviceRunner],
) -> None:
    pytest.importorskip("aiohttp", reason="the control API needs aiohttp (pip install '.[sim]')")
    from firmware_sim.control_http import ControlServer

    control, runner = memory_sim
    with pytest.raises(RemoteListenRefused):
        ControlServer(control, "0.0.0.0", 0)
    with ControlServer(control, "127.0.0.1", 0, token="t0ken") as server:

        def call(path: str, body: dict[str, Any] | None = None, token: str | None = "t0ken") -> Any:
            req = urllib.request.Request(server.url + path, method="GET" if body is None else "POST")
            if body is not None:
                req.data = json.dumps(body).encode()
                req.add_header("Content-Type", "application/json")
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())

        with pytest.raises(urllib.error.HTTPError) as refused:
            call("api/status", token=None)
        assert refused.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as wrong:
            call("api/status", token="guess")
        assert wrong.value.code == 401
        assert call("api/status")["state"] == "IDLE"
        assert set(call("api/actions")) >= {"electrode_lift", "unplug", "replug", "power_cut", "skin"}
        _start_session(runner)
        assert call("api/act/electrode_lift", {})["action"] == "electrode_lift"
        wait_for(lambda: call("api/status")["state"] == "PAUSED", what="PAUSED over HTTP")
        with pytest.raises(urllib.error.HTTPError) as bad:
            call("api/act/short", {"resistance_ohm": -1})
        assert bad.value.code == 400 and "resistance_ohm" in json.loads(bad.value.read())["error"]
        assert any(e["code"] == "ELECTRODE_LIFT" for e in call("api/events?after=0"))
        assert call("api/log")[0]["action"] == "electrode_lift"
        form = urllib.request.Request(
            server.url + "api/act/power_cut?token=t0ken", data=b"x=1", method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as cross_site:  # what a form on another site could send
            urllib.request.urlopen(form, timeout=10)
        assert cross_site.value.code == 415 and control.snapshot()["boot_count"] == 1
    with ControlServer(control, "127.0.0.1", 0) as open_server:  # no token: loopback only
        rebound = urllib.request.Request(open_server.url + "api/status", headers={"Host": "evil.example:80"})
        with pytest.raises(urllib.error.HTTPError) as rebinding:
            urllib.request.urlopen(rebound, timeout=10)
        assert rebinding.value.code == 403
        with urllib.request.urlopen(open_server.url + "api/status", timeout=10) as ok:
            assert json.loads(ok.read())["state"] in ("IDLE", "PAUSED")


def test_sim_url_ports_carry_a_controller_and_an_optional_wire() -> None:
    import serial

    import firmware_sim

    firmware_sim.register_url_handler()
    port = serial.serial_for_url("sim://clinic-4?speed=50&baud=9600", timeout=0.5)
    try:
        control = getattr(port, "control", None)  # a sim:// port (the stubs type it as serial.Serial)
        assert isinstance(control, SimController)
        assert control.transport is not None and control.transport.wire is not None
        assert control.transport.wire.settings.baud == 9600
        assert control.act("power_cut")["action"] == "power_cut"
        wait_for(lambda: control.snapshot()["boot_count"] == 2, what="the power cut")
    finally:
        port.close()
    with pytest.raises(serial.SerialException, match="baud needs clock=wall"):
        serial.serial_for_url("sim://clinic-4?clock=virtual&baud=9600")
    with pytest.raises(serial.SerialException, match="baud"):
        serial.serial_for_url("sim://clinic-4?baud=3")


def test_the_simulator_imports_nothing_of_the_driver_above_the_protocol() -> None:
    import ast

    root = Path(__file__).parent.parent / "firmware_sim"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            offenders += [
                f"{path.name}: {n}"
                for n in names
                if n.startswith("iontodrive") and not n.startswith("iontodrive.protocol")
            ]
    assert offenders == []


def test_cli_wire_options() -> None:
    from firmware_sim.__main__ import build_parser, wire_settings

    def settings(*argv: str) -> Any:
        return wire_settings(build_parser().parse_args(list(argv)))

    assert settings("--pty") is None
    s = settings("--pty", "--baud", "9600", "--latency-timer")
    assert (s.baud, s.latency_timer_ms, str(s.framing)) == (9600, 16.0, "8N1")
    assert settings("--serial", "/dev/null").baud == 115_200  # on by default with --serial
    assert settings("--serial", "/dev/null", "--no-wire") is None
    assert settings("--tcp", "127.0.0.1:0", "--baud", "57600", "--framing", "7E2").framing.bits_per_char == 11
    with pytest.raises(ValueError, match="latency_timer_ms"):
        settings("--pty", "--baud", "9600", "--latency-timer", "0.1")
    with pytest.raises(ValueError, match="framing"):
        settings("--pty", "--baud", "9600", "--framing", "9Q1")


def test_cli_serial_port_that_cannot_be_opened_fails_with_status_1(tmp_path: Path) -> None:
    from firmware_sim.__main__ import main

    assert main(["--serial", str(tmp_path / "no-such-port"), "--run-for", "1"]) == 1
