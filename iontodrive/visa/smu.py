"""The interface every source-meter driver implements (on top of :class:`~.instrument.ScpiInstrument`).

A driver knows one family's SCPI dialect and nothing about sessions: configuring current-source mode, range
and voltage compliance (without touching the output), reading back the output state and the programmed
level, setting a level, switching the output, and taking one voltage/current reading. The host-side session
(:mod:`iontodrive.visa.session`) decides *when* to do each; this layer only says *how*.

Units at this layer are SI as the instruments speak them: amperes and volts, signed (a negative current flows
into the HI terminal). Currents are written as NR3 numbers with a fixed exponent ``E-3`` (the mantissa is the
value in milliampere, six decimals = 1 nA resolution, e.g. ``-1.500000E-3``): valid SCPI for every instrument
here, exact to read in a log, and what the pyvisa-sim definitions in ``tests/visa_sim`` parse.

Optional hardware-side ramp-down ("fallback", see ``docs/visa.md``): a driver whose instrument can run a
source list by itself sets ``SUPPORTS_FALLBACK`` and implements :meth:`SourceMeter.arm_fallback`,
:meth:`SourceMeter.rearm_fallback` and :meth:`SourceMeter.disarm_fallback`; while armed its
:meth:`SourceMeter.measure` must not start a measurement of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from iontodrive.errors import RemoteProtocolError
from iontodrive.visa.instrument import (
    DEFAULT_TIMEOUT_S,
    CommandRecorder,
    Identification,
    InstrumentError,
    ScpiInstrument,
    VisaResource,
)

# Fast readings: 0.1 power-line cycles (2 ms at 50 Hz) keeps one reading well inside a 50 ms tick.
NPLC = "0.1"
COMPLIANCE_READBACK_TOLERANCE = 0.01  # relative; the instrument may round the value it accepted


@dataclass(frozen=True)
class ModelLimits:
    """Hard output limits of one model (magnitudes): the largest current range and voltage compliance."""

    max_current_a: float
    max_voltage_v: float


@dataclass(frozen=True)
class Reading:
    """One measurement: voltage across the output (V) and current through it (A), both signed."""

    voltage_v: float
    current_a: float


def format_current(amps: float) -> str:
    """A current in amperes as NR3 with exponent ``E-3`` (1 nA resolution, never ``-0``)."""
    milliamps = round(amps * 1000.0, 6)
    if milliamps == 0:
        milliamps = 0.0
    return f"{milliamps:.6f}E-3"


def format_voltage(volts: float) -> str:
    """A voltage in volts as NR2 with four decimals."""
    return f"{volts:.4f}"


def parse_pair(command: str, reply: str) -> tuple[float, float]:
    """The first two comma-separated numbers of ``reply``; RemoteProtocolError otherwise."""
    parts = reply.split(",")
    try:
        return float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        raise RemoteProtocolError(f"{command!r} returned {reply!r}, not two numbers") from None


class SourceMeter(ScpiInstrument, ABC):
    """Base of the family drivers. Construct through :func:`iontodrive.visa.drivers.connect`.

    Class attributes a driver sets: ``FAMILY`` (display name), ``VENDOR`` (short manufacturer name for the
    synthesized identity), ``MANUFACTURERS`` (upper-case substrings of the ``*IDN?`` manufacturer field),
    ``MODELS`` (model name -> :class:`ModelLimits`), and the read-back queries ``LEVEL_QUERY``,
    ``OUTPUT_QUERY`` and ``COMPLIANCE_QUERY`` (exposed per instance as :attr:`level_query` etc., which a
    multi-channel driver overrides).
    """

    FAMILY: ClassVar[str]
    VENDOR: ClassVar[str]
    MANUFACTURERS: ClassVar[tuple[str, ...]]
    MODELS: ClassVar[Mapping[str, ModelLimits]]
    LEVEL_QUERY: ClassVar[str]
    OUTPUT_QUERY: ClassVar[str]
    COMPLIANCE_QUERY: ClassVar[str]
    SUPPORTS_FALLBACK: ClassVar[bool] = False

    def __init__(
        self,
        resource: VisaResource,
        identification: Identification,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        recorder: CommandRecorder | None = None,
        clock: Callable[[], float] | None = None,
        channel: int = 1,
    ) -> None:
        kwargs = {} if clock is None else {"clock": clock}
        super().__init__(resource, timeout_s=timeout_s, recorder=recorder, **kwargs)
        if identification.model not in self.MODELS:
            raise ValueError(f"{type(self).__name__} does not drive model {identification.model!r}")
        self.idn = identification
        self.limits = self.MODELS[identification.model]
        self.channel = self._check_channel(channel)

    # ------------------------------------------------------------------------------- identification

    @classmethod
    def matches(cls, idn: Identification) -> bool:
        """True if this driver supports the instrument that gave ``idn``."""
        maker = idn.manufacturer.upper()
        return any(name in maker for name in cls.MANUFACTURERS) and idn.model in cls.MODELS

    @classmethod
    def supported(cls) -> list[str]:
        """``"<vendor> <model>"`` for every model this driver supports."""
        return [f"{cls.VENDOR} {model}" for model in cls.MODELS]

    def _check_channel(self, channel: int) -> int:
        if channel != 1:
            raise ValueError(f"channel = {channel!r}: {self.idn.model} has one output channel (1)")
        return channel

    @property
    def model_name(self) -> str:
        """``"<vendor> <model>"``, at most 16 characters (the identity report's model field)."""
        return f"{self.VENDOR} {self.idn.model}"[:16]

    # ------------------------------------------------------------------------------ driver hooks

    def configure(self, *, range_a: float, compliance_v: float) -> None:
        """Current-source mode, source range (A, magnitude) and voltage compliance (V), plus voltage and
        current measurement; never touches the output state or the level. Reads back and verifies.

        Raises InstrumentError if the instrument reports an error or did not take the settings.
        """
        self.check_errors("clearing the error queue")  # errors left by others must not be blamed on us
        for command in self.configuration_commands(range_a=range_a, compliance_v=compliance_v):
            self.write(command)
        self.check_errors("configuring current-source mode, range and compliance")
        if not self.source_is_current():
            raise InstrumentError("configuring current-source mode", [(0, "source function is not CURR")])
        accepted = self.compliance_v()
        if abs(accepted - compliance_v) > COMPLIANCE_READBACK_TOLERANCE * compliance_v:
            raise InstrumentError(
                "setting the voltage compliance",
                [(0, f"asked for {compliance_v:g} V, instrument reports {accepted:g} V")],
            )

    @abstractmethod
    def configuration_commands(self, *, range_a: float, compliance_v: float) -> Sequence[str]:
        """The commands :meth:`configure` sends, in order (documented per family in ``docs/visa.md``)."""

    @property
    def level_query(self) -> str:
        """The query that reads back the programmed source current."""
        return self.LEVEL_QUERY

    @property
    def output_query(self) -> str:
        """The query that reads back the output state."""
        return self.OUTPUT_QUERY

    @property
    def compliance_query(self) -> str:
        """The query that reads back the voltage compliance."""
        return self.COMPLIANCE_QUERY

    def output_enabled(self) -> bool:
        """True if the output is on."""
        return self.query_bool(self.output_query)

    @abstractmethod
    def source_is_current(self) -> bool:
        """True if the source function is current."""

    def source_level_a(self) -> float:
        """The programmed source current (A, signed): the read-back every ramp starts from."""
        return self.query_float(self.level_query)

    def compliance_v(self) -> float:
        """The voltage compliance the instrument holds (V)."""
        return self.query_float(self.compliance_query)

    @abstractmethod
    def set_level_a(self, amps: float) -> None:
        """Program the source current (A, signed). Steps at once: only the ramp controller calls this."""

    @abstractmethod
    def output_on(self) -> None:
        """Switch the output on (at the programmed level)."""

    @abstractmethod
    def output_off(self) -> None:
        """Switch the output off."""

    @abstractmethod
    def measure(self) -> Reading:
        """Take one reading of output voltage and current (the output must be on)."""

    # ------------------------------------------------------------------- pyvisa-sim load model

    @classmethod
    @abstractmethod
    def measurement_reply(cls, command: str, reading: Reading) -> str | None:
        """The reply this family gives to ``command`` if it is one of its measurement queries, else None.

        Used by :class:`~iontodrive.visa.simload.SimulatedLoad` to answer as a real instrument would.
        """

    # ------------------------------------------------------------------- hardware-side fallback

    def arm_fallback(self, points_a: Sequence[float], interval_s: float) -> None:
        """Hand the output to the instrument's own source list: ``points_a`` (A) one every ``interval_s``."""
        raise NotImplementedError(f"{self.FAMILY} has no hardware-side fallback here")

    def rearm_fallback(self) -> None:
        """Restart the armed list from its first point (which equals the present level)."""
        raise NotImplementedError(f"{self.FAMILY} has no hardware-side fallback here")

    def disarm_fallback(self) -> None:
        """Stop the list; the output stays at the level it had."""
        raise NotImplementedError(f"{self.FAMILY} has no hardware-side fallback here")

    @property
    def fallback_armed(self) -> bool:
        return False
