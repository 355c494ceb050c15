"""The firmware's trigger rules: which per-step conditions are watched, and when each fires.

One set of rules for both stepping paths (:mod:`.stepping`): :func:`arm` decides once per block which
triggers are watched in the present state, and the predicates below are written with operators only
(``>``, ``&``, ``|``), so that the numpy path applies them to a block's arrays and the scalar path to one
step's floats with the same arithmetic. Within a step the lowest :class:`Trigger` value wins.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple

from iontodrive.protocol import DeviceState, StatusFlags
from iontodrive.protocol.rules import OUTPUT_STATES, RAMPING_DOWN_STATES

from .thresholds import (
    COMPLIANCE_CLEAR,
    COMPLIANCE_HIGH,
    CONTACT_LOW_OHM,
    LIFT_RISE,
    OVERCURRENT_FRACTION,
)

if TYPE_CHECKING:
    from .firmware import Firmware

# A numpy array of per-step values (block path) or one step's float (scalar path): the rules below are
# written with operators only, so that both give the same arithmetic. Typed as Any for that reason.
Values = Any
S = DeviceState

CHARGE_STATES = frozenset({S.RAMP_UP, S.HOLD, S.ADJUST, S.RAMP_DOWN, S.PAUSING, S.FAULT})
"""States whose measured current counts towards the dose (S11; FAULT only while its trip ramp runs)."""


class Trigger(Enum):
    """A per-step condition the firmware reacts to, in priority order (lowest value first)."""

    HARDWARE_TRIP = 1
    OVERCURRENT = 2
    SHORT = 3
    OPEN = 4
    LIFT = 5
    DOSE = 6
    COMPLIANCE = 7
    COMPLIANCE_CLEAR = 8


class Armed(NamedTuple):
    """Which triggers are watched during one block, and their levels (fixed for the block).

    A named tuple, not a dataclass: it is made once per block, and the real-time runner's blocks are one
    or a few physics steps long, where a frozen dataclass's construction would cost more than the step.
    """

    hardware_trip_ua: float  # 0: not watched (no hardware trip, or it is latched already)
    overcurrent: bool  # S9: every state but FAULT
    protective: bool  # S6 lift, open circuit and short: with output, or ramping down slower than the slew
    counts_charge: bool  # S11: the measured current counts towards the dose
    output: bool  # dose and compliance (S5, S11) are watched: a state with output and a session
    clear_watch: bool  # S5: the resistance limit is held below the set-point and may clear
    v_high_mv: float  # S5 compliance level
    v_low_mv: float  # S5 clearing level
    trip_current_ua: float
    trip_margin_ua: float
    i_valid_ua: float  # the 10-step mean current above which an impedance estimate is valid


def arm(fw: Firmware) -> Armed:
    """The triggers watched in the firmware's present state.

    Remembered while what it depends on stays the same (state, flags, ramp, ramp phase, session), since
    the real-time runner asks once per control tick of a step or two.
    """
    key = (fw.state, fw.flags, fw.ramp, fw.ramp_done_at is None, fw.session)
    cached = fw.armed_cache
    if cached is not None and cached[0] == key:
        return cached[1]
    m = fw.model
    state = fw.state
    s = fw.session
    slew = float(m.slew_limit_ua_per_s)
    output = state in OUTPUT_STATES and s is not None
    v_comp = float(m.compliance_mv)
    armed = Armed(
        hardware_trip_ua=float(m.hardware_trip_ua)
        if m.hardware_trip_ua and not fw.flags & StatusFlags.HARDWARE_TRIP
        else 0.0,
        overcurrent=state != S.FAULT,
        protective=state in OUTPUT_STATES or (state in RAMPING_DOWN_STATES and fw.ramp.rate < slew),
        counts_charge=state in CHARGE_STATES and (state != S.FAULT or fw.ramp_done_at is not None),
        output=output,
        clear_watch=output
        and bool(fw.flags & StatusFlags.RESISTANCE_LIMIT)
        and state == S.HOLD
        and s is not None
        and fw.setpoint < s.target_ua,  # in HOLD the ramp is flat: the set-point is the ramp's
        v_high_mv=COMPLIANCE_HIGH * v_comp,
        v_low_mv=COMPLIANCE_CLEAR * v_comp,
        trip_current_ua=float(m.trip_current_ua),
        trip_margin_ua=fw.trip_margin,
        i_valid_ua=fw.i_valid,
    )
    fw.armed_cache = (key, armed)
    return armed


def hardware_trip(a: Armed, i_true: Values) -> Values:
    """The independent trip on the true output current (hydro-30: 35 mA)."""
    return i_true > a.hardware_trip_ua


def overcurrent(a: Armed, i_meas: Values, i_reg: Values) -> Values:
    """S9: measured current above set-point + 10 % (plus the ADC margin) or above the absolute trip."""
    return (i_meas > OVERCURRENT_FRACTION * i_reg + a.trip_margin_ua) | (i_meas > a.trip_current_ua)


def short(valid: Values, z: Values) -> Values:
    """One step of a short circuit: a valid impedance below the low limit (a run of these fires SHORT)."""
    return valid & (z < CONTACT_LOW_OHM)


def open_circuit(a: Armed, i_meas: Values, i_reg: Values, v_meas: Values) -> Values:
    """The electrode is off: the regulator asks for current, almost none flows, voltage at compliance."""
    return (i_reg >= 2.0 * a.i_valid_ua) & (i_meas < 0.1 * i_reg) & (v_meas >= a.v_high_mv)


def lift(valid: Values, z: Values, z_window_min: Values) -> Values:
    """S6: a valid impedance more than 50 % above the lowest of the last second."""
    return valid & (z > LIFT_RISE * z_window_min)


def compliance_high(a: Armed, v_on: Values) -> Values:
    """S5: one step at compliance (a run of ``COMPLIANCE_RUN_S`` fires COMPLIANCE)."""
    return v_on >= a.v_high_mv


def compliance_low(a: Armed, v_on: Values) -> Values:
    """S5: one step clearly below compliance (a run of ``COMPLIANCE_RUN_S`` fires COMPLIANCE_CLEAR)."""
    return v_on < a.v_low_mv


def dose_reached(charge: Values, ramp_charge: Values, aim: float) -> Values:
    """S11: the charge so far plus what the ramp-down will deliver reaches the aim."""
    return charge + ramp_charge >= aim
