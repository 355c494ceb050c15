"""A resistive load behind a simulated instrument: measurement replies computed from the instrument's state.

pyvisa-sim answers each query from one property, so its ``:READ?`` cannot follow the source level (see the
header of ``tests/visa_sim/keithley_2400.yaml``). :class:`SimulatedLoad` wraps the pyvisa-sim resource and
replaces only the replies to the family's measurement queries: it asks the simulated instrument for its
output state, programmed level and compliance (directly on the wrapped resource, so these internal queries
are not in the driver's command log), and answers what an instrument driving this load would measure.

Model: a resistor of ``load_ohm`` between the terminals (``open_circuit`` makes it infinite). Output off: 0 V,
0 A. Otherwise ``V = I_set · R``; if ``|V|`` would exceed the compliance the source clamps at the compliance
and the current falls to ``V_compliance / R`` (0 A, plus ``leakage_a``, for an open circuit). Tests change
``load_ohm`` and ``open_circuit`` mid-session, or install ``transform`` to alter readings further.

Every other write and query passes through unchanged, so the simulated instrument still checks every command
the driver sends (unknown commands land in its error queue).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from iontodrive.visa.smu import Reading, SourceMeter

DEFAULT_LOAD_OHM = 1000.0


class SimulatedLoad:
    """Wraps a (pyvisa-sim) resource; see the module docstring.

    Attributes you may change at any time: ``load_ohm`` (> 0), ``open_circuit`` (bool), ``leakage_a``
    (current measured through an open circuit), ``transform`` (``(reading) -> reading`` applied last).
    """

    def __init__(self, resource: Any, *, load_ohm: float = DEFAULT_LOAD_OHM) -> None:
        if not (isinstance(load_ohm, (int, float)) and math.isfinite(load_ohm) and load_ohm > 0):
            raise ValueError(f"load_ohm = {load_ohm!r}: must be a positive finite number of ohms")
        self.resource = resource
        self.load_ohm = float(load_ohm)
        self.open_circuit = False
        self.leakage_a = 0.0
        self.transform: Callable[[Reading], Reading] | None = None
        self.driver: SourceMeter | None = None

    def bind(self, driver: SourceMeter) -> None:
        """Tell the load which driver's dialect to answer in (called once the instrument is identified)."""
        self.driver = driver

    # pyvisa resource surface -------------------------------------------------------------------------

    @property
    def timeout(self) -> Any:
        return self.resource.timeout

    @timeout.setter
    def timeout(self, value: Any) -> None:
        self.resource.timeout = value

    @property
    def read_termination(self) -> Any:
        return getattr(self.resource, "read_termination", None)

    @read_termination.setter
    def read_termination(self, value: Any) -> None:
        self.resource.read_termination = value

    @property
    def write_termination(self) -> Any:
        return getattr(self.resource, "write_termination", None)

    @write_termination.setter
    def write_termination(self, value: Any) -> None:
        self.resource.write_termination = value

    def write(self, message: str) -> Any:
        return self.resource.write(message)

    def close(self) -> None:
        self.resource.close()

    def query(self, message: str) -> str:
        reply = str(
            self.resource.query(message)
        )  # the simulated instrument still sees (and checks) the query
        driver = self.driver
        if driver is None:
            return reply
        reading = self.reading(driver)
        replaced = driver.measurement_reply(message, reading)
        return reply if replaced is None else replaced

    # the load ------------------------------------------------------------------------------------------

    def reading(self, driver: SourceMeter) -> Reading:
        """What the instrument would measure now."""
        on = self.resource.query(driver.output_query).strip().upper() in ("1", "ON", "+1")
        if not on:
            result = Reading(0.0, 0.0)
        else:
            level = float(self.resource.query(driver.level_query).split(",")[0])
            compliance = abs(float(self.resource.query(driver.compliance_query).split(",")[0]))
            sign = 1.0 if level >= 0 else -1.0
            if self.open_circuit:
                result = Reading(sign * compliance if level else 0.0, sign * self.leakage_a if level else 0.0)
            else:
                volts = level * self.load_ohm
                if abs(volts) > compliance:
                    volts = sign * compliance
                result = Reading(volts, volts / self.load_ohm)
        if self.transform is not None:
            result = self.transform(result)
        return result
