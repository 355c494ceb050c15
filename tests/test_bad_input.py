"""Bad input at every public entry point: a typed error naming the field, and nothing else happens.

Entry points: :class:`Prescription` (construction and ``check_against``/``from_dict``), the client's open
options, ``Session.set_current``, the ``iontodrive`` command line (``iontodrive.cli.main``), resource
strings given to :func:`iontodrive.source.open_source`, ``sim://`` URLs, and record files given to
``iontodrive report``. Values: malformed, missing, negative, zero, NaN, ±infinity, huge, wrong type.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import firmware_sim
from firmware_sim import MODELS
from iontodrive import Prescription, SafetyRefusal, Stimulator
from iontodrive.cli import exitcodes, main
from iontodrive.errors import DeviceRefusal, LinkClosedError
from iontodrive.protocol import DeviceState
from iontodrive.record import RecordFormatError, SessionRecord
from iontodrive.source import InvalidResourceError, open_source

NAN, INF = math.nan, math.inf
BASE: dict[str, Any] = {"current_ma": 2.0, "dose_ma_min": 1.0, "polarity": "cathode"}
PULSED: dict[str, Any] = {
    "current_ma": 15.0,
    "duration_s": 60.0,
    "polarity": "anode",
    "waveform": "pulsed_dc",
    "pulse_frequency_hz": 100,
}
CLINIC = MODELS["clinic-4"].identity()
HYDRO = MODELS["hydro-30"].identity()


@pytest.fixture(scope="module", autouse=True)
def _register() -> None:
    firmware_sim.register_url_handler()


# ------------------------------------------------------------------------------------------ Prescription

REAL_BAD = [-1.0, 0.0, NAN, INF, -INF, "2", None, True, [2.0], object()]
RAMP_BAD = [-1.0, 0.0, 4.99, 60.01, 1e308, NAN, INF, "30", True, None]
INT_BAD = [-1, 0, 1.5, NAN, INF, "100", True, None, [100]]


def _case(field: str, value: object, base: dict[str, Any]) -> dict[str, Any]:
    kw = dict(base)
    kw[field] = value
    return kw


PRESCRIPTION_CASES = (
    [("current_ma", v, BASE) for v in REAL_BAD]
    + [("dose_ma_min", v, BASE) for v in REAL_BAD if v is not None]
    + [("duration_s", v, {**BASE, "dose_ma_min": None}) for v in REAL_BAD if v is not None]
    + [("ramp_up_s", v, BASE) for v in RAMP_BAD]
    + [("ramp_down_s", v, BASE) for v in RAMP_BAD]
    + [("electrode_area_cm2", v, BASE) for v in REAL_BAD if v is not None]
    + [("pulse_frequency_hz", v, PULSED) for v in INT_BAD]
    + [("duty_percent", v, PULSED) for v in [*INT_BAD[:-2], 9, 91, 10**9]]
    + [("polarity", v, BASE) for v in ["", "north", "CATHODE ", None, 1, NAN, b"anode"]]
    + [("waveform", v, BASE) for v in ["", "ac", "square", None, 2, NAN]]
    + [("pulse_frequency_hz", 100, BASE), ("duty_percent", 50, BASE)]  # pulse fields without pulsed DC
)


def _expected_field(field: str, value: object, kw: dict[str, Any]) -> set[str]:
    if field == "polarity" and value == "CATHODE ":
        return set()  # accepted: names are case- and space-insensitive
    if field == "duration_s" and value is not None:
        return {"duration_s"}
    return {field}


@pytest.mark.parametrize(("field", "value", "base"), PRESCRIPTION_CASES)
def test_prescription_refuses_bad_values_naming_the_field(field: str, value: object, base: dict) -> None:
    kw = _case(field, value, base)
    expected = _expected_field(field, value, kw)
    if not expected:
        Prescription(**kw)
        return
    with pytest.raises(SafetyRefusal) as info:
        Prescription(**kw)
    assert info.value.field in expected
    assert info.value.field in str(info.value)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"current_ma": 2.0, "polarity": "cathode"}, "dose_ma_min"),  # neither dose nor duration
        ({**BASE, "duration_s": 60.0}, "duration_s"),  # both
        ({**BASE, "dose_ma_min": None, "duration_s": 5.0}, "duration_s"),  # shorter than its ramps
    ],
)
def test_prescription_refuses_missing_or_conflicting_fields(kw: dict, field: str) -> None:
    with pytest.raises(SafetyRefusal) as info:
        Prescription(**kw)
    assert info.value.field == field


def test_prescription_without_polarity_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="polarity"):
        Prescription(current_ma=2.0, dose_ma_min=1.0)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("kw", "identity", "field"),
    [
        ({**BASE, "current_ma": 1e308}, CLINIC, "current_ma"),
        ({**BASE, "current_ma": 4.0004}, CLINIC, "current_ma"),
        ({**BASE, "current_ma": 0.0004}, CLINIC, "current_ma"),  # rounds to 0 µA
        ({**BASE, "dose_ma_min": 1e308}, CLINIC, "dose_ma_min"),
        ({**BASE, "dose_ma_min": 81.0}, CLINIC, "dose_ma_min"),
        ({**BASE, "dose_ma_min": None, "duration_s": 1e308}, CLINIC, "duration_s"),
        ({**BASE, "electrode_area_cm2": 0.5}, CLINIC, "current_ma"),  # 4 mA/cm² > 2 (S13)
        ({**PULSED, "pulse_frequency_hz": 10**6}, HYDRO, "pulse_frequency_hz"),
        ({**PULSED, "pulse_frequency_hz": 5}, HYDRO, "pulse_frequency_hz"),
        ({**PULSED, "current_ma": 2.0}, CLINIC, "waveform"),  # clinic-4 has no pulsed DC
    ],
)
def test_prescription_check_against_refuses_values_beyond_the_device(
    kw: dict, identity: Any, field: str
) -> None:
    prescription = Prescription(**kw)
    with pytest.raises(SafetyRefusal) as info:
        prescription.check_against(identity)
    assert info.value.field == field
    with pytest.raises(SafetyRefusal):
        prescription.to_start(identity)  # the same refusal: no Start can be built


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**BASE, "current_ma": "NaN"}, "current_ma"),
        ({**BASE, "current_ma": None}, "current_ma"),
        ({**BASE, "polarity": 7}, "polarity"),
        ({**BASE, "ramp_up_s": []}, "ramp_up_s"),
        ({**BASE, "dose_ma_min": -5}, "dose_ma_min"),
    ],
)
def test_prescription_from_dict_refuses_bad_values(data: dict, field: str) -> None:
    with pytest.raises(SafetyRefusal) as info:
        Prescription.from_dict(data)
    assert info.value.field == field


@pytest.mark.parametrize("data", [{"current_ma": 2.0}, {**BASE, "voltage": 3}, [], "x", None])
def test_prescription_from_dict_refuses_malformed_mappings(data: object) -> None:
    with pytest.raises((SafetyRefusal, TypeError, ValueError)) as info:
        Prescription.from_dict(data)  # type: ignore[arg-type]
    assert str(info.value)


# --------------------------------------------------------------------------------- client / session

SIM = "sim://clinic-4?speed=100&seed=3"
BASE_RX = Prescription(current_ma=2.0, dose_ma_min=1.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout_s", 0.0),
        ("timeout_s", -1.0),
        ("timeout_s", NAN),
        ("timeout_s", INF),
        ("timeout_s", 1e9),
        ("timeout_s", "0.25"),
        ("timeout_s", True),
        ("retries", -1),
        ("retries", 21),
        ("retries", 1.5),
        ("retries", "3"),
        ("retries", True),
        ("heartbeat_s", -1.0),
        ("heartbeat_s", 0.0),
        ("heartbeat_s", NAN),
        ("heartbeat_s", INF),
        ("heartbeat_s", "1"),
    ],
)
def test_client_options_are_refused_naming_the_option(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        Stimulator.open(SIM, **{option: value})


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        ("watchdog_ms", 499, "TIMEOUT_MS"),
        ("watchdog_ms", 10_001, "TIMEOUT_MS"),
        ("telemetry_hz", 5001, "RATE_HZ"),
    ],
)
def test_device_limits_on_open_are_refused_by_the_device_naming_the_field(
    option: str, value: int, field: str
) -> None:
    with pytest.raises(DeviceRefusal) as info:
        Stimulator.open(SIM, **{option: value})
    assert info.value.field.name == field and info.value.value == value
    assert field.lower() in str(info.value)


@pytest.mark.parametrize("value", [0, -1, 5001, 1.5, True, "10"])
def test_session_telemetry_rate_is_refused_not_clamped(value: object, tmp_path: Path) -> None:
    """Found here: ``start(telemetry_hz=99999)`` was silently clamped to the device's maximum."""
    with Stimulator.open(SIM) as stim:
        with pytest.raises(SafetyRefusal) as info:
            stim.start(BASE_RX, record_path=tmp_path / "r.jsonl", telemetry_hz=value)  # type: ignore[arg-type]
        assert info.value.field == "telemetry_hz"
        assert stim.status().session_id == 0
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("value", [-1.0, 0.0, NAN, INF, 1e308, 4.5, "3", None])
def test_set_current_refuses_bad_values_and_the_output_is_unchanged(value: object, tmp_path: Path) -> None:
    with Stimulator.open(SIM) as stim:
        session = stim.start(
            Prescription(current_ma=2.0, dose_ma_min=5.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode"),
            record_path=tmp_path / "r.jsonl",
        )
        before = stim.status()
        with pytest.raises(SafetyRefusal) as info:
            session.set_current(value)  # type: ignore[arg-type]
        assert info.value.field == "current_ma"
        after = stim.status()
        assert after.session_id == before.session_id
        # the ramp the device was doing goes on; no new target was sent
        assert not any(
            e["code"] == "SETPOINT_CHANGED" for e in SessionRecord.load(tmp_path / "r.jsonl").events
        )
        session.abort()
        session.wait(timeout_s=30)


# ------------------------------------------------------------------------------------------ resources


@pytest.mark.parametrize(
    "resource",
    [
        "GPIB0::31::INSTR",
        "GPIB0::-1::INSTR",
        "GPIB100::1::INSTR",
        "GPIB0::1::31::INSTR",
        "GPIB0::::INSTR",
        "GPIB0:: 24::INSTR",
        "USB0::0x10000::0x1::SN::INSTR",
        "USB0::0x05E6::INSTR",
        "USB0::0x05E6::0x2450::SN::256::INSTR",
        "TCPIP0::10.0.0.5::0::SOCKET",
        "TCPIP0::10.0.0.5::70000::SOCKET",
        "TCPIP0::10.0.0.5::a::b::INSTR",
        "ASRL3::SOCKET",
        "FOO0::1::INSTR",
        "",
        "   ",
    ],
)
def test_malformed_visa_resources_are_refused_before_anything_opens(resource: str) -> None:
    with pytest.raises(InvalidResourceError) as info:
        open_source(resource)
    assert info.value.field == "resource"
    assert "resource" in str(info.value)


@pytest.mark.parametrize("resource", [None, 42, 2.5, b"GPIB0::24::INSTR", ["sim://clinic-4"]])
def test_a_resource_of_the_wrong_type_is_refused(resource: object) -> None:
    with pytest.raises(InvalidResourceError, match="resource"):
        open_source(resource)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("sim://no-such-model", "model"),
        ("sim://clinic-4?speed=nan", "speed"),
        ("sim://clinic-4?speed=-1", "speed"),
        ("sim://clinic-4?speed=inf", "speed"),
        ("sim://clinic-4?speed=abc", "speed"),
        ("sim://clinic-4?seed=1.5", "seed"),
        ("sim://clinic-4?drop_rate=2", "drop_rate"),
        ("sim://clinic-4?drop_rate=nan", "drop_rate"),
        ("sim://clinic-4?latency_ms=-5", "latency_ms"),
        ("sim://clinic-4?lift_at_s=nan", "lift_at_s"),
        ("sim://clinic-4?bogus=1", "bogus"),
        ("sim://clinic-4?clock=sundial", "clock"),
        ("sim://clinic-4?trace_rate=0", "trace_rate"),
        ("sim://clinic-4?physics_step_ms=1e9", "physics_step_ms"),
        ("/dev/does-not-exist-iontodrive", "does-not-exist"),
    ],
)
def test_bad_ports_fail_typed_naming_the_option(url: str, named: str) -> None:
    with pytest.raises(LinkClosedError, match=named):
        Stimulator.open(url)


