"""Driver ceilings (S18, issue 13 finding 3): the lower of the device's word and the driver's family cap."""

from __future__ import annotations

import dataclasses

import pytest
from devices import CLINIC, HYDRO
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.models import MODELS
from iontodrive import ceilings
from iontodrive.ceilings import (
    FAMILY_CEILINGS,
    MIN_RAMP_MS,
    UNKNOWN_FAMILY,
    effective_identity,
    min_ramp_ms,
)
from iontodrive.errors import ContradictoryIdentityError, IncompatibleDeviceError, SafetyRefusal
from iontodrive.prescription import Prescription

CAPPED = (
    "max_current_ua",
    "trip_current_ua",
    "slew_limit_ua_per_s",
    "max_ramp_ms",
    "dose_cap_uas",
    "max_duration_ms",
)


def test_every_simulated_model_has_a_ceiling_and_is_unchanged_by_it() -> None:
    assert set(MODELS) <= set(FAMILY_CEILINGS)
    for model in MODELS.values():
        identity = model.identity()
        assert effective_identity(identity) == identity  # the honest simulator is within its caps


def test_a_clinic_claiming_one_ampere_an_unbounded_slew_or_no_minimum_ramp_is_refused() -> None:
    clinic = MODELS["clinic-4"].identity()
    for field, value in (
        ("max_current_ua", 1_000_000),
        ("slew_limit_ua_per_s", 0xFFFF_FFFF),
        ("min_ramp_ms", 0),
        ("trip_current_ua", 100_000),
        ("dose_cap_uas", 10**9),
    ):
        with pytest.raises(ContradictoryIdentityError) as caught:
            effective_identity(dataclasses.replace(clinic, **{field: value}))
        assert isinstance(caught.value, IncompatibleDeviceError)
        assert caught.value.field == field and "clinic-4" in str(caught.value)
        with pytest.raises(IncompatibleDeviceError):
            Prescription(2.0, dose_ma_min=10, polarity="cathode").to_start(
                dataclasses.replace(clinic, **{field: value})
            )


def test_a_plausible_device_reporting_more_gets_the_cap_and_less_keeps_its_own() -> None:
    generous = dataclasses.replace(HYDRO, trip_current_ua=35_000, dose_cap_uas=72_000_000)
    limits = effective_identity(generous)
    assert limits.trip_current_ua == 33_000 and limits.dose_cap_uas == 36_000_000
    assert limits.slew_limit_ua_per_s == HYDRO.slew_limit_ua_per_s  # the device's slower slew is kept
    assert limits.min_ramp_ms == MIN_RAMP_MS  # the device's 1 s minimum ramp is raised to S1's 5 s
    generous_clinic = dataclasses.replace(CLINIC, max_current_ua=6_000, slew_limit_ua_per_s=2000)
    with pytest.raises(SafetyRefusal) as err:
        Prescription(4.5, dose_ma_min=10, polarity="anode").check_against(generous_clinic)
    assert err.value.maximum == 4.0 and "driver's cap" in err.value.reason


def test_an_unknown_family_gets_the_tightest_cap_of_every_known_family() -> None:
    stranger = dataclasses.replace(HYDRO, model="zz-9000")
    limits = effective_identity(stranger)
    for field in CAPPED:
        assert getattr(limits, field) == min(getattr(stranger, field), getattr(UNKNOWN_FAMILY, field))
        assert getattr(UNKNOWN_FAMILY, field) == min(getattr(c, field) for c in FAMILY_CEILINGS.values())
    assert limits.max_current_ua == 4_000
    with pytest.raises(ContradictoryIdentityError):  # degenerate values are refused for any family
        effective_identity(dataclasses.replace(stranger, min_ramp_ms=0))


def test_min_ramp_for_a_change_is_never_under_five_seconds_nor_the_slew() -> None:
    quick = dataclasses.replace(MODELS["clinic-4"].identity(), min_ramp_ms=1_000, slew_limit_ua_per_s=10_000)
    assert min_ramp_ms(quick, 0) == 0
    assert min_ramp_ms(quick, 500) == 5_000
    slow = dataclasses.replace(CLINIC, slew_limit_ua_per_s=100)
    assert min_ramp_ms(slow, 4000) == 40_000  # 4 mA at 100 µA/s


identities = st.builds(
    lambda base, factors: dataclasses.replace(
        base, **{f: max(1, int(getattr(base, f) * k)) for f, k in zip(CAPPED, factors, strict=True)}
    ),
    st.sampled_from([MODELS["clinic-4"].identity(), MODELS["hydro-30"].identity(), CLINIC, HYDRO]),
    st.lists(st.floats(0.01, 2.0), min_size=len(CAPPED), max_size=len(CAPPED)),
)


@given(identities)
def test_effective_limits_are_never_above_the_device_or_the_cap_and_idempotent(identity: object) -> None:
    from iontodrive.protocol import IdentityReport

    assert isinstance(identity, IdentityReport)
    try:
        limits = effective_identity(identity)
    except ContradictoryIdentityError:
        return  # (max_ramp below the minimum ramp, and the like)
    cap = ceilings.ceiling_for(identity)
    for field in CAPPED:
        assert getattr(limits, field) <= getattr(identity, field)
        assert getattr(limits, field) <= getattr(cap, field)
    assert limits.min_ramp_ms >= max(identity.min_ramp_ms, cap.min_ramp_ms)
    assert effective_identity(limits) == limits
