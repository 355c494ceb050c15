"""The simulated device at the protocol level, on a virtual clock: identity and limits (S12), power-up (S15),
every NACK path (a rejected command changes nothing), at-most-once retries (S17), events and telemetry."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from cobs.cobs import encode as cobs_encode

from firmware_sim import (
    CLINIC_4,
    HYDRO_30,
    MODELS,
    Device,
    ElectrodeLift,
    LoadParams,
    OverCurrent,
    ShortCircuit,
)
from firmware_sim.host import SimHost
from iontodrive.protocol import (
    OPEN_CIRCUIT_OHM,
    PROTOCOL_VERSION,
    Abort,
    Ack,
    CheckContact,
    ClearFault,
    ConfigureTelemetry,
    ContactReport,
    ContactVerdict,
    DeviceState,
    ErrorCode,
    Event,
    EventCode,
    EventsReport,
    FetchEvents,
    Field,
    GetStatus,
    Heartbeat,
    Identify,
    IdentityReport,
    Message,
    Nack,
    Pause,
    Polarity,
    Reset,
    Resume,
    SetCurrent,
    SetWatchdog,
    Start,
    StatusFlags,
    StatusReport,
    Stop,
    Telemetry,
    Waveform,
    WaveformSet,
    crc16_ccitt_false,
    encode,
)

S = DeviceState


def start_msg(**kw: object) -> Start:
    fields: dict[str, object] = dict(
        target_current_ua=4000,
        dose_uas=0,
        duration_ms=600_000,
        ramp_up_ms=30_000,
        ramp_down_ms=30_000,
        polarity=Polarity.CATHODE,
    )
    fields.update(kw)
    return Start(**fields)  # type: ignore[arg-type]


def holding(model: str = "clinic-4", **kw: object) -> tuple[Device, SimHost]:
    """A device in HOLD at 4 mA (or the given start), fed with heartbeats."""
    device = Device(model)
    host = SimHost(device)
    assert isinstance(host.request(start_msg(**kw)), Ack)
    host.run(40.0, step_s=1.0, until=lambda d: d.state == S.HOLD)
    assert device.state == S.HOLD
    return device, host


def raw_frame(type_id: int, seq: int, payload: bytes) -> bytes:
    body = bytes([PROTOCOL_VERSION, type_id]) + seq.to_bytes(2, "little") + payload
    return bytes(cobs_encode(body + crc16_ccitt_false(body).to_bytes(2, "big"))) + b"\x00"


# ------------------------------------------------------------------------------------------------ S12/S15


@pytest.mark.parametrize("name", sorted(MODELS))
def test_identity_reports_the_hard_limits(name: str) -> None:
    host = SimHost(Device(name))
    report = host.request(Identify())
    assert isinstance(report, IdentityReport)
    spec = MODELS[name]
    assert report.model == name
    assert report.max_current_ua == spec.max_current_ua
    assert report.compliance_mv == spec.compliance_mv
    assert report.dose_cap_uas == spec.dose_cap_uas
    assert report.slew_limit_ua_per_s == spec.slew_limit_ua_per_s
    assert report.trip_current_ua == spec.trip_current_ua
    assert report.protocol_version == PROTOCOL_VERSION == 2
    assert report.min_current_ua == spec.min_current_ua
    assert (report.min_duty_percent, report.max_duty_percent) == (
        spec.min_duty_percent,
        spec.max_duty_percent,
    )


def test_model_numbers_match_the_brief() -> None:
    c, h = CLINIC_4, HYDRO_30
    assert (c.max_current_ua, c.compliance_mv, c.dose_cap_uas, c.slew_limit_ua_per_s) == (
        4000,
        80000,
        4_800_000,
        5000,
    )
    assert (c.min_ramp_ms, c.max_ramp_ms, c.max_duration_ms, c.trip_current_ua) == (
        5000,
        60000,
        3_600_000,
        4400,
    )
    assert c.waveforms == WaveformSet.DC and c.max_telemetry_hz == 5000
    assert (c.min_watchdog_ms, c.max_watchdog_ms) == (500, 10_000)
    assert (h.max_current_ua, h.compliance_mv, h.dose_cap_uas, h.slew_limit_ua_per_s) == (
        30000,
        60000,
        36_000_000,
        35000,
    )
    assert (h.max_duration_ms, h.trip_current_ua, h.hardware_trip_ua) == (1_800_000, 33000, 35000)
    assert h.waveforms == WaveformSet.DC | WaveformSet.PULSED_DC
    assert (h.min_pulse_frequency_hz, h.max_pulse_frequency_hz, h.min_duty_percent, h.max_duty_percent) == (
        10,
        1000,
        10,
        90,
    )


def test_power_up_state_is_safe() -> None:
    device = Device()
    host = SimHost(device)
    status = host.status()
    assert status.state == S.IDLE
    assert status.setpoint_ua == 0 and status.measured_ua == 0
    assert not status.flags & (StatusFlags.OUTPUT_ON | StatusFlags.SESSION_ACTIVE)
    assert status.watchdog_ms == 2000 and status.telemetry_hz == 2
    assert [e.code for e in host.events] == [EventCode.POWER_ON]
    assert host.events[0].event_no == 1
    host.run(5.0, step_s=1.0)
    assert device.output_ua == 0.0 and device.state == S.IDLE


def test_power_cycle_cuts_output_loses_session_and_never_resumes() -> None:
    device, host = holding()
    assert device.output_ua > 3900
    device.power_cycle()
    assert device.output_ua == 0.0 and device.state == S.IDLE and device.charge_uas == 0.0
    assert [e.code for e in device.events] == [EventCode.POWER_ON]
    assert device.events[0].event_no == 1
    host.run(20.0, step_s=1.0)
    assert device.state == S.IDLE and device.output_ua == 0.0
    status = host.status()
    assert status.session_id == 0 and status.charge_uas == 0 and status.device_time_ms == 20_000


def test_reset_restarts_only_with_output_at_zero() -> None:
    device, host = holding()
    reply = host.request(Reset())
    assert isinstance(reply, Nack) and reply.code == ErrorCode.BAD_STATE
    assert device.state == S.HOLD
    assert isinstance(host.request(Stop()), Ack)
    host.run(40.0, step_s=1.0, until=lambda d: d.state == S.DONE)
    assert isinstance(host.request(Reset()), Ack)
    assert host.status().state == S.IDLE
    assert [e.code for e in device.events] == [EventCode.POWER_ON]
    assert host.status().session_id == 0


# ----------------------------------------------------------------------------------------- NACK paths


def assert_rejected_without_change(
    device: Device, host: SimHost, request: Message, code: ErrorCode, field: Field | None = None
) -> Nack:
    before = host.status()
    events_before = len(device.events)
    reply = host.request(request)
    assert isinstance(reply, Nack), reply
    assert reply.code == code, reply
    assert reply.request_type == request.TYPE
    if field is not None:
        assert reply.field == field, reply
    after = host.status()
    assert after == before
    assert len(device.events) == events_before
    return reply


START_NACKS = [
    (dict(target_current_ua=50), ErrorCode.OUT_OF_RANGE, Field.TARGET_CURRENT_UA, (100, 4000)),
    (dict(target_current_ua=4001), ErrorCode.OUT_OF_RANGE, Field.TARGET_CURRENT_UA, (100, 4000)),
    (dict(duration_ms=0, dose_uas=4_800_001), ErrorCode.OUT_OF_RANGE, Field.DOSE_UAS, (1, 4_800_000)),
    (dict(duration_ms=3_600_001), ErrorCode.OUT_OF_RANGE, Field.DURATION_MS, None),
    (dict(ramp_up_ms=4_999), ErrorCode.OUT_OF_RANGE, Field.RAMP_UP_MS, (5000, 60000)),
    (dict(ramp_up_ms=60_001), ErrorCode.OUT_OF_RANGE, Field.RAMP_UP_MS, (5000, 60000)),
    (dict(ramp_down_ms=1_000), ErrorCode.OUT_OF_RANGE, Field.RAMP_DOWN_MS, (5000, 60000)),
    (dict(polarity=Polarity.NONE), ErrorCode.OUT_OF_RANGE, Field.POLARITY, (1, 2)),
    (
        dict(waveform=Waveform.PULSED_DC, pulse_frequency_hz=100, duty_percent=50),
        ErrorCode.UNSUPPORTED,
        Field.WAVEFORM,
        None,
    ),
    (dict(pulse_frequency_hz=100), ErrorCode.INCONSISTENT, Field.PULSE_FREQUENCY_HZ, None),
    (dict(duty_percent=50), ErrorCode.INCONSISTENT, Field.DUTY_PERCENT, None),
    (dict(dose_uas=100_000), ErrorCode.INCONSISTENT, Field.DOSE_UAS, None),
    (dict(duration_ms=0), ErrorCode.INCONSISTENT, Field.DOSE_UAS, None),
    (dict(duration_ms=50_000), ErrorCode.INCONSISTENT, Field.DURATION_MS, (60_000, 3_600_000)),
    # 4 mA for 30 min would exceed the 80 mA·min cap
    (dict(duration_ms=1_800_000), ErrorCode.OUT_OF_RANGE, Field.DURATION_MS, None),
    # 100 uA cannot deliver 4.8 C within the 1 h limit
    (
        dict(target_current_ua=100, duration_ms=0, dose_uas=4_000_000),
        ErrorCode.OUT_OF_RANGE,
        Field.DOSE_UAS,
        None,
    ),
]


@pytest.mark.parametrize(("fields", "code", "field", "limits"), START_NACKS)
def test_start_rejections_name_the_field_and_change_nothing(
    fields: dict[str, object], code: ErrorCode, field: Field, limits: tuple[int, int] | None
) -> None:
    device = Device()
    host = SimHost(device)
    reply = assert_rejected_without_change(device, host, start_msg(**fields), code, field)
    if limits is not None:
        assert (reply.minimum, reply.maximum) == limits
    assert device.output_ua == 0.0


def test_time_based_cap_nack_gives_the_longest_allowed_duration() -> None:
    host = SimHost(Device())
    reply = host.request(start_msg(duration_ms=1_800_000))
    assert isinstance(reply, Nack)
    longest = reply.maximum
    assert 60_000 <= longest < 1_800_000
    assert isinstance(host.request(start_msg(duration_ms=longest)), Ack)


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        (
            dict(waveform=Waveform.PULSED_DC, pulse_frequency_hz=5, duty_percent=50),
            ErrorCode.OUT_OF_RANGE,
            Field.PULSE_FREQUENCY_HZ,
        ),
        (
            dict(waveform=Waveform.PULSED_DC, pulse_frequency_hz=1001, duty_percent=50),
            ErrorCode.OUT_OF_RANGE,
            Field.PULSE_FREQUENCY_HZ,
        ),
        (
            dict(waveform=Waveform.PULSED_DC, pulse_frequency_hz=100, duty_percent=95),
            ErrorCode.OUT_OF_RANGE,
            Field.DUTY_PERCENT,
        ),
        (dict(target_current_ua=30_001), ErrorCode.OUT_OF_RANGE, Field.TARGET_CURRENT_UA),
    ],
)
def test_hydro_start_rejections(fields: dict[str, object], code: ErrorCode, field: Field) -> None:
    device = Device("hydro-30")
    host = SimHost(device)
    assert_rejected_without_change(
        device, host, start_msg(**{"target_current_ua": 15_000, **fields}), code, field
    )


def test_start_faster_than_the_slew_limit_is_refused() -> None:
    slow = dataclasses.replace(CLINIC_4, name="slow-4", slew_limit_ua_per_s=500)
    device = Device(slow)
    host = SimHost(device)
    reply = assert_rejected_without_change(
        device, host, start_msg(ramp_up_ms=5000), ErrorCode.SLEW_LIMIT, Field.RAMP_UP_MS
    )
    assert reply.minimum == 8000  # 4000 uA at 500 uA/s


@pytest.mark.parametrize(
    ("setup", "code", "value"),
    [
        (lambda d: None, ErrorCode.CONTACT_HIGH, None),
        (lambda d: d.inject(ElectrodeLift(at_s=0.0)), ErrorCode.CONTACT_OPEN, OPEN_CIRCUIT_OHM),
        (lambda d: d.inject(ShortCircuit(at_s=0.0)), ErrorCode.CONTACT_LOW, None),
    ],
)
def test_contact_check_refuses_start(setup: object, code: ErrorCode, value: int | None) -> None:
    load = LoadParams(r_skin_ohm=20_000.0) if code == ErrorCode.CONTACT_HIGH else None
    device = Device(load=load)
    setup(device)  # type: ignore[operator]
    device.advance(1.0)
    host = SimHost(device)
    reply = assert_rejected_without_change(device, host, start_msg(), code, Field.IMPEDANCE_OHM)
    assert (reply.minimum, reply.maximum) == (200, 10_000)
    if value is not None:
        assert reply.value == value
    host.run(3.0)
    assert device.output_ua == 0.0 and device.state == S.IDLE


def test_contact_high_limit_follows_compliance_over_target_current() -> None:
    # hydro-30 at 30 mA: 0.8 x 60 V / 30 mA = 1600 ohm; resting load 1500 ohm passes, 2500 ohm does not
    host = SimHost(Device("hydro-30", load=LoadParams(r_series_ohm=300, r_skin_ohm=2200)))
    report = host.request(CheckContact(50, 30_000))
    assert isinstance(report, ContactReport)
    assert report.high_limit_ohm == 1600 and report.verdict == ContactVerdict.HIGH
    assert 2300 < report.impedance_ohm < 2700
    ok = host.request(CheckContact(50, 15_000))
    assert isinstance(ok, ContactReport) and ok.high_limit_ohm == 3200 and ok.verdict == ContactVerdict.OK


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (CheckContact(0, 4000), ErrorCode.OUT_OF_RANGE, Field.PROBE_CURRENT_UA),
        (CheckContact(51, 4000), ErrorCode.OUT_OF_RANGE, Field.PROBE_CURRENT_UA),
        (CheckContact(50, 4001), ErrorCode.OUT_OF_RANGE, Field.TARGET_CURRENT_UA),
        (CheckContact(50, 0), ErrorCode.OUT_OF_RANGE, Field.TARGET_CURRENT_UA),
        (SetCurrent(2000, 5000), ErrorCode.BAD_STATE, Field.STATE),
        (Resume(), ErrorCode.BAD_STATE, Field.STATE),
        (ConfigureTelemetry(5001), ErrorCode.OUT_OF_RANGE, Field.RATE_HZ),
        (SetWatchdog(499), ErrorCode.OUT_OF_RANGE, Field.TIMEOUT_MS),
        (SetWatchdog(10_001), ErrorCode.OUT_OF_RANGE, Field.TIMEOUT_MS),
        (ClearFault(), ErrorCode.BAD_STATE, Field.STATE),
    ],
)
def test_idle_rejections_change_nothing(request_: Message, code: ErrorCode, field: Field) -> None:
    device = Device()
    assert_rejected_without_change(device, SimHost(device), request_, code, field)


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (start_msg(), ErrorCode.BAD_STATE, Field.STATE),
        (start_msg(polarity=Polarity.ANODE), ErrorCode.POLARITY_LOCKED, Field.POLARITY),
        (CheckContact(50, 4000), ErrorCode.BAD_STATE, Field.STATE),
        (SetCurrent(50, 5000), ErrorCode.OUT_OF_RANGE, Field.TARGET_CURRENT_UA),
        (SetCurrent(2000, 4999), ErrorCode.OUT_OF_RANGE, Field.RAMP_MS),
        (SetCurrent(2000, 60_001), ErrorCode.OUT_OF_RANGE, Field.RAMP_MS),
        (Resume(), ErrorCode.BAD_STATE, Field.STATE),
        (Reset(), ErrorCode.BAD_STATE, Field.STATE),
        (ClearFault(), ErrorCode.BAD_STATE, Field.STATE),
    ],
)
def test_rejections_during_a_session_change_nothing(request_: Message, code: ErrorCode, field: Field) -> None:
    device, host = holding()
    reply = assert_rejected_without_change(device, host, request_, code, field)
    if code == ErrorCode.POLARITY_LOCKED:
        assert reply.value == Polarity.ANODE and reply.minimum == Polarity.CATHODE
    assert device.state == S.HOLD and device.polarity == Polarity.CATHODE


def test_rejections_in_fault_name_the_latch() -> None:
    device, host = holding()
    device.inject(OverCurrent())
    host.run(3.0, step_s=0.5)
    assert device.state == S.FAULT
    # requests that would make output name the latch (protocol §6); the others are merely out of state
    for request in (start_msg(), Resume(), SetCurrent(2000, 5000), CheckContact(50, 4000)):
        assert_rejected_without_change(device, host, request, ErrorCode.FAULT_LATCHED, Field.STATE)
    for safety in (Pause(), Stop(), Abort()):  # safety commands are accepted in every state (v2, §7.5)
        assert_accepted_without_change(device, host, safety)


def assert_accepted_without_change(device: Device, host: SimHost, request: Message) -> None:
    before = host.status()
    events_before = len(device.events)
    assert host.request(request) == Ack(int(request.TYPE))
    assert host.status() == before
    assert len(device.events) == events_before


@pytest.mark.parametrize("request_", [Pause(), Stop(), Abort()])
def test_safety_commands_with_nothing_to_do_are_acknowledged_and_change_nothing(request_: Message) -> None:
    device = Device()
    assert_accepted_without_change(device, SimHost(device), request_)


def test_fetch_events_with_max_count_zero_reports_the_ring_alone() -> None:
    device = Device()
    host = SimHost(device)
    _seq, frames = host.send(FetchEvents(1, 0))
    assert [f.message for f in frames] == [EventsReport(1, 2, 0)]


def test_set_current_faster_than_the_slew_limit_is_refused() -> None:
    slow = dataclasses.replace(CLINIC_4, name="slow-4", slew_limit_ua_per_s=300)
    device = Device(slow)
    host = SimHost(device)
    assert isinstance(host.request(start_msg(ramp_up_ms=20_000, ramp_down_ms=20_000)), Ack)
    host.run(25.0, step_s=1.0)
    assert device.state == S.HOLD
    reply = assert_rejected_without_change(
        device, host, SetCurrent(1000, 5000), ErrorCode.SLEW_LIMIT, Field.RAMP_MS
    )
    assert reply.minimum == 10_000  # 3000 uA change at 300 uA/s


def test_resume_refused_while_the_electrode_is_off() -> None:
    device, host = holding()
    device.inject(ElectrodeLift())
    host.run(3.0, step_s=0.5)
    assert device.state == S.PAUSED
    reply = assert_rejected_without_change(
        device, host, Resume(), ErrorCode.CONTACT_OPEN, Field.IMPEDANCE_OHM
    )
    assert reply.value == OPEN_CIRCUIT_OHM


def test_undecodable_requests_are_nacked_by_type() -> None:
    device = Device()
    host = SimHost(device)
    before = host.status()
    device.receive(raw_frame(0x20, 77, b""))  # unknown request type
    device.receive(raw_frame(0x0D, 78, b"\x01"))  # SetWatchdog with a 1-byte payload
    device.receive(encode(Ack(1), 81))  # a reply type sent by the host
    payload = struct.pack("<IIIIIBBHB", 4000, 0, 600_000, 30_000, 30_000, 7, 0, 0, 0)
    device.receive(raw_frame(0x04, 79, payload))  # Start with polarity 7
    payload = struct.pack("<IIIIIBBHB", 4000, 0, 600_000, 30_000, 30_000, 1, 9, 0, 0)
    device.receive(raw_frame(0x04, 80, payload))  # Start with waveform 9
    replies = {f.seq: f.message for f in host.pump()}
    assert replies[77] == Nack(0x20, ErrorCode.UNKNOWN_REQUEST, Field.NONE, 0x20)
    assert replies[78] == Nack(0x0D, ErrorCode.BAD_LENGTH, Field.NONE, 1, 2, 2)
    assert replies[81] == Nack(0x80, ErrorCode.UNKNOWN_REQUEST, Field.NONE, 0x80)
    assert replies[79] == Nack(0x04, ErrorCode.OUT_OF_RANGE, Field.POLARITY, 7, 1, 2)
    assert replies[80] == Nack(0x04, ErrorCode.OUT_OF_RANGE, Field.WAVEFORM, 9, 0, 1)
    assert host.status() == before


def test_garbage_and_bad_crc_are_ignored() -> None:
    device = Device()
    host = SimHost(device)
    frame = bytearray(encode(Identify(), 5))
    frame[2] ^= 0xFF
    device.receive(b"\x13\x37garbage\x00" + bytes(frame) + b"\xff" * 300 + b"\x00")
    assert host.pump() == []
    assert isinstance(host.request(Identify()), IdentityReport)


# ------------------------------------------------------------------------------------------------- S17


def test_retried_request_takes_effect_once_and_gets_the_same_answer() -> None:
    device = Device()
    host = SimHost(device)
    frame = encode(start_msg(), 100)
    device.read_output()  # the POWER_ON event
    device.receive(frame)
    first = device.read_output()
    device.advance(1.0)
    device.read_output()
    device.receive(frame)  # a retry: same sequence number, same request
    again = device.read_output()
    assert again == first.split(b"\x00", 1)[0] + b"\x00"  # only the ACK, byte for byte
    started = [e for e in device.events if e.code == EventCode.SESSION_STARTED]
    assert len(started) == 1
    status = host.status()
    assert status.session_id == 1


def test_same_number_with_another_request_is_executed() -> None:
    device = Device()
    host = SimHost(device)
    host.request(SetWatchdog(1000), seq=9)
    reply = host.request(SetWatchdog(3000), seq=9)
    assert isinstance(reply, Ack)
    assert host.status().watchdog_ms == 3000


def test_reset_clears_the_memory_of_answers() -> None:
    device = Device()
    host = SimHost(device)
    assert isinstance(host.request(SetWatchdog(1000), seq=5), Ack)
    assert isinstance(host.request(Reset(), seq=6), Ack)
    assert host.status().watchdog_ms == 2000
    assert isinstance(host.request(SetWatchdog(1000), seq=5), Ack)  # executed again after the restart
    assert host.status().watchdog_ms == 1000
    assert [e.code for e in device.events] == [EventCode.POWER_ON, EventCode.WATCHDOG_CHANGED]


def test_retried_status_is_answered_from_the_cache() -> None:
    device = Device()
    host = SimHost(device)
    first = host.request(GetStatus(), seq=42)
    device.advance(2.0)
    again = host.request(GetStatus(), seq=42)
    assert again == first
    assert isinstance(host.request(GetStatus()), StatusReport)


def test_status_replies_are_the_encoded_status_in_every_kind_of_state() -> None:
    """A GetStatus reply is exactly the encoding of Firmware.status(), through idle, ramp, hold, pause and
    a fault (its fields are computed inline on the reply path)."""
    device = Device()
    host = SimHost(device)
    seen_states = set()
    seq = 100

    def check() -> None:
        nonlocal seq
        seq += 1
        device.read_output()  # telemetry and events so far
        device.receive(encode(GetStatus(), seq))
        assert device.read_output() == encode(device.firmware.status(), seq)
        seen_states.add(device.state)

    check()
    assert isinstance(host.request(start_msg(dose_uas=2_400_000, duration_ms=0)), Ack)
    for _ in range(8):  # contact check, ramp up (dose-based: remaining time and DOSE_BASED flag)
        host.run(3.0, step_s=1.0)
        check()
    host.run(40.0, step_s=1.0, until=lambda d: d.state == S.HOLD)
    check()
    assert isinstance(host.request(Pause()), Ack)
    host.run(40.0, step_s=1.0, until=lambda d: d.state == S.PAUSED)
    check()
    assert isinstance(host.request(Resume()), Ack)
    host.run(60.0, step_s=1.0, until=lambda d: d.state == S.HOLD)
    device.inject(OverCurrent(gain=2.0, rise_s=0.1))
    host.run(5.0, step_s=0.5, until=lambda d: d.state == S.FAULT)
    check()
    assert {S.IDLE, S.RAMP_UP, S.HOLD, S.PAUSED, S.FAULT} <= seen_states, seen_states


# ---------------------------------------------------------------------------------- events, telemetry


def test_telemetry_default_rate_and_configuration() -> None:
    device = Device()
    host = SimHost(device)
    host.run(10.0, step_s=1.0, heartbeat=False)
    samples = list(host.telemetry)
    assert len(samples) == 20
    assert [s.sample_no for s in samples] == list(range(1, 21))
    assert [s.device_time_ms for s in samples] == [500 * k for k in range(1, 21)]
    assert isinstance(host.request(ConfigureTelemetry(100)), Ack)
    host.telemetry.clear()
    host.run(2.0, step_s=0.5)
    assert len(host.telemetry) == 200
    assert isinstance(host.request(ConfigureTelemetry(0)), Ack)
    host.telemetry.clear()
    host.run(2.0, step_s=0.5)
    assert host.telemetry == []
    assert host.events[-1].code == EventCode.TELEMETRY_CHANGED and host.events[-1].value == 0


def test_telemetry_samples_carry_the_session() -> None:
    _device, host = holding()
    host.telemetry.clear()
    host.run(2.0, step_s=0.5)
    sample = host.telemetry[-1]
    assert isinstance(sample, Telemetry)
    assert sample.state == S.HOLD and sample.polarity == Polarity.CATHODE
    assert sample.setpoint_ua == 4000 and abs(sample.measured_ua - 4000) < 10
    assert sample.flags & StatusFlags.OUTPUT_ON and sample.flags & StatusFlags.SESSION_ACTIVE
    assert 2000 < sample.impedance_ohm < 5000
    assert abs(sample.voltage_mv - sample.impedance_ohm * 4) < 200  # V = I·Z at 4 mA


def test_fetch_events_replays_with_a_gap_report_after_overflow() -> None:
    device = Device()
    host = SimHost(device)
    for k in range(300):
        host.request(SetWatchdog(1000 + k))
    assert host.status().flags & StatusFlags.EVENTS_OVERFLOWED
    # POWER_ON + 300 WATCHDOG_CHANGED + one EVENTS_LOST when the ring first overwrote an unfetched event
    lost = [e for e in host.events if e.code == EventCode.EVENTS_LOST]
    assert len(lost) == 1 and lost[0].value == 1 and lost[0].event_no == 258
    _seq, frames = host.send(FetchEvents(1, 10))
    report = frames[0].message
    assert isinstance(report, EventsReport)
    assert report.next_event_no == 303
    assert report.first_available_no == 303 - 256
    assert report.count == 10
    replayed = [f.message for f in frames[1:]]
    events = [e for e in replayed if isinstance(e, Event) and e.replayed]
    assert events == replayed
    assert [e.event_no for e in events] == list(range(47, 57))
    assert not host.status().flags & StatusFlags.EVENTS_OVERFLOWED  # the host has seen the gap


def test_events_are_numbered_without_gaps() -> None:
    _device, host = holding()
    numbers = [e.event_no for e in host.events]
    assert numbers == list(range(1, len(numbers) + 1))
    codes = [e.code for e in host.events]
    assert codes[:3] == [EventCode.POWER_ON, EventCode.SESSION_STARTED, EventCode.STATE_CHANGED]
    assert EventCode.CONTACT_OK in codes
    assert [S(e.state) for e in host.events if e.code == EventCode.STATE_CHANGED] == [
        S.CONTACT_CHECK,
        S.RAMP_UP,
        S.HOLD,
    ]


def test_heartbeat_and_watchdog_setting() -> None:
    device = Device()
    host = SimHost(device)
    assert isinstance(host.request(Heartbeat()), Ack)
    assert isinstance(host.request(SetWatchdog(500)), Ack)
    assert host.status().watchdog_ms == 500
    assert host.events[-1].code == EventCode.WATCHDOG_CHANGED and host.events[-1].value == 500
