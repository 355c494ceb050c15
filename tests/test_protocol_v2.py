"""Protocol version 2 end to end on the simulator: host sessions scope the reply cache, safety commands
always execute, every limit is in IdentityReport, the version refusal both ways, and the points the
version-1 spec left open (docs/protocol.md §7.3, §7.5, §8.5, §9).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from cobs.cobs import decode as cobs_decode
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim import Device
from firmware_sim.host import SimHost
from iontodrive.client import DeviceClient
from iontodrive.errors import IncompatibleDeviceError
from iontodrive.protocol import (
    MAX_HOST_NONCE,
    PREVIOUS_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Ack,
    DecodeError,
    DecodeErrorKind,
    Decoder,
    DeviceState,
    ErrorCode,
    EventCode,
    Field,
    Frame,
    GetStatus,
    Identify,
    IdentityReport,
    Nack,
    OpenSession,
    Pause,
    Polarity,
    Resume,
    SessionOpened,
    Start,
    StatusReport,
    Stop,
    crc16_ccitt_false,
    decode_body,
    encode,
    encode_version_probe,
    encode_version_refusal,
)

S = DeviceState


def state(device: Device) -> DeviceState:
    """The device's state now (a call, so that the type checker does not narrow it between steps)."""
    return device.state


START = Start(2500, 0, 600_000, 5_000, 5_000, Polarity.CATHODE)


def reply_to(host: SimHost, seq: int, message: object) -> object:
    """Send ``message`` with exactly ``seq`` (a host numbering its own requests) and return the reply."""
    return host.request(message, seq)  # type: ignore[arg-type]


def flowing(device: Device, host: SimHost, first_seq: int) -> None:
    """Host 1: numbered first_seq.. : GetStatus, Start, Stop (ended), GetStatus, Start again (flowing)."""
    assert isinstance(reply_to(host, first_seq, GetStatus()), StatusReport)
    assert reply_to(host, first_seq + 1, START) == Ack(START.TYPE)
    host.run(8.0, step_s=0.5)
    assert reply_to(host, first_seq + 2, Stop()) == Ack(Stop.TYPE)
    host.run(8.0, step_s=0.5)
    assert state(device) == S.DONE
    assert isinstance(reply_to(host, first_seq + 3, GetStatus()), StatusReport)
    assert reply_to(host, first_seq + 4, START) == Ack(START.TYPE)
    host.run(8.0, step_s=0.5)
    assert state(device) == S.HOLD and device.output_ua > 2000


def test_a_second_hosts_stop_at_a_number_the_first_host_used_stops_the_output() -> None:
    """The issue's scenario, with the second host numbering 1, 2, ... without any handshake (as version 1
    told it to): its Stop at the number where the first host also sent Stop must be executed. On the
    version-1 simulator (commit 4013fbb) the cached Ack came back and 2.5 mA kept flowing."""
    device = Device("clinic-4")
    first = SimHost(device)
    flowing(device, first, 1)  # its Stop was number 3
    second = SimHost(device)  # a new host process, numbering from 1 again
    second.request(Identify(), 1)
    second.request(GetStatus(), 2)
    assert second.request(Stop(), 3) == Ack(Stop.TYPE)
    assert state(device) == S.RAMP_DOWN
    second.run(8.0, step_s=0.5)
    assert state(device) == S.DONE and device.output_ua < 1.0


