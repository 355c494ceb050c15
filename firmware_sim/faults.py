"""Plant faults: things the body and the hardware do to the simulated device.

Each fault is a frozen dataclass with ``at_s``, the simulator time (seconds of session clock since the
:class:`~firmware_sim.Device` was created, the trace's ``t_s``) at which it begins; ``None`` means "now".
A fault set in the past begins now. :class:`FaultSchedule` turns the injected faults into per-step arrays
(contact area, impedance multiplier, short-circuit resistance, regulator gain, ADC masking) that the plant
consumes; everything is a pure function of time, so a block of steps is evaluated in one vectorised call.

* :class:`ElectrodeLift` -- contact area shrinks linearly to zero over ``duration_s`` (a few hundred ms),
  then the circuit is open.
* :class:`ContactReturn` -- contact area grows back to full over ``duration_s``.
* :class:`ImpedanceRise` -- the load impedance grows exponentially by ``factor`` over ``duration_s``
  (drying gel); slow enough never to look like a lift, fast enough to reach compliance.
* :class:`ShortCircuit` -- a ``resistance_ohm`` path in parallel with the load (electrodes touching).
* :class:`OverCurrent` -- the current regulator fails: output = command × a gain rising to ``gain`` over
  ``rise_s``. With ``adc_masked`` the firmware's current reading also fails (it reads the command), so only
  an independent hardware trip can catch it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True, slots=True)
class ElectrodeLift:
    """Electrode lifting off the skin: area 1 -> 0 over ``duration_s`` seconds, then open circuit."""

    at_s: float | None = None
    duration_s: float = 0.3


@dataclass(frozen=True, slots=True)
class ContactReturn:
    """Electrode put back: area -> 1 over ``duration_s`` seconds."""

    at_s: float | None = None
    duration_s: float = 0.2


@dataclass(frozen=True, slots=True)
class ImpedanceRise:
    """Impedance multiplied by ``factor`` (> 1) over ``duration_s`` seconds, exponentially, then held."""

    at_s: float | None = None
    factor: float = 8.0
    duration_s: float = 20.0


@dataclass(frozen=True, slots=True)
class ShortCircuit:
    """A ``resistance_ohm`` path across the electrodes for ``duration_s`` seconds (None = for ever)."""

    at_s: float | None = None
    resistance_ohm: float = 20.0
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class OverCurrent:
    """Regulator fault: output current = command × gain, the gain rising 1 -> ``gain`` over ``rise_s``.

    ``adc_masked``: the current ADC fails too and reports the commanded current (firmware blind).
    """

    at_s: float | None = None
    gain: float = 1.3
    rise_s: float = 0.5
    duration_s: float | None = None
    adc_masked: bool = False


PlantFault = ElectrodeLift | ContactReturn | ImpedanceRise | ShortCircuit | OverCurrent
PLANT_FAULT_TYPES = (ElectrodeLift, ContactReturn, ImpedanceRise, ShortCircuit, OverCurrent)


def _check_fault(fault: PlantFault) -> None:
    """Validate a fault's parameters (raises ValueError naming the field and range)."""
    name = type(fault).__name__
    if fault.at_s is not None and not (math.isfinite(fault.at_s) and fault.at_s >= 0):
        raise ValueError(f"{name}.at_s = {fault.at_s!r} is out of range: must be a finite number >= 0")
    positive: list[str] = []
    if isinstance(fault, ElectrodeLift | ContactReturn):
        positive = ["duration_s"]
    elif isinstance(fault, ImpedanceRise):
        positive = ["duration_s"]
        if not fault.factor > 0:
            raise ValueError(f"{name}.factor = {fault.factor!r} is out of range: must be > 0")
    elif isinstance(fault, ShortCircuit):
        positive = ["resistance_ohm"]
    elif isinstance(fault, OverCurrent):
        positive = ["rise_s"]
        if not 0 < fault.gain <= 10:
            raise ValueError(f"{name}.gain = {fault.gain!r} is out of range: must be in (0, 10]")
    for field_name in positive:
        value = getattr(fault, field_name)
        if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{name}.{field_name} = {value!r} is out of range: must be a finite number > 0")
    duration = getattr(fault, "duration_s", None)
    if duration is not None and not duration > 0:
        raise ValueError(f"{name}.duration_s = {duration!r} is out of range: must be > 0 or None")


