"""The ground-truth trace (CSV format, decimation, flushing) and the simulator's numerical building blocks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim import Device, ElectrodeLift, FaultSchedule, TraceWriter
from firmware_sim.detect import moving_mean, run_lengths, sliding_min
from firmware_sim.plant import linear_recurrence
from firmware_sim.trace import HEADER, TraceBlock, format_rows
from iontodrive.protocol import OPEN_CIRCUIT_OHM, DeviceState

# ----------------------------------------------------------------------------------------------- trace


def block_of(n: int, rng: np.random.Generator, scale: float = 1.0) -> TraceBlock:
    return TraceBlock(
        step=np.arange(n),
        t_s=(np.arange(n) + 1) * 0.001 * scale,
        state=rng.integers(0, 10, n),
        setpoint_ua=rng.random(n) * 4000,
        output_ua=np.where(rng.random(n) < 0.2, 0.0, rng.random(n) * 30_000 * scale),
        voltage_mv=rng.random(n) * 80_000,
        impedance_ohm=np.where(rng.random(n) < 0.1, np.inf, rng.random(n) * 1e5),
        charge_uas=rng.random(n) * 3.6e7 * scale,
        physical=np.zeros(n, dtype=bool),
        polarity=np.zeros(n, dtype=np.int64),
        session=np.zeros(n, dtype=np.int64),
    )


def reference_rows(block: TraceBlock) -> list[str]:
    out = []
    for i in range(block.t_s.shape[0]):
        z = block.impedance_ohm[i]
        z = float(OPEN_CIRCUIT_OHM) if math.isinf(z) else z
        out.append(
            f"{block.t_s[i]:.6f},{DeviceState(int(block.state[i])).name},{block.setpoint_ua[i]:.3f},"
            f"{block.output_ua[i]:.3f},{block.voltage_mv[i]:.2f},{z:.1f},{block.charge_uas[i]:.3f}"
        )
    return out


@pytest.mark.parametrize(
    ("n", "scale"), [(1, 1.0), (5, 1.0), (47, 1.0), (48, 1.0), (500, 1.0), (5000, 1.0), (300, 1000.0)]
)
def test_rows_match_python_formatting(n: int, scale: float) -> None:
    block = block_of(n, np.random.default_rng(n), scale)
    got = format_rows(block).decode().splitlines()
    want = reference_rows(block)
    assert len(got) == n
    assert any(row.split(",")[3] == "0.000" for row in got) or n < 5  # zeros print as 0.000
    mismatched = [(g, w) for g, w in zip(got, want, strict=True) if g != w]
    # the vectorised path rounds the scaled float; a last-digit tie may differ from exact decimal rounding
    for g, w in mismatched:
        assert g.split(",")[1] == w.split(",")[1]
        numbers = [float(a) for i, a in enumerate(g.split(",")) if i != 1]
        expected = [float(b) for i, b in enumerate(w.split(",")) if i != 1]
        assert numbers == pytest.approx(expected, abs=0.0011)
    assert len(mismatched) <= max(2, n // 100)
    assert " " not in "".join(got)


@given(st.integers(min_value=0, max_value=8), st.data())
def test_a_value_that_rounds_up_to_the_next_power_of_ten_keeps_its_leading_digit(
    power: int, data: st.DataObject
) -> None:
    """Regression: a block whose largest value was just below 10**k (e.g. 999.9996 µA) was given k integer
    digits, so rows rounding to 10**k printed as ``000.000`` (a 1 mA output recorded as zero)."""
    n = data.draw(st.integers(min_value=48, max_value=120))
    below = 10.0**power - data.draw(st.floats(min_value=1e-7, max_value=4.9e-4))
    rng = np.random.default_rng(power)
    values = np.full(n, below)
    values[: n // 2] = below - rng.random(n // 2) * 0.002
    block = TraceBlock(
        step=np.arange(n),
        t_s=(np.arange(n) + 1) * 0.001,
        state=np.full(n, int(DeviceState.HOLD)),
        setpoint_ua=values,
        output_ua=values,
        voltage_mv=values / 10,
        impedance_ohm=values,
        charge_uas=values,
        physical=np.zeros(n, dtype=bool),
        polarity=np.zeros(n, dtype=np.int64),
        session=np.zeros(n, dtype=np.int64),
    )
    for row, want in zip(format_rows(block).decode().splitlines(), reference_rows(block), strict=True):
        numbers = [float(a) for i, a in enumerate(row.split(",")) if i != 1]
        expected = [float(b) for i, b in enumerate(want.split(",")) if i != 1]
        assert numbers == pytest.approx(expected, abs=0.0011), (row, want)


def test_trace_file_every_step_and_decimated(tmp_path: Path) -> None:
    full, sparse = tmp_path / "full.csv", tmp_path / "sparse.csv"
    for path, rate in ((full, None), (sparse, 50.0)):
        device = Device(trace=TraceWriter(path, rate_hz=rate))
        device.advance(2.0)
        device.close()
    rows = full.read_text().splitlines()
    assert rows[0] == HEADER
    assert len(rows) == 1 + 2000
    assert rows[1].startswith("0.001000,IDLE,0.000,0.000,")
    sparse_rows = sparse.read_text().splitlines()[1:]
    assert len(sparse_rows) == 100
    assert [r.split(",")[0] for r in sparse_rows[:3]] == ["0.020000", "0.040000", "0.060000"]


def test_trace_is_flushed_after_every_block(tmp_path: Path) -> None:
    path = tmp_path / "live.csv"
    device = Device(trace=path)
    device.advance(0.5)
    assert len(path.read_text().splitlines()) == 501  # readable before close
    device.inject(ElectrodeLift(at_s=0.6))
    device.advance(0.5)
    last = path.read_text().splitlines()[-1].split(",")
    assert last[0] == "1.000000" and last[5] == f"{float(OPEN_CIRCUIT_OHM):.1f}"
    device.close()


# ------------------------------------------------------------------------------------------- numerics


@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=300),
    st.floats(-1e3, 1e3),
    st.integers(0, 2**31),
)
def test_linear_recurrence_matches_a_loop(a: list[float], x0: float, seed: int) -> None:
    arr = np.array(a)
    b = np.random.default_rng(seed).normal(size=arr.shape[0]) * 100
    got = linear_recurrence(arr, b, x0)
    x = x0
    for i in range(arr.shape[0]):
        x = arr[i] * x + b[i]
        assert got[i] == pytest.approx(x, rel=1e-9, abs=1e-9)


@given(st.integers(1, 50), st.integers(1, 200), st.integers(0, 2**31))
def test_sliding_min_and_moving_mean_match_naive(width: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    history = rng.normal(size=width - 1)
    block = np.where(rng.random(n) < 0.2, np.inf, rng.normal(size=n))
    data = np.concatenate((history, block))
    want_min = [data[i : i + width].min() for i in range(n)]
    assert np.array_equal(sliding_min(history, block), np.array(want_min))
    finite = np.nan_to_num(block, posinf=0.0)
    data = np.concatenate((history, finite))
    want_mean = [data[i : i + width].mean() for i in range(n)]
    np.testing.assert_allclose(moving_mean(history, finite), want_mean, rtol=1e-9, atol=1e-9)


@given(st.lists(st.booleans(), min_size=1, max_size=100), st.integers(0, 1000))
def test_run_lengths(cond: list[bool], carry: int) -> None:
    got = run_lengths(np.array(cond), carry)
    run = carry
    for i, c in enumerate(cond):
        run = run + 1 if c else 0
        assert got[i] == run


def test_noise_does_not_depend_on_block_grouping() -> None:
    plant = Device(seed=4).plant
    whole = plant.noise(8000, 500)
    parts = np.concatenate([plant.noise(8000 + k, 1) for k in range(500)])
    assert np.array_equal(whole, parts)


def test_lift_area_profile() -> None:
    schedule = FaultSchedule()
    schedule.add(ElectrodeLift(at_s=1.0, duration_s=0.3), now_s=0.0)
    area = schedule.inputs(np.array([0.5, 1.0, 1.15, 1.3, 2.0])).area
    np.testing.assert_allclose(area, [1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="duration_s"):
        schedule.add(ElectrodeLift(duration_s=0), now_s=0.0)
    with pytest.raises(TypeError):
        schedule.add("lift", now_s=0.0)  # type: ignore[arg-type]
