"""Prescriptions: device-independent validation, device limits (S1, S3, S11, S12, S13), wire conversion."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from devices import CLINIC, HYDRO
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from iontodrive.ceilings import effective_identity
from iontodrive.errors import RemoteProtocolError, SafetyRefusal
from iontodrive.prescription import (
    CONTACT_HIGH_CAP_OHM,
    CONTACT_LOW_OHM,
    Prescription,
    contact_limits_ohm,
)
from iontodrive.protocol import Decoder, Polarity, Waveform, encode


def dex(**overrides: object) -> Prescription:
    """Dexamethasone: 40 mA·min at 4 mA, cathode, on a 10 cm² electrode (0.4 mA/cm²)."""
    base = {"dose_ma_min": 40.0, "polarity": "cathode", "electrode_area_cm2": 10.0}
    base.update(overrides)
    current = base.pop("current_ma", 4.0)
    return Prescription(current, **base)  # type: ignore[arg-type]


def tap(**overrides: object) -> Prescription:
    base = {
        "current_ma": 15.0,
        "duration_s": 20 * 60.0,
        "polarity": "anode",
        "waveform": "pulsed",
        "pulse_frequency_hz": 1000,
        "electrode_area_cm2": 100.0,
    }
    base.update(overrides)
    return Prescription(**base)  # type: ignore[arg-type]


def refusal(fn, *args, **kwargs) -> SafetyRefusal:
    with pytest.raises(SafetyRefusal) as info:
        fn(*args, **kwargs)
    return info.value


# --------------------------------------------------------------------------------------- construction


def test_strings_are_normalised_to_enums_case_insensitively() -> None:
    p = Prescription(2, duration_s=600, polarity="CaThOdE", waveform="DC")
    assert p.polarity is Polarity.CATHODE and p.waveform is Waveform.DC
    assert isinstance(p.current_ma, float) and p.current_ma == 2.0
    q = tap(waveform="Pulsed_DC", polarity=Polarity.ANODE)
    assert q.waveform is Waveform.PULSED_DC and q.duty_percent == 50
    assert q.ramp_up_s == 30.0 and q.ramp_down_s == 30.0


def test_polarity_is_a_required_keyword() -> None:
    with pytest.raises(TypeError, match="polarity"):
        Prescription(4, dose_ma_min=40)  # type: ignore[call-arg]
    for bad in (None, "positive", Polarity.NONE, 2):
        assert refusal(Prescription, 4, dose_ma_min=40, polarity=bad).field == "polarity"


def test_replace_overrides_and_revalidates() -> None:
    p = dex()
    q = dataclasses.replace(p, current_ma=2.0, ramp_up_s=10)
    assert q.current_ma == 2.0 and q.ramp_up_s == 10.0 and q.polarity is Polarity.CATHODE
    assert refusal(dataclasses.replace, p, ramp_down_s=61).field == "ramp_down_s"


@pytest.mark.parametrize(
    ("kwargs", "field", "minimum", "maximum"),
    [
        ({"current_ma": 0.0}, "current_ma", 0.0, None),
        ({"current_ma": -1.0}, "current_ma", 0.0, None),
        ({"dose_ma_min": 0.0}, "dose_ma_min", 0.0, None),
        ({"dose_ma_min": None}, "dose_ma_min", None, None),
        ({"duration_s": 600.0}, "duration_s", None, None),  # both dose and duration
        ({"ramp_up_s": 4.999}, "ramp_up_s", 5.0, 60.0),
        ({"ramp_up_s": 60.001}, "ramp_up_s", 5.0, 60.0),
        ({"ramp_down_s": 0}, "ramp_down_s", 5.0, 60.0),
        ({"electrode_area_cm2": 0.0}, "electrode_area_cm2", 0.0, None),
        ({"pulse_frequency_hz": 100}, "pulse_frequency_hz", None, None),  # DC with a pulse field
        ({"duty_percent": 50}, "duty_percent", None, None),
        ({"waveform": "square"}, "waveform", None, None),
    ],
)
def test_device_independent_refusals_name_field_and_range(
    kwargs: dict, field: str, minimum: float | None, maximum: float | None
) -> None:
    err = refusal(dex, **kwargs)
    assert err.field == field
    assert err.minimum == minimum and err.maximum == maximum
    assert field in str(err)


def test_time_based_duration_must_cover_both_ramps() -> None:
    err = refusal(Prescription, 1, duration_s=39.9, ramp_up_s=20, ramp_down_s=20, polarity="anode")
    assert err.field == "duration_s" and err.minimum == 40.0
    assert Prescription(1, duration_s=40, ramp_up_s=20, ramp_down_s=20, polarity="anode").duration_s == 40.0


@pytest.mark.parametrize(
    ("kwargs", "field", "minimum", "maximum"),
    [
        ({"pulse_frequency_hz": None}, "pulse_frequency_hz", 1, None),
        ({"pulse_frequency_hz": 0}, "pulse_frequency_hz", 1, None),
        ({"pulse_frequency_hz": 99.5}, "pulse_frequency_hz", 1, None),
        ({"duty_percent": 9}, "duty_percent", 10, 90),
        ({"duty_percent": 91}, "duty_percent", 10, 90),
        ({"duty_percent": 50.5}, "duty_percent", 10, 90),
    ],
)
def test_pulse_field_refusals(kwargs: dict, field: str, minimum: int, maximum: int | None) -> None:
    err = refusal(tap, **kwargs)
    assert (err.field, err.minimum, err.maximum) == (field, minimum, maximum)


NUMERIC_FIELDS = ["current_ma", "dose_ma_min", "ramp_up_s", "ramp_down_s", "electrode_area_cm2"]
BAD_VALUES = [float("nan"), float("inf"), -float("inf"), True, False, "4", b"4", [4], -1.0]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=repr)
@pytest.mark.parametrize("field", NUMERIC_FIELDS)
def test_bad_numbers_are_refused_naming_the_field(field: str, bad: object) -> None:
    err = refusal(dex, **{field: bad})
    assert err.field == field
    assert err.value is bad


@pytest.mark.parametrize("bad", [*BAD_VALUES, 0], ids=repr)
def test_bad_durations_and_pulse_numbers_are_refused(bad: object) -> None:
    assert refusal(Prescription, 1, duration_s=bad, polarity="anode").field == "duration_s"
    if bad is not False and bad != 0:
        assert refusal(tap, pulse_frequency_hz=bad).field == "pulse_frequency_hz"
        assert refusal(tap, duty_percent=bad).field == "duty_percent"


# ------------------------------------------------------------------------------------ device limits (S12)


def test_valid_prescription_passes_without_warnings_and_converts_exactly() -> None:
    p = dex()
    assert p.check_against(CLINIC) == []
    start = p.to_start(CLINIC)
    assert start.target_current_ua == 4000
    assert start.dose_uas == 40 * 60_000
    assert (start.duration_ms, start.ramp_up_ms, start.ramp_down_ms) == (0, 30_000, 30_000)
    assert start.polarity is Polarity.CATHODE and start.waveform is Waveform.DC
    assert (start.pulse_frequency_hz, start.duty_percent) == (0, 0)
    frames = Decoder().feed(encode(start, seq=7))  # the protocol accepts every field
    assert frames[0].message == start


def test_current_above_device_maximum_is_refused_even_below_one_microampere_over() -> None:
    err = refusal(dex(current_ma=4.0004).check_against, CLINIC)
    assert (err.field, err.minimum, err.maximum) == ("current_ma", 0.001, 4.0)
    assert "clinic-4" in err.reason
    # Rounding never carries a value up past the limit: 3.9996 mA becomes exactly the 4000 µA maximum.
    assert dex(current_ma=3.9996).to_start(CLINIC).target_current_ua == 4000


def test_current_below_resolution_is_refused() -> None:
    err = refusal(Prescription(0.0004, duration_s=60, polarity="anode").check_against, CLINIC)
    assert err.field == "current_ma" and err.minimum == 0.001


def test_ramp_faster_than_the_slew_limit_names_the_ramp_and_the_shortest_time() -> None:
    # 4 mA at 400 µA/s needs at least 10 s.
    err = refusal(dex(ramp_up_s=9.999).check_against, CLINIC)
    assert err.field == "ramp_up_s"
    assert err.minimum == pytest.approx(4000 / 400) and err.maximum == 60.0
    assert "slew" in err.reason
    err = refusal(dex(ramp_down_s=5).check_against, CLINIC)
    assert err.field == "ramp_down_s"
    dex(ramp_up_s=10, ramp_down_s=10).check_against(CLINIC)


def test_device_ramp_range_narrows_s1() -> None:
    narrow = dataclasses.replace(CLINIC, min_ramp_ms=20_000, max_ramp_ms=40_000)
    err = refusal(dex(ramp_up_s=45).check_against, narrow)
    assert (err.field, err.minimum, err.maximum) == ("ramp_up_s", 20.0, 40.0)


def test_current_that_no_allowed_ramp_can_reach_names_the_current() -> None:
    slow = dataclasses.replace(CLINIC, slew_limit_ua_per_s=50)  # 60 s × 50 µA/s = 3 mA at most
    err = refusal(dex(ramp_up_s=60, ramp_down_s=60).check_against, slow)
    assert (err.field, err.maximum) == ("current_ma", 3.0)


def test_unsupported_waveform_and_pulse_frequency_range() -> None:
    err = refusal(tap(current_ma=4, electrode_area_cm2=None).check_against, CLINIC)
    assert err.field == "waveform" and "dc" in err.reason
    err = refusal(tap(pulse_frequency_hz=99).check_against, HYDRO)
    assert (err.field, err.minimum, err.maximum) == ("pulse_frequency_hz", 100, 10_000)
    start = tap(duty_percent=30).to_start(HYDRO)
    assert (start.waveform, start.pulse_frequency_hz, start.duty_percent) == (Waveform.PULSED_DC, 1000, 30)
    assert start.duration_ms == 1_200_000 and start.dose_uas == 0


def test_dose_above_the_cap_is_refused_in_user_units() -> None:
    err = refusal(dex(dose_ma_min=80.001).check_against, CLINIC)
    assert err.field == "dose_ma_min" and err.maximum == 80.0


def test_dose_below_the_charge_of_the_ramps_is_refused_with_that_charge_as_minimum() -> None:
    # 4 mA, ramps 30 s + 30 s: the ramps alone carry 4 mA × 30 s = 2 mA·min.
    ramps_ma_min = 4.0 * (30 + 30) / 2 / 60
    err = refusal(dex(dose_ma_min=ramps_ma_min * 0.99).check_against, CLINIC)
    assert err.field == "dose_ma_min"
    assert err.minimum == pytest.approx(ramps_ma_min)
    plan = dex(dose_ma_min=ramps_ma_min).expected_plan(CLINIC)
    assert plan.hold_s == 0.0 and plan.total_s == pytest.approx(60.0)


def test_duration_above_the_device_maximum_is_refused() -> None:
    err = refusal(Prescription(1, duration_s=3600.5, polarity="anode").check_against, CLINIC)
    assert (err.field, err.minimum, err.maximum) == ("duration_s", 60.0, 3600.0)


def test_dose_based_session_longer_than_the_device_allows_is_refused() -> None:
    # 80 mA·min at 1 mA takes 80 min + 30 s, beyond clinic-4's 60 min.
    err = refusal(dex(current_ma=1.0, dose_ma_min=80).check_against, CLINIC)
    assert err.field == "dose_ma_min"
    longest = 1.0 * (60 - 0.5)  # mA·min deliverable in 60 min with 30 s lost to the two ramps
    assert err.maximum == pytest.approx(longest)
    dex(current_ma=1.0, dose_ma_min=longest).check_against(CLINIC)


def test_time_based_session_whose_charge_would_pass_the_dose_cap_is_refused() -> None:
    small_cap = dataclasses.replace(HYDRO, dose_cap_uas=15_000 * 600)  # 10 min at 15 mA
    err = refusal(Prescription(15, duration_s=700, polarity="anode").check_against, small_cap)
    assert err.field == "duration_s"
    assert err.maximum == pytest.approx(600 + 30)  # the two ramps carry half their time at full current
    assert "dose cap" in err.reason


def test_identity_with_unusable_limits_is_a_remote_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError):
        dex().check_against(dataclasses.replace(CLINIC, slew_limit_ua_per_s=0))


# -------------------------------------------------------------------------------- current density (S13)


def test_density_warns_above_half_and_refuses_above_two_milliampere_per_square_centimetre() -> None:
    assert dex(electrode_area_cm2=8.0).check_against(CLINIC) == []  # 0.5 mA/cm² exactly
    warnings = dex(electrode_area_cm2=4.0).check_against(CLINIC)  # 1 mA/cm²
    assert len(warnings) == 1 and "density" in warnings[0]
    dex(electrode_area_cm2=2.0).check_against(CLINIC)  # 2 mA/cm² exactly: allowed
    err = refusal(dex(electrode_area_cm2=1.99).check_against, CLINIC)
    assert err.field == "current_ma" and err.maximum == pytest.approx(2 * 1.99)
    assert "S13" in err.reason and "at least 2 cm²" in err.reason


def test_density_warning_threshold_is_configurable_within_bounds() -> None:
    assert dex(electrode_area_cm2=10.0).check_against(CLINIC, density_warn_ma_per_cm2=0.3) != []
    assert (
        refusal(dex().check_against, CLINIC, density_warn_ma_per_cm2=2.5).field == "density_warn_ma_per_cm2"
    )


def test_missing_area_gives_a_warning_not_a_refusal() -> None:
    warnings = dex(electrode_area_cm2=None).check_against(CLINIC)
    assert any("electrode_area_cm2" in w for w in warnings)


# ------------------------------------------------------------------------------------ contact limits (S3)


def test_contact_limits_default_and_compliance_bound() -> None:
    assert contact_limits_ohm(CLINIC, 4000) == (
        CONTACT_LOW_OHM,
        CONTACT_HIGH_CAP_OHM,
    )  # 0.8·80 V/4 mA = 16 kΩ
    low, high = contact_limits_ohm(HYDRO, 15_000)  # 0.8 × 60 V / 15 mA = 3200 Ω
    assert (low, high) == (200, 3200)
    _, high = contact_limits_ohm(HYDRO, 7000)  # 48 V / 7 mA = 6857.14 Ω, rounded down
    assert high == math.floor(0.8 * 60 / 0.007)
    assert any("3200 Ω" in w for w in tap().check_against(HYDRO))


def test_contact_limits_are_configurable_within_hard_bounds() -> None:
    assert contact_limits_ohm(CLINIC, 1000, low_ohm=500, high_cap_ohm=8000) == (500, 8000)
    for kwargs, field in [
        ({"low_ohm": 50}, "contact_low_ohm"),
        ({"low_ohm": 2000}, "contact_low_ohm"),
        ({"high_cap_ohm": 50_000}, "contact_high_cap_ohm"),
        ({"high_cap_ohm": 500}, "contact_high_cap_ohm"),
        ({"low_ohm": 1000, "high_cap_ohm": 1000}, "contact_high_cap_ohm"),
        ({"low_ohm": True}, "contact_low_ohm"),
    ]:
        assert refusal(contact_limits_ohm, CLINIC, 1000, **kwargs).field == field
    assert refusal(contact_limits_ohm, CLINIC, 0).field == "current_ua"
    assert refusal(contact_limits_ohm, CLINIC, 5000).field == "current_ua"


def test_compliance_too_low_for_any_contact_refuses_the_current() -> None:
    weak = dataclasses.replace(CLINIC, compliance_mv=500)  # 0.8 × 0.5 V / 200 Ω = 2 mA at most
    err = refusal(contact_limits_ohm, weak, 3000)
    assert (err.field, err.maximum) == ("current_ma", 2.0)
    assert (
        refusal(dex(current_ma=3.0, ramp_up_s=10, ramp_down_s=10).check_against, weak).field == "current_ma"
    )


# --------------------------------------------------------------------------- conversion (hypothesis)


# The limits a prescription is judged against: HYDRO's, each lowered to the driver's cap (S18).
HYDRO_LIMITS = effective_identity(HYDRO)


@st.composite
def valid_prescriptions(draw) -> Prescription:
    current = draw(st.floats(min_value=0.05, max_value=30.0))
    slew_min_s = current * 1000 / HYDRO_LIMITS.slew_limit_ua_per_s
    up = draw(st.floats(min_value=max(5.0, slew_min_s + 0.001), max_value=60.0))
    down = draw(st.floats(min_value=max(5.0, slew_min_s + 0.001), max_value=60.0))
    pulsed = draw(st.booleans())
    duty = draw(st.integers(10, 90)) if pulsed else None
    fraction = 1.0 if duty is None else duty / 100
    common = {
        "ramp_up_s": up,
        "ramp_down_s": down,
        "polarity": draw(st.sampled_from(["cathode", "anode"])),
        "waveform": "pulsed_dc" if pulsed else "dc",
        "pulse_frequency_hz": draw(st.integers(100, 10_000)) if pulsed else None,
        "duty_percent": duty,
        "electrode_area_cm2": draw(
            st.one_of(st.none(), st.floats(min_value=current / 2 + 0.01, max_value=500))
        ),
    }
    if draw(st.booleans()):
        ramps_ma_min = current * fraction * (up + down) / 120
        longest = current * fraction * (HYDRO_LIMITS.max_duration_ms / 60_000 - (up + down) / 120)
        top = min(HYDRO_LIMITS.dose_cap_uas / 60_000, longest) - 0.01
        assume(top > ramps_ma_min + 0.01)
        dose = draw(st.floats(min_value=ramps_ma_min + 0.01, max_value=top))
        return Prescription(current, dose_ma_min=dose, **common)
    cap_s = HYDRO_LIMITS.dose_cap_uas / (current * 1000 * fraction) + (up + down) / 2
    top_s = min(HYDRO_LIMITS.max_duration_ms / 1000, cap_s) - 0.01
    duration = draw(st.floats(min_value=up + down, max_value=top_s))
    return Prescription(current, duration_s=duration, **common)


@settings(max_examples=150, deadline=None)
@given(p=valid_prescriptions())
def test_valid_prescriptions_convert_within_limits_and_round_to_nearest(p: Prescription) -> None:
    start = p.to_start(HYDRO)
    assert abs(start.target_current_ua - p.current_ma * 1000) <= 0.5
    assert 1 <= start.target_current_ua <= HYDRO_LIMITS.max_current_ua
    assert abs(start.ramp_up_ms - p.ramp_up_s * 1000) <= 0.5
    assert abs(start.ramp_down_ms - p.ramp_down_s * 1000) <= 0.5
    for ramp_ms in (start.ramp_up_ms, start.ramp_down_ms):
        assert start.target_current_ua * 1000 <= HYDRO_LIMITS.slew_limit_ua_per_s * ramp_ms  # S1 slew
    if p.dose_based:
        assert start.duration_ms == 0
        assert abs(start.dose_uas - p.dose_ma_min * 60_000) <= 0.5
        assert start.dose_uas <= HYDRO_LIMITS.dose_cap_uas
    else:
        assert start.dose_uas == 0
        assert start.duration_ms >= start.ramp_up_ms + start.ramp_down_ms
        assert abs(start.duration_ms - p.duration_s * 1000) <= 1.0
        assert start.duration_ms <= HYDRO_LIMITS.max_duration_ms
    plan = p.expected_plan(HYDRO)
    assert plan.total_s * 1000 <= HYDRO_LIMITS.max_duration_ms * (1 + 1e-9)
    assert plan.charge_uas <= HYDRO_LIMITS.dose_cap_uas * (1 + 1e-9)
    if p.dose_based:
        assert plan.charge_uas == pytest.approx(start.dose_uas)
    assert Decoder().feed(encode(start, seq=1))[0].message == start


@settings(max_examples=100, deadline=None)
@given(p=valid_prescriptions())
def test_dict_round_trip_through_json(p: Prescription) -> None:
    data = json.loads(json.dumps(p.to_dict()))
    assert data["polarity"] in ("cathode", "anode")
    assert Prescription.from_dict(data) == p


def test_from_dict_refuses_unknown_and_missing_fields() -> None:
    data = dex().to_dict()
    assert refusal(Prescription.from_dict, {**data, "curent_ma": 4}).field == "curent_ma"
    assert (
        refusal(Prescription.from_dict, {k: v for k, v in data.items() if k != "polarity"}).field
        == "polarity"
    )
    assert (
        refusal(Prescription.from_dict, {k: v for k, v in data.items() if k != "current_ma"}).field
        == "current_ma"
    )
    assert (
        refusal(Prescription.from_dict, {**data, "polarity": "CATHODE", "ramp_up_s": "30"}).field
        == "ramp_up_s"
    )
    with pytest.raises(TypeError):
        Prescription.from_dict([("current_ma", 4)])  # type: ignore[arg-type]


def test_expected_plan_matches_the_session_shape() -> None:
    plan = dex().expected_plan(CLINIC)
    # 40 mA·min at 4 mA: 10 min of full-current charge, plus half of each 30 s ramp lost.
    assert plan.total_s == pytest.approx(600 + 30)
    assert plan.ramp_down_start_s == pytest.approx(600)
    assert plan.charge_uas == pytest.approx(2_400_000)
    pulsed = tap().expected_plan(HYDRO)
    assert pulsed.duty_fraction == 0.5
    assert pulsed.charge_uas == pytest.approx(15_000 * 0.5 * (1200 - 30))


def test_describe_names_the_essentials() -> None:
    text = tap().describe()
    assert "15 mA" in text and "anode" in text and "1000 Hz" in text and "1200 s" in text