# --------------------------------------------------------------------------------------- command line


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


DELIVER = ["deliver", "sim://clinic-4?speed=100", "--quiet"]
GOOD = {"--current-ma": "2", "--dose-ma-min": "1", "--polarity": "cathode"}


def _deliver_args(record: Path, override: dict[str, str | None]) -> list[str]:
    options: dict[str, str | None] = {**GOOD, **override}
    if "--duration-s" in options or any(key.startswith("--dose-ma-min=") for key in options):
        options.pop("--dose-ma-min")
    argv = [*DELIVER, "--record", str(record)]
    for key, value in options.items():
        argv += [key] if value is None else [key, value]
    return argv


# (option, value, exit code, text the one error line must contain)
CLI_CASES = [
    ("--current-ma", "abc", exitcodes.USAGE, "--current-ma"),
    ("--current-ma", "", exitcodes.USAGE, "--current-ma"),
    ("--current-ma", "-1", exitcodes.REFUSED, "current_ma"),
    ("--current-ma", "0", exitcodes.REFUSED, "current_ma"),
    ("--current-ma", "nan", exitcodes.REFUSED, "current_ma"),
    ("--current-ma", "inf", exitcodes.REFUSED, "current_ma"),
    ("--current-ma", "1e308", exitcodes.REFUSED, "current_ma"),
    ("--dose-ma-min", "-inf", exitcodes.USAGE, "--dose-ma-min"),  # argparse: "-inf" looks like an option
    ("--dose-ma-min=-inf", None, exitcodes.REFUSED, "dose_ma_min"),
    ("--dose-ma-min", "1e308", exitcodes.REFUSED, "dose_ma_min"),
    ("--duration-s", "nan", exitcodes.REFUSED, "duration_s"),
    ("--duration-s", "1e308", exitcodes.REFUSED, "duration_s"),
    ("--ramp-up-s", "4", exitcodes.REFUSED, "ramp_up_s"),
    ("--ramp-down-s", "nan", exitcodes.REFUSED, "ramp_down_s"),
    ("--area-cm2", "-2", exitcodes.REFUSED, "electrode_area_cm2"),
    ("--area-cm2", "0.1", exitcodes.REFUSED, "current_ma"),
    ("--pulse-hz", "1.5", exitcodes.USAGE, "--pulse-hz"),
    ("--pulse-hz", "100", exitcodes.REFUSED, "waveform"),  # clinic-4 has no pulsed DC
    ("--duty", "95", exitcodes.REFUSED, "duty_percent"),
    ("--polarity", "north", exitcodes.USAGE, "--polarity"),
    ("--waveform", "ac", exitcodes.USAGE, "--waveform"),
    ("--telemetry-hz", "0", exitcodes.USAGE, "--telemetry-hz"),
    ("--telemetry-hz", "99999", exitcodes.REFUSED, "telemetry_hz"),
    ("--telemetry-hz", "x", exitcodes.USAGE, "--telemetry-hz"),
    ("--interval-s", "nan", exitcodes.USAGE, "--interval-s"),  # was a defect: `<= 0` let NaN through
    ("--interval-s", "-1", exitcodes.USAGE, "--interval-s"),
    ("--label", "novalue", exitcodes.USAGE, "--label"),
    ("--preset", "no-such-preset", exitcodes.USAGE, "no-such-preset"),
]


