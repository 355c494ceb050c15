"""Keysight (formerly Agilent) B2901A / B2902A precision source/measure unit driver.

Command set: *Agilent B2900 Series SCPI Command Reference* (B2910-90030) and the *Keysight B2961A/B2962A
SCPI Command Reference* (same subsystems): ``:SOUR:FUNC:MODE``, ``:SOUR:CURR:RANG``, ``:SENS:VOLT:PROT``
(compliance), ``:OUTP``, ``:MEAS?`` with ``:FORM:ELEM:SENS``.

Three output automatisms are switched off explicitly because each would step the current:
``:OUTP:PROT`` (sets 0 V and opens the output the moment compliance is reached; here S5 holds the reachable
current instead), ``:OUTP:ON:AUTO`` (turns the output on by itself on ``:INIT``/``:READ``) and
``:OUTP:OFF:AUTO`` (turns it off after a measurement).

The B2902A has two channels; ``channel`` (1 or 2) selects the numeric suffix of every command.
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


class KeysightB2900(SourceMeter):
    """Keysight/Agilent B2901A and B2902A."""

    FAMILY = "Keysight B2900"
    VENDOR = "Keysight"
    MANUFACTURERS = ("KEYSIGHT", "AGILENT")
    # 210 V is the highest range; at that voltage the highest DC current range is 105 mA (B2900 ranges).
    MODELS: ClassVar[Mapping[str, ModelLimits]] = {
        "B2901A": ModelLimits(0.105, 210.0),
        "B2902A": ModelLimits(0.105, 210.0),
    }
    LEVEL_QUERY = ":SOUR1:CURR?"
    OUTPUT_QUERY = ":OUTP1?"
    COMPLIANCE_QUERY = ":SENS1:VOLT:PROT?"

    def _check_channel(self, channel: int) -> int:
        allowed = (1, 2) if self.idn.model == "B2902A" else (1,)
        if channel not in allowed:
            raise ValueError(f"channel = {channel!r}: {self.idn.model} has channels {list(allowed)}")
        return channel

    def _c(self, text: str) -> str:
        """Insert this channel's number: ``:SOUR{c}:...``."""
        return text.format(c=self.channel)

    def configuration_commands(self, *, range_a: float, compliance_v: float) -> Sequence[str]:
        return tuple(
            self._c(command)
            for command in (
                ":OUTP{c}:PROT OFF",
                ":OUTP{c}:ON:AUTO OFF",
                ":OUTP{c}:OFF:AUTO OFF",
                ":SOUR{c}:FUNC:MODE CURR",
                ":SOUR{c}:CURR:RANG:AUTO OFF",
                f":SOUR{{c}}:CURR:RANG {format_current(range_a)}",
                f":SENS{{c}}:VOLT:PROT {format_voltage(compliance_v)}",
                ':SENS{c}:FUNC "VOLT","CURR"',
                ":SENS{c}:VOLT:RANG:AUTO ON",
                f":SENS{{c}}:VOLT:NPLC {NPLC}",
                ":FORM:ELEM:SENS VOLT,CURR",
            )
        )

    @property
    def level_query(self) -> str:
        return self._c(":SOUR{c}:CURR?")

    @property
    def output_query(self) -> str:
        return self._c(":OUTP{c}?")

    @property
    def compliance_query(self) -> str:
        return self._c(":SENS{c}:VOLT:PROT?")

    def source_is_current(self) -> bool:
        return self.query(self._c(":SOUR{c}:FUNC:MODE?")).upper().startswith("CURR")

    def set_level_a(self, amps: float) -> None:
        self.write(self._c(f":SOUR{{c}}:CURR {format_current(amps)}"))

    def output_on(self) -> None:
        self.write(self._c(":OUTP{c} ON"))

    def output_off(self) -> None:
        self.write(self._c(":OUTP{c} OFF"))

    def measure(self) -> Reading:
        command = self._c(":MEAS? (@{c})")
        volts, amps = parse_pair(command, self.query(command))
        return Reading(volts, amps)

    @classmethod
    def measurement_reply(cls, command: str, reading: Reading) -> str | None:
        if not command.strip().upper().startswith(":MEAS?"):
            return None
        return f"{reading.voltage_v:+.6E},{reading.current_a:+.6E}"
