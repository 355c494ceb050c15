"""Human formatting shared by the subcommands: durations, impedances, events in user units."""

from __future__ import annotations

import math

from iontodrive.protocol import OPEN_CIRCUIT_OHM, DeviceState, EventCode

UAS_PER_MA_MIN = 60_000

# How each event's value reads, by code (units from iontodrive.protocol.enums.EventCode).
_VALUE_KIND: dict[EventCode, str] = {
    EventCode.STATE_CHANGED: "state",
    EventCode.CONTACT_OK: "ohm",
    EventCode.CONTACT_FAILED: "ohm",
    EventCode.SESSION_STARTED: "ua",
    EventCode.SETPOINT_CHANGED: "ua",
    EventCode.PAUSED: "uas",
    EventCode.RESUMED: "uas",
    EventCode.RESISTANCE_LIMIT: "ua",
    EventCode.RESISTANCE_LIMIT_CLEARED: "ua",
    EventCode.TIME_EXTENDED: "ms",
    EventCode.ELECTRODE_LIFT: "ohm",
    EventCode.SHORT_CIRCUIT: "ohm",
    EventCode.OVERCURRENT_TRIP: "ua",
    EventCode.HARDWARE_TRIP: "ua",
    EventCode.LINK_LOST: "ms",
    EventCode.DOSE_COMPLETE: "uas",
    EventCode.SESSION_ENDED: "uas",
    EventCode.STOPPED: "uas",
    EventCode.ABORTED: "uas",
    EventCode.WATCHDOG_CHANGED: "ms",
    EventCode.TELEMETRY_CHANGED: "hz",
    EventCode.EVENTS_LOST: "count",
}


def ohm(value: int | float | None) -> str:
    """``3.2 kΩ``, ``850 Ω`` or ``open`` (None or the protocol's open-circuit marker)."""
    if value is None or value == OPEN_CIRCUIT_OHM or (isinstance(value, float) and not math.isfinite(value)):
        return "open"
    if value >= 10_000:
        return f"{value / 1000:.1f} kΩ"
    if value >= 1000:
        return f"{value / 1000:.2f} kΩ"
    return f"{value:.0f} Ω"


def duration(seconds: float | None) -> str:
    """``12:05`` (minutes:seconds), ``1:02:03`` over an hour, ``--:--`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def signed_percent(value: float | None) -> str:
    """``+0.42 %``; a value that rounds to zero reads ``+0.00 %`` (never ``-0.00 %``)."""
    if value is None or not math.isfinite(value):
        return "-- %"
    text = f"{value:+.2f}"
    return ("+0.00" if text == "-0.00" else text) + " %"


def event_code(code: int | str) -> EventCode | None:
    """Parse an event code given as an integer or a name; None if unknown."""
    try:
        if isinstance(code, str) and not code.isdigit():
            return EventCode[code.upper()]
        return EventCode(int(code))
    except (KeyError, ValueError):
        return None


def state_name(state: int | str | DeviceState) -> str:
    if isinstance(state, str) and not state.isdigit():
        return state.upper()
    try:
        return DeviceState(int(state)).name
    except ValueError:
        return str(state)


def event_value(code: EventCode | None, value: int) -> str:
    """The event's value in user units, or ``""`` when it carries none."""
    kind = _VALUE_KIND.get(code) if code is not None else None
    if kind == "state":
        return f"from {state_name(value)}"
    if kind == "ohm":
        return ohm(value)
    if kind == "ua":
        return f"{value / 1000:.3f} mA"
    if kind == "uas":
        return f"{value / UAS_PER_MA_MIN:.2f} mA·min"
    if kind == "ms":
        return f"{value / 1000:.1f} s"
    if kind == "hz":
        return f"{value} Hz"
    if kind == "count":
        return f"{value}"
    return "" if not value else str(value)


def event_name(code: int | str) -> str:
    """The event code's name (``SESSION_STARTED``), or ``event N`` for a code this driver does not know."""
    parsed = event_code(code)
    return parsed.name if parsed is not None else f"event {code}"


def describe_event(code: int | str, value: int, state: int | str | None = None) -> str:
    """One event in user units.

    A state change reads ``STATE_CHANGED RAMP_UP -> HOLD`` (its value is the state it left); every other
    event gives its value and the state the device was in, in brackets, so that it never reads as a state
    change: ``TELEMETRY_CHANGED 10 Hz (device DONE)``, ``ELECTRODE_LIFT open (device PAUSING)``."""
    parsed = event_code(code)
    name = event_name(code)
    if parsed is EventCode.STATE_CHANGED:
        new = f" -> {state_name(state)}" if state is not None else ""
        return f"{name} {state_name(int(value or 0))}{new}"
    text = name
    shown = event_value(parsed, int(value or 0))
    if shown:
        text += f" {shown}"
    if state is not None:
        text += f" (device {state_name(state)})"
    return text
