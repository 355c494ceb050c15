"""Plain-language messages for the command line: what was asked, the allowed range in the user's units, and
what to do. No Python class names (``--debug`` adds the traceback, which has them).

The library's exceptions carry structured fields (:class:`~iontodrive.errors.SafetyRefusal`: ``field``,
``value``, ``minimum``, ``maximum``, ``reason``); this module words them for a person at the command line: the
field is named as the option is spelled (``current_ma`` -> ``--current-ma``, ``pulsed_dc`` -> ``pulsed-dc``),
the range carries the unit the option takes, and each message ends with what to do.
"""

from __future__ import annotations

import errno
import math
import re
from typing import Any

from iontodrive.errors import unit_of

#: Prescription fields (and other refused fields) as the CLI spells their options.
OPTION_FOR_FIELD: dict[str, str] = {
    "current_ma": "--current-ma",
    "dose_ma_min": "--dose-ma-min",
    "duration_s": "--duration-s",
    "ramp_up_s": "--ramp-up-s",
    "ramp_down_s": "--ramp-down-s",
    "polarity": "--polarity",
    "waveform": "--waveform",
    "pulse_frequency_hz": "--pulse-hz",
    "duty_percent": "--duty",
    "electrode_area_cm2": "--area-cm2",
    "telemetry_hz": "--telemetry-hz",
    "record_path": "--record",
    "resource": "PORT",
}
PORTS_HINT = "run `iontodrive ports` to list serial ports and running simulators"
LIMITS_HINT = "`iontodrive info PORT` shows this device's limits"


def option_for(field: str) -> str:
    """``current_ma`` -> ``--current-ma``; a field with no option keeps its name, with dashes."""
    return OPTION_FOR_FIELD.get(field, field.replace("_", "-"))


def user_words(text: str) -> str:
    """Field names and waveform values in a library message, as the command line spells them."""
    text = text.replace("pulsed_dc", "pulsed-dc")
    for field, option in OPTION_FOR_FIELD.items():
        if field == "resource":  # an ordinary word in messages ("empty resource string")
            continue
        text = re.sub(rf"(?<![\w-]){field}(?!\w)", option, text)
    return text


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = str(value) if value != "" else "''"
        return text.replace("pulsed_dc", "pulsed-dc") if isinstance(value, str) else text
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:g}"


def allowed_range(minimum: float | None, maximum: float | None, unit: str) -> str:
    """``0.001 to 4 mA``, ``at least 10 s``, ``at most 4 mA`` (``""`` when unbounded)."""
    u = f" {unit}" if unit else ""
    if minimum is not None and maximum is not None:
        return f"{minimum:g} to {maximum:g}{u}"
    if minimum is not None:
        return f"more than {minimum:g}{u}" if minimum == 0 else f"at least {minimum:g}{u}"
    if maximum is not None:
        return f"at most {maximum:g}{u}"
    return ""


def refusal_message(exc: Any, args: Any = None) -> str:
    """A :class:`SafetyRefusal` in the user's words: option, value with unit, allowed range, reason, advice.

    ``args`` (the parsed command line, optional) lets the message say where a value came from when the user
    did not type it: a preset, or ``--pulse-hz`` implying ``--waveform pulsed-dc``."""
    field = str(exc.field)
    unit = unit_of(field)
    option = option_for(field)
    value = exc.value
    asked = option if value is None else f"{option} {_number(value)}{' ' + unit if unit else ''}"
    origin = _origin(field, args)
    if origin:
        asked += f" ({origin})"
    parts = [f"{asked} refused"]
    allowed = allowed_range(exc.minimum, exc.maximum, unit)
    if allowed:
        parts.append(f"allowed {allowed}")
    reason = user_words(str(exc.reason)) if exc.reason else ""
    text = ": ".join(parts[:1]) + (f"; {parts[1]}" if len(parts) > 1 else "")
    if reason:
        text += f" ({reason})"
    if field == "resource":
        text += f"; {PORTS_HINT}"
    elif field in OPTION_FOR_FIELD and field != "record_path":
        text += f". Change {option}; {LIMITS_HINT}"
    elif field == "impedance_ohm":
        text += ". Check the electrodes (`iontodrive check PORT`)"
    return text


def _origin(field: str, args: Any) -> str:
    if args is None:
        return ""
    option_attr = {
        "current_ma": "current_ma",
        "dose_ma_min": "dose_ma_min",
        "duration_s": "duration_s",
        "ramp_up_s": "ramp_up_s",
        "ramp_down_s": "ramp_down_s",
        "polarity": "polarity",
        "waveform": "waveform",
        "pulse_frequency_hz": "pulse_hz",
        "duty_percent": "duty",
        "electrode_area_cm2": "area_cm2",
    }.get(field)
    if option_attr is None or getattr(args, option_attr, None) is not None:
        return ""
    if field == "waveform" and getattr(args, "pulse_hz", None) is not None:
        return "implied by --pulse-hz"
    if getattr(args, "preset", None):
        return f"from preset {args.preset}"
    return ""


