"""Keithley 2450 SourceMeter driver (SCPI command set, not TSP).

Command set: *Model 2450 Interactive SourceMeter Instrument Reference Manual* (2450-901-01), section 6 "SCPI
command reference": ``:SOUR:FUNC``, ``:SOUR:CURR:RANG``, ``:SOUR:CURR:VLIM`` (the voltage limit of the
current source), ``:SOUR:CURR:READ:BACK`` (p. 6-77), ``:READ?`` with buffer elements (p. 6-6),
``:SOUR:LIST:CURR`` and ``:SOUR:SWE:CURR:LIST`` (p. 6-78, 6-85).

Measurement: the 2450 measures one function at a time, so the sense function is voltage and the current
comes from source readback: with ``:SOUR:CURR:READ:BACK ON`` the buffer's ``SOUR`` element is the *measured*
source current. ``:READ? "defbuffer1", SOUR, READ`` therefore answers ``<amperes>,<volts>``.

Hardware-side fallback (opt-in, see ``docs/visa.md``): the hold phase can be handed to a source-list sweep
(``:SOUR:LIST:CURR`` + ``:SOUR:SWE:CURR:LIST``) that holds the present level for a window and then ramps to
0 A by itself; the host restarts it (``:ABOR``, ``:INIT``) well inside the window. While it runs, readings
come from the sweep's own measurements (``:FETC?``), since ``:READ?`` would start a measurement that
conflicts with the running trigger model.
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

READ = ':READ? "defbuffer1", SOUR, READ'
FETCH = ':FETC? "defbuffer1", SOUR, READ'
LIST_CHUNK = 100  # :SOUR:LIST:CURR and :APP take at most 100 values per command (p. 6-78)


class Keithley2450(SourceMeter):
    """Keithley 2450 over its SCPI command set."""

    FAMILY = "Keithley 2450"
    VENDOR = "Keithley"
    MANUFACTURERS = ("KEITHLEY",)
    MODELS: ClassVar[Mapping[str, ModelLimits]] = {
        "2450": ModelLimits(1.05, 210.0)
    }  # ranges from :SOUR:LIST:CURR, 2450-901-01 p. 6-78
    LEVEL_QUERY = ":SOUR:CURR?"
    OUTPUT_QUERY = ":OUTP?"
    COMPLIANCE_QUERY = ":SOUR:CURR:VLIM?"
    SUPPORTS_FALLBACK = True

    _armed = False

    def configuration_commands(self, *, range_a: float, compliance_v: float) -> Sequence[str]:
        return (
            ":SOUR:FUNC CURR",
            f":SOUR:CURR:RANG {format_current(range_a)}",
            f":SOUR:CURR:VLIM {format_voltage(compliance_v)}",
            ":SOUR:CURR:READ:BACK ON",
            ':SENS:FUNC "VOLT"',
            ":SENS:VOLT:RANG:AUTO ON",
            f":SENS:VOLT:NPLC {NPLC}",
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
        command = FETCH if self._armed else READ
        amps, volts = parse_pair(command, self.query(command))
        return Reading(volts, amps)

    @classmethod
    def measurement_reply(cls, command: str, reading: Reading) -> str | None:
        if command.strip() not in (READ, FETCH):
            return None
        return f"{reading.current_a:+.6E},{reading.voltage_v:+.6E}"

    # ------------------------------------------------------------------------------- fallback

    def arm_fallback(self, points_a: Sequence[float], interval_s: float) -> None:
        values = [format_current(a) for a in points_a]
        for index in range(0, len(values), LIST_CHUNK):
            chunk = ",".join(values[index : index + LIST_CHUNK])
            self.write(f":SOUR:LIST:CURR {chunk}" if index == 0 else f":SOUR:LIST:CURR:APP {chunk}")
        self.write(f":SOUR:SWE:CURR:LIST 1, {interval_s:.6f}")
        self.check_errors("setting up the source-list fallback")
        self.write(":INIT")
        self._armed = True

    def rearm_fallback(self) -> None:
        self.write(":ABOR")
        self.write(":INIT")
        self._armed = True

    def disarm_fallback(self) -> None:
        self.write(":ABOR")
        self._armed = False

    @property
    def fallback_armed(self) -> bool:
        return self._armed
