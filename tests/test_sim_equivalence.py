"""Block stepping is an optimisation only: the same seed gives the same run as a step-by-step loop."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_sim import ContactReturn, Device, ElectrodeLift, ImpedanceRise, OverCurrent, TraceRecorder
from firmware_sim.host import SimHost
from iontodrive.protocol import Ack, ClearFault, Polarity, Resume, SetCurrent, Start


def scripted_run(max_block_steps: int) -> tuple[Device, SimHost, dict[str, np.ndarray]]:
    rec = TraceRecorder()
    device = Device(
        trace=rec, max_block_steps=max_block_steps, physics_step_s=0.005, telemetry_hz=20, seed=11
    )
    host = SimHost(device)
    assert isinstance(host.request(Start(4000, 0, 60_000, 5000, 5000, Polarity.CATHODE)), Ack)
    device.inject(ElectrodeLift(at_s=7.0))
    device.inject(ContactReturn(at_s=8.0))
    host.run(10.0, step_s=0.25)
    assert isinstance(host.request(Resume()), Ack)
    host.run(7.0, step_s=0.25)
    device.inject(OverCurrent(at_s=device.session_time_s + 0.5, duration_s=2.0))
    host.run(3.0, step_s=0.25)
    assert isinstance(host.request(ClearFault()), Ack)
    assert isinstance(host.request(Start(4000, 0, 60_000, 5000, 5000, Polarity.ANODE)), Ack)
    host.run(7.0, step_s=0.25)
    assert isinstance(host.request(SetCurrent(3000, 5000)), Ack)
    device.inject(ImpedanceRise(at_s=device.session_time_s + 1.0, factor=8.0, duration_s=12.0))
    host.run(16.0, step_s=0.25)
    return device, host, rec.columns


@pytest.fixture(scope="module")
def runs() -> tuple[
    tuple[Device, SimHost, dict[str, np.ndarray]], tuple[Device, SimHost, dict[str, np.ndarray]]
]:
    return scripted_run(65_536), scripted_run(1)


def test_same_trace(runs: tuple) -> None:
    (_, _, a), (_, _, b) = runs
    assert a["t_s"].shape == b["t_s"].shape
    np.testing.assert_array_equal(a["state"], b["state"])
    np.testing.assert_array_equal(a["setpoint_ua"], b["setpoint_ua"])
    for column in ("output_ua", "voltage_mv", "charge_uas", "impedance_ohm"):
        np.testing.assert_allclose(a[column], b[column], rtol=1e-9, atol=1e-6, err_msg=column)


def test_same_events_and_telemetry(runs: tuple) -> None:
    (da, ha, _), (db, hb, _) = runs
    events_a = [(e.event_no, e.device_time_ms, e.code, e.state, e.value) for e in da.events]
    events_b = [(e.event_no, e.device_time_ms, e.code, e.state, e.value) for e in db.events]
    assert events_a == events_b
    assert ha.telemetry == hb.telemetry
    codes = {e[2].name for e in events_a}
    # the script exercised the interesting triggers
    assert {"ELECTRODE_LIFT", "RESUMED", "SETPOINT_CHANGED", "RESISTANCE_LIMIT", "OVERCURRENT_TRIP"} <= codes
