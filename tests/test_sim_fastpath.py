"""The simulator's fast paths change nothing but speed.

* The scalar path for tiny blocks gives the same run as the numpy block path (events, telemetry; the
  trace to rounding error), for DC and pulsed DC, with plant faults.
* Telemetry above the physics rate: one sample per scheduled time, numbered +1 each, stamped with its own
  time, independent of how the time was advanced.
* The idle horizon the real-time runner sleeps on.
* The output buffer of the pty/TCP transports sheds only whole frames, telemetry first.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from firmware_sim import (
    ContactReturn,
    Device,
    ElectrodeLift,
    ImpedanceRise,
    OverCurrent,
    ShortCircuit,
    TraceRecorder,
)
from firmware_sim.host import SimHost
from firmware_sim.outbuffer import OutBuffer, is_telemetry_frame
from iontodrive.protocol import (
    Ack,
    ClearFault,
    ConfigureTelemetry,
    Decoder,
    DeviceState,
    Event,
    EventCode,
    Frame,
    GetStatus,
    Polarity,
    Resume,
    SetCurrent,
    Start,
    StatusReport,
    Telemetry,
    Waveform,
    encode,
)


def scripted(model: str, small_block_steps: int, max_block_steps: int, pulsed: bool) -> tuple:
    rec = TraceRecorder()
    device = Device(
        model, trace=rec, max_block_steps=max_block_steps, physics_step_s=0.005, telemetry_hz=250, seed=5
    )
    device.firmware.small_block_steps = small_block_steps
    host = SimHost(device)
    target = 4000 if model == "clinic-4" else 20_000
    start = Start(
        target, 0, 60_000, 5000, 5000, Polarity.CATHODE,
        Waveform.PULSED_DC if pulsed else Waveform.DC, 100 if pulsed else 0, 40 if pulsed else 0,
    )  # fmt: skip
    assert isinstance(host.request(start), Ack)
    device.inject(ElectrodeLift(at_s=6.0))
    device.inject(ContactReturn(at_s=7.0))
    host.run(8.0, step_s=0.25)
    assert isinstance(host.request(Resume()), Ack)
    host.run(6.5, step_s=0.25)
    device.inject(ShortCircuit(at_s=device.session_time_s + 0.3, duration_s=0.3))
    host.run(2.0, step_s=0.25)
    assert isinstance(host.request(Resume()), Ack)
    host.run(6.5, step_s=0.25)
    device.inject(OverCurrent(at_s=device.session_time_s + 0.2, duration_s=1.0))
    host.run(2.0, step_s=0.25)
    assert isinstance(host.request(ClearFault()), Ack)
    assert isinstance(host.request(start), Ack)
    host.run(6.5, step_s=0.25)
    assert isinstance(host.request(SetCurrent(target * 3 // 4, 5000)), Ack)
    device.inject(ImpedanceRise(at_s=device.session_time_s + 0.5, factor=8.0, duration_s=6.0))
    host.run(9.0, step_s=0.25)
    return device, host, rec.columns


@pytest.mark.parametrize(("model", "pulsed"), [("clinic-4", False), ("hydro-30", True)])
def test_scalar_steps_match_numpy_blocks(model: str, pulsed: bool) -> None:
    numpy_steps = scripted(model, small_block_steps=0, max_block_steps=1, pulsed=pulsed)
    scalar_steps = scripted(model, small_block_steps=8, max_block_steps=1, pulsed=pulsed)
    blocks = scripted(model, small_block_steps=8, max_block_steps=65_536, pulsed=pulsed)
    reference_device, reference_host, reference_trace = numpy_steps
    codes = {e.code for e in reference_device.events}
    assert {EventCode.ELECTRODE_LIFT, EventCode.SHORT_CIRCUIT, EventCode.RESISTANCE_LIMIT} <= codes
    assert EventCode.OVERCURRENT_TRIP in codes
    for device, host, trace in (scalar_steps, blocks):
        assert [(e.event_no, e.device_time_ms, e.code, e.value) for e in device.events] == [
            (e.event_no, e.device_time_ms, e.code, e.value) for e in reference_device.events
        ]
        assert host.telemetry == reference_host.telemetry
        np.testing.assert_array_equal(trace["state"], reference_trace["state"])
        np.testing.assert_array_equal(trace["setpoint_ua"], reference_trace["setpoint_ua"])
        np.testing.assert_array_equal(trace["physical"], reference_trace["physical"])
        for column in ("output_ua", "voltage_mv", "charge_uas", "impedance_ohm"):
            np.testing.assert_allclose(
                trace[column], reference_trace[column], rtol=1e-9, atol=1e-6, err_msg=column
            )


def telemetry_run(rate_hz: int, chunks_s: list[float], physics_step_s: float = 0.001) -> list[Telemetry]:
    device = Device("clinic-4", physics_step_s=physics_step_s, seed=2)
    host = SimHost(device)
    assert isinstance(host.request(ConfigureTelemetry(rate_hz)), Ack)
    anchor_ms = device.firmware.device_time_ms
    assert anchor_ms == 0
    for chunk in chunks_s:
        device.advance(chunk)
        host.pump()
    return host.telemetry


@pytest.mark.parametrize("rate_hz", [5000, 3000, 1000, 7 * 11])
def test_telemetry_one_sample_per_scheduled_time(rate_hz: int) -> None:
    samples = telemetry_run(rate_hz, [2.0])
    assert len(samples) == 2 * rate_hz  # every due time in (0, 2 s], none collapsed
    numbers = [s.sample_no for s in samples]
    assert numbers == list(range(numbers[0], numbers[0] + len(samples)))
    expected_ms = [round(k * 1000.0 / rate_hz) for k in range(1, len(samples) + 1)]
    assert [s.device_time_ms for s in samples] == expected_ms


def test_telemetry_does_not_depend_on_how_time_is_advanced() -> None:
    whole = telemetry_run(5000, [1.0])
    pieces = telemetry_run(5000, [0.0007] * 700 + [0.0013] * 100 + [0.38])
    assert len(whole) == 5000
    assert pieces == whole


def test_samples_within_one_step_carry_that_steps_values() -> None:
    samples = telemetry_run(5000, [0.5], physics_step_s=0.005)  # 25 samples per physics step
    by_step: dict[int, list[Telemetry]] = {}
    first = samples[0].sample_no
    for s in samples:
        k = s.sample_no - first + 1  # due at k * 0.2 ms: taken at the end of step ceil(k / 25)
        by_step.setdefault(-(-k // 25), []).append(s)
    assert all(len(group) == 25 for group in by_step.values())
    for group in by_step.values():
        values = {(s.measured_ua, s.voltage_mv, s.impedance_ohm, s.charge_uas) for s in group}
        assert len(values) == 1


# ------------------------------------------------------------------------------------ idle horizon


def test_idle_horizon_is_the_next_telemetry_sample_when_nothing_runs() -> None:
    device = Device("clinic-4", seed=1)  # 2 Hz telemetry at power-up
    host = SimHost(device)
    device.advance(0.1)
    assert device.idle_horizon_s() == pytest.approx(0.4)
    assert isinstance(host.request(ConfigureTelemetry(0)), Ack)
    assert device.idle_horizon_s() == math.inf
    assert isinstance(host.request(Start(2000, 0, 20_000, 5000, 5000, Polarity.ANODE)), Ack)
    assert device.idle_horizon_s() == 0.0  # a session needs regular advancing
    host.run(20.5)
    assert device.state == DeviceState.DONE
    assert device.idle_horizon_s() == math.inf


# ---------------------------------------------------------------------------------------- OutBuffer


def frames_of(data: bytes) -> list[Frame]:
    items = Decoder().feed(data)
    assert all(isinstance(item, Frame) for item in items), items
    return [item for item in items if isinstance(item, Frame)]


def telemetry_frame(n: int) -> bytes:
    return encode(
        Telemetry(n, n, DeviceState.HOLD, 0, Polarity.ANODE, 4000, 3999, 12_000, 3000, n)  # type: ignore[arg-type]
    )


def test_is_telemetry_frame() -> None:
    assert is_telemetry_frame(telemetry_frame(1))
    assert not is_telemetry_frame(encode(Event(1, 0, EventCode.POWER_ON, DeviceState.IDLE, 0)))
    assert not is_telemetry_frame(encode(GetStatus(), 7))


def test_outbuffer_sheds_whole_telemetry_frames_first() -> None:
    buf = OutBuffer(cap=4096)
    event = encode(Event(9, 0, EventCode.STOPPED, DeviceState.HOLD, 0))
    reply = Device().firmware.status()
    reply_frame = encode(reply, 42)
    head = telemetry_frame(0)
    buf.append(head[5:])  # the head frame was partly written already: it must stay intact
    for n in range(1, 200):
        buf.append(telemetry_frame(n))
        if n % 50 == 0:
            buf.append(event)
            buf.append(reply_frame)
    assert len(buf) <= 4096
    assert buf.dropped_telemetry > 0 and buf.dropped_other == 0
    out = bytearray()
    buf.write_to(lambda b: (out.extend(b), len(b))[1])
    assert not buf
    assert out.startswith(head[5:])
    frames = frames_of(bytes(out[len(head) - 5 :]))
    samples = [f.message.sample_no for f in frames if isinstance(f.message, Telemetry)]
    assert samples == sorted(samples) and samples[-1] == 199  # the newest are kept
    assert len(samples) == 199 - buf.dropped_telemetry
    assert sum(isinstance(f.message, Event) for f in frames) == 3
    assert sum(isinstance(f.message, StatusReport) and f.seq == 42 for f in frames) == 3
    assert buf.dropped_bytes == sum(len(telemetry_frame(n)) for n in range(1, 200)) - sum(
        len(telemetry_frame(n)) for n in samples
    )


def test_outbuffer_drops_replies_only_when_nothing_else_is_left() -> None:
    buf = OutBuffer(cap=2048)
    reply_frame = encode(Device().firmware.status(), 1)
    for _ in range(100):
        buf.append(reply_frame)
    assert len(buf) <= 2048 and buf.dropped_other > 0 and buf.dropped_telemetry == 0
    out = bytearray()
    buf.write_to(lambda b: (out.extend(b), len(b))[1])
    assert len(frames_of(bytes(out))) == 100 - buf.dropped_other


def test_outbuffer_rejects_a_tiny_cap() -> None:
    with pytest.raises(ValueError, match="cap"):
        OutBuffer(cap=10)
