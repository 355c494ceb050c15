"""Prescriptions: what a session should deliver, validated before anything is sent to a device.

A :class:`Prescription` is written in clinical units (mA, mA·min, s, cm²). It is checked in two stages:

1. **On construction** (``__post_init__``), against rules that hold for every device: numbers are real,
   finite and not ``bool``; current > 0; exactly one of dose and duration, each > 0; ramps within the guide's
   5–60 s (S1); a time-based session at least as long as its two ramps; pulse fields only with pulsed DC
   (frequency required, duty 10–90 %, default 50 %); electrode area > 0. Strings are normalised to enums.
2. **Against a device** (:meth:`Prescription.check_against`), against the hard limits the device reports in
   its :class:`~iontodrive.protocol.IdentityReport` (S12), each lowered to the driver's own cap for the
   device's family and with a device whose identity contradicts its family refused
   (:func:`iontodrive.ceilings.effective_identity`, S18), plus the slew limit (S1), the charge of the ramps
   for a dose-based session (S11), current density (S13) and the contact limits (S3).

Every refusal raises :class:`~iontodrive.errors.SafetyRefusal` with the user-facing field name (for example
``"current_ma"``), the value, and the allowed range in **user units** (mA, mA·min, s, Hz, %, cm²).

Unit conversion for the wire (:meth:`Prescription.to_start`): current to integer µA, dose to integer µA·s
(1 mA·min = 60 000 µA·s), times to integer ms, each rounded to nearest with ties to even. Limits are checked
on both the user's float value (so 4.0004 mA is refused on a 4 mA device even though it would round to
4000 µA) and the rounded integer (so rounding can never carry a value past a limit). The one adjustment made
after rounding: a time-based ``duration_ms`` is raised to ``ramp_up_ms + ramp_down_ms`` if independent
rounding left it 1 ms short.

Choices made where the issue was silent (all documented in the refusal/warning texts):

* S13 refusals name ``current_ma`` (its maximum is ``2 mA/cm² × area``), because the current is the quantity
  the density limit bounds; the reason text also gives the smallest electrode area that would be allowed.
* A dose-based session that would take longer than the device's ``max_duration_ms`` is refused (field
  ``dose_ma_min``); a time-based session whose predicted charge exceeds the device's dose cap is refused
  (field ``duration_s``).
* Warnings (returned, never raised): density above the warning threshold, no electrode area given (density
  not checked), and a compliance voltage that caps the contact check's high limit below its 10 kΩ default.
* Device ramps are assumed linear (the protocol carries no profile); ramp charge is ``I · T / 2`` either way.
* For pulsed DC the predicted charge is duty × amplitude (the device integrates measured current).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, fields
from typing import Any, Final

from iontodrive.ceilings import effective_identity
from iontodrive.errors import SafetyRefusal
from iontodrive.protocol import IdentityReport, Polarity, Start, Waveform, WaveformSet
from iontodrive.ramp import RampProfile, SessionPlan, predict_session
from iontodrive.units import (
    MS_PER_S,
    UA_PER_MA,
    UAS_PER_MA_MIN,
    ceil_div,
    exceeds,
    falls_short,
    ma_min_to_uas,
    ma_to_ua,
    require_int,
    require_real,
    s_to_ms,
)

__all__ = [
    "CONTACT_HIGH_CAP_OHM",
    "CONTACT_HIGH_CAP_OHM_BOUNDS",
    "CONTACT_LOW_OHM",
    "CONTACT_LOW_OHM_BOUNDS",
    "DEFAULT_DUTY_PERCENT",
    "DEFAULT_RAMP_S",
    "DENSITY_REFUSE_MA_PER_CM2",
    "DENSITY_WARN_MA_PER_CM2",
    "MAX_DUTY_PERCENT",
    "MAX_RAMP_S",
    "MIN_DUTY_PERCENT",
    "MIN_RAMP_S",
    "Prescription",
    "contact_limits_ohm",
]

log = logging.getLogger(__name__)

# S1: ramp times settable 5-60 s (guide), default 30 s.
MIN_RAMP_S: Final = 5.0
MAX_RAMP_S: Final = 60.0
DEFAULT_RAMP_S: Final = 30.0

# Pulsed DC duty cycle (%): allowed range and default (guide: tap-water devices use 50 %).
MIN_DUTY_PERCENT: Final = 10
MAX_DUTY_PERCENT: Final = 90
DEFAULT_DUTY_PERCENT: Final = 50

# S13 current density (mA/cm²): warn above 0.5 (usual DC guidance), refuse above 2 (IEC 60601-2-10).
DENSITY_WARN_MA_PER_CM2: Final = 0.5
DENSITY_REFUSE_MA_PER_CM2: Final = 2.0

# S3 contact limits (judgement defaults, configurable within the bounds below).
CONTACT_LOW_OHM: Final = 200  # below this: short circuit
CONTACT_HIGH_CAP_OHM: Final = 10_000  # above this: poor contact (tDCS practice keeps loads under 8 kΩ)
CONTACT_LOW_OHM_BOUNDS: Final = (100, 1000)
CONTACT_HIGH_CAP_OHM_BOUNDS: Final = (1000, 20_000)
COMPLIANCE_FRACTION_NUM: Final = 4  # 0.8 × V_compliance / I_target, as the exact fraction 4/5
COMPLIANCE_FRACTION_DEN: Final = 5

_POLARITY_NAMES: Final = {"cathode": Polarity.CATHODE, "anode": Polarity.ANODE}
_WAVEFORM_NAMES: Final = {
    "dc": Waveform.DC,
    "pulsed": Waveform.PULSED_DC,
    "pulsed_dc": Waveform.PULSED_DC,
    "pulsed-dc": Waveform.PULSED_DC,
}
_WAVEFORM_FLAG: Final = {Waveform.DC: WaveformSet.DC, Waveform.PULSED_DC: WaveformSet.PULSED_DC}


def _parse_polarity(value: object) -> Polarity:
    if isinstance(value, Polarity):
        if value is Polarity.NONE:
            raise SafetyRefusal("polarity", value, reason="must be 'cathode' or 'anode'")
        return value
    if isinstance(value, str) and value.strip().lower() in _POLARITY_NAMES:
        return _POLARITY_NAMES[value.strip().lower()]
    raise SafetyRefusal("polarity", value, reason="required: 'cathode' or 'anode'")


def _parse_waveform(value: object) -> Waveform:
    if isinstance(value, Waveform):
        return value
    if isinstance(value, str) and value.strip().lower() in _WAVEFORM_NAMES:
        return _WAVEFORM_NAMES[value.strip().lower()]
    raise SafetyRefusal("waveform", value, reason="must be 'dc' or 'pulsed_dc'")


def contact_limits_ohm(
    identity: IdentityReport,
    current_ua: int,
    *,
    low_ohm: int = CONTACT_LOW_OHM,
    high_cap_ohm: int = CONTACT_HIGH_CAP_OHM,
) -> tuple[int, int]:
    """Driver-side contact limits (S3) for delivering ``current_ua``: ``(low_ohm, high_ohm)``, inclusive.

    ``high = min(high_cap_ohm, 0.8 × V_compliance / I_target)`` (the compliance term rounded down, computed
    exactly in integers), ``low = low_ohm``. A contact check passes if ``low <= impedance <= high``.

    ``low_ohm`` (default 200 Ω, the short-circuit threshold) and ``high_cap_ohm`` (default 10 kΩ) are
    judgement values; they may be changed within :data:`CONTACT_LOW_OHM_BOUNDS` and
    :data:`CONTACT_HIGH_CAP_OHM_BOUNDS` (and ``low_ohm < high_cap_ohm``), else SafetyRefusal.

    Raises SafetyRefusal("current_ma", ...) when the compliance voltage leaves no acceptable impedance at all
    at this current (``high < low``); its maximum is the highest current that would leave one.
    """
    identity = effective_identity(identity)
    current = require_int("current_ua", current_ua, minimum=1, maximum=identity.max_current_ua)
    low = require_int(
        "contact_low_ohm", low_ohm, minimum=CONTACT_LOW_OHM_BOUNDS[0], maximum=CONTACT_LOW_OHM_BOUNDS[1]
    )
    cap = require_int(
        "contact_high_cap_ohm",
        high_cap_ohm,
        minimum=max(CONTACT_HIGH_CAP_OHM_BOUNDS[0], low + 1),
        maximum=CONTACT_HIGH_CAP_OHM_BOUNDS[1],
    )
    # mV / µA = kΩ, so ohm = 1000 × mV / µA; times 4/5 for the 80 % margin.
    compliance_ohm = (COMPLIANCE_FRACTION_NUM * identity.compliance_mv * 1000) // (
        COMPLIANCE_FRACTION_DEN * current
    )
    high = min(cap, compliance_ohm)
    if high < low:
        max_ua = (COMPLIANCE_FRACTION_NUM * identity.compliance_mv * 1000) // (COMPLIANCE_FRACTION_DEN * low)
        raise SafetyRefusal(
            "current_ma",
            current / UA_PER_MA,
            minimum=1 / UA_PER_MA,
            maximum=max_ua / UA_PER_MA,
            reason=(
                f"the device's {identity.compliance_mv / 1000:g} V compliance leaves no contact impedance "
                f"above the {low} Ω short-circuit limit at this current (S3)"
            ),
        )
    return low, high


@dataclass(frozen=True)
class Prescription:
    """A session prescription in clinical units. Immutable; use :func:`dataclasses.replace` to override.

    ``current_ma`` may be positional; every other field is keyword-only and ``polarity`` is required.

    Fields: ``current_ma`` target current magnitude (mA); exactly one of ``dose_ma_min`` (mA·min, ramps
    included, S11) and ``duration_s`` (s, total time with output on, ramps included, as the protocol's
    ``Start.duration_ms``); ``ramp_up_s`` / ``ramp_down_s`` (s, 5–60, default 30); ``polarity``
    (``"cathode"``/``"anode"`` or :class:`Polarity`, stored as :class:`Polarity`); ``waveform`` (``"dc"``,
    ``"pulsed"``/``"pulsed_dc"`` or :class:`Waveform`); ``pulse_frequency_hz`` (required for pulsed DC);
    ``duty_percent`` (pulsed DC, 10–90, default 50); ``electrode_area_cm2`` (active electrode, cm², enables
    the S13 density check).

    Raises SafetyRefusal on construction for any device-independent violation (see the module docstring).
    """

    current_ma: float
    _: KW_ONLY
    dose_ma_min: float | None = None
    duration_s: float | None = None
    ramp_up_s: float = DEFAULT_RAMP_S
    ramp_down_s: float = DEFAULT_RAMP_S
    polarity: Polarity | str
    waveform: Waveform | str = Waveform.DC
    pulse_frequency_hz: int | None = None
    duty_percent: int | None = None
    electrode_area_cm2: float | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "current_ma", require_real("current_ma", self.current_ma, minimum=0.0, min_exclusive=True))

        if (self.dose_ma_min is None) == (self.duration_s is None):
            both = self.dose_ma_min is not None
            raise SafetyRefusal(
                "duration_s" if both else "dose_ma_min",
                self.duration_s if both else None,
                reason="give exactly one of dose_ma_min and duration_s",
            )
        if self.dose_ma_min is not None:
            set_(
                self,
                "dose_ma_min",
                require_real("dose_ma_min", self.dose_ma_min, minimum=0.0, min_exclusive=True),
            )
        s1 = f"ramp times are settable from {MIN_RAMP_S:g} to {MAX_RAMP_S:g} s (S1)"
        lo, hi = MIN_RAMP_S, MAX_RAMP_S
        up = require_real("ramp_up_s", self.ramp_up_s, minimum=lo, maximum=hi, reason=s1)
        down = require_real("ramp_down_s", self.ramp_down_s, minimum=lo, maximum=hi, reason=s1)
        set_(self, "ramp_up_s", up)
        set_(self, "ramp_down_s", down)
        if self.duration_s is not None:
            duration = require_real("duration_s", self.duration_s, minimum=0.0, min_exclusive=True)
            if falls_short(duration, up + down):
                raise SafetyRefusal(
                    "duration_s",
                    self.duration_s,
                    minimum=up + down,
                    reason="a session must be at least as long as its ramp up and ramp down together",
                )
            set_(self, "duration_s", duration)

        set_(self, "polarity", _parse_polarity(self.polarity))
        waveform = _parse_waveform(self.waveform)
        set_(self, "waveform", waveform)

        if waveform is Waveform.DC:
            for name in ("pulse_frequency_hz", "duty_percent"):
                if getattr(self, name) is not None:
                    raise SafetyRefusal(
                        name, getattr(self, name), reason="only allowed with waveform 'pulsed_dc'"
                    )
        else:
            if self.pulse_frequency_hz is None:
                raise SafetyRefusal("pulse_frequency_hz", None, minimum=1, reason="required for pulsed DC")
            set_(
                self,
                "pulse_frequency_hz",
                require_int("pulse_frequency_hz", self.pulse_frequency_hz, minimum=1),
            )
            duty = DEFAULT_DUTY_PERCENT if self.duty_percent is None else self.duty_percent
            set_(
                self,
                "duty_percent",
                require_int("duty_percent", duty, minimum=MIN_DUTY_PERCENT, maximum=MAX_DUTY_PERCENT),
            )

        if self.electrode_area_cm2 is not None:
            set_(
                self,
                "electrode_area_cm2",
                require_real("electrode_area_cm2", self.electrode_area_cm2, minimum=0.0, min_exclusive=True),
            )

    # ------------------------------------------------------------------------------------ properties

    @property
    def dose_based(self) -> bool:
        """True if the session ends on delivered charge (``dose_ma_min``), False if on time."""
        return self.dose_ma_min is not None

    @property
    def duty_fraction(self) -> float:
        """Fraction of time the output is on: ``duty_percent / 100`` for pulsed DC, 1.0 for DC."""
        return 1.0 if self.duty_percent is None else self.duty_percent / 100.0

    def describe(self) -> str:
        """One line for logs and displays, e.g. ``4 mA cathode DC, 40 mA·min, ramps 30/30 s``."""
        amount = f"{self.dose_ma_min:g} mA·min" if self.dose_based else f"{self.duration_s:g} s"
        wave = (
            "DC"
            if self.waveform is Waveform.DC
            else f"pulsed DC {self.pulse_frequency_hz} Hz {self.duty_percent} %"
        )
        area = f", {self.electrode_area_cm2:g} cm²" if self.electrode_area_cm2 is not None else ""
        return (
            f"{self.current_ma:g} mA {_parse_polarity(self.polarity).name.lower()} {wave}, {amount}, "
            f"ramps {self.ramp_up_s:g}/{self.ramp_down_s:g} s{area}"
        )

    # ------------------------------------------------------------------------------ device checks

    def check_against(
        self,
        identity: IdentityReport,
        *,
        density_warn_ma_per_cm2: float = DENSITY_WARN_MA_PER_CM2,
        contact_low_ohm: int = CONTACT_LOW_OHM,
        contact_high_cap_ohm: int = CONTACT_HIGH_CAP_OHM,
    ) -> list[str]:
        """Check this prescription against ``identity``'s hard limits; return warnings, raise on refusal.

        Refuses (SafetyRefusal, range in user units) current above ``max_current_ua`` or below 1 µA, a
        waveform the model lacks, a pulse frequency outside the model's range, ramp times outside the
        device's ``min_ramp_ms..max_ramp_ms`` (intersected with S1's 5–60 s) or faster than its slew limit,
        duration above ``max_duration_ms``, dose above ``dose_cap_uas`` or below the charge of the ramps
        alone, a dose-based session longer than ``max_duration_ms``, a time-based session whose charge
        would exceed the dose cap, density above 2 mA/cm² (S13), and a current at which the compliance leaves
        no acceptable contact impedance (S3). ``density_warn_ma_per_cm2`` (default 0.5) may be set within
        (0, 2]; the contact keywords are those of :func:`contact_limits_ohm`.
        """
        _start, warnings = self._wire(
            identity,
            density_warn_ma_per_cm2=density_warn_ma_per_cm2,
            contact_low_ohm=contact_low_ohm,
            contact_high_cap_ohm=contact_high_cap_ohm,
        )
        return warnings

    def to_start(self, identity: IdentityReport) -> Start:
        """The :class:`Start` request for ``identity`` after :meth:`check_against` (whose refusals it raises).

        Integer µA, µA·s and ms, rounded to nearest (ties to even); never above a device limit. Warnings are
        logged at DEBUG; call :meth:`check_against` to get them.
        """
        start, warnings = self._wire(identity)
        for text in warnings:
            log.debug("prescription warning: %s", text)
        return start

    def expected_plan(
        self, identity: IdentityReport, *, profile: RampProfile = RampProfile.LINEAR
    ) -> SessionPlan:
        """Predicted duration and charge of this session on ``identity``, from the rounded wire values."""
        start = self.to_start(identity)
        return predict_session(
            start.target_current_ua,
            start.ramp_up_ms / MS_PER_S,
            start.ramp_down_ms / MS_PER_S,
            dose_uas=start.dose_uas if self.dose_based else None,
            duration_s=None if self.dose_based else start.duration_ms / MS_PER_S,
            profile=profile,
            duty_fraction=self.duty_fraction,
        )

    def _wire(
        self,
        identity: IdentityReport,
        *,
        density_warn_ma_per_cm2: float = DENSITY_WARN_MA_PER_CM2,
        contact_low_ohm: int = CONTACT_LOW_OHM,
        contact_high_cap_ohm: int = CONTACT_HIGH_CAP_OHM,
    ) -> tuple[Start, list[str]]:
        reported = identity
        identity = effective_identity(identity)  # S18: the driver's own caps for the family, and refusals
        warn_density = require_real(
            "density_warn_ma_per_cm2",
            density_warn_ma_per_cm2,
            minimum=0.0,
            maximum=DENSITY_REFUSE_MA_PER_CM2,
            min_exclusive=True,
        )
        warnings: list[str] = []
        model = identity.model

        # Current (S12).
        # Float checks come before each conversion to int: a huge value (1e308) must be refused, not
        # overflow in round().
        max_ua = identity.max_current_ua
        if exceeds(self.current_ma * UA_PER_MA, max_ua) or (current_ua := ma_to_ua(self.current_ma)) > max_ua:
            raise SafetyRefusal(
                "current_ma",
                self.current_ma,
                1 / UA_PER_MA,
                max_ua / UA_PER_MA,
                reason=f"above the maximum current of {model}"
                + (
                    f" (the driver's cap for the family, S18; the device reports "
                    f"{reported.max_current_ua} µA)"
                    if reported.max_current_ua != max_ua
                    else ""
                ),
            )
        if current_ua < 1:
            raise SafetyRefusal(
                "current_ma",
                self.current_ma,
                1 / UA_PER_MA,
                max_ua / UA_PER_MA,
                reason="below the 1 µA resolution",
            )

        # Waveform and pulse parameters.
        waveform = _parse_waveform(self.waveform)
        supported = WaveformSet(int(identity.waveforms))
        if not supported & _WAVEFORM_FLAG[waveform]:
            names = [w.name.lower() for w in Waveform if supported & _WAVEFORM_FLAG[w]]
            raise SafetyRefusal("waveform", waveform.name.lower(), reason=f"{model} supports only {names}")
        pulse_hz = 0
        duty = 0
        if waveform is Waveform.PULSED_DC:
            assert self.pulse_frequency_hz is not None and self.duty_percent is not None
            lo_hz, hi_hz = identity.min_pulse_frequency_hz, identity.max_pulse_frequency_hz
            if not lo_hz <= self.pulse_frequency_hz <= hi_hz:
                raise SafetyRefusal(
                    "pulse_frequency_hz",
                    self.pulse_frequency_hz,
                    lo_hz,
                    hi_hz,
                    reason=f"outside the range of {model}",
                )
            pulse_hz = self.pulse_frequency_hz
            duty = self.duty_percent

        # Ramps (S1, S12): device range ∩ 5-60 s, and no faster than the slew limit.
        slew = identity.slew_limit_ua_per_s
        slew_min_ms = ceil_div(current_ua * MS_PER_S, slew)
        lo_ms = max(identity.min_ramp_ms, round(MIN_RAMP_S * MS_PER_S), slew_min_ms)
        hi_ms = min(identity.max_ramp_ms, round(MAX_RAMP_S * MS_PER_S))
        if slew_min_ms > hi_ms:
            max_ok_ua = min(max_ua, slew * hi_ms // MS_PER_S)
            raise SafetyRefusal(
                "current_ma",
                self.current_ma,
                1 / UA_PER_MA,
                max_ok_ua / UA_PER_MA,
                reason=(
                    f"no ramp of at most {hi_ms / MS_PER_S:g} s reaches it within the slew limit of "
                    f"{slew} µA/s of {model}"
                ),
            )
        ramp_ms: dict[str, int] = {}
        for name, seconds in (("ramp_up_s", self.ramp_up_s), ("ramp_down_s", self.ramp_down_s)):
            value_ms = s_to_ms(seconds)
            too_fast = falls_short(seconds * MS_PER_S, lo_ms) or value_ms < lo_ms
            too_slow = exceeds(seconds * MS_PER_S, hi_ms) or value_ms > hi_ms
            if too_fast or too_slow:
                if too_fast and lo_ms == slew_min_ms:
                    why = (
                        f"ramping {current_ua} µA in {seconds:g} s is faster than the slew limit of "
                        f"{slew} µA/s of {model}"
                    )
                else:
                    why = f"outside the ramp times allowed by {model} and S1"
                raise SafetyRefusal(name, seconds, lo_ms / MS_PER_S, hi_ms / MS_PER_S, reason=why)
            ramp_ms[name] = value_ms
        up_ms, down_ms = ramp_ms["ramp_up_s"], ramp_ms["ramp_down_s"]
        ramps_ms = up_ms + down_ms
        duty_fraction = self.duty_fraction
        amp_ua = current_ua * duty_fraction  # average current while on (µA)
        ramps_charge_uas = amp_ua * ramps_ms / (2 * MS_PER_S)
        cap = identity.dose_cap_uas
        max_dur_ms = identity.max_duration_ms

        dose_uas = 0
        duration_ms = 0
        if self.dose_ma_min is not None:
            min_dose_uas = max(1, math.ceil(ramps_charge_uas - 1e-9))
            if (
                exceeds(self.dose_ma_min * UAS_PER_MA_MIN, cap)
                or (dose_uas := ma_min_to_uas(self.dose_ma_min)) > cap
            ):
                raise SafetyRefusal(
                    "dose_ma_min",
                    self.dose_ma_min,
                    min_dose_uas / UAS_PER_MA_MIN,
                    cap / UAS_PER_MA_MIN,
                    reason=f"above the dose cap of {model}",
                )
            if dose_uas < min_dose_uas:
                raise SafetyRefusal(
                    "dose_ma_min",
                    self.dose_ma_min,
                    min_dose_uas / UAS_PER_MA_MIN,
                    cap / UAS_PER_MA_MIN,
                    reason=(
                        f"the ramps alone ({up_ms / MS_PER_S:g} s up, {down_ms / MS_PER_S:g} s down at "
                        f"{current_ua} µA) deliver {ramps_charge_uas / UAS_PER_MA_MIN:g} mA·min"
                    ),
                )
            plan = predict_session(
                current_ua,
                up_ms / MS_PER_S,
                down_ms / MS_PER_S,
                dose_uas=dose_uas,
                duty_fraction=duty_fraction,
            )
            if exceeds(plan.total_s * MS_PER_S, max_dur_ms):
                longest_uas = amp_ua * (max_dur_ms - ramps_ms / 2) / MS_PER_S
                raise SafetyRefusal(
                    "dose_ma_min",
                    self.dose_ma_min,
                    min_dose_uas / UAS_PER_MA_MIN,
                    min(cap, math.floor(longest_uas)) / UAS_PER_MA_MIN,
                    reason=(
                        f"at {current_ua} µA it would take {plan.total_s / 60:g} min, longer than the "
                        f"{max_dur_ms / 60_000:g} min maximum session time of {model}"
                    ),
                )
        else:
            assert self.duration_s is not None
            # Longest duration whose predicted charge stays within the dose cap.
            cap_ms = math.floor((cap / amp_ua) * MS_PER_S + ramps_ms / 2)
            hi_dur_ms = min(max_dur_ms, cap_ms)
            too_long = exceeds(self.duration_s * MS_PER_S, hi_dur_ms)
            duration_ms = 0 if too_long else max(s_to_ms(self.duration_s), ramps_ms)
            if too_long or duration_ms > hi_dur_ms:
                why = (
                    f"above the maximum session time of {model}"
                    if hi_dur_ms == max_dur_ms
                    else f"at {current_ua} µA the session's charge would exceed the dose cap of {model}"
                )
                raise SafetyRefusal(
                    "duration_s", self.duration_s, ramps_ms / MS_PER_S, hi_dur_ms / MS_PER_S, reason=why
                )

        # Current density (S13).
        if self.electrode_area_cm2 is None:
            warnings.append("electrode_area_cm2 not given: current density (S13) not checked")
        else:
            area = self.electrode_area_cm2
            density = self.current_ma / area
            if exceeds(density, DENSITY_REFUSE_MA_PER_CM2):
                raise SafetyRefusal(
                    "current_ma",
                    self.current_ma,
                    1 / UA_PER_MA,
                    min(max_ua / UA_PER_MA, DENSITY_REFUSE_MA_PER_CM2 * area),
                    reason=(
                        f"current density {density:.3g} mA/cm² on {area:g} cm² is above "
                        f"{DENSITY_REFUSE_MA_PER_CM2:g} mA/cm² (S13, IEC 60601-2-10); an electrode of at "
                        f"least {self.current_ma / DENSITY_REFUSE_MA_PER_CM2:.3g} cm² would be allowed"
                    ),
                )
            if density > warn_density:
                warnings.append(
                    f"current density {density:.3g} mA/cm² on {area:g} cm² is above {warn_density:g} mA/cm² "
                    f"(usual DC guidance 0.2-0.5 mA/cm², S13)"
                )

        # Contact limits (S3).
        low, high = contact_limits_ohm(
            identity, current_ua, low_ohm=contact_low_ohm, high_cap_ohm=contact_high_cap_ohm
        )
        if high < contact_high_cap_ohm:
            warnings.append(
                f"at {self.current_ma:g} mA the {identity.compliance_mv / 1000:g} V compliance of {model} "
                f"limits the contact check to loads of {low}-{high} Ω (S3)"
            )

        start = Start(
            target_current_ua=current_ua,
            dose_uas=dose_uas,
            duration_ms=duration_ms,
            ramp_up_ms=up_ms,
            ramp_down_ms=down_ms,
            polarity=_parse_polarity(self.polarity),
            waveform=waveform,
            pulse_frequency_hz=pulse_hz,
            duty_percent=duty,
        )
        return start, warnings

    # --------------------------------------------------------------------------------- persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict: numbers as numbers, ``None`` kept, enums by lower-case name."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (Polarity, Waveform)):
                value = value.name.lower()
            data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Prescription:
        """Rebuild a prescription from :meth:`to_dict` output (enum names case-insensitive).

        Raises SafetyRefusal for an unknown key (naming it), a missing ``current_ma`` or ``polarity``, and
        anything ``__init__`` refuses; TypeError if ``data`` is not a mapping.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"prescription data must be a mapping, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise SafetyRefusal(
                    str(key), data[key], reason=f"unknown prescription field; known: {sorted(known)}"
                )
        for required in ("current_ma", "polarity"):
            if required not in data:
                raise SafetyRefusal(required, None, reason="required")
        return cls(**dict(data))