def _start_s(fault: PlantFault) -> float:
    """A scheduled fault's start time (faults are stored with ``at_s`` resolved)."""
    assert fault.at_s is not None
    return fault.at_s


@dataclass(frozen=True, slots=True)
class PlantInputs:
    """Per-step fault arrays for a block (all length N)."""

    area: np.ndarray  # contact area fraction, 0 = open circuit
    z_mult: np.ndarray  # impedance multiplier (>= 0)
    short_ohm: np.ndarray  # parallel short resistance, inf = none
    gain: np.ndarray  # regulator gain (1 = healthy)
    adc_masked: np.ndarray  # bool: current ADC reports the command
    active: np.ndarray  # bool: the regulator fault shapes the output current at this step


class FaultSchedule:
    """The faults injected so far, evaluated as arrays over a block's time grid."""

    def __init__(self) -> None:
        self._area: list[tuple[ElectrodeLift | ContactReturn, float]] = []  # (fault, area at its start)
        self._others: list[ImpedanceRise | ShortCircuit | OverCurrent] = []

    def __len__(self) -> int:
        return len(self._area) + len(self._others)

    def add(self, fault: PlantFault, now_s: float) -> PlantFault:
        """Schedule ``fault``; returns it with ``at_s`` resolved (never before ``now_s``).

        Raises:
            TypeError: not a plant fault.
            ValueError: a parameter is out of range.
        """
        if not isinstance(fault, PLANT_FAULT_TYPES):
            raise TypeError(f"not a plant fault: {type(fault).__name__}")
        _check_fault(fault)
        at = now_s if fault.at_s is None or fault.at_s < now_s else float(fault.at_s)
        fault = replace(fault, at_s=at)
        if isinstance(fault, ElectrodeLift | ContactReturn):
            entries = [f for f, _ in self._area] + [fault]
            entries.sort(key=_start_s)  # stable: equal times keep injection order
            self._area = []
            for f in entries:
                start_area = float(self._area_at(np.array([f.at_s]))[0])
                self._area.append((f, start_area))
        else:
            self._others.append(fault)
        return fault

    def _area_at(self, t: np.ndarray) -> np.ndarray:
        area = np.ones_like(t)
        for fault, start in self._area:
            assert fault.at_s is not None
            mask = t >= fault.at_s
            if not mask.any():
                continue
            progress = np.minimum(1.0, (t[mask] - fault.at_s) / fault.duration_s)
            if isinstance(fault, ElectrodeLift):
                area[mask] = start * (1.0 - progress)
            else:
                area[mask] = start + (1.0 - start) * progress
        return area

    def inputs(self, t: np.ndarray) -> PlantInputs:
        """Fault arrays for the step end times ``t`` (seconds)."""
        n = t.shape[0]
        area = self._area_at(t) if self._area else np.ones(n)
        z_mult = np.ones(n)
        short = np.full(n, np.inf)
        gain = np.ones(n)
        masked = np.zeros(n, dtype=bool)
        for fault in self._others:
            assert fault.at_s is not None
            duration = fault.duration_s if isinstance(fault, ShortCircuit | OverCurrent) else None
            end = math.inf if duration is None else fault.at_s + duration
            if isinstance(fault, ImpedanceRise):
                progress = np.clip((t - fault.at_s) / fault.duration_s, 0.0, 1.0)
                z_mult *= fault.factor**progress
                continue
            mask = (t >= fault.at_s) & (t < end)
            if not mask.any():
                continue
            if isinstance(fault, ShortCircuit):
                short[mask] = np.minimum(short[mask], fault.resistance_ohm)
            else:
                ramp = np.minimum(1.0, (t[mask] - fault.at_s) / fault.rise_s)
                gain[mask] *= 1.0 + (fault.gain - 1.0) * ramp
                if fault.adc_masked:
                    masked |= mask
        return PlantInputs(area, z_mult, short, gain, masked, gain != 1.0)
