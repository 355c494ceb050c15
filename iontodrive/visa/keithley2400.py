"""Keithley 2400-series SourceMeter driver (2400, 2401, 2410, 2420, 2425, 2430 in DC mode, 2440).

Command set: SCPI as in the *2400 Series SourceMeter User's Manual* (2400S-900-01), section 18 "SCPI command
reference". Every command this driver sends is listed, in order, in ``docs/visa.md``.

Measurement: concurrent voltage and current (``:SENS:FUNC:CONC ON``, ``:SENS:FUNC "VOLT","CURR"``) with
``:FORM:ELEM VOLT,CURR``, so ``:READ?`` answers ``<volts>,<amperes>``. ``:READ?`` requires the output on
(the session only reads while it is). Auto output-off (``:SOUR:CLE:AUTO``) is switched off so the output
does not toggle around each reading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from iontodrive.visa.smu import (
    NPLC,
    ModelLimits,
    Reading,
    SourceMeter,
    format_current,
    format_voltage,
    parse_pair,
)

READ = ":READ?"


class Keithley2400(SourceMeter):
    """Keithley 2400 series over SCPI."""

    FAMILY = "Keithley 2400 series"
    VENDOR = "Keithley"
    MANUFACTURERS = ("KEITHLEY",)
    # Source list ranges per model, 2400 Series User's Manual §18 (":SOURce:LIST:CURRent").
    MODELS: ClassVar[Mapping[str, ModelLimits]] = {
        "2400": ModelLimits(1.05, 210.0),
        "2401": ModelLimits(1.05, 21.0),
        "2410": ModelLimits(1.05, 1100.0),
        "2420": ModelLimits(3.15, 63.0),
        "2425": ModelLimits(3.15, 105.0),
        "2430": ModelLimits(3.15, 105.0),
        "2440": ModelLimits(5.25, 42.0),
    }
    LEVEL_QUERY = ":SOUR:CURR?"
    OUTPUT_QUERY = ":OUTP?"
    COMPLIANCE_QUERY = ":SENS:VOLT:PROT?"

    def configuration_commands(self, *, range_a: float, compliance_v: float) -> Sequence[str]:
        return (
            ":SOUR:CLE:AUTO OFF",
            ":SOUR:FUNC CURR",
            ":SOUR:CURR:MODE FIX",
            f":SOUR:CURR:RANG {format_current(range_a)}",
            f":SENS:VOLT:PROT {format_voltage(compliance_v)}",
            ":SENS:FUNC:CONC ON",
            ':SENS:FUNC "VOLT","CURR"',
            ":SENS:VOLT:RANG:AUTO ON",
            f":SENS:VOLT:NPLC {NPLC}",
            ":FORM:ELEM VOLT,CURR",
        )

    def source_is_current(self) -> bool:
        return self.query(":SOUR:FUNC?").upper().startswith("CURR")

    def set_level_a(self, amps: float) -> None:
        self.write(f":SOUR:CURR {format_current(amps)}")

    def output_on(self) -> None:
        self.write(":OUTP ON")

    def output_off(self) -> None:
        self.write(":OUTP OFF")

    def measure(self) -> Reading:
        volts, amps = parse_pair(READ, self.query(READ))
        return Reading(volts, amps)

    @classmethod
    def measurement_reply(cls, command: str, reading: Reading) -> str | None:
        if command.strip().upper() != READ:
            return None
        return f"{reading.voltage_v:+.6E},{reading.current_a:+.6E}"
