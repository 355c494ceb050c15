"""The exception tree (contract 8): one base, refusals that state their unit, record errors typed.

Issue 18, item 7: ``FileExistsError`` and others escaped the public API untyped, and refusals gave ranges
without units (``current_ma = 1000000000.0 refused; allowed [0.001, 4]``). A refusal now says the value and
its range in the unit the caller used, and keeps ``field``, ``value``, ``minimum`` and ``maximum``.
"""

from __future__ import annotations

import pytest
from devices import CLINIC

from iontodrive import errors
from iontodrive.errors import IontodriveError, SafetyRefusal
from iontodrive.prescription import Prescription


def refusal(**prescription: object) -> SafetyRefusal:
    with pytest.raises(SafetyRefusal) as info:
        Prescription(**prescription).check_against(CLINIC)  # type: ignore[arg-type]
    return info.value


def test_a_current_refusal_states_milliampere_as_the_caller_gave_it() -> None:
    error = refusal(current_ma=1e9, dose_ma_min=40, polarity="cathode")
    assert str(error).startswith("current_ma = 1e+09 mA is out of range: allowed 0.001 to 4 mA")
    assert "clinic-4" in str(error)
    assert (error.field, error.value, error.minimum, error.maximum) == ("current_ma", 1e9, 0.001, 4.0)
    assert error.unit == "mA" and isinstance(error, ValueError) and isinstance(error, IontodriveError)


def test_a_dose_refusal_states_milliampere_minutes() -> None:
    error = refusal(current_ma=4, dose_ma_min=500, polarity="cathode")
    assert "dose_ma_min = 500 mA·min is out of range: allowed" in str(error)
    assert str(error).split("allowed ")[1].split(" (")[0].endswith(" mA·min")


def test_a_ramp_refusal_states_seconds() -> None:
    error = refusal(current_ma=4, dose_ma_min=40, polarity="cathode", ramp_up_s=0.001)
    assert error.field == "ramp_up_s"
    assert "ramp_up_s = 0.001 s is out of range: allowed" in str(error) and " s (" in str(error)


def test_refusals_without_a_range_or_a_number_read_plainly() -> None:
    assert str(SafetyRefusal("polarity", "sideways", reason="must be 'cathode' or 'anode'")) == (
        "polarity = 'sideways' refused: must be 'cathode' or 'anode'"
    )
    assert str(SafetyRefusal("current_ma", None, reason="required")) == "current_ma not given: required"
    assert str(SafetyRefusal("pulse_frequency_hz", None, minimum=1, reason="required for pulsed DC")) == (
        "pulse_frequency_hz not given (allowed at least 1 Hz): required for pulsed DC"
    )
    assert str(SafetyRefusal("impedance_ohm", 25_000, 200, 10_000, reason="poor contact")) == (
        "impedance_ohm = 25000 Ω is out of range: allowed 200 to 10000 Ω (poor contact)"
    )
    assert str(SafetyRefusal("speed", 0.5, 1, None, unit="x")) == (
        "speed = 0.5 x is out of range: allowed at least 1 x"
    )


@pytest.mark.parametrize(
    ("field", "unit"),
    [
        ("current_ma", "mA"),
        ("target_current_ua", "µA"),
        ("dose_ma_min", "mA·min"),
        ("dose_uas", "µA·s"),
        ("ramp_up_s", "s"),
        ("timeout_ms", "ms"),
        ("rate_hz", "Hz"),
        ("impedance_ohm", "Ω"),
        ("compliance_mv", "mV"),
        ("duty_percent", "%"),
        ("electrode_area_cm2", "cm²"),
        ("slew_limit_ua_per_s", "µA/s"),
        ("polarity", ""),
        ("state", ""),
    ],
)
def test_the_unit_comes_from_the_name(field: str, unit: str) -> None:
    assert errors.unit_of(field) == unit


def test_every_record_error_is_an_iontodrive_error_and_a_path_refusal_names_its_option() -> None:
    for name in (
        "RecordError",
        "RecordFormatError",
        "RecordReadError",
        "RecordDataError",
        "RecordClosedError",
        "RecordWriteError",
        "RecordPathError",
    ):
        assert issubclass(getattr(errors, name), IontodriveError), name
    refused = errors.RecordPathError("/x/r.jsonl", "the directory /x does not exist", option="--record")
    assert str(refused) == "--record /x/r.jsonl: the directory /x does not exist"
    assert isinstance(refused, errors.RecordWriteError) and refused.path == "/x/r.jsonl"


def test_client_settings_out_of_range_are_typed_refusals_naming_the_field() -> None:
    """Issue 18 item 7: ``timeout_s``/``retries``/``heartbeat_s`` out of range raised a bare ValueError."""
    from iontodrive.clientcore import ClientCore

    for options, field in (({"timeout_s": 0}, "timeout_s"), ({"retries": -1}, "retries")):
        with pytest.raises(SafetyRefusal) as caught:
            ClientCore(**options)  # type: ignore[arg-type]
        assert caught.value.field == field and isinstance(caught.value, IontodriveError)
        assert isinstance(caught.value, ValueError)  # still what callers that caught ValueError expect


def test_a_wait_that_times_out_is_an_iontodrive_error_and_still_a_timeout_error() -> None:
    from iontodrive import SessionWaitTimeout

    assert issubclass(SessionWaitTimeout, IontodriveError) and issubclass(SessionWaitTimeout, TimeoutError)
