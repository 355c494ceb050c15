"""The driver's over-current check (S9 again in the driver, S18), shared by every source.

A sample is over the limit when the measured current exceeds the *lowest* of three ceilings, each with the
same margin (``max(x · (1 + OVERCURRENT_MARGIN), x + OVERCURRENT_FLOOR_UA)``):

* the set-point the source reports (the device's own word),
* the prescription's target (the highest one asked for in this session: ``set_current`` may raise it
  within the prescription's limits), so that a device that steps itself to 100 mA and reports
  set-point = measured is caught,
* the driver's cap for the device family (:func:`iontodrive.ceilings.effective_identity`).

A set-point above the prescription (plus margin) is an over-current too: the device raised its own output.
:data:`OVERCURRENT_SAMPLES` consecutive samples over the limit trip the guard (a marginal excess may be a
transient or ADC noise); a sample over :data:`GROSS_FACTOR` times the limit trips it at once (no noise is
that large, and waiting two more samples costs 0.2 s at 10 Hz: the hostile-device campaign's self-raised
current must be safe within 1 device second). The engine then aborts (a ramp at the slew limit, never a
step) and repeats the abort until the output is confirmed at zero.

The guard is sans-I/O: samples in, a verdict out; tests drive it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

OVERCURRENT_MARGIN = 0.10  # S9 (j): set-point + 10 %
OVERCURRENT_FLOOR_UA = 50  # ... and never less than 50 µA above it (small currents, ADC noise)
OVERCURRENT_SAMPLES = 3  # consecutive samples over the limit before the driver aborts
GROSS_FACTOR = 2.0  # (j) a sample over twice the limit trips at once


def ceiling_ua(level_ua: float) -> float:
    """The highest current allowed for a ceiling of ``level_ua``."""
    return max(level_ua * (1 + OVERCURRENT_MARGIN), level_ua + OVERCURRENT_FLOOR_UA)


@dataclass
class OvercurrentGuard:
    """Counts samples over the limit; :meth:`judge` returns the reason once it trips (then keeps
    returning it until :meth:`reset`)."""

    prescribed_ua: float
    cap_ua: float
    count: int = 0
    tripped: str | None = None

    def allow_target(self, target_ua: float) -> None:
        """A new target asked for by the user (``set_current``, already checked against the limits)."""
        self.prescribed_ua = max(self.prescribed_ua, float(target_ua))

    def limit_ua(self, setpoint_ua: float) -> float:
        """The highest current allowed at ``setpoint_ua``: the ceiling of the lowest of the set-point, the
        prescribed current and the cap (:func:`ceiling_ua` never decreases, so that is the lowest of the
        three ceilings)."""
        return ceiling_ua(min(setpoint_ua, self.prescribed_ua, self.cap_ua))

    def judge(self, setpoint_ua: float, measured_ua: float) -> str | None:
        """Feed one sample; return why the guard tripped (None while it has not)."""
        if self.tripped is not None:
            return self.tripped
        limit = self.limit_ua(setpoint_ua)
        if measured_ua > limit:
            reason = f"measured {measured_ua:.0f} µA over the limit {limit:.0f} µA"
        elif setpoint_ua > ceiling_ua(min(self.prescribed_ua, self.cap_ua)):
            reason = f"set-point {setpoint_ua:.0f} µA above the prescribed {self.prescribed_ua:.0f} µA"
        else:
            self.count = 0
            return None
        self.count += 1
        gross = measured_ua > GROSS_FACTOR * limit or setpoint_ua > GROSS_FACTOR * limit
        if self.count >= OVERCURRENT_SAMPLES or gross:
            self.tripped = reason
        return self.tripped

    def reset(self) -> None:
        self.count = 0
        self.tripped = None
