"""The driver's own hard caps per device family (S18): never rely on the device's word alone.

A device reports its hard limits in :class:`~iontodrive.protocol.IdentityReport` (S12). The driver keeps its
own ceiling for each family it knows, and :func:`effective_identity` returns the identity with every limit
replaced by the *safer* of the two: the lower current, trip, slew, maximum ramp, dose and duration, and the
*longer* minimum ramp time. :meth:`iontodrive.prescription.Prescription.check_against` and ``to_start`` judge
a prescription against that, so ``Start 100,000 µA`` can never be sent to a device that claims 1 A; the
session engine judges over-current against the prescription and these caps as well as the device's
set-point, and its ``set_current`` ramps no faster than :func:`min_ramp_ms` allows.

**Contradiction.** A family's devices cannot be what its ceiling excludes by a wide margin. An identity is
refused with :class:`~iontodrive.errors.ContradictoryIdentityError` (an ``IncompatibleDeviceError``) before
anything is sent when, for its family:

* its maximum current, trip current, slew limit, dose cap or maximum duration is more than
  :data:`IMPLAUSIBLE_FACTOR` (2) times the family's cap -- a "clinic-4" claiming 1 A (250x), an
  "unbounded" slew of 4,294,967,295 µA/s;
* its minimum ramp time is under :data:`STEP_RAMP_MS` (0.5 s): a device claiming it may ramp in less is
  claiming it may step the output, which no family may (S1, S2) -- ``min_ramp_ms = 0``;
* its slew limit, maximum current or compliance is 0 (no usable device), or its minimum ramp exceeds its
  maximum.

Within those bounds a device reporting more than the cap simply gets the cap (a firmware variant with some
headroom is not a liar; the driver just does not use the headroom).

**Unknown family** (a model name not in :data:`FAMILY_CEILINGS`): the driver cannot know what the device
may do, so it applies the *tightest* cap of every known family field by field (:data:`UNKNOWN_FAMILY`:
4 mA, 4.4 mA trip, 5 mA/s, ramps 5-60 s, 80 mA·min, 30 min) and the same degenerate-value refusals (no
factor test: there is no family to contradict). Chosen over refusing outright so that a new or renamed
clinic-class device (and a driver-synthesised VISA identity) still works within clinic limits; a device
that needs more must be added to the table with its sources.

Sources of every number are in :data:`FAMILY_CEILINGS` (GUIDE.md §1 device table and S1, S9; the device
manuals cited there; the simulator's models, ``firmware_sim/models.py`` and ``docs/simulator.md``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

from iontodrive.errors import ContradictoryIdentityError
from iontodrive.protocol import IdentityReport

__all__ = [
    "FAMILY_CEILINGS",
    "IMPLAUSIBLE_FACTOR",
    "MIN_RAMP_MS",
    "STEP_RAMP_MS",
    "UNKNOWN_FAMILY",
    "FamilyCeiling",
    "ceiling_for",
    "effective_identity",
    "min_ramp_ms",
]

MIN_RAMP_MS: Final = 5_000  # S1: ramps are settable 5-60 s; no change of output is faster (driver-wide)
MAX_RAMP_MS: Final = 60_000  # S1
STEP_RAMP_MS: Final = 500  # a claimed minimum ramp below this is a claim to step the output (judgement)
IMPLAUSIBLE_FACTOR: Final = 2  # a limit more than this times the family's cap contradicts the family


@dataclass(frozen=True, slots=True)
class FamilyCeiling:
    """The driver's own hard caps for one device family. Units in the names; ``sources`` says why."""

    family: str
    max_current_ua: int
    trip_current_ua: int
    slew_limit_ua_per_s: int
    min_ramp_ms: int
    max_ramp_ms: int
    dose_cap_uas: int
    max_duration_ms: int
    sources: str


FAMILY_CEILINGS: Final[dict[str, FamilyCeiling]] = {
    "clinic-4": FamilyCeiling(
        family="clinic-4",
        max_current_ua=4_000,
        trip_current_ua=4_400,
        slew_limit_ua_per_s=5_000,
        min_ramp_ms=MIN_RAMP_MS,
        max_ramp_ms=MAX_RAMP_MS,
        dose_cap_uas=4_800_000,
        max_duration_ms=3_600_000,
        sources=(
            "current 0-4.0 mA: clinic drug-delivery devices (ActivaDose II, Dupel, Phoresor, IontoDC), "
            "GUIDE.md §1; trip 4.4 mA: S9, absolute cap I_max + 10 %; slew 5 mA/s: the clinic-4 model "
            "(firmware_sim/models.py, 4 mA to 0 in 0.8 s, docs/simulator.md); ramps 5-60 s: S1 (Soterix "
            "IontoDC ramps 30 s up and down); dose 80 mA·min: the clinic dose cap, GUIDE.md §1; duration "
            "60 min: the clinic-4 model (clinical sessions are 10-20 min, GUIDE.md §1)"
        ),
    ),
    "hydro-30": FamilyCeiling(
        family="hydro-30",
        max_current_ua=30_000,
        trip_current_ua=33_000,
        slew_limit_ua_per_s=35_000,
        min_ramp_ms=MIN_RAMP_MS,
        max_ramp_ms=MAX_RAMP_MS,
        dose_cap_uas=36_000_000,
        max_duration_ms=1_800_000,
        sources=(
            "current 5-30 mA: tap-water hyperhidrosis devices (Hidrex, RA Fischer, Dermadry), GUIDE.md §1; "
            "trip 33 mA: S9, I_max + 10 % (the Hidrex independent latching trip at 35 mA stays the "
            "device's hardware trip above it); slew 35 mA/s: the hydro-30 model (firmware_sim/models.py); "
            "ramps 5-60 s: S1; dose 600 mA·min: 30 mA for the longest typical 20 min session, GUIDE.md §1 "
            "(the hydro-30 model's cap); duration 30 min: the hydro-30 model (sessions are 10-20 min)"
        ),
    ),
}

