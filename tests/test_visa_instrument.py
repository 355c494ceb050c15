"""The instrument layer and the shared source interface: resource strings, identification, driver choice,
configuration order per family, the error queue, option validation and the CurrentSource protocol."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_visa_support import (
    B2902A,
    COMPLIANCE_WRITE,
    K2400,
    K2450,
    MODELS,
    OUTPUT_ON,
    UNSUPPORTED,
    copy_bench,
    first_index,
    open_bench,
    raw_resource,
)

from iontodrive.errors import SafetyRefusal
from iontodrive.protocol import WaveformSet
from iontodrive.source import (
    CurrentSource,
    InvalidResourceError,
    SessionHandle,
    is_visa_resource,
    open_source,
    validate_visa_resource,
)
from iontodrive.visa import (
    CommandLog,
    Identification,
    InstrumentError,
    Keithley2400,
    Keithley2450,
    KeysightB2900,
    UnsupportedInstrumentError,
    VisaSource,
    driver_for,
    supported_models,
)
from iontodrive.visa.instrument import CommandEntry

# ------------------------------------------------------------------------------------ resource strings


@pytest.mark.parametrize(
    "text",
    [
        "GPIB0::24::INSTR",
        "GPIB::24",
        "GPIB1::5::3::INSTR",
        "USB0::0x05E6::0x2450::04096331::INSTR",
        "USB::1510::9296::SER42::0::INSTR",
        "TCPIP0::192.168.0.42::inst0::INSTR",
        "TCPIP::lab-smu.local::INSTR",
        "TCPIP0::10.0.0.5::5025::SOCKET",
        "ASRL/dev/ttyUSB0::INSTR",
        "ASRL3::INSTR",
        "PXI0::3-18::INSTR",
    ],
)
def test_valid_visa_strings_are_recognised_and_accepted(text: str) -> None:
    assert is_visa_resource(text)
    assert validate_visa_resource(text) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("GPIB0::31::INSTR", "primary address"),
        ("GPIB0::x::INSTR", "primary address"),
        ("GPIB0::5::31::INSTR", "secondary address"),
        ("GPIB0::1::2::3::INSTR", "syntax"),
        ("USB0::0x05E6::INSTR", "USB syntax"),
        ("USB0::0x1FFFF::0x2450::X::INSTR", "vendor id"),
        ("TCPIP0::host::0::SOCKET", "port"),
        ("TCPIP0::host::70000::SOCKET", "port"),
        ("TCPIP0::::INSTR", "empty field"),
        ("GPIB0:: 24::INSTR", "spaces"),
        ("FOO0::1::INSTR", "interface"),
        ("GPIB123::1::INSTR", "board"),
    ],
)
def test_malformed_visa_strings_are_refused_naming_the_resource(text: str, why: str) -> None:
    with pytest.raises(InvalidResourceError) as info:
        open_source(text)
    assert info.value.field == "resource"
    assert info.value.value == text
    assert why in str(info.value)


@pytest.mark.parametrize("value", ["", "   ", 42, None])
def test_open_source_refuses_non_strings_and_empty(value: object) -> None:
    with pytest.raises(InvalidResourceError) as info:
        open_source(value)  # type: ignore[arg-type]
    assert info.value.field == "resource"


@pytest.mark.parametrize(
    "text", ["socket://127.0.0.1:7000", "/dev/ttyUSB0", "COM3", "sim://clinic-4?speed=5"]
)
def test_non_visa_strings_go_to_the_stimulator(text: str) -> None:
    assert not is_visa_resource(text)


def test_open_source_routes_a_visa_string_to_a_visa_source(tmp_path: Path) -> None:
    library = copy_bench(tmp_path)
    with open_source(K2450, visa_library=library) as source:
        assert isinstance(source, VisaSource)
        assert isinstance(source, CurrentSource)
        assert source.identity.model == "Keithley 2450"


def test_open_source_routes_everything_else_to_the_stimulator() -> None:
    firmware_sim = pytest.importorskip("firmware_sim")
    register = getattr(firmware_sim, "register_url_handler", None)
    if register is None:
        pytest.skip("firmware_sim has no register_url_handler yet")
    register()
    from iontodrive.session import Stimulator

    with open_source("sim://clinic-4?speed=50") as stim:
        assert isinstance(stim, Stimulator)
        assert isinstance(stim, CurrentSource)


# ---------------------------------------------------------------------------------------- identification


def test_identification_parses_each_family() -> None:
    k2400 = Identification.parse("KEITHLEY INSTRUMENTS INC.,MODEL 2400,1234567,C32   Oct  4 2010/A02  /S/K\n")
    assert (k2400.manufacturer, k2400.model, k2400.serial) == ("KEITHLEY INSTRUMENTS INC.", "2400", "1234567")
    assert k2400.firmware_version() == (32, 0, 0)
    k2450 = Identification.parse("KEITHLEY INSTRUMENTS,MODEL 2450,04096331,1.7.3c")
    assert (k2450.model, k2450.serial_number(), k2450.firmware_version()) == ("2450", 4096331, (1, 7, 3))
    b2902 = Identification.parse("Keysight Technologies,B2902A,MY51141234,3.4.2011.5100")
    assert (b2902.model, b2902.serial_number(), b2902.firmware_version()) == ("B2902A", 51141234, (3, 4, 255))
    assert driver_for(k2400) is Keithley2400
    assert driver_for(k2450) is Keithley2450
    assert driver_for(b2902) is KeysightB2900
    assert driver_for(Identification.parse("Agilent Technologies,B2901A,MY1,1.0")) is KeysightB2900


def test_unknown_models_are_refused_with_the_supported_list() -> None:
    with pytest.raises(UnsupportedInstrumentError) as info:
        driver_for(Identification.parse("KEITHLEY INSTRUMENTS INC.,MODEL 6221,1,D03"))
    assert "Keithley 2450" in info.value.supported
    assert set(supported_models()) >= {"Keithley 2400", "Keithley 2440", "Keithley 2450", "Keysight B2902A"}
    # right model number, wrong maker
    with pytest.raises(UnsupportedInstrumentError):
        driver_for(Identification.parse("ACME,MODEL 2450,1,1.0"))


def test_opening_an_unsupported_instrument_sends_only_idn(tmp_path: Path) -> None:
    log = CommandLog()
    with pytest.raises(UnsupportedInstrumentError) as info:
        VisaSource.open(UNSUPPORTED, visa_library=copy_bench(tmp_path), recorder=log)
    assert "6221" in info.value.idn
    assert log.commands() == ["*IDN?"]


# ------------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("model", sorted(MODELS))
def test_configuration_sets_mode_range_compliance_and_is_accepted_by_the_instrument(
    tmp_path: Path, model: str
) -> None:
    bench = open_bench(copy_bench(tmp_path), MODELS[model], compliance_v=12.5, max_current_ma=4.0)
    smu = bench.source.instrument
    smu.configure(range_a=0.004, compliance_v=12.5)
    entries = list(bench.log)
    assert entries[0].command == "*IDN?"
    assert any(COMPLIANCE_WRITE.match(e.command) and "12.5000" in e.command for e in entries)
    assert not any(OUTPUT_ON.match(e.command) for e in entries), "configure must not switch the output on"
    assert smu.source_is_current()
    assert smu.compliance_v() == pytest.approx(12.5)
    assert not smu.output_enabled()
    assert smu.read_errors() == []  # every command was one the simulated instrument knows


def test_error_queue_entries_raise_instrument_error(tmp_path: Path) -> None:
    bench = open_bench(copy_bench(tmp_path), K2400)
    smu = bench.source.instrument
    smu.write(":SOUR:VOLT:MODE SWEEP")  # not in the simulated command set
    with pytest.raises(InstrumentError) as info:
        smu.check_errors("a test")
    assert info.value.errors == [(-100, "Command error")]
    smu.check_errors("the queue is drained")


def test_configure_refuses_a_compliance_the_instrument_did_not_take(tmp_path: Path) -> None:
    bench = open_bench(copy_bench(tmp_path), K2400)
    smu = bench.source.instrument
    # The simulated 2400 refuses compliance above 210 V (its spec); the driver must notice.
    with pytest.raises(InstrumentError):
        smu.configure(range_a=0.001, compliance_v=500.0)


def test_command_log_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "commands.tsv"
    log = CommandLog(path)
    log(CommandEntry(0.05, "write", ":SOUR:CURR 1.000000E-3"))
    log(CommandEntry(0.10, "query", ":SOUR:CURR?", "1.000000E-3"))
    log.close()
    assert CommandLog.read_file(path) == log.entries


# ------------------------------------------------------------------------------------- source options


def test_identity_is_synthesized_from_idn_and_configured_limits(tmp_path: Path) -> None:
    bench = open_bench(copy_bench(tmp_path), B2902A, max_current_ma=4.0, compliance_v=40.0)
    identity = bench.source.identity
    assert identity.model == "Keysight B2902A"
    assert identity.serial_number == 51141234
    assert identity.max_current_ua == 4000
    assert identity.compliance_mv == 40_000
    assert identity.slew_limit_ua_per_s == 800  # full scale in 5 s
    assert identity.waveforms == WaveformSet.DC
    assert identity.max_watchdog_ms == 0
    assert identity.max_telemetry_hz == 20
    assert bench.log.commands() == ["*IDN?"], "opening sends nothing but *IDN?"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_current_ma", 2000.0),
        ("max_current_ma", 0),
        ("compliance_v", 500.0),
        ("rate_hz", 10.0),
        ("slew_limit_ua_per_s", 1e9),
        ("dose_cap_ma_min", -1.0),
        ("deadman_s", 5.0),  # the 2400 has no fallback here
    ],
)
def test_out_of_range_options_are_refused_by_name(tmp_path: Path, option: str, value: float) -> None:
    with pytest.raises(SafetyRefusal) as info:
        open_bench(copy_bench(tmp_path), K2400, **{option: value})
    assert info.value.field == option


def test_simulation_options_need_the_sim_backend(tmp_path: Path) -> None:
    with pytest.raises(SafetyRefusal) as info:
        VisaSource.open(K2400, visa_library="@py", sim_speed=10.0)
    assert info.value.field == "sim_speed"


def test_b2902a_channel_two_uses_channel_suffixes(tmp_path: Path) -> None:
    library = copy_bench(tmp_path)
    with pytest.raises(ValueError, match="channel"):
        VisaSource.open(B2902A, visa_library=library, channel=3)
    log = CommandLog()
    source = VisaSource.open(B2902A, visa_library=library, channel=2, recorder=log)
    commands = source.instrument.configuration_commands(range_a=0.001, compliance_v=10.0)
    assert ":SENS2:VOLT:PROT 10.0000" in commands
    assert ":OUTP2:PROT OFF" in commands
    assert source.instrument.level_query == ":SOUR2:CURR?"


def test_session_handles_satisfy_the_shared_protocol(tmp_path: Path) -> None:
    from iontodrive.prescription import Prescription

    bench = open_bench(copy_bench(tmp_path), K2450)
    handle = bench.source.start(
        Prescription(current_ma=1.0, dose_ma_min=0.3, ramp_up_s=5, ramp_down_s=5, polarity="anode")
    )
    assert isinstance(handle, SessionHandle)
    record = handle.wait()
    assert record.complete
    bench.source.close()


def test_compliance_is_set_before_output_on_in_a_session(tmp_path: Path) -> None:
    from iontodrive.prescription import Prescription

    bench = open_bench(copy_bench(tmp_path), K2400)
    bench.source.deliver(
        Prescription(current_ma=1.0, dose_ma_min=0.3, ramp_up_s=5, ramp_down_s=5, polarity="anode"),
        record_path=tmp_path / "r.jsonl",
    )
    entries = list(bench.log)
    assert first_index(entries, COMPLIANCE_WRITE) < first_index(entries, OUTPUT_ON)
    # the simulated instrument, asked directly, holds what the driver set and is off again
    raw = raw_resource(bench.library, K2400)
    assert raw.query(":OUTP?") == "OFF"
    assert float(raw.query(":SOUR:CURR?")) == 0.0
    assert raw.query(":SOUR:FUNC?") == "CURR"
