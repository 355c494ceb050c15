"""Unit conversion between user units and wire units, and validation of user-supplied numbers.

User-facing code speaks milliampere (mA), milliampere-minute (mA·min, the clinical dose unit), second (s),
square centimetre (cm²). The wire speaks integers: microampere (µA), microampere-second (µA·s), millisecond
(ms), ohm and millivolt. ``1 mA·min = 60 000 µA·s``.

Rounding rule for every user-to-wire conversion here: round to the nearest integer, ties to even (Python's
:func:`round`). Rounding to the nearest integer can never carry a value past an *integer* limit it does not
already exceed, so checks done on the rounded integer against the device's integer limits are exact; callers
that must also refuse a user value that exceeds a limit by less than one wire unit compare the float value as
well (see :func:`exceeds`).

:func:`require_real` is the one place that decides what counts as a number: ``int``/``float`` and other
:class:`numbers.Real` (numpy scalars included), never ``bool``, never ``str``, never NaN or infinity. Every
refusal is a :class:`~iontodrive.errors.SafetyRefusal` naming the field and the allowed range.
"""

from __future__ import annotations

import math
import numbers
from typing import Final

from iontodrive.errors import SafetyRefusal

UA_PER_MA: Final = 1000
UAS_PER_MA_MIN: Final = 60_000  # 1 mA × 60 s × 1000 µA/mA
MS_PER_S: Final = 1000
MV_PER_V: Final = 1000

# Relative tolerance used when comparing a float user value with a limit it was derived from (so that
# 0.1 mA against a 100 µA limit is not refused because 0.1 * 1000 == 100.00000000000001).
REL_TOL: Final = 1e-9


def require_real(
    field: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_exclusive: bool = False,
    reason: str = "",
) -> float:
    """Return ``value`` as a finite float, or raise :class:`SafetyRefusal` naming ``field``.

    ``minimum``/``maximum`` are inclusive unless ``min_exclusive`` (then ``value`` must be strictly greater
    than ``minimum``). Refused: ``bool`` (even though it is an ``int``), strings, anything that is not a
    :class:`numbers.Real`, NaN and ±infinity, and values outside the range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SafetyRefusal(
            field, value, minimum, maximum, reason=f"must be a real number, not {type(value).__name__}"
        )
    number = float(value)
    if not math.isfinite(number):
        raise SafetyRefusal(field, value, minimum, maximum, reason="must be finite")
    if minimum is not None:
        too_low = number <= minimum if min_exclusive else number < minimum
        if too_low:
            why = reason or (f"must be greater than {minimum:g}" if min_exclusive else "below the minimum")
            raise SafetyRefusal(field, value, minimum, maximum, reason=why)
    if maximum is not None and number > maximum:
        raise SafetyRefusal(field, value, minimum, maximum, reason=reason or "above the maximum")
    return number


def require_int(
    field: str,
    value: object,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    reason: str = "",
) -> int:
    """Return ``value`` as an ``int``, or raise :class:`SafetyRefusal` naming ``field``.

    Accepted: :class:`numbers.Integral` (not ``bool``) and floats with an integral value (``50.0``).
    Refused: fractional floats, NaN/inf, strings, ``bool``, and values outside the inclusive range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SafetyRefusal(
            field, value, minimum, maximum, reason=f"must be an integer, not {type(value).__name__}"
        )
    if isinstance(value, numbers.Integral):
        number = int(value)
    else:
        as_float = float(value)
        if not math.isfinite(as_float) or not as_float.is_integer():
            raise SafetyRefusal(field, value, minimum, maximum, reason="must be a whole number")
        number = int(as_float)
    if minimum is not None and number < minimum:
        raise SafetyRefusal(field, value, minimum, maximum, reason=reason or "below the minimum")
    if maximum is not None and number > maximum:
        raise SafetyRefusal(field, value, minimum, maximum, reason=reason or "above the maximum")
    return number


def exceeds(value: float, limit: float) -> bool:
    """True if ``value`` is above ``limit`` by more than the float tolerance :data:`REL_TOL`."""
    return value > limit + REL_TOL * max(1.0, abs(limit))


def falls_short(value: float, limit: float) -> bool:
    """True if ``value`` is below ``limit`` by more than the float tolerance :data:`REL_TOL`."""
    return value < limit - REL_TOL * max(1.0, abs(limit))


def ma_to_ua(current_ma: float) -> int:
    """Milliampere to integer microampere, rounded to nearest (ties to even)."""
    return round(current_ma * UA_PER_MA)


def ua_to_ma(current_ua: float) -> float:
    """Microampere to milliampere."""
    return current_ua / UA_PER_MA


def ma_min_to_uas(dose_ma_min: float) -> int:
    """Milliampere-minute to integer microampere-second (× 60 000), rounded to nearest (ties to even)."""
    return round(dose_ma_min * UAS_PER_MA_MIN)


def uas_to_ma_min(charge_uas: float) -> float:
    """Microampere-second to milliampere-minute (÷ 60 000)."""
    return charge_uas / UAS_PER_MA_MIN


def s_to_ms(seconds: float) -> int:
    """Second to integer millisecond, rounded to nearest (ties to even)."""
    return round(seconds * MS_PER_S)


def ms_to_s(milliseconds: float) -> float:
    """Millisecond to second."""
    return milliseconds / MS_PER_S


def ceil_div(numerator: int, denominator: int) -> int:
    """Exact ceiling of ``numerator / denominator`` for integers (``denominator > 0``)."""
    return -((-numerator) // denominator)