def test_after_the_handshake_a_second_host_gets_no_stale_answer() -> None:
    device = Device("clinic-4")
    first = SimHost(device)
    assert isinstance(reply_to(first, 1, OpenSession(0x1111)), SessionOpened)
    flowing(device, first, 2)  # GetStatus 2, Start 3, Stop 4, GetStatus 5, Start 6
    second = SimHost(device)
    opened = reply_to(second, 1, OpenSession(0x2222))
    assert opened == SessionOpened(0x2222, 2, 0x1111)  # it learns that another host was there
    status = reply_to(second, 2, GetStatus())  # host 1 asked GetStatus with number 2 as well
    assert isinstance(status, StatusReport) and status == device.status()
    assert status.state == S.HOLD and status.setpoint_ua == 2500  # the truth, not host 1's idle snapshot
    refused = reply_to(second, 3, START)  # host 1's Start 3 was acknowledged: this one is refused
    assert isinstance(refused, Nack) and refused.code == ErrorCode.BAD_STATE
    assert reply_to(second, 4, Stop()) == Ack(Stop.TYPE)
    assert state(device) == S.RAMP_DOWN


def test_a_retried_open_session_is_answered_from_the_cache_and_opens_one_session() -> None:
    device = Device()
    host = SimHost(device)
    frame = encode(OpenSession(77), 9)
    device.receive(frame)
    first = device.read_output()
    device.receive(frame)
    again = device.read_output()
    opened = [item for item in Decoder().feed(first) if isinstance(item, Frame) and item.seq == 9]
    assert opened[0].message == SessionOpened(77, 1, 0)
    assert again == encode(SessionOpened(77, 1, 0), 9)  # byte for byte, and no second event
    assert [e.code for e in device.events].count(EventCode.HOST_SESSION_OPENED) == 1
    assert host.status().last_event_no == 2  # POWER_ON, HOST_SESSION_OPENED


def test_open_session_refuses_nonce_zero() -> None:
    host = SimHost(Device())
    reply = host.request(OpenSession(0))
    assert reply == Nack(OpenSession.TYPE, ErrorCode.OUT_OF_RANGE, Field.HOST_NONCE, 0, 1, MAX_HOST_NONCE)


def test_end_host_session_forgets_the_cache() -> None:
    device = Device()
    host = SimHost(device)
    first = host.request(GetStatus(), 5)
    host.run(1.0)
    assert host.request(GetStatus(), 5) == first  # a retry within the session: the remembered answer
    device.end_host_session()  # a transport saw its host disconnect
    fresh = host.request(GetStatus(), 5)
    assert isinstance(first, StatusReport) and isinstance(fresh, StatusReport)
    assert fresh.device_time_ms > first.device_time_ms


@pytest.mark.parametrize("command", [Pause(), Stop()])
def test_a_safety_command_repeated_with_its_number_is_executed_again(command: Pause | Stop) -> None:
    device = Device()
    host = SimHost(device)
    assert host.request(START, 1) == Ack(START.TYPE)
    host.run(8.0)
    assert host.request(command, 2) == Ack(command.TYPE)
    host.run(8.0)
    if isinstance(command, Pause):
        assert state(device) == S.PAUSED
        assert host.request(Resume(), 3) == Ack(Resume.TYPE)
        host.run(8.0)
        assert state(device) == S.HOLD
        assert host.request(command, 2) == Ack(command.TYPE)  # same number, same bytes: still executed
        assert state(device) == S.PAUSING
    else:
        assert state(device) == S.DONE
        assert host.request(START, 3) == Ack(START.TYPE)
        host.run(8.0)
        assert host.request(command, 2) == Ack(command.TYPE)
        assert state(device) == S.RAMP_DOWN


def test_every_limit_the_device_enforces_is_in_its_identity() -> None:
    hydro = SimHost(Device("hydro-30")).request(Identify())
    assert isinstance(hydro, IdentityReport)
    assert (hydro.min_current_ua, hydro.min_duty_percent, hydro.max_duty_percent) == (1000, 10, 90)
    host = SimHost(Device("hydro-30"))
    low = host.request(Start(hydro.min_current_ua - 1, 0, 600_000, 30_000, 30_000, Polarity.ANODE))
    assert isinstance(low, Nack) and (low.field, low.minimum) == (Field.TARGET_CURRENT_UA, 1000)


# ------------------------------------------------------------------------------------------ versions


