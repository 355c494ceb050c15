"""Ramp controller: plans never exceed the slew limit, start at the read-back, end at the target."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from iontodrive.errors import SafetyRefusal
from iontodrive.ramp import (
    RampProfile,
    SetpointStream,
    check_steps,
    min_ramp_duration_s,
    plan_ramp,
    predict_session,
    profile_fraction,
)

PROFILES = st.sampled_from(list(RampProfile))
CURRENTS = st.floats(min_value=0.0, max_value=50_000.0, allow_nan=False)
SLEWS = st.floats(min_value=1.0, max_value=100_000.0, allow_nan=False)
RATES = st.floats(min_value=1.0, max_value=1000.0, allow_nan=False)
DURATIONS = st.floats(min_value=0.0, max_value=120.0, allow_nan=False)


def _numeric_peak_slope(profile: RampProfile, delta: float, duration: float) -> float:
    """Peak |d setpoint / dt| of a profile, by finite differences on a fine grid."""
    t = np.linspace(0.0, duration, 200_001)
    values = delta * profile_fraction(profile, t / duration)
    return float(np.max(np.abs(np.diff(values) / np.diff(t))))


def _slew_tolerance(limit: float) -> float:
    return limit * (1 + 1e-9) + 1e-9


# ------------------------------------------------------------------------------------------ minimum ramp


@pytest.mark.parametrize("profile", list(RampProfile))
def test_min_ramp_duration_makes_peak_slope_equal_to_the_limit(profile: RampProfile) -> None:
    delta, slew = 4000.0, 250.0
    shortest = min_ramp_duration_s(delta, slew, profile)
    peak = _numeric_peak_slope(profile, delta, shortest)
    assert peak == pytest.approx(slew, rel=1e-4)


def test_raised_cosine_needs_pi_over_two_times_the_linear_minimum() -> None:
    linear = min_ramp_duration_s(-3000.0, 600.0, RampProfile.LINEAR)
    cosine = min_ramp_duration_s(-3000.0, 600.0, RampProfile.RAISED_COSINE)
    assert linear == pytest.approx(3000.0 / 600.0)
    assert cosine / linear == pytest.approx(math.pi / 2)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"delta_ua": float("nan"), "slew_limit_ua_per_s": 1.0}, "delta_ua"),
        ({"delta_ua": 1.0, "slew_limit_ua_per_s": 0.0}, "slew_limit_ua_per_s"),
        ({"delta_ua": 1.0, "slew_limit_ua_per_s": -5.0}, "slew_limit_ua_per_s"),
        ({"delta_ua": 1.0, "slew_limit_ua_per_s": float("inf")}, "slew_limit_ua_per_s"),
        ({"delta_ua": True, "slew_limit_ua_per_s": 1.0}, "delta_ua"),
    ],
)
def test_min_ramp_duration_refuses_bad_input(kwargs: dict, field: str) -> None:
    with pytest.raises(SafetyRefusal) as info:
        min_ramp_duration_s(**kwargs)
    assert info.value.field == field


# --------------------------------------------------------------------------------------------- plan_ramp


@settings(max_examples=200, deadline=None)
@given(readback=CURRENTS, target=CURRENTS, duration=DURATIONS, slew=SLEWS, rate=RATES, profile=PROFILES)
def test_plan_starts_at_readback_ends_at_target_and_respects_slew(
    readback: float, target: float, duration: float, slew: float, rate: float, profile: RampProfile
) -> None:
    shortest = abs(target - readback) / slew * profile.peak_slope_factor
    assume(max(duration, shortest) * rate < 50_000)  # keep each example small
    plan = plan_ramp(readback, target, duration, slew_limit_ua_per_s=slew, profile=profile, rate_hz=rate)

    assert plan.setpoints_ua[0] == readback
    assert plan.setpoints_ua[-1] == target
    assert plan.times_s[0] == 0.0
    assert plan.times_s[-1] == pytest.approx(plan.duration_s)
    assert check_steps(plan.setpoints_ua, slew, rate)
    assert plan.max_step_ua <= _slew_tolerance(slew / rate)
    if plan.times_s.size > 1:
        assert np.max(np.diff(plan.times_s)) <= 1.0 / rate * (1 + 1e-9)
    # Never faster than allowed; never slower than asked unless stretched.
    if readback != target:
        assert plan.duration_s >= shortest
        if duration >= shortest:
            assert not plan.stretched
        elif duration < shortest - 1e-9 * max(1.0, shortest):  # shorter than float tolerance allows
            assert plan.stretched
        if not plan.stretched:
            assert plan.duration_s == pytest.approx(duration)
    if plan.duration_s > 1e-6:  # (sub-normal deltas make finite differences meaningless)
        # The continuous profile, not just the samples, stays within the limit.
        t = np.linspace(0.0, plan.duration_s, 2001)
        slopes = np.abs(np.diff(plan.setpoint_at(t)) / np.diff(t))
        assert float(np.max(slopes)) <= _slew_tolerance(slew)
        # charge_uas is the exact integral of the continuous profile.
        fine = np.linspace(0.0, plan.duration_s, 20_001)
        numeric = np.trapezoid(plan.setpoint_at(fine), fine)
        assert plan.charge_uas == pytest.approx(numeric, rel=1e-6, abs=1e-6)
    if readback == target:
        assert plan.duration_s == 0.0 and plan.charge_uas == 0.0 and plan.setpoints_ua.size == 1


@settings(max_examples=100, deadline=None)
@given(readback=CURRENTS, target=CURRENTS, slew=SLEWS, profile=PROFILES)
def test_plan_too_fast_without_stretch_is_refused_with_the_minimum(
    readback: float, target: float, slew: float, profile: RampProfile
) -> None:
    shortest = abs(target - readback) / slew * profile.peak_slope_factor
    assume(shortest > 1e-6)
    requested = shortest * 0.5
    with pytest.raises(SafetyRefusal) as info:
        plan_ramp(readback, target, requested, slew_limit_ua_per_s=slew, profile=profile, stretch=False)
    assert info.value.field == "ramp_s"
    assert info.value.value == requested
    assert info.value.minimum == pytest.approx(shortest)
    assert "slew" in str(info.value)


def test_plan_at_exactly_the_limit_is_accepted_without_stretch() -> None:
    slew = 333.0
    shortest = min_ramp_duration_s(4000.0, slew, RampProfile.RAISED_COSINE)
    plan = plan_ramp(
        0.0, 4000.0, shortest, slew_limit_ua_per_s=slew, profile=RampProfile.RAISED_COSINE, stretch=False
    )
    assert not plan.stretched
    assert plan.duration_s >= shortest


def test_zero_length_ramp_when_already_at_target() -> None:
    plan = plan_ramp(1234.5, 1234.5, 30.0, slew_limit_ua_per_s=100.0)
    assert plan.duration_s == 0.0
    assert plan.setpoints_ua.tolist() == [1234.5]
    assert plan.charge_uas == 0.0


def test_a_difference_whose_shortest_ramp_underflows_is_one_step_without_nan() -> None:
    # 5e-324 µA at 1e10 µA/s: the shortest ramp is 0.0 s in floating point. The plan divided 0 by 0 (the
    # "invalid value encountered in divide" warning some test runs showed), and only overwriting both end
    # points hid the NaN set-points.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = plan_ramp(0.0, 5e-324, 0.0, slew_limit_ua_per_s=1e10)
    assert plan.duration_s == 0.0
    assert list(plan.setpoints_ua) == [0.0, 5e-324]
    assert not np.isnan(plan.setpoints_ua).any()


def test_plan_arrays_are_read_only() -> None:
    plan = plan_ramp(0.0, 100.0, 1.0, slew_limit_ua_per_s=1000.0)
    with pytest.raises(ValueError):
        plan.setpoints_ua[1] = 1e9


def test_ramp_down_from_readback_not_from_an_assumed_value() -> None:
    # The source reads back 2700 µA although 4000 µA was last commanded: the ramp begins at 2700.
    plan = plan_ramp(2700.0, 0.0, 30.0, slew_limit_ua_per_s=500.0)
    assert plan.setpoints_ua[0] == 2700.0
    assert np.all(np.diff(plan.setpoints_ua) <= 0)


BAD_NUMBERS = [float("nan"), float("inf"), -float("inf"), True, "12", None]


@pytest.mark.parametrize("bad", BAD_NUMBERS)
@pytest.mark.parametrize("field", ["readback_ua", "target_ua", "ramp_s", "slew_limit_ua_per_s", "rate_hz"])
def test_plan_refuses_bad_numbers_naming_the_field(field: str, bad: object) -> None:
    args = {
        "readback_ua": 0.0,
        "target_ua": 100.0,
        "ramp_s": 1.0,
        "slew_limit_ua_per_s": 500.0,
        "rate_hz": 20.0,
    }
    args[field] = bad
    with pytest.raises(SafetyRefusal) as info:
        plan_ramp(
            args["readback_ua"],
            args["target_ua"],
            args["ramp_s"],
            slew_limit_ua_per_s=args["slew_limit_ua_per_s"],
            rate_hz=args["rate_hz"],
        )
    assert info.value.field == field


@pytest.mark.parametrize(
    ("field", "value"), [("ramp_s", -1.0), ("slew_limit_ua_per_s", 0.0), ("rate_hz", -20.0), ("rate_hz", 0)]
)
def test_plan_refuses_out_of_range_with_range(field: str, value: float) -> None:
    args = {"ramp_s": 1.0, "slew_limit_ua_per_s": 500.0, "rate_hz": 20.0, field: value}
    with pytest.raises(SafetyRefusal) as info:
        plan_ramp(
            0.0,
            100.0,
            args["ramp_s"],
            slew_limit_ua_per_s=args["slew_limit_ua_per_s"],
            rate_hz=args["rate_hz"],
        )
    assert info.value.field == field
    assert info.value.minimum == 0.0


def test_plan_refuses_unknown_profile() -> None:
    with pytest.raises(SafetyRefusal) as info:
        plan_ramp(0.0, 1.0, 1.0, slew_limit_ua_per_s=1.0, profile="square")  # type: ignore[arg-type]
    assert info.value.field == "profile"


def test_plan_refuses_absurd_point_count() -> None:
    with pytest.raises(SafetyRefusal) as info:
        plan_ramp(0.0, 1.0, 1e6, slew_limit_ua_per_s=1.0, rate_hz=1000.0)
    assert info.value.field == "rate_hz"
    assert info.value.maximum is not None and info.value.maximum < 1000.0


# --------------------------------------------------------------------------------------- predict_session


def _numeric_charge(plan, points: int = 100_001) -> float:
    t = np.linspace(0.0, plan.total_s, points)
    return float(np.trapezoid(plan.setpoint_at(t), t)) * plan.duty_fraction


@settings(max_examples=80, deadline=None)
@given(
    target=st.floats(min_value=10.0, max_value=30_000.0),
    up=st.floats(min_value=0.0, max_value=60.0),
    down=st.floats(min_value=0.0, max_value=60.0),
    extra=st.floats(min_value=0.0, max_value=3600.0),
    profile=PROFILES,
)
def test_time_based_charge_matches_numeric_integral(
    target: float, up: float, down: float, extra: float, profile: RampProfile
) -> None:
    assume(up + down + extra > 0.1)
    plan = predict_session(target, up, down, duration_s=up + down + extra, profile=profile)
    assert plan.total_s == pytest.approx(up + down + extra)
    assert plan.hold_s == pytest.approx(extra, abs=1e-9)
    assert plan.charge_uas == pytest.approx(_numeric_charge(plan), rel=1e-3)
    assert plan.ramp_up_charge_uas + plan.ramp_down_charge_uas + target * plan.hold_s == pytest.approx(
        plan.charge_uas
    )
    assert float(plan.charge_at(plan.total_s)) == pytest.approx(plan.charge_uas)


@settings(max_examples=80, deadline=None)
@given(
    target=st.floats(min_value=10.0, max_value=30_000.0),
    up=st.floats(min_value=5.0, max_value=60.0),
    down=st.floats(min_value=5.0, max_value=60.0),
    hold_charge=st.floats(min_value=0.0, max_value=5_000_000.0),
    profile=PROFILES,
    duty=st.sampled_from([1.0, 0.5, 0.1]),
)
def test_dose_based_plan_lands_on_the_dose(
    target: float, up: float, down: float, hold_charge: float, profile: RampProfile, duty: float
) -> None:
    ramps = target * duty * (up + down) / 2
    dose = ramps + hold_charge
    plan = predict_session(target, up, down, dose_uas=dose, profile=profile, duty_fraction=duty)
    assert plan.dose_based
    assert plan.charge_uas == pytest.approx(dose)
    assert _numeric_charge(plan) == pytest.approx(dose, rel=1e-3)
    # S11: the ramp down starts when delivered + the ramp down's own charge equals the dose.
    delivered_at_ramp_down = float(plan.charge_at(plan.ramp_down_start_s))
    assert delivered_at_ramp_down + plan.ramp_down_charge_uas == pytest.approx(dose)
    assert float(plan.charge_at(plan.total_s)) == pytest.approx(dose)
    assert plan.total_s == pytest.approx(up + down + plan.hold_s)
    assert plan.remaining_s(plan.ramp_down_start_s) == pytest.approx(down)


def test_dose_smaller_than_the_ramps_is_refused_with_the_ramp_charge_as_minimum() -> None:
    target, up, down = 4000.0, 30.0, 30.0
    ramps = target * (up + down) / 2
    with pytest.raises(SafetyRefusal) as info:
        predict_session(target, up, down, dose_uas=ramps * 0.9)
    assert info.value.field == "dose_uas"
    assert info.value.minimum == pytest.approx(ramps)
    # Exactly the ramps' charge is allowed: no hold.
    plan = predict_session(target, up, down, dose_uas=ramps)
    assert plan.hold_s == 0.0 and plan.total_s == pytest.approx(up + down)


def test_duration_shorter_than_the_ramps_is_refused() -> None:
    with pytest.raises(SafetyRefusal) as info:
        predict_session(1000.0, 30.0, 30.0, duration_s=59.0)
    assert info.value.field == "duration_s"
    assert info.value.minimum == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dose_uas": 1e6, "duration_s": 100.0}, "dose_uas"),
        ({}, "duration_s"),
        ({"dose_uas": float("nan")}, "dose_uas"),
        ({"dose_uas": -1.0}, "dose_uas"),
        ({"duration_s": 0.0}, "duration_s"),
        ({"duration_s": 100.0, "duty_fraction": 0.0}, "duty_fraction"),
        ({"duration_s": 100.0, "duty_fraction": 1.5}, "duty_fraction"),
    ],
)
def test_predict_session_refuses_bad_amounts(kwargs: dict, field: str) -> None:
    with pytest.raises(SafetyRefusal) as info:
        predict_session(1000.0, 10.0, 10.0, **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(("field", "value"), [("target_ua", 0.0), ("target_ua", True), ("ramp_up_s", -1.0)])
def test_predict_session_refuses_bad_shape(field: str, value: object) -> None:
    args = {"target_ua": 1000.0, "ramp_up_s": 10.0, field: value}
    with pytest.raises(SafetyRefusal) as info:
        predict_session(args["target_ua"], args["ramp_up_s"], 10.0, duration_s=100.0)
    assert info.value.field == field


def test_session_setpoint_profile_is_zero_outside_and_target_in_hold() -> None:
    plan = predict_session(2000.0, 10.0, 20.0, duration_s=100.0, profile=RampProfile.RAISED_COSINE)
    values = plan.setpoint_at(np.array([-1.0, 0.0, 5.0, 10.0, 50.0, 80.0, 90.0, 100.0, 101.0]))
    assert values[0] == 0.0 and values[1] == 0.0 and values[-1] == 0.0
    assert values[2] == pytest.approx(1000.0)  # half-way up a symmetric profile
    assert values[3] == values[4] == values[5] == 2000.0
    assert values[6] == pytest.approx(1000.0)  # half-way down
    assert values[7] == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------------------------- SetpointStream


@settings(max_examples=60, deadline=None)
@given(
    readback=CURRENTS,
    target=CURRENTS,
    ramp_s=st.floats(min_value=0.0, max_value=60.0),
    slew=st.floats(min_value=50.0, max_value=10_000.0),
    cut=st.floats(min_value=0.0, max_value=1.0),
    disturbance=st.floats(min_value=-200.0, max_value=200.0),
)
def test_stream_steps_within_slew_and_resumes_from_a_new_readback(
    readback: float, target: float, ramp_s: float, slew: float, cut: float, disturbance: float
) -> None:
    stream = SetpointStream(slew_limit_ua_per_s=slew, rate_hz=20.0)
    assume(abs(target - readback) / slew * 20.0 < 20_000)
    first = list(stream.segment(readback, target, ramp_s))
    assert first[0] == (0.0, readback)
    assert first[-1][1] == target
    values = np.array([v for _, v in first])
    times = np.array([t for t, _ in first])
    assert check_steps(values, slew, 20.0)
    if times.size > 1:
        assert np.max(np.diff(times)) <= 1 / 20.0 * (1 + 1e-9)

    # Interrupt part-way; the output reads back somewhere near where it was; restart from that read-back.
    stopped_at = first[int(cut * (len(first) - 1))][1]
    readback_now = max(0.0, stopped_at + disturbance)
    second = list(stream.segment(readback_now, target, ramp_s))
    assert second[0][1] == readback_now
    assert second[-1][1] == target
    assert check_steps(np.array([v for _, v in second]), slew, 20.0)
    assert stream.last_setpoint_ua == target


def test_stream_refuses_before_yielding_and_can_skip_the_start_point() -> None:
    stream = SetpointStream(slew_limit_ua_per_s=100.0, rate_hz=10.0, stretch=False)
    with pytest.raises(SafetyRefusal) as info:
        stream.segment(0.0, 1000.0, 1.0)  # refused at call time, not on first next()
    assert info.value.field == "ramp_s" and info.value.minimum == pytest.approx(10.0)
    pairs = list(stream.segment(0.0, 1000.0, 10.0, include_start=False))
    assert pairs[0][0] == pytest.approx(0.1)
    assert pairs[-1] == (pytest.approx(10.0), 1000.0)
    assert stream.max_step_ua == pytest.approx(10.0)
    assert all(abs(b[1] - a[1]) <= 10.0 + 1e-9 for a, b in itertools.pairwise(pairs))


def test_stream_stretches_by_default_and_honours_profile_override() -> None:
    stream = SetpointStream(slew_limit_ua_per_s=100.0, rate_hz=10.0)
    plan = stream.plan(0.0, 1000.0, 1.0, profile=RampProfile.RAISED_COSINE)
    assert plan.stretched
    assert plan.duration_s == pytest.approx(10.0 * math.pi / 2)


@pytest.mark.parametrize(("field", "value"), [("slew_limit_ua_per_s", 0.0), ("rate_hz", float("nan"))])
def test_stream_refuses_bad_settings(field: str, value: float) -> None:
    kwargs = {"slew_limit_ua_per_s": 100.0, "rate_hz": 20.0, field: value}
    with pytest.raises(SafetyRefusal) as info:
        SetpointStream(**kwargs)
    assert info.value.field == field
