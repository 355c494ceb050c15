"""The segments the firmware's output is made of: linear ramps, the session, and the contact check.

Pure data and arithmetic (no state of the firmware beyond what is passed in). Where the numpy block path
and the scalar path need the same quantity, it is one function written so that it takes either a numpy
array or a Python float and gives bit-identical results for both (``np.floor`` and ``math.floor`` agree,
as do ``np.minimum`` and ``min``): :func:`pulse_fraction`, :func:`pulse_judged`, :func:`ramp_charge`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from iontodrive.protocol import Polarity, Waveform

from .thresholds import PULSE_ON_FRACTION

# A numpy array of per-step values (block path) or one step's float (scalar path): the rules below are
# written with operators only, so that both give the same arithmetic. Typed as Any for that reason.
Values = Any


class EndReason(Enum):
    TIME = "time"
    DOSE = "dose"
    CAP = "cap"
    MAX_DURATION = "max_duration"
    STOP = "stop"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class Ramp:
    """A linear set-point segment: from ``start`` (value before step ``start_step``) towards ``goal`` at
    ``rate`` µA/s; each step moves ``rate·dt``; the value stays at ``goal`` once reached."""

    start_step: int
    start: float
    goal: float
    rate: float

    def values(self, idx: np.ndarray, dt: float) -> np.ndarray:
        if self.goal == self.start or self.rate <= 0:
            return np.full(idx.shape[0], self.start if self.rate <= 0 else self.goal)
        k = np.maximum(idx - self.start_step + 1, 0)
        values: np.ndarray
        if self.goal > self.start:
            values = np.minimum(self.start + self.rate * dt * k, self.goal)
        else:
            values = np.maximum(self.start - self.rate * dt * k, self.goal)
        return values

    def value_at(self, idx: int, dt: float) -> float:
        """Set-point of global step ``idx`` (the scalar twin of :meth:`values`, same arithmetic)."""
        if self.goal == self.start or self.rate <= 0:
            return self.start if self.rate <= 0 else self.goal
        k = idx - self.start_step + 1
        if k < 0:
            k = 0
        if self.goal > self.start:
            return min(self.start + self.rate * dt * k, self.goal)
        return max(self.start - self.rate * dt * k, self.goal)

    def value_after(self, steps_done: int, dt: float) -> float:
        """Set-point after ``steps_done`` global steps (value of step ``steps_done - 1``)."""
        return float(self.value_at(steps_done - 1, dt))

    def end_step(self, dt: float) -> int:
        """Index of the first step at the goal (``start_step - 1`` if there is nothing to do)."""
        if self.goal == self.start or self.rate <= 0:
            return self.start_step - 1
        return self.start_step + max(1, math.ceil(abs(self.goal - self.start) / (self.rate * dt) - 1e-9)) - 1


def flat(step: int, value: float) -> Ramp:
    """A set-point that stays at ``value`` from ``step`` on."""
    return Ramp(step, value, value, 0.0)


@dataclass(slots=True)
class Session:
    """Parameters and progress of the session in progress."""

    target_ua: int
    dose_uas: int
    duration_ms: int
    ramp_up_ms: int
    ramp_down_ms: int
    polarity: Polarity
    waveform: Waveform
    pulse_frequency_hz: int
    duty_percent: int
    start_step: int
    on_steps: int = 0
    end_reason: EndReason | None = None
    pulse_anchor: int = 0

    @property
    def dose_based(self) -> bool:
        return self.dose_uas > 0

    @property
    def pulsed(self) -> bool:
        return self.waveform == Waveform.PULSED_DC

    @property
    def duty(self) -> float:
        return self.duty_percent / 100.0 if self.waveform == Waveform.PULSED_DC else 1.0

    @property
    def rate_up(self) -> float:
        return self.target_ua * 1000.0 / self.ramp_up_ms

    def rate_down(self, sp: float) -> float:
        """Ramp-to-zero rate (µA/s) from set-point ``sp``: full scale in ``ramp_down_ms`` (a ramp from below
        the target is shorter), and never longer than ``ramp_down_ms`` from above the target."""
        return max(self.target_ua, sp) * 1000.0 / self.ramp_down_ms


@dataclass(slots=True)
class ContactCheck:
    """Progress of the CONTACT_CHECK state (Start and Resume)."""

    resume: bool
    probe_ua: float
    high_limit: int
    start_step: int
    measure_start: int
    down_start: int
    end_step: int
    samples_i: list[np.ndarray | list[float]]  # measured current and voltage of the judged window
    samples_v: list[np.ndarray | list[float]]
    down: bool = False


def _floor(x: Values) -> Values:
    return np.floor(x) if isinstance(x, np.ndarray) else float(math.floor(x))


def _minimum(a: Values, b: float) -> Values:
    return np.minimum(a, b) if isinstance(a, np.ndarray) else min(a, b)


def _maximum(a: Values, b: float) -> Values:
    return np.maximum(a, b) if isinstance(a, np.ndarray) else max(a, b)


def pulse_fraction(s: Session, idx: Values, dt: float) -> Values:
    """Share of step(s) ``idx`` (global) that falls in a pulse's on-phase, for a pulsed session."""
    period = 1.0 / s.pulse_frequency_hz
    on = s.duty * period
    t0 = (idx - s.pulse_anchor) * dt
    t1 = t0 + dt
    c0 = _floor(t0 / period)
    c1 = _floor(t1 / period)
    on0 = c0 * on + _minimum(t0 - c0 * period, on)
    on1 = c1 * on + _minimum(t1 - c1 * period, on)
    return (on1 - on0) / dt


def pulse_judged(s: Session, idx: Values, frac: Values, dt: float) -> Values:
    """Steps whose voltage shows a pulse's settled on-phase: the last on-step of each pulse (S5).

    The skin capacitance charges during every pulse, so only the end of the on-phase shows the load's
    real voltage; judging the first steps of a pulse would keep the resistance limit from ever being
    declared. A step is judged when it is on (``frac > 0.05``) and either a pulse ends inside it (this
    covers pulses as short as one step) or the next step is off.
    """
    period = 1.0 / s.pulse_frequency_hz
    on = s.duty * period
    eps = 1e-9 * dt
    t0 = (idx - s.pulse_anchor) * dt
    last_end = _floor((t0 + dt - on + eps) / period) * period + on
    ends_inside = last_end > t0 + eps
    next_off = pulse_fraction(s, idx + 1, dt) <= PULSE_ON_FRACTION
    if isinstance(frac, np.ndarray):
        return (frac > PULSE_ON_FRACTION) & (ends_inside | next_off)
    return bool(frac > PULSE_ON_FRACTION and (ends_inside or next_off))


def ramp_charge(s: Session, sp: Values, output_tau_s: float, dt: float) -> Values:
    """Charge (µA·s) a ramp-down from set-point ``sp`` will deliver at the session's ramp-down rate (S11)."""
    rate = _maximum(sp, float(s.target_ua)) * 1000.0 / s.ramp_down_ms
    return s.duty * (sp * sp / (2.0 * rate) + sp * (output_tau_s - dt / 2.0))
