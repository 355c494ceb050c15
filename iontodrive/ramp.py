"""The ramp controller: ramp plans under a slew limit, session predictions and set-point streams.

Pure functions of their arguments: no I/O, no clocks, no threads. Currents are in microampere (µA, floats
allowed here), times in seconds, charge in microampere-second (µA·s).

Invariants every plan keeps (the tests check them with hypothesis):

* a ramp **starts at the read-back value** it is given (the parameter is named ``readback_ua`` so that no
  caller passes an assumed or remembered value), and ends **exactly** at the target;
* no profile's slope exceeds the slew limit; sampled at ``rate_hz`` or faster, no two successive set-points
  differ by more than ``slew_limit_ua_per_s / rate_hz``;
* a requested ramp that would be too fast is either stretched to the shortest allowed duration
  (``stretch=True``) or refused with :class:`~iontodrive.errors.SafetyRefusal` (``stretch=False``), never
  executed.

Profiles (``u = t / T`` runs from 0 to 1 over a ramp of duration ``T`` from ``a`` to ``b``):

* ``LINEAR``: ``i(t) = a + (b - a)·u``; slope ``|b - a| / T``.
* ``RAISED_COSINE``: ``i(t) = a + (b - a)·(1 - cos(πu)) / 2``; smooth at both ends, peak slope
  ``π/2 · |b - a| / T`` (at ``u = 1/2``), so it needs π/2 times the linear minimum duration.

Both profiles are symmetric about the ramp's midpoint, so a ramp's charge is ``(a + b)/2 · T`` for either.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

import numpy as np

from iontodrive.errors import SafetyRefusal
from iontodrive.units import exceeds, falls_short, require_real

__all__ = [
    "MAX_PLAN_POINTS",
    "RampPlan",
    "RampProfile",
    "SessionPlan",
    "SetpointStream",
    "check_steps",
    "min_ramp_duration_s",
    "plan_ramp",
    "predict_session",
    "profile_fraction",
]

# Refuse plans with more points than this (a 10-hour ramp at 1 kHz is 36 M points: a caller bug).
MAX_PLAN_POINTS = 10_000_000


class RampProfile(Enum):
    """Shape of a ramp between two set-points."""

    LINEAR = "linear"
    RAISED_COSINE = "raised_cosine"

    @property
    def peak_slope_factor(self) -> float:
        """Peak slope of the profile divided by the slope of a linear ramp of the same duration."""
        return 1.0 if self is RampProfile.LINEAR else math.pi / 2.0


def _profile(value: object) -> RampProfile:
    if isinstance(value, RampProfile):
        return value
    if isinstance(value, str):
        try:
            return RampProfile(value.strip().lower())
        except ValueError:
            pass
    raise SafetyRefusal("profile", value, reason=f"must be one of {[p.value for p in RampProfile]}")


def profile_fraction(profile: RampProfile, u: np.ndarray | float) -> np.ndarray:
    """Fraction of the way from start to target at normalised time ``u`` (clipped to [0, 1]).

    Vectorised: ``u`` may be a scalar or an array; the result is an array of the same shape.
    """
    u_arr = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
    if profile is RampProfile.LINEAR:
        return u_arr
    return 0.5 * (1.0 - np.cos(np.pi * u_arr))


def min_ramp_duration_s(
    delta_ua: float, slew_limit_ua_per_s: float, profile: RampProfile = RampProfile.LINEAR
) -> float:
    """Shortest duration (s) of a ramp of ``delta_ua`` (either sign) whose peak slope stays within the limit.

    ``|delta| / slew`` for linear, ``π/2 · |delta| / slew`` for raised cosine. Raises SafetyRefusal for a
    non-finite delta or a slew limit that is not a positive finite number.
    """
    delta = require_real("delta_ua", delta_ua)
    slew = require_real("slew_limit_ua_per_s", slew_limit_ua_per_s, minimum=0.0, min_exclusive=True)
    return abs(delta) / slew * _profile(profile).peak_slope_factor


@dataclass(frozen=True, eq=False)
class RampPlan:
    """A sampled ramp. Arrays are read-only.

    ``times_s[0] == 0``, ``times_s[-1] == duration_s``; ``setpoints_ua[0] == readback_ua`` and
    ``setpoints_ua[-1] == target_ua`` exactly; spacing of ``times_s`` is at most ``1 / rate_hz``.
    ``charge_uas`` is the exact integral of the continuous profile (not of the samples).
    ``requested_duration_s`` is what the caller asked for; ``stretched`` says whether the slew limit made the
    ramp longer. A ramp with ``readback_ua == target_ua`` has one point and zero duration.
    """

    times_s: np.ndarray
    setpoints_ua: np.ndarray
    duration_s: float
    charge_uas: float
    profile: RampProfile
    readback_ua: float
    target_ua: float
    requested_duration_s: float
    stretched: bool
    slew_limit_ua_per_s: float
    rate_hz: float

    @property
    def max_step_ua(self) -> float:
        """Largest difference between successive set-points of this plan (0 for a zero-length ramp)."""
        if self.setpoints_ua.size < 2:
            return 0.0
        return float(np.max(np.abs(np.diff(self.setpoints_ua))))

    def setpoint_at(self, t_s: np.ndarray | float) -> np.ndarray:
        """The continuous profile evaluated at ``t_s`` (s from the ramp's start; clipped to the ramp)."""
        if self.duration_s == 0.0:
            return np.full(np.shape(t_s), self.target_ua, dtype=np.float64)
        u = np.asarray(t_s, dtype=np.float64) / self.duration_s
        return self.readback_ua + (self.target_ua - self.readback_ua) * profile_fraction(self.profile, u)


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def plan_ramp(
    readback_ua: float,
    target_ua: float,
    duration_s: float,
    *,
    slew_limit_ua_per_s: float,
    profile: RampProfile = RampProfile.LINEAR,
    rate_hz: float = 20.0,
    stretch: bool = True,
) -> RampPlan:
    """Plan a ramp from the read-back output ``readback_ua`` to ``target_ua`` over ``duration_s``.

    ``readback_ua`` must be what the source reports now, never an assumed value. If ``duration_s`` is
    shorter than :func:`min_ramp_duration_s` allows, the ramp is stretched to that minimum
    (``stretch=True``) or refused with ``SafetyRefusal("ramp_s", duration_s, minimum, None)``
    (``stretch=False``). Set-points are spaced at most ``1 / rate_hz`` apart in time, so successive
    set-points differ by at most ``slew_limit_ua_per_s / rate_hz``.

    Raises SafetyRefusal (naming the parameter) for non-finite or wrongly typed inputs, a negative duration,
    a non-positive slew limit or rate, or a plan of more than :data:`MAX_PLAN_POINTS` points.
    """
    start = require_real("readback_ua", readback_ua)
    target = require_real("target_ua", target_ua)
    requested = require_real("ramp_s", duration_s, minimum=0.0)
    slew = require_real("slew_limit_ua_per_s", slew_limit_ua_per_s, minimum=0.0, min_exclusive=True)
    rate = require_real("rate_hz", rate_hz, minimum=0.0, min_exclusive=True)
    shape = _profile(profile)
    if not isinstance(stretch, bool):
        raise SafetyRefusal("stretch", stretch, reason="must be True or False")

    if start == target:
        return RampPlan(
            times_s=_readonly(np.zeros(1)),
            setpoints_ua=_readonly(np.array([target], dtype=np.float64)),
            duration_s=0.0,
            charge_uas=0.0,
            profile=shape,
            readback_ua=start,
            target_ua=target,
            requested_duration_s=requested,
            stretched=False,
            slew_limit_ua_per_s=slew,
            rate_hz=rate,
        )

    shortest = abs(target - start) / slew * shape.peak_slope_factor
    if not stretch and falls_short(requested, shortest):
        raise SafetyRefusal(
            "ramp_s",
            requested,
            minimum=shortest,
            reason=(
                f"a {shape.value} ramp of {abs(target - start):g} µA in {requested:g} s exceeds the slew "
                f"limit of {slew:g} µA/s"
            ),
        )
    # Stretch (or, within float tolerance of the minimum, extend by that tolerance): never faster.
    duration = max(requested, shortest)
    stretched = duration > requested

    steps = max(1, math.ceil(duration * rate))
    if steps + 1 > MAX_PLAN_POINTS:
        raise SafetyRefusal(
            "rate_hz",
            rate,
            minimum=None,
            maximum=(MAX_PLAN_POINTS - 1) / duration,
            reason=f"a {duration:g} s ramp at {rate:g} Hz would need {steps + 1} points",
        )
    times = np.linspace(0.0, duration, steps + 1)
    # A difference so small (a few 1e-324 µA) that its shortest ramp underflows to 0 s is one step.
    fractions = profile_fraction(shape, times / duration) if duration > 0 else np.ones_like(times)
    setpoints = start + (target - start) * fractions
    setpoints[0] = start
    setpoints[-1] = target
    return RampPlan(
        times_s=_readonly(times),
        setpoints_ua=_readonly(setpoints),
        duration_s=duration,
        charge_uas=0.5 * (start + target) * duration,
        profile=shape,
        readback_ua=start,
        target_ua=target,
        requested_duration_s=requested,
        stretched=stretched,
        slew_limit_ua_per_s=slew,
        rate_hz=rate,
    )


@dataclass(frozen=True)
class SessionPlan:
    """Predicted course of a session that ramps from 0 to ``target_ua``, holds, and ramps back to 0.

    Times in s from the start of the ramp up; charges in µA·s. ``charge_uas`` is the total expected charge
    (ramps included, S11). For a pulsed waveform ``duty_fraction`` (0–1] scales every charge (the device
    integrates measured current, whose average is duty × amplitude); ``target_ua`` stays the amplitude.
    """

    target_ua: float
    ramp_up_s: float
    ramp_down_s: float
    hold_s: float
    total_s: float
    ramp_down_start_s: float
    charge_uas: float
    ramp_up_charge_uas: float
    ramp_down_charge_uas: float
    dose_based: bool
    profile: RampProfile = RampProfile.LINEAR
    duty_fraction: float = 1.0

    def setpoint_at(self, t_s: np.ndarray | float) -> np.ndarray:
        """Planned set-point (amplitude, µA) at ``t_s`` s after the session's start; 0 outside the session."""
        t = np.asarray(t_s, dtype=np.float64)
        result = np.zeros(t.shape, dtype=np.float64)
        if self.ramp_up_s > 0.0:
            up = (t >= 0.0) & (t < self.ramp_up_s)
            result[up] = self.target_ua * profile_fraction(self.profile, t[up] / self.ramp_up_s)
        hold = (t >= self.ramp_up_s) & (t <= self.ramp_down_start_s)
        result[hold] = self.target_ua
        if self.ramp_down_s > 0.0:
            down = (t > self.ramp_down_start_s) & (t <= self.total_s)
            u = (t[down] - self.ramp_down_start_s) / self.ramp_down_s
            result[down] = self.target_ua * (1.0 - profile_fraction(self.profile, u))
        return result

    def charge_at(self, t_s: np.ndarray | float) -> np.ndarray:
        """Planned delivered charge (µA·s) after ``t_s`` s; closed form, vectorised."""
        t = np.clip(np.asarray(t_s, dtype=np.float64), 0.0, self.total_s)
        amp = self.target_ua * self.duty_fraction
        charge = np.zeros(t.shape, dtype=np.float64)
        if self.ramp_up_s > 0.0:
            charge += (
                amp
                * self.ramp_up_s
                * _fraction_integral(self.profile, np.minimum(t, self.ramp_up_s) / self.ramp_up_s)
            )
        charge += amp * np.clip(t - self.ramp_up_s, 0.0, self.hold_s)
        if self.ramp_down_s > 0.0:
            u = np.clip((t - self.ramp_down_start_s) / self.ramp_down_s, 0.0, 1.0)
            charge += amp * self.ramp_down_s * (u - _fraction_integral(self.profile, u))
        return charge

    def remaining_s(self, elapsed_s: float) -> float:
        """Planned time left (s) after ``elapsed_s`` s of output (pauses excluded)."""
        return max(0.0, self.total_s - elapsed_s)


def _fraction_integral(profile: RampProfile, u: np.ndarray) -> np.ndarray:
    """∫₀ᵘ profile_fraction(v) dv for u in [0, 1] (the normalised charge of a 0→1 ramp up to ``u``)."""
    if profile is RampProfile.LINEAR:
        linear: np.ndarray = 0.5 * u * u
        return linear
    sine: np.ndarray = 0.5 * (u - np.sin(np.pi * u) / np.pi)
    return sine


def predict_session(
    target_ua: float,
    ramp_up_s: float,
    ramp_down_s: float,
    *,
    dose_uas: float | None = None,
    duration_s: float | None = None,
    profile: RampProfile = RampProfile.LINEAR,
    duty_fraction: float = 1.0,
) -> SessionPlan:
    """Predict duration and charge of a session from 0 to ``target_ua`` and back (ramps included, S11).

    Give exactly one of ``dose_uas`` (dose-based: the ramp down starts when the charge delivered so far plus
    the ramp down's own charge equals the dose) or ``duration_s`` (time-based: total time including both
    ramps). Ramps of either profile carry ``target · T / 2`` of charge.

    Raises SafetyRefusal: ``target_ua`` not > 0, negative ramps, both or neither of dose/duration,
    ``duration_s`` shorter than the two ramps, or ``dose_uas`` smaller than the charge of the ramps alone
    (the error's ``minimum`` is that charge), ``duty_fraction`` outside (0, 1].
    """
    target = require_real("target_ua", target_ua, minimum=0.0, min_exclusive=True)
    up = require_real("ramp_up_s", ramp_up_s, minimum=0.0)
    down = require_real("ramp_down_s", ramp_down_s, minimum=0.0)
    duty = require_real("duty_fraction", duty_fraction, minimum=0.0, maximum=1.0, min_exclusive=True)
    shape = _profile(profile)
    if (dose_uas is None) == (duration_s is None):
        raise SafetyRefusal(
            "dose_uas" if dose_uas is not None else "duration_s",
            dose_uas if dose_uas is not None else duration_s,
            reason="give exactly one of dose_uas and duration_s",
        )
    amp = target * duty
    up_charge = amp * up / 2.0
    down_charge = amp * down / 2.0
    if dose_uas is not None:
        dose = require_real("dose_uas", dose_uas, minimum=0.0, min_exclusive=True)
        ramps_charge = up_charge + down_charge
        if falls_short(dose, ramps_charge):
            raise SafetyRefusal(
                "dose_uas",
                dose_uas,
                minimum=ramps_charge,
                reason=f"the ramps alone deliver {ramps_charge:g} µA·s at {target:g} µA",
            )
        hold = max(0.0, (dose - ramps_charge) / amp)
        total_charge = dose
    else:
        total = require_real("duration_s", duration_s, minimum=0.0, min_exclusive=True)
        if falls_short(total, up + down):
            raise SafetyRefusal(
                "duration_s", duration_s, minimum=up + down, reason="shorter than the two ramps together"
            )
        hold = max(0.0, total - up - down)
        total_charge = up_charge + down_charge + amp * hold
    return SessionPlan(
        target_ua=target,
        ramp_up_s=up,
        ramp_down_s=down,
        hold_s=hold,
        total_s=up + hold + down,
        ramp_down_start_s=up + hold,
        charge_uas=total_charge,
        ramp_up_charge_uas=up_charge,
        ramp_down_charge_uas=down_charge,
        dose_based=dose_uas is not None,
        profile=shape,
        duty_fraction=duty,
    )


class SetpointStream:
    """Set-points for sources that cannot ramp by themselves (bench SMUs over VISA).

    It only computes: the caller paces it (sleeps or waits on its clock until ``t_offset_s`` after the
    segment's start before sending each set-point) and reads the output back before every segment. A
    segment that is interrupted (the caller stops iterating) is resumed by calling :meth:`segment` again with
    a fresh read-back value; nothing here remembers an assumed output level.

    Thread-safety: an instance holds only its immutable settings plus :attr:`last_setpoint_ua` (informative),
    so separate segments may be iterated from separate threads; each generator belongs to one thread.
    """

    def __init__(
        self,
        *,
        slew_limit_ua_per_s: float,
        profile: RampProfile = RampProfile.LINEAR,
        rate_hz: float = 20.0,
        stretch: bool = True,
    ) -> None:
        self.slew_limit_ua_per_s = require_real(
            "slew_limit_ua_per_s", slew_limit_ua_per_s, minimum=0.0, min_exclusive=True
        )
        self.rate_hz = require_real("rate_hz", rate_hz, minimum=0.0, min_exclusive=True)
        self.profile = _profile(profile)
        if not isinstance(stretch, bool):
            raise SafetyRefusal("stretch", stretch, reason="must be True or False")
        self.stretch = stretch
        self.last_setpoint_ua: float | None = None

    @property
    def max_step_ua(self) -> float:
        """Largest change between two successive set-points (µA): ``slew / rate``."""
        return self.slew_limit_ua_per_s / self.rate_hz

    def plan(
        self,
        readback_ua: float,
        target_ua: float,
        ramp_s: float,
        *,
        profile: RampProfile | None = None,
        stretch: bool | None = None,
    ) -> RampPlan:
        """The :class:`RampPlan` that :meth:`segment` would iterate (same validation and refusals)."""
        return plan_ramp(
            readback_ua,
            target_ua,
            ramp_s,
            slew_limit_ua_per_s=self.slew_limit_ua_per_s,
            profile=self.profile if profile is None else profile,
            rate_hz=self.rate_hz,
            stretch=self.stretch if stretch is None else stretch,
        )

    def segment(
        self,
        readback_ua: float,
        target_ua: float,
        ramp_s: float,
        *,
        profile: RampProfile | None = None,
        stretch: bool | None = None,
        include_start: bool = True,
    ) -> Iterator[tuple[float, float]]:
        """Yield ``(t_offset_s, setpoint_ua)`` from ``readback_ua`` to exactly ``target_ua``.

        Offsets are from the segment's start and spaced at most ``1 / rate_hz`` apart; successive set-points
        differ by at most :attr:`max_step_ua`. The first pair is ``(0.0, readback_ua)`` (setting the source
        to its own read-back level), omitted with ``include_start=False``. The plan is computed (and any
        SafetyRefusal raised) when this method is called, before anything is yielded.
        """
        ramp = self.plan(readback_ua, target_ua, ramp_s, profile=profile, stretch=stretch)
        return self._iterate(ramp, include_start)

    def _iterate(self, ramp: RampPlan, include_start: bool) -> Iterator[tuple[float, float]]:
        first = 0 if include_start or ramp.times_s.size == 1 else 1
        for t, value in zip(ramp.times_s[first:].tolist(), ramp.setpoints_ua[first:].tolist(), strict=True):
            self.last_setpoint_ua = value
            yield t, value


def check_steps(setpoints_ua: np.ndarray, slew_limit_ua_per_s: float, rate_hz: float) -> bool:
    """True if no two successive set-points differ by more than ``slew / rate`` (with float tolerance)."""
    values = np.asarray(setpoints_ua, dtype=np.float64)
    if values.size < 2:
        return True
    limit = slew_limit_ua_per_s / rate_hz
    return not exceeds(float(np.max(np.abs(np.diff(values)))), limit)
