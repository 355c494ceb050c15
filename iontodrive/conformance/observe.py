"""Judging output as the device reports it in telemetry: ramps, slopes, steps, polarity.

All times here are device time (``device_time_ms`` of each sample, §8.4), so the judgement does not
depend on how fast the host reads or on a simulator running faster than real time. Currents are µA.

Allowances (judgement, ``docs/conformance.md`` §4): set-points are integers, so a comparison between two
samples allows 2 µA of rounding; measured currents also carry ADC noise and the output stage's lag, so
they get the probe's measurement allowance (2 % of ``max_current_ua``, at least 20 µA) on top of a 25 %
margin on the rate. A ramp's length is judged within 10 % plus two sample periods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from iontodrive.protocol import DeviceState, Telemetry

ROUNDING_UA = 2
RATE_MARGIN = 1.25  # measured or set-point slopes may exceed the nominal rate by this factor
LENGTH_TOLERANCE = 0.10  # a ramp's length within 10 % ...
LENGTH_PERIODS = 2  # ... plus this many sample periods


def t_s(sample: Telemetry) -> float:
    """Device time of a sample, seconds."""
    return sample.device_time_ms / 1000.0


@dataclass(frozen=True, slots=True)
class Jump:
    """The worst change between two consecutive samples, against what was allowed."""

    delta_ua: int
    dt_s: float
    allowed_ua: float
    at_ms: int

    @property
    def ok(self) -> bool:
        return abs(self.delta_ua) <= self.allowed_ua

    def describe(self, what: str) -> str:
        rate = abs(self.delta_ua) / self.dt_s if self.dt_s > 0 else float("inf")
        return (
            f"{what} changed by {self.delta_ua:+d} uA in {self.dt_s * 1000:.0f} ms at device time "
            f"{self.at_ms} ms ({rate:.0f} uA/s; allowed {self.allowed_ua:.0f} uA)"
        )


def worst_jump(
    samples: Sequence[Telemetry],
    value: Callable[[Telemetry], int],
    rate_ua_per_s: float,
    slack_ua: float,
) -> Jump | None:
    """The consecutive pair whose change exceeds ``rate × Δt × RATE_MARGIN + slack`` the most (or, if none
    does, the one closest to it); None for fewer than two samples."""
    worst: Jump | None = None
    worst_score = -float("inf")
    for a, b in pairwise(samples):
        dt = t_s(b) - t_s(a)
        if dt <= 0:
            continue
        delta = value(b) - value(a)
        allowed = rate_ua_per_s * dt * RATE_MARGIN + slack_ua
        score = abs(delta) - allowed
        if score > worst_score:
            worst_score = score
            worst = Jump(delta, dt, allowed, b.device_time_ms)
    return worst


def in_states(samples: Sequence[Telemetry], states: Sequence[DeviceState]) -> list[Telemetry]:
    """The samples taken in one of ``states``."""
    wanted = frozenset(states)
    return [s for s in samples if s.state in wanted]


def period_s(samples: Sequence[Telemetry]) -> float:
    """Median spacing of the samples (device s); 0 for fewer than two."""
    gaps = sorted(t_s(b) - t_s(a) for a, b in pairwise(samples))
    return gaps[len(gaps) // 2] if gaps else 0.0


def length_ok(measured_s: float, expected_s: float, sample_period_s: float) -> bool:
    """A ramp's measured length matches the expected one within the tolerance above."""
    slack = LENGTH_TOLERANCE * expected_s + LENGTH_PERIODS * sample_period_s + 0.02
    return abs(measured_s - expected_s) <= slack


def ramp_span(
    samples: Sequence[Telemetry], state: DeviceState, *, include_next: bool = True
) -> tuple[float, float]:
    """(first, last) device time of the run of samples in ``state``; with ``include_next`` the end is the
    first sample after the run (where the ramp is known to be over). (0, 0) if there is none."""
    first = last = None
    for index, sample in enumerate(samples):
        if sample.state == state:
            if first is None:
                first = t_s(sample)
            last = t_s(sample)
            if include_next and index + 1 < len(samples) and samples[index + 1].state != state:
                last = t_s(samples[index + 1])
        elif first is not None:
            break
    if first is None or last is None:
        return 0.0, 0.0
    return first, last