_CAPPED: Final = (
    "max_current_ua",
    "trip_current_ua",
    "slew_limit_ua_per_s",
    "max_ramp_ms",
    "dose_cap_uas",
    "max_duration_ms",
)
_FACTOR_CHECKED: Final = (
    "max_current_ua",
    "trip_current_ua",
    "slew_limit_ua_per_s",
    "dose_cap_uas",
    "max_duration_ms",
)

UNKNOWN_FAMILY: Final = FamilyCeiling(
    family="unknown",
    **{name: min(getattr(c, name) for c in FAMILY_CEILINGS.values()) for name in _CAPPED},
    min_ramp_ms=max(c.min_ramp_ms for c in FAMILY_CEILINGS.values()),
    sources="the tightest cap of every known family, field by field (unknown family: see ceilings.py)",
)


def ceiling_for(identity: IdentityReport) -> FamilyCeiling:
    """The driver's caps for ``identity``'s family (its model name), or :data:`UNKNOWN_FAMILY`."""
    return FAMILY_CEILINGS.get(identity.model, UNKNOWN_FAMILY)


def _refuse(identity: IdentityReport, field: str, bound: int, reason: str) -> ContradictoryIdentityError:
    return ContradictoryIdentityError(identity.model, field, getattr(identity, field), bound, reason)


def check_identity(identity: IdentityReport) -> FamilyCeiling:
    """Refuse an identity that contradicts its family (see the module docstring); return its ceiling.

    Raises:
        ContradictoryIdentityError: naming the first field that contradicts, its value and the bound.
    """
    ceiling = ceiling_for(identity)
    for field in ("max_current_ua", "slew_limit_ua_per_s", "compliance_mv"):
        if getattr(identity, field) <= 0:
            raise _refuse(identity, field, 1, "no usable device reports 0 here")
    if identity.min_ramp_ms < STEP_RAMP_MS:
        raise _refuse(
            identity,
            "min_ramp_ms",
            STEP_RAMP_MS,
            f"a minimum ramp under {STEP_RAMP_MS} ms is a claim to step the output, which no family may "
            "(S1, S2)",
        )
    if identity.min_ramp_ms > identity.max_ramp_ms:
        raise _refuse(identity, "min_ramp_ms", identity.max_ramp_ms, "longer than the device's maximum ramp")
    if ceiling is UNKNOWN_FAMILY:
        return ceiling
    for field in _FACTOR_CHECKED:
        cap = getattr(ceiling, field)
        bound = cap * IMPLAUSIBLE_FACTOR
        if getattr(identity, field) > bound:
            raise _refuse(
                identity,
                field,
                bound,
                f"more than {IMPLAUSIBLE_FACTOR} x the {ceiling.family} family's cap of {cap}: the device is "
                f"not what it says it is",
            )
    return ceiling


def effective_identity(identity: IdentityReport) -> IdentityReport:
    """``identity`` with every limit the safer of the device's and the driver's family cap (S18).

    Lower current, trip, slew, maximum ramp, dose cap and duration; the longer minimum ramp. Every other
    field (model, serial, waveforms, pulse range, compliance, watchdog range) is the device's own. Idempotent.

    Raises:
        ContradictoryIdentityError: the identity contradicts its family (see the module docstring).
    """
    ceiling = check_identity(identity)
    changes = {
        name: getattr(ceiling, name) for name in _CAPPED if getattr(identity, name) > getattr(ceiling, name)
    }
    if identity.min_ramp_ms < ceiling.min_ramp_ms:
        changes["min_ramp_ms"] = ceiling.min_ramp_ms
    if changes.get("max_ramp_ms", identity.max_ramp_ms) < changes.get("min_ramp_ms", identity.min_ramp_ms):
        raise _refuse(identity, "max_ramp_ms", ceiling.min_ramp_ms, "shorter than the driver's minimum ramp")
    return dataclasses.replace(identity, **changes) if changes else identity


def min_ramp_ms(identity: IdentityReport, delta_ua: int) -> int:
    """The shortest ramp (ms) the driver allows for a change of ``delta_ua`` on ``identity``: at least
    :data:`MIN_RAMP_MS` (S1), and no faster than the effective slew limit (rounded up). 0 for no change.

    For ``set_current`` and any other change of output the driver commands itself.
    """
    if delta_ua == 0:
        return 0
    effective = effective_identity(identity)
    by_slew = -(-abs(delta_ua) * 1000 // effective.slew_limit_ua_per_s)
    return max(effective.min_ramp_ms, by_slew)