def v1_frame(type_id: int, seq: int, payload: bytes = b"") -> bytes:
    body = bytes([PREVIOUS_PROTOCOL_VERSION, type_id]) + seq.to_bytes(2, "little") + payload
    return encode_body(body)


def encode_body(body: bytes) -> bytes:
    from cobs.cobs import encode as cobs_encode

    return bytes(cobs_encode(body + crc16_ccitt_false(body).to_bytes(2, "big"))) + b"\x00"


def test_a_version_1_request_gets_the_version_refusal_in_version_1_format() -> None:
    device = Device()
    device.read_output()  # the POWER_ON event
    before = device.status()
    device.receive(v1_frame(0x01, 42))  # a version-1 host's Identify
    device.receive(v1_frame(0x0A, 43))  # ... and Heartbeat
    out = device.read_output()
    assert out == encode_version_refusal(0x01, 42) + encode_version_refusal(0x0A, 43)
    body = cobs_decode(out[: out.index(0)])
    assert body[0] == 1 and body[1] == 0x81 and int.from_bytes(body[2:4], "little") == 42
    # the version-1 Nack layout: request_type, code, field, value, minimum, maximum (i64)
    assert (body[4], body[5], body[6]) == (0x01, ErrorCode.UNSUPPORTED, Field.NONE)
    assert int.from_bytes(body[7:15], "little", signed=True) == 1
    assert int.from_bytes(body[15:23], "little", signed=True) == PROTOCOL_VERSION
    assert int.from_bytes(body[23:31], "little", signed=True) == PROTOCOL_VERSION
    assert len(body) == 4 + Nack.LAYOUT.sizeof() + 2 == 33
    assert device.status() == before  # nothing changed, and the watchdog was not fed by it


@given(st.integers(1, 0xFFFF), st.integers(1, 0x3F))
def test_the_version_refusal_decodes_as_wrong_version_1(seq: int, type_id: int) -> None:
    result = decode_body(encode_version_refusal(type_id, seq)[:-1])
    assert isinstance(result, DecodeError) and result.kind is DecodeErrorKind.WRONG_VERSION
    assert (result.version, result.seq, result.type_id) == (1, seq, 0x81)


class _Version1Device:
    """A version-1 device on a local socket: ignores frames of other versions (as version 1 says) and
    answers a version-1 Identify with a version-1 IdentityReport; optionally sends version-1 telemetry."""

    def __init__(self, talk_first: bool) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.server.getsockname()[1]}"
        self.talk_first = talk_first
        self.seen_versions: list[int] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.server.accept()
        decoder = Decoder()
        identity = Device().identity
        payload = encode(identity, 1)
        v1_identity = cobs_decode(payload[:-1])[4:-2][:67]  # the version-1 layout: 67 bytes
        if self.talk_first:
            conn.sendall(v1_frame(0xC1, 0, b"\x01" + b"\x00" * 17 + b"\x00"))  # an Event of version 1
        with conn:
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                for item in decoder.feed(data):
                    if isinstance(item, DecodeError) and item.kind is DecodeErrorKind.WRONG_VERSION:
                        assert item.version is not None and item.seq is not None
                        self.seen_versions.append(item.version)
                        if item.version == 1 and item.type_id == 0x01:
                            conn.sendall(v1_frame(0x82, item.seq, v1_identity))
                    elif isinstance(item, Frame):
                        self.seen_versions.append(PROTOCOL_VERSION)


@pytest.fixture(params=[False, True], ids=["silent", "talking"])
def version_1_device(request: pytest.FixtureRequest) -> Iterator[_Version1Device]:
    device = _Version1Device(talk_first=request.param)
    yield device
    device.server.close()


def test_the_driver_refuses_a_version_1_device(version_1_device: _Version1Device) -> None:
    with pytest.raises(IncompatibleDeviceError) as caught:
        DeviceClient.open(version_1_device.url, timeout_s=0.05, retries=1)
    assert caught.value.device_version == 1 and caught.value.supported == (PROTOCOL_VERSION,)