def _root_os_error(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    found: OSError | None = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            found = current
        current = current.__cause__ or current.__context__
    return found


def open_failure_message(exc: BaseException) -> str | None:
    """``cannot open /dev/ttyUSB9: no such file or directory; run `iontodrive ports` ...`` for a port that
    cannot be opened (None if ``exc`` is not that)."""
    text = str(exc)
    match = re.match(r"cannot open '?([^':]+(?::[^':]*)*?)'?: ", text)
    if not match:
        return None
    port = match.group(1)
    root = _root_os_error(exc)
    if root is not None and root.errno is not None:
        reason = (root.strerror or errno.errorcode.get(root.errno, str(root.errno))).lower()
    else:
        reason = text[match.end() :]
        reason = re.sub(r"\[Errno \d+\]\s*", "", reason).split(": ")[-1].strip() or reason
    return f"cannot open port {port}: {reason}; {PORTS_HINT}"


def plain_message(exc: BaseException, args: Any = None) -> str:
    """The one-line message for an exception that ended a command (without ``error:``)."""
    from iontodrive.errors import (
        DeviceRefusal,
        LinkLostError,
        LinkTimeoutError,
        SafetyRefusal,
        SessionInterrupted,
    )
    from iontodrive.presets import PresetModelError

    if isinstance(exc, PresetModelError):
        refusal = exc.refusal
        unit = unit_of(str(refusal.field))
        asked = f"{option_for(str(refusal.field))} {_number(refusal.value)}{' ' + unit if unit else ''}"
        allowed = allowed_range(refusal.minimum, refusal.maximum, unit)
        why = f"{asked} refused" + (f"; allowed {allowed}" if allowed else "")
        choose = ", ".join(exc.others) if exc.others else "none shipped; see `iontodrive presets`"
        return (
            f"preset {exc.name} is for {exc.preset_model}, not this {exc.device_model} ({why}); use a "
            f"{exc.device_model} preset ({choose}) or give the prescription as options"
        )
    if isinstance(exc, SafetyRefusal):
        return refusal_message(exc, args)
    if isinstance(exc, SessionInterrupted):
        by = "SIGTERM" if "SIGTERM" in str(exc.reason) else "Ctrl-C"
        return f"stopped by {by}; the output was ramped down to 0 mA and the record is complete"
    if isinstance(exc, KeyboardInterrupt):
        return "stopped by Ctrl-C"
    if isinstance(exc, LinkTimeoutError):
        return (
            f"the device did not answer ({exc.attempts} attempt(s), {exc.deadline_s:g} s each); check that "
            f"it is on and connected, or raise --timeout-s for a slow link; {PORTS_HINT}"
        )
    if isinstance(exc, LinkLostError):
        return (
            f"{user_words(str(exc))}. The device's watchdog ramps its output down by itself; the record "
            "keeps what was received (`iontodrive report RECORD`)"
        )
    if isinstance(exc, DeviceRefusal):
        return device_refusal_message(exc)
    opened = open_failure_message(exc)
    if opened is not None:
        return opened
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: no such file"
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror.lower()}"
    text = str(exc).strip()
    if not text:
        return "unexpected error (run with --debug for the details)"
    return user_words(text)


def device_refusal_message(exc: Any) -> str:
    """A NACK in words: the request, the device's reason, the field's range converted to user units."""
    from iontodrive.protocol import Field, MessageType

    try:
        request = MessageType(exc.request).name
    except ValueError:
        request = f"request 0x{int(exc.request):02X}"
    reason = exc.code.name.lower().replace("_", " ")
    text = f"the device refused {request}: {reason}"
    if exc.field != Field.NONE:
        name = exc.field.name.lower()
        unit = unit_of(name)
        scale, shown_unit = {"µA": (1000.0, "mA"), "mV": (1000.0, "V"), "ms": (1000.0, "s")}.get(
            unit, (1.0, unit)
        )
        value = exc.value / scale
        text += (
            f" ({name} = {value:g} {shown_unit}, allowed {exc.minimum / scale:g} to "
            f"{exc.maximum / scale:g} {shown_unit})"
        ).replace("  ", " ")
    if "busy" in reason:
        text += "; another session is running on the device: wait for it to end or stop it"
    return text


__all__ = [
    "OPTION_FOR_FIELD",
    "allowed_range",
    "device_refusal_message",
    "option_for",
    "plain_message",
    "refusal_message",
    "unit_of",
    "user_words",
]