@pytest.mark.parametrize(("option", "value", "code", "named"), CLI_CASES)
def test_deliver_refuses_bad_options_naming_them_and_starts_nothing(
    option: str, value: str | None, code: int, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "r.jsonl"
    got, _out, err = _cli(_deliver_args(record, {option: value}), capsys)
    assert got == code, err
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert lines and named in lines[-1], err
    assert "Traceback" not in err
    assert not record.exists()  # no session record: nothing was started


@pytest.mark.parametrize(
    ("argv", "code", "named"),
    [
        (["deliver", "sim://clinic-4", "--quiet"], exitcodes.USAGE, "--current-ma"),  # missing fields
        (["--timeout-s", "nan", "info", "sim://clinic-4"], exitcodes.USAGE, "--timeout-s"),
        (["--timeout-s", "0", "info", "sim://clinic-4"], exitcodes.USAGE, "--timeout-s"),
        (["--retries", "-1", "info", "sim://clinic-4"], exitcodes.USAGE, "--retries"),
        (["--retries", "99", "info", "sim://clinic-4"], exitcodes.USAGE, "--retries"),
        (["check", "sim://clinic-4", "--probe-ua", "51"], exitcodes.USAGE, "--probe-ua"),
        (["check", "sim://clinic-4", "--probe-ua", "-1"], exitcodes.USAGE, "--probe-ua"),
        (["check", "sim://clinic-4", "--current-ma", "nan"], exitcodes.USAGE, "--current-ma"),
        (["check", "sim://clinic-4", "--current-ma", "1e308"], exitcodes.USAGE, "--current-ma"),
        # was a defect: refused only by the encoder (exit 1); now a usage error before anything is sent
        (
            ["monitor", "sim://clinic-4", "--rate-hz", "-1", "--duration-s", "0.2"],
            exitcodes.USAGE,
            "--rate-hz",
        ),
        (["monitor", "sim://clinic-4", "--every", "0", "--duration-s", "0.2"], exitcodes.USAGE, "--every"),
        # was a defect: `<= 0` let NaN through
        (["monitor", "sim://clinic-4", "--duration-s", "nan"], exitcodes.USAGE, "--duration-s"),
        (["monitor", "sim://clinic-4", "--duration-s", "-1"], exitcodes.USAGE, "--duration-s"),
        (["info", "sim://clinic-4?speed=nan"], exitcodes.LINK_ERROR, "speed"),
        (["info", "sim://clinic-4?bogus=1"], exitcodes.LINK_ERROR, "bogus"),
        (["info", "GPIB0::31::INSTR"], exitcodes.REFUSED, "resource"),
        (["info", ""], exitcodes.REFUSED, "resource = '' refused: empty resource string"),
        (["presets", "no-such-preset"], exitcodes.USAGE, "no-such-preset"),
    ],
)
def test_other_commands_refuse_bad_options(
    argv: list[str], code: int, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    got, _out, err = _cli(argv, capsys)
    assert got == code, err
    assert named in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------- record files

HEADER = {
    "kind": "header",
    "schema": 1,
    "driver": "iontodrive test",
    "started_at": "2026-01-01T00:00:00+00:00",
    "prescription": {**BASE},
    "identity": {"model": "clinic-4"},
    "labels": {},
}


def _lines(*objs: object) -> bytes:
    return b"".join((o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n" for o in objs)


EVENT = {
    "kind": "event",
    "event_no": 1,
    "device_time_ms": 0,
    "code": "POWER_ON",
    "state": "IDLE",
    "value": 0,
    "replayed": False,
}
SUMMARY = {
    "kind": "summary",
    "delivered_uas": 10,
    "end_reason": "completed",
    "ended_at": HEADER["started_at"],
}

RECORD_CASES = {
    "empty": b"",
    "binary": bytes(range(256)) * 4 + b"\n",
    "not json": b"hello\n",
    "json array": b"[1, 2, 3]\n",
    "no header": _lines(EVENT),
    "two headers": _lines(HEADER, HEADER),
    "bad schema": _lines({**HEADER, "schema": 99}),
    "schema nan": _lines(HEADER).replace(b'"schema": 1', b'"schema": NaN'),
    "labels not strings": _lines({**HEADER, "labels": {"a": 1}}),
    "event no negative": _lines(HEADER, {**EVENT, "event_no": -1}),
    "event no string": _lines(HEADER, {**EVENT, "event_no": "1"}),
    "event value infinite": _lines(HEADER).rstrip(b"\n")
    + b"\n"
    + json.dumps(EVENT).encode().replace(b'"value": 0', b'"value": Infinity')
    + b"\n",
    "summary negative dose": _lines(HEADER, {**SUMMARY, "delivered_uas": -5}),
    "summary float dose": _lines(HEADER, {**SUMMARY, "delivered_uas": 1.5}),
    "summary huge float": _lines(HEADER).rstrip(b"\n")
    + b"\n"
    + json.dumps(SUMMARY).encode().replace(b'"delivered_uas": 10', b'"delivered_uas": 1e999')
    + b"\n",
    "summary bad time": _lines(HEADER, {**SUMMARY, "ended_at": "yesterday"}),
    "deep nesting": _lines(HEADER) + b'{"kind": "note", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
    "duplicate keys": _lines(HEADER) + b'{"kind": "summary", "kind": "event"}\n',
    "kind missing": _lines(HEADER, {"event_no": 1}),
}


# Files with nothing of a record in them: refused whole, naming the line.
NOT_RECORDS = {"empty", "binary", "not json", "json array", "bad schema", "schema nan", "labels not strings"}
# Records with one bad line: every other line is read, the bad one is reported (line number, why).
PROBLEM_LINE = {name: 2 for name in RECORD_CASES if name not in NOT_RECORDS} | {"no header": 1}


@pytest.mark.parametrize("name", sorted(NOT_RECORDS))
def test_files_that_hold_no_record_are_refused_with_the_line(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(RECORD_CASES[name])
    with pytest.raises(RecordFormatError) as info:
        SessionRecord.load(path)
    where = f"{path}:{info.value.line_no}:"
    assert info.value.line_no >= 1 and str(info.value).startswith(where)
    code, out, err = _cli(["report", str(path)], capsys)
    assert code != exitcodes.OK
    assert where in err and "Traceback" not in err
    assert out == ""
    code, out, err = _cli(["report", str(path), "--json"], capsys)
    assert code != exitcodes.OK and out == ""


@pytest.mark.parametrize("name", sorted(PROBLEM_LINE))
def test_a_malformed_line_is_reported_and_the_rest_read(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(RECORD_CASES[name])
    record = SessionRecord.load(path)
    assert [p.line_no for p in record.problems] == [PROBLEM_LINE[name]], record.problems
    assert record.problems[0].reason
    if name != "no header":
        assert record.header["driver"] == HEADER["driver"] and record.prescription == BASE
    else:
        assert [e["code"] for e in record.events] == ["POWER_ON"] and record.header == {}
    _code, _out, err = _cli(["report", str(path)], capsys)
    assert "Traceback" not in err


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_a_record_path_that_is_not_a_file_is_refused(
    what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nothing.jsonl" if what == "missing" else tmp_path
    code, out, err = _cli(["report", str(path)], capsys)
    assert code != exitcodes.OK
    assert str(path) in err and "Traceback" not in err
    assert out == ""


def test_a_record_cut_mid_line_reads_up_to_its_last_complete_line(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl"
    path.write_bytes(_lines(HEADER, EVENT) + b'{"kind": "telem')
    record = SessionRecord.load(path)
    assert record.truncated_last_line and not record.complete
    assert [e["code"] for e in record.events] == ["POWER_ON"]
    assert DeviceState.IDLE.name == record.events[0]["state"]