def test_the_version_probe_is_a_version_1_identify() -> None:
    body = cobs_decode(encode_version_probe(7)[:-1])
    assert body[:4] == bytes([1, 0x01, 7, 0]) and len(body) == 6


def test_decode_errors_carry_what_they_found() -> None:
    wrong_length = encode_body(bytes([PROTOCOL_VERSION, 0x0D, 5, 0]) + b"\x01")
    result = decode_body(wrong_length[:-1])
    assert isinstance(result, DecodeError) and result.kind is DecodeErrorKind.BAD_LENGTH
    assert (result.payload_bytes, result.expected_bytes, result.version) == (1, 2, PROTOCOL_VERSION)
    payload = (2500).to_bytes(4, "little") + bytes(16) + bytes([7, 0, 0, 0, 0])
    bad_value = encode_body(bytes([PROTOCOL_VERSION, 0x04, 5, 0]) + payload)
    result = decode_body(bad_value[:-1])
    assert isinstance(result, DecodeError) and result.kind is DecodeErrorKind.BAD_VALUE
    assert (result.field, result.value) == ("polarity", 7)


# ----------------------------------------------------------------------------- settled spec points


def test_event_state_is_the_state_after_the_reaction() -> None:
    device = Device()
    host = SimHost(device)
    host.request(START)
    host.run(8.0)
    host.request(Stop())
    stopped = [e for e in device.events if e.code == EventCode.STOPPED]
    assert stopped and stopped[-1].state == S.RAMP_DOWN
    changed = [e for e in device.events if e.code == EventCode.STATE_CHANGED]
    assert all(e.state != e.value for e in changed)  # value is the previous state, state the new one


def test_link_lost_is_recorded_with_the_pausing_state() -> None:
    device = Device()
    host = SimHost(device)
    host.request(START)
    host.run(8.0)
    host.run(3.0, heartbeat=False)
    lost = [e for e in device.events if e.code == EventCode.LINK_LOST]
    assert lost and lost[0].state == S.PAUSING


def test_check_contact_records_an_event() -> None:
    device = Device()
    host = SimHost(device)
    from iontodrive.protocol import CheckContact

    report = host.request(CheckContact(50, 2000))
    events = [e for e in device.events if e.code in (EventCode.CONTACT_OK, EventCode.CONTACT_FAILED)]
    assert events and events[-1].value == report.impedance_ohm  # type: ignore[attr-defined]
    assert state(device) == S.IDLE


def test_the_reading_with_output_disabled_is_zero() -> None:
    device = Device()
    host = SimHost(device)
    host.run(3.0)
    assert host.telemetry and all(t.measured_ua == 0 and t.voltage_mv == 0 for t in host.telemetry)
    status = host.status()
    assert (status.measured_ua, status.voltage_mv) == (0, 0)


def test_a_refused_open_session_leaves_the_cache_alone() -> None:
    device = Device()
    host = SimHost(device)
    first = host.request(GetStatus(), 5)
    host.run(1.0)
    assert isinstance(host.request(OpenSession(0)), Nack)
    assert host.request(GetStatus(), 5) == first  # still this host's session: the remembered answer


def test_a_dose_smaller_than_its_ramps_peaks_below_the_target_and_lands_on_the_dose() -> None:
    device = Device()
    host = SimHost(device)
    dose = 2_000  # 2000 uA*s; 2 mA with 5 s ramps would deliver 10 000 uA*s in the ramps alone
    assert host.request(Start(2000, dose, 0, 5_000, 5_000, Polarity.CATHODE)) == Ack(Start.TYPE)
    peak = 0.0
    for _ in range(40):
        host.run(0.5)
        peak = max(peak, device.setpoint_ua)
    assert state(device) == S.DONE
    assert peak < 2000 * 0.8
    assert abs(device.charge_uas - dose) <= 0.01 * dose
