"""Render the generated parts of ``docs/protocol.md`` from the protocol code, so they cannot drift.

The specification is hand-written prose with generated blocks between marker lines::

    <!-- BEGIN GENERATED: name -->
    ...
    <!-- END GENERATED: name -->

Each block is rendered from the code: constants, the message catalog, every message's byte layout (from
the ``construct`` layouts via :mod:`iontodrive.protocol.fastpath`), every enumeration, and a worked example
frame. Meanings of fields and enum members live here in tables that must cover every field and member:
adding one to the code without documenting it makes the check fail.

Usage::

    python tools/make_protocol_tables.py           # rewrite the blocks in docs/protocol.md
    python tools/make_protocol_tables.py --check   # exit 1 if docs/protocol.md is out of date
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import fields
from enum import IntEnum, IntFlag
from pathlib import Path

from cobs.cobs import decode as cobs_decode
from cobs.cobs import encode as cobs_encode

from iontodrive.errors import unit_of
from iontodrive.protocol import (
    MAX_FRAME_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_SEQ,
    MESSAGE_CLASSES,
    OPEN_CIRCUIT_OHM,
    PROTOCOL_VERSION,
    REPLY_TYPES_FOR_REQUEST,
    UNSOLICITED_SEQ,
    ContactVerdict,
    DeviceState,
    ErrorCode,
    EventCode,
    Field,
    MessageKind,
    MessageType,
    Polarity,
    SetCurrent,
    StatusFlags,
    Waveform,
    WaveformSet,
    crc16_ccitt_false,
    encode,
    encode_version_probe,
    encode_version_refusal,
)
from iontodrive.protocol import constants as C
from iontodrive.protocol.fastpath import COMPILED_BY_CLASS, FieldSpec
from iontodrive.protocol.rules import RULES

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"

# ----------------------------------------------------------------------------------------- field meanings
# Keyed by field name, with per-message overrides keyed by (message, field). Units come from the name.

FIELD_NOTES: dict[str, str] = {
    "probe_current_ua": "Probe current for the impedance measurement; 1-50 (S3: at most 50 µA).",
    "target_current_ua": "Current the session is to deliver; `min_current_ua`-`max_current_ua`.",
    "dose_uas": "Charge to deliver (µA·s; 1 mA·min = 60 000 µA·s); 1-`dose_cap_uas`, or 0 for a time-based "
    "session.",
    "duration_ms": "Session time with output on, ramps included, pauses excluded; 0 for a dose-based "
    "session (whose time with output on is bounded by `max_duration_ms` too, §4.3), else ≥ `ramp_up_ms` + "
    "`ramp_down_ms` and ≤ `max_duration_ms`.",
    "ramp_up_ms": "Ramp from 0 to the target; `min_ramp_ms`-`max_ramp_ms` (S1: default 30 000) and no "
    "faster than `slew_limit_ua_per_s`.",
    "ramp_down_ms": "Sets the ramp-down *rate*: `target_current_ua` / `ramp_down_ms` (§4.3); a ramp to 0 "
    "from the target (end, Stop, Pause, watchdog) lasts `ramp_down_ms`, from lower set-points less. Same "
    "limits as `ramp_up_ms`.",
    "polarity": "`Polarity`; ANODE or CATHODE in a request (NONE is refused).",
    "waveform": "`Waveform`; PULSED_DC only if `IdentityReport.waveforms` has it.",
    "pulse_frequency_hz": "Pulse frequency; `min_pulse_frequency_hz`-`max_pulse_frequency_hz` for "
    "PULSED_DC, 0 for DC.",
    "duty_percent": "Share of each period with current on; `min_duty_percent`-`max_duty_percent` for "
    "PULSED_DC, 0 for DC.",
    "ramp_ms": "Time to ramp from the present set-point to the new one; `min_ramp_ms`-`max_ramp_ms` and no "
    "faster than `slew_limit_ua_per_s`.",
    "rate_hz": "Telemetry samples per second of device time; 0 = off, else 1-`max_telemetry_hz`. "
    "Power-up default 2.",
    "from_event_no": "First event number wanted; older events no longer in the ring are skipped.",
    "max_count": "Maximum number of Event frames to replay after the EventsReport; 0-255 (0: the "
    "EventsReport alone, to learn the ring's range).",
    "timeout_ms": "Host-silence timeout of the watchdog (S10); `min_watchdog_ms`-`max_watchdog_ms` "
    "(500-10 000). Power-up default 2000.",
    "request_type": "Type byte of the request this frame answers.",
    "code": "Reason, an `ErrorCode`.",
    "field": "Offending field, a `Field`; NONE when no single field is at fault.",
    "value": "Offending value as the device understood it; 0 if not applicable. Signed.",
    "minimum": "Smallest allowed value of the field (inclusive); 0 if not applicable. Signed.",
    "maximum": "Largest allowed value of the field (inclusive); 0 if not applicable. Signed.",
    "model": "Model name, ASCII, NUL-padded on the right to 16 bytes (e.g. `clinic-4`, `hydro-30`).",
    "serial_number": "Serial number of the unit.",
    "firmware_major": "Firmware version, major part.",
    "firmware_minor": "Firmware version, minor part.",
    "firmware_patch": "Firmware version, patch part.",
    "protocol_version": "Protocol version the device speaks (this document: 2).",
    "min_current_ua": "Hard limit: smallest non-zero target current accepted (Start, SetCurrent, "
    "CheckContact); v2.",
    "min_duty_percent": "Smallest duty cycle accepted for PULSED_DC; 0 if pulsed DC is not supported; v2.",
    "max_duty_percent": "Largest duty cycle accepted for PULSED_DC; 0 if pulsed DC is not supported; v2.",
    "host_nonce": "Random number naming the host session, drawn once per connection; 1-4 294 967 295 (0 is "
    "refused).",
    "host_session_no": "Number of host sessions opened since power-up, this one included.",
    "previous_nonce": "Nonce of the host session this one replaced; 0 if none was open.",
    "max_current_ua": "Hard limit: largest target current (S12).",
    "compliance_mv": "Hard limit: compliance voltage of the current source.",
    "dose_cap_uas": "Hard limit: largest dose of one session.",
    "slew_limit_ua_per_s": "Hard limit: fastest change of output current (S1, S2); Abort ramps at this rate.",
    "min_ramp_ms": "Shortest ramp time accepted (S1: 5000).",
    "max_ramp_ms": "Longest ramp time accepted (S1: 60 000).",
    "max_duration_ms": "Longest session time accepted.",
    "trip_current_ua": "Absolute over-current trip level (S9, latches FAULT), normally `max_current_ua` "
    "+ 10 %; the trip also fires at set-point + 10 %. An independent hardware trip is not reported.",
    "waveforms": "`WaveformSet`: waveforms the model supports.",
    "max_telemetry_hz": "Largest telemetry rate accepted (S14: up to 1000).",
    "min_pulse_frequency_hz": "Smallest pulse frequency accepted; 0 if pulsed DC is not supported.",
    "max_pulse_frequency_hz": "Largest pulse frequency accepted; 0 if pulsed DC is not supported.",
    "min_watchdog_ms": "Smallest watchdog timeout accepted (S10: 500).",
    "max_watchdog_ms": "Largest watchdog timeout accepted (S10: 10 000).",
    "device_time_ms": "Device clock: milliseconds since power-up (wraps after 49.7 days).",
    "state": "`DeviceState`.",
    "flags": "`StatusFlags` bit set; bits 12-15 are reserved, sent as 0, and a receiver rejects them.",
    "setpoint_ua": "Present output set-point, following the ramps.",
    "measured_ua": "Measured output current (magnitude): the mean over the device's measurement interval "
    "(§4.3); 0 while the output is disabled.",
    "voltage_mv": "Measured output voltage (magnitude); 0 while the output is disabled.",
    "impedance_ohm": "Measured load impedance; 4 294 967 295 (`OPEN_CIRCUIT_OHM`) for an open circuit.",
    "charge_uas": "Charge delivered in this session so far: integral of measured current, ramps included "
    "(S11).",
    "target_charge_uas": "Dose target of the session; 0 for a time-based session.",
    "remaining_ms": "Device's estimate of session time left; 0 when no session runs.",
    "session_id": "Number of the present (or last) session since power-up; 0 before the first.",
    "last_event_no": "Number of the newest event recorded; 0 before the first.",
    "watchdog_ms": "Present watchdog timeout.",
    "telemetry_hz": "Present telemetry rate; 0 = off.",
    "verdict": "`ContactVerdict`.",
    "low_limit_ohm": "Short-circuit limit the impedance was judged against (S3: 200).",
    "high_limit_ohm": "Upper limit the impedance was judged against: min(10 kΩ, 0.8 × compliance / "
    "target current) (S3).",
    "first_available_no": "Oldest event number still in the ring; 0 if the ring is empty.",
    "next_event_no": "Number the next new event will get (newest + 1).",
    "count": "Number of Event frames (with `replayed` set) that follow this reply; 0-255.",
    "sample_no": "Sample counter, +1 per sample (wraps), so a host can count lost samples.",
    "event_no": "Event number: 1 for the first event after power-up, +1 per event; a gap means loss.",
    "replayed": "0 = live event, 1 = replayed in answer to FetchEvents.",
}
FIELD_NOTES_BY_MESSAGE: dict[tuple[str, str], str] = {
    ("CheckContact", "target_current_ua"): "Current the host intends to deliver; sets the compliance-based "
    "limit (S3). `min_current_ua`-`max_current_ua`.",
    ("SetCurrent", "target_current_ua"): "New non-zero set-point; `min_current_ua`-`max_current_ua`.",
    ("StatusReport", "target_current_ua"): "Target current of the present session; 0 if none.",
    ("StatusReport", "polarity"): "`Polarity` of the present session; NONE if none.",
    ("Telemetry", "polarity"): "`Polarity` of the present session; NONE if none.",
    ("ContactReport", "probe_current_ua"): "Probe current actually used.",
    ("ContactReport", "impedance_ohm"): "Measured impedance; 4 294 967 295 (`OPEN_CIRCUIT_OHM`) if open.",
    ("Event", "code"): "`EventCode`.",
    ("Event", "state"): "`DeviceState` after the device has reacted to what caused the event (§5).",
    ("Event", "value"): "Meaning depends on `code` (see the EventCode table). Signed.",
    ("Nack", "code"): "`ErrorCode`.",
}


# ------------------------------------------------------------------------------------ enum member meanings

ENUM_NOTES: dict[type[IntEnum] | type[IntFlag], dict[str, str]] = {
    MessageKind: {
        "REQUEST": "0x01-0x3F: host to device; sequence number 1-65535; answered by exactly one reply.",
        "REPLY": "0x80-0xBF: device to host; echoes the request's sequence number.",
        "UNSOLICITED": "0xC0-0xFF: device to host on its own; sequence number 0.",
    },
    DeviceState: {
        "IDLE": "Output disabled, no session (power-up state, S15).",
        "CONTACT_CHECK": "Measuring impedance with the probe current.",
        "RAMP_UP": "Ramping from 0 to the target at session start or resume.",
        "HOLD": "At the set-point.",
        "ADJUST": "Ramping between two non-zero set-points (SetCurrent, resistance limit).",
        "RAMP_DOWN": "Ramping to 0 to end the session (end of dose/time, Stop, Abort, latched trip).",
        "PAUSING": "Ramping to 0 to pause (Pause, electrode lift, watchdog).",
        "PAUSED": "Output 0, session kept with its dose; Resume continues it.",
        "DONE": "Session ended; output 0. Start begins a new session.",
        "FAULT": "Latched fault (over-current or hardware trip); output 0 until ClearFault.",
    },
    Polarity: {
        "NONE": "No session / not applicable.",
        "ANODE": "The active (drug) electrode is the anode (positive).",
        "CATHODE": "The active (drug) electrode is the cathode (negative), e.g. dexamethasone.",
    },
    Waveform: {
        "DC": "Direct current.",
        "PULSED_DC": "Pulsed DC: on for `duty_percent` of each period at `pulse_frequency_hz`.",
    },
    WaveformSet: {
        "DC": "Supports DC.",
        "PULSED_DC": "Supports pulsed DC.",
    },
    ContactVerdict: {
        "OK": "Impedance within limits; start allowed.",
        "HIGH": "Above the upper limit (poor contact, or compliance would be reached).",
        "LOW": "Below the short-circuit limit.",
        "OPEN": "No measurable current: electrode off the skin.",
    },
    StatusFlags: {
        "NONE": "No flag set.",
        "OUTPUT_ON": "Output current is non-zero or ramping.",
        "SESSION_ACTIVE": "A session is in progress (including paused).",
        "DOSE_BASED": "The session ends on delivered charge, not on time.",
        "RESISTANCE_LIMIT": "S5: voltage held at compliance; current held at the reachable level.",
        "TIME_EXTENDED": "S5: session time extended so the dose is still met.",
        "ELECTRODE_LIFT": "S6: lift detected in this session; cleared by a successful Resume.",
        "LINK_LOST": "S10: watchdog expired in this session.",
        "OVERCURRENT": "S9: over-current trip latched.",
        "HARDWARE_TRIP": "Independent hardware trip latched.",
        "CONTACT_OK": "The last contact check passed.",
        "PULSE_ON": "Pulsed DC: the sample was taken in the on phase.",
        "EVENTS_OVERFLOWED": "The event ring dropped events the host never fetched.",
    },
    Field: {
        "NONE": "No single field (or not applicable).",
        **{m.name: f"`{m.name.lower()}`" for m in Field if m.name not in ("NONE", "STATE", "IMPEDANCE_OHM")},
        "IMPEDANCE_OHM": "The measured impedance (contact refusals; value = impedance).",
        "STATE": "The device state (BAD_STATE; value = present `DeviceState`).",
    },
}

ERROR_NOTES: dict[ErrorCode, str] = {
    ErrorCode.UNKNOWN_REQUEST: "A frame of this protocol version, with a good CRC and a non-zero sequence "
    "number, whose type byte is not a request type the device knows (including reply and unsolicited "
    "types). Field NONE, value = the type byte.",
    ErrorCode.BAD_LENGTH: "A known request type whose payload length differs from its layout. Field NONE, "
    "value = payload length received, minimum = maximum = expected length.",
    ErrorCode.OUT_OF_RANGE: "A field is outside the device's limits, or an enumerated field holds a value "
    "with no meaning. Field, value, minimum and maximum name the field and its allowed range.",
    ErrorCode.BAD_STATE: "The request is not allowed in the present state (e.g. SetCurrent while idle, "
    "Start during a session, Reset with output on). Field STATE, value = present `DeviceState`.",
    ErrorCode.CONTACT_HIGH: "S3: contact check (CheckContact, Start, Resume) found the impedance above the "
    "upper limit. Field IMPEDANCE_OHM, value = impedance, maximum = limit.",
    ErrorCode.CONTACT_LOW: "S3: impedance below the short-circuit limit. Field IMPEDANCE_OHM, value = "
    "impedance, minimum = limit.",
    ErrorCode.CONTACT_OPEN: "S3: no contact at all. Field IMPEDANCE_OHM, value = 4 294 967 295.",
    ErrorCode.POLARITY_LOCKED: "S8: a polarity change while output is non-zero. Field POLARITY.",
    ErrorCode.FAULT_LATCHED: "S9: a fault is latched; requests that would make output (CheckContact, Start, "
    "Resume, SetCurrent) are refused until ClearFault. Field STATE, value = FAULT.",
    ErrorCode.UNSUPPORTED: "The model lacks the feature (e.g. pulsed DC on a DC-only model). Field names it. "
    "Also the version refusal (§9): a version-1 frame answered in version-1 format, field NONE, value = 1, "
    "minimum = maximum = 2.",
    ErrorCode.INCONSISTENT: "Fields contradict each other (e.g. both or neither of `dose_uas` and "
    "`duration_ms` non-zero, duration shorter than its ramps, pulse fields given for DC). Field names one "
    "of them.",
    ErrorCode.SLEW_LIMIT: "S1: the requested ramp is faster than `slew_limit_ua_per_s` (Start: target × 1000 "
    "> slew × ramp; SetCurrent: the change × 1000 > slew × `ramp_ms`). Field names the ramp, minimum = "
    "shortest allowed ramp in ms. Reachable only on a model whose `max_current_ua` × 1000 > "
    "`slew_limit_ua_per_s` × `min_ramp_ms` (not the simulator's two models, §4.3).",
}

EVENT_NOTES: dict[EventCode, tuple[str, str]] = {
    EventCode.POWER_ON: ("Firmware started (always event 1).", "0"),
    EventCode.STATE_CHANGED: ("The state changed; `state` is the new state.", "previous `DeviceState`"),
    EventCode.CONTACT_OK: (
        "A contact check passed (CheckContact, or the check of Start/Resume).",
        "impedance, Ω",
    ),
    EventCode.CONTACT_FAILED: (
        "A contact check failed (CheckContact, or the check of Start/Resume).",
        "impedance, Ω (4 294 967 295 if open)",
    ),
    EventCode.SESSION_STARTED: ("Start accepted; ramp up begins.", "target current, µA"),
    EventCode.SETPOINT_CHANGED: ("SetCurrent accepted.", "new set-point, µA"),
    EventCode.PAUSED: ("Output reached 0 after a pause (request or lift).", "delivered charge, µA·s"),
    EventCode.RESUMED: ("Resume accepted; ramp up begins.", "delivered charge, µA·s"),
    EventCode.RESISTANCE_LIMIT: ("S5: compliance reached; current held.", "held current, µA"),
    EventCode.RESISTANCE_LIMIT_CLEARED: ("S5: back at the set-point.", "set-point, µA"),
    EventCode.TIME_EXTENDED: ("S5: session time extended to meet the dose.", "extension, ms"),
    EventCode.ELECTRODE_LIFT: ("S6: lift detected; output ramps to 0, session paused.", "impedance, Ω"),
    EventCode.SHORT_CIRCUIT: ("Impedance fell below the short-circuit limit.", "impedance, Ω"),
    EventCode.OVERCURRENT_TRIP: ("S9: over-current trip latched.", "measured current, µA"),
    EventCode.HARDWARE_TRIP: ("Independent hardware trip latched.", "measured current, µA"),
    EventCode.LINK_LOST: (
        "S10: watchdog expired; output ramps to 0 and the session pauses.",
        "ms since the last valid host frame",
    ),
    EventCode.DOSE_COMPLETE: ("The dose target was reached.", "delivered charge, µA·s"),
    EventCode.SESSION_ENDED: ("The session ended (output at 0).", "delivered charge, µA·s"),
    EventCode.STOPPED: ("Stop accepted; ramp down begins.", "delivered charge, µA·s"),
    EventCode.ABORTED: ("Abort accepted; fastest ramp down begins.", "delivered charge, µA·s"),
    EventCode.FAULT_CLEARED: ("ClearFault accepted.", "0"),
    EventCode.WATCHDOG_CHANGED: ("SetWatchdog accepted.", "new timeout, ms"),
    EventCode.TELEMETRY_CHANGED: ("ConfigureTelemetry accepted.", "new rate, Hz"),
    EventCode.EVENTS_LOST: ("The ring overwrote events never fetched.", "number of events dropped"),
    EventCode.HOST_SESSION_OPENED: (
        "OpenSession accepted (v2): a host session began.",
        "host session number",
    ),
}

# ----------------------------------------------------------------------------------------------- helpers

_TYPE_NAMES = {
    **{"B": "u8", "H": "u16", "I": "u32", "L": "u32", "Q": "u64"},
    **{"b": "i8", "h": "i16", "i": "i32", "l": "i32", "q": "i64"},
}


def _md(text: str) -> str:
    """Turn reStructuredText-ish docstring markup into Markdown."""
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    return text.replace("``", "`")


def _doc_paragraph(cls: type) -> str:
    doc = cls.__doc__ or ""
    return _md(" ".join(line.strip() for line in doc.strip().splitlines() if line.strip()))


def _wire_type(spec: FieldSpec) -> str:
    if spec.text_bytes is not None:
        return f"char[{spec.text_bytes}]"
    if spec.code == "?":
        return "bool (u8)"
    return _TYPE_NAMES[spec.code]


def _unit(name: str) -> str:
    return unit_of(name) or "-"  # the one suffix table (iontodrive.errors)


def _range(spec: FieldSpec) -> str:
    if spec.text_bytes is not None:
        return f"0-{spec.text_bytes} ASCII chars"
    if spec.code == "?":
        return "0 (false), 1 (true)"
    if spec.allowed is not None:
        return ", ".join(str(v) for v in sorted(spec.allowed))
    if spec.flag_mask is not None:
        return f"bits 0x{spec.flag_mask:X}"
    return f"{spec.minimum} to {spec.maximum}"


def field_note(cls_name: str, field_name: str) -> str:
    """Meaning of one field (raises KeyError if undocumented)."""
    return FIELD_NOTES_BY_MESSAGE.get((cls_name, field_name)) or FIELD_NOTES[field_name]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out


# ------------------------------------------------------------------------------------------------ blocks


def render_constants() -> str:
    rows = [
        ["`PROTOCOL_VERSION`", str(PROTOCOL_VERSION), "Header byte 0 of every frame."],
        ["`HEADER_BYTES`", str(C.HEADER_BYTES), "version u8, type u8, sequence u16 little-endian."],
        ["`CRC_BYTES`", str(C.CRC_BYTES), "CRC-16/CCITT-FALSE, big-endian."],
        ["`MAX_PAYLOAD_BYTES`", str(MAX_PAYLOAD_BYTES), "Largest payload a receiver accepts."],
        ["`MAX_BODY_BYTES`", str(C.MAX_BODY_BYTES), "header + payload + CRC, before COBS."],
        ["`MAX_FRAME_BYTES`", str(MAX_FRAME_BYTES), "COBS-encoded body + the 0x00 delimiter."],
        ["`UNSOLICITED_SEQ`", str(UNSOLICITED_SEQ), "Sequence number of unsolicited frames."],
        ["`MAX_SEQ`", str(MAX_SEQ), "Requests use 1..65535, wrapping to 1."],
        ["`OPEN_CIRCUIT_OHM`", str(OPEN_CIRCUIT_OHM), "Impedance reported for an open circuit (0xFFFFFFFF)."],
        ["`DEFAULT_WATCHDOG_MS`", str(C.DEFAULT_WATCHDOG_MS), "Watchdog timeout after power-up (S10)."],
        ["`MIN_WATCHDOG_MS`", str(C.MIN_WATCHDOG_MS), "Smallest settable watchdog timeout (S10)."],
        ["`MAX_WATCHDOG_MS`", str(C.MAX_WATCHDOG_MS), "Largest settable watchdog timeout (S10)."],
        ["`HEARTBEAT_DIVISOR`", str(C.HEARTBEAT_DIVISOR), "Host sends a request at least every watchdog/4."],
        ["`DEFAULT_TELEMETRY_HZ`", str(C.DEFAULT_TELEMETRY_HZ), "Telemetry rate after power-up (S14)."],
        ["`DEFAULT_REPLY_TIMEOUT_MS`", str(C.DEFAULT_REPLY_TIMEOUT_MS), "Host's default wait for a reply."],
        ["`DEFAULT_RETRIES`", str(C.DEFAULT_RETRIES), "Host's default resends of an unanswered request."],
        [
            "`PREVIOUS_PROTOCOL_VERSION`",
            str(C.PREVIOUS_PROTOCOL_VERSION),
            "Version answered with a refusal (§9).",
        ],
        [
            "`REPLY_CACHE_SIZE`",
            str(C.REPLY_CACHE_SIZE),
            "Answers remembered per host session, at least (§7.3).",
        ],
        ["`MAX_HOST_NONCE`", str(C.MAX_HOST_NONCE), "Host nonces are 1..MAX_HOST_NONCE (§7.3)."],
        ["`MAX_PROBE_CURRENT_UA`", str(C.MAX_PROBE_CURRENT_UA), "Largest contact probe current (S3)."],
    ]
    return "\n".join(_table(["Name", "Value", "Meaning"], rows))


def render_catalog() -> str:
    rows = []
    for cls in MESSAGE_CLASSES:
        layout = COMPILED_BY_CLASS[cls]
        kind = cls.TYPE.kind
        if kind is MessageKind.REQUEST:
            answers = REPLY_TYPES_FOR_REQUEST[cls.TYPE]
            relation = "answered by " + " or ".join(
                _class_name(t) for t in sorted(answers, key=lambda t: t != MessageType.NACK)
            )
        elif kind is MessageKind.REPLY:
            relation = "answers " + ", ".join(
                _class_name(req) for req, answers in REPLY_TYPES_FOR_REQUEST.items() if cls.TYPE in answers
            )
            if cls.TYPE in (MessageType.ACK, MessageType.NACK):
                relation = "answers any request" if cls.TYPE == MessageType.NACK else relation
        else:
            relation = "sent by the device on its own"
        rows.append(
            [
                f"0x{int(cls.TYPE):02X}",
                f"[{cls.__name__}](#{cls.__name__.lower()}-0x{int(cls.TYPE):02x})",
                kind.name.lower(),
                str(layout.payload_size),
                str(layout.payload_size + C.HEADER_BYTES + C.CRC_BYTES),
                relation,
            ]
        )
    return "\n".join(_table(["Type", "Message", "Kind", "Payload", "Body", "Relation"], rows))


def _class_name(type_id: int) -> str:
    return next(cls.__name__ for cls in MESSAGE_CLASSES if type_id == cls.TYPE)


def render_layouts() -> str:
    parts: list[str] = []
    for cls in MESSAGE_CLASSES:
        layout = COMPILED_BY_CLASS[cls]
        parts.append(f"#### {cls.__name__} (0x{int(cls.TYPE):02X})")
        parts.append("")
        parts.append(
            f"{cls.TYPE.kind.name.capitalize()}, type 0x{int(cls.TYPE):02X}, payload "
            f"{layout.payload_size} bytes. {_doc_paragraph(cls)}"
        )
        parts.append("")
        if not layout.specs:
            parts.append("Empty payload (0 bytes).")
            parts.append("")
            continue
        rows = []
        offset = 0
        for spec in layout.specs:
            size = struct.calcsize("<" + spec.code)
            rows.append(
                [
                    str(offset),
                    str(size),
                    _wire_type(spec),
                    f"`{spec.name}`",
                    _unit(spec.name),
                    _range(spec),
                    field_note(cls.__name__, spec.name),
                ]
            )
            offset += size
        assert offset == layout.payload_size, cls
        parts += _table(["Offset", "Size", "Type", "Field", "Unit", "Wire range", "Meaning"], rows)
        parts.append("")
    return "\n".join(parts).rstrip()


def _enum_table(enum_type: type[IntEnum] | type[IntFlag], hex_values: bool = False) -> list[str]:
    notes = ENUM_NOTES[enum_type]
    rows = []
    for member in enum_type.__members__.values():
        value = f"0x{int(member):04X}" if hex_values else str(int(member))
        rows.append([value, f"`{member.name}`", notes[str(member.name)]])
    return _table(["Value", "Name", "Meaning"], rows)


def render_enums() -> str:
    parts: list[str] = []
    simple: list[tuple[type[IntEnum] | type[IntFlag], str, bool]] = [
        (DeviceState, "u8", False),
        (Polarity, "u8", False),
        (Waveform, "u8", False),
        (WaveformSet, "u8 bit set", False),
        (ContactVerdict, "u8", False),
        (StatusFlags, "u16 bit set", True),
        (Field, "u8", False),
    ]
    for enum_type, wire, hex_values in simple:
        parts.append(f"#### {enum_type.__name__} ({wire})")
        parts.append("")
        if enum_type.__dict__.get("__doc__"):
            parts.append(_doc_paragraph(enum_type))
            parts.append("")
        parts += _enum_table(enum_type, hex_values)
        parts.append("")
    return "\n".join(parts).rstrip()


def render_errors() -> str:
    rows = [[str(int(code)), f"`{code.name}`", ERROR_NOTES[code]] for code in ErrorCode]
    return "\n".join(_table(["Value", "Name", "When sent"], rows))


def render_events() -> str:
    rows = [[str(int(code)), f"`{code.name}`", *EVENT_NOTES[code]] for code in EventCode]
    return "\n".join(_table(["Value", "Name", "When", "`value` holds"], rows))


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02X}" for b in data)


def render_example() -> str:
    message = SetCurrent(target_current_ua=3000, ramp_ms=10_000)
    seq = 0x0106
    frame = encode(message, seq)
    header = bytes([PROTOCOL_VERSION, int(message.TYPE)]) + seq.to_bytes(2, "little")
    payload = (3000).to_bytes(4, "little") + (10_000).to_bytes(4, "little")
    crc = crc16_ccitt_false(header + payload)
    body = header + payload + crc.to_bytes(2, "big")
    assert cobs_encode(body) + b"\x00" == frame
    rows = [
        ["0", f"{PROTOCOL_VERSION:02X}", "version", f"protocol version {PROTOCOL_VERSION}"],
        ["1", "05", "type", "0x05 SetCurrent (request)"],
        ["2-3", _hex(header[2:4]), "seq", f"0x{seq:04X} = {seq}, little-endian"],
        ["4-7", _hex(payload[0:4]), "target_current_ua", "0x00000BB8 = 3000 µA, little-endian"],
        ["8-11", _hex(payload[4:8]), "ramp_ms", "0x00002710 = 10 000 ms, little-endian"],
        ["12-13", _hex(body[12:14]), "CRC", f"CRC-16/CCITT-FALSE of bytes 0-11 = 0x{crc:04X}, big-endian"],
    ]
    lines = [f"Message: `SetCurrent(target_current_ua=3000, ramp_ms=10000)` with sequence number {seq}.", ""]
    lines += _table(["Body offset", "Bytes", "Field", "Meaning"], rows)
    lines += [
        "",
        f"Body (14 bytes): `{_hex(body)}`",
        "",
        "COBS: split the body at each zero byte into groups; each group is sent as a code byte "
        "(group length + 1) followed by its non-zero bytes. The zeros themselves are not sent; the last "
        "group has no trailing zero.",
        "",
    ]
    groups = body.split(b"\x00")
    group_rows = []
    for index, group in enumerate(groups):
        ends = "end of body" if index == len(groups) - 1 else "zero follows"
        group_rows.append([str(index + 1), _hex(group) or "(empty)", f"{len(group) + 1:02X}", ends])
    lines += _table(["Group", "Data bytes", "Code", "Then"], group_rows)
    lines += [
        "",
        f"Frame on the wire ({len(frame)} bytes, delimiter included): `{_hex(frame)}`",
        "",
        f"Check: the CRC of all 14 body bytes, CRC included, is 0x{crc16_ccitt_false(body):04X}.",
    ]
    return "\n".join(lines)


def render_rules() -> str:
    """The request x state table of :mod:`iontodrive.protocol.rules` (§7.5)."""
    states = list(DeviceState)
    header = ["Request", *[f"`{s.name}`" for s in states]]
    rows = []
    for request_type in sorted(RULES):
        row = [f"`{_class_name(request_type)}`"]
        for state in states:
            cell = RULES[request_type][state]
            if cell.refusal is not None:
                row.append(f"✗ {cell.refusal.name}")
            else:
                then = "→ " + "/".join(s.name for s in cell.then) if cell.then else "="
                row.append(then + (" (at 0 output)" if cell.needs_zero_output else ""))
        rows.append(row)
    lines = _table(header, rows)
    lines += ["", "What each accepted request does, grouped by the states where it does the same:", ""]
    effect_rows = []
    for request_type in sorted(RULES):
        seen: dict[str, list[str]] = {}
        for state in states:
            cell = RULES[request_type][state]
            if cell.refusal is None:
                seen.setdefault(cell.effect, []).append(state.name)
        for effect, names in seen.items():
            where = "every state" if len(names) == len(states) else ", ".join(names)
            effect_rows.append([f"`{_class_name(request_type)}`", where, effect])
    lines += _table(["Request", "In", "Effect"], effect_rows)
    return "\n".join(lines)


def render_version_frames() -> str:
    """The version refusal and the version probe as bytes (§9)."""
    refusal = encode_version_refusal(int(MessageType.IDENTIFY), 1)
    probe = encode_version_probe(1)
    body = cobs_decode(refusal[:-1])
    return "\n".join(
        [
            "The refusal of a version-1 `Identify` numbered 1, and the version probe numbered 1:",
            "",
            *_table(
                ["Frame", "Body (before COBS)", "On the wire"],
                [
                    ["version refusal", f"`{_hex(body)}`", f"`{_hex(refusal)}`"],
                    ["version probe", f"`{_hex(cobs_decode(probe[:-1]))}`", f"`{_hex(probe)}`"],
                ],
            ),
        ]
    )


def render_file_count() -> str:
    """The hand-edited files a new message type touches (§12)."""
    rows = [[f"`{path}`", why] for path, why in NEW_MESSAGE_FILES]
    return "\n".join([f"{len(NEW_MESSAGE_FILES)} hand-edited files:", "", *_table(["File", "What"], rows)])


NEW_MESSAGE_FILES: tuple[tuple[str, str], ...] = (
    ("iontodrive/protocol/enums.py", "the type byte in `MessageType` (and any new enumeration values)"),
    ("iontodrive/protocol/messages.py", "the class: fields, `LAYOUT`, `REPLY` (requests), `@register`"),
    ("iontodrive/protocol/rules.py", "a request's row of the request x state table"),
    ("firmware_sim/requests.py", "the simulator's handler for a request"),
    ("tools/make_protocol_tables.py", "the meaning of each new field (this check fails without it)"),
)


BLOCKS: dict[str, Callable[[], str]] = {
    "rules": render_rules,
    "new_message": render_file_count,
    "version_frames": render_version_frames,
    "constants": render_constants,
    "catalog": render_catalog,
    "layouts": render_layouts,
    "enums": render_enums,
    "errors": render_errors,
    "events": render_events,
    "example": render_example,
}

_BLOCK_RE = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>\w+) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)", re.S
)


def render_document(text: str) -> str:
    """Return ``text`` with every generated block re-rendered (raises KeyError on an unknown block)."""
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        seen.add(name)
        return match.group(1) + BLOCKS[name]() + "\n" + match.group(4)

    result = _BLOCK_RE.sub(replace, text)
    missing = set(BLOCKS) - seen
    if missing:
        raise KeyError(f"docs/protocol.md lacks generated blocks: {sorted(missing)}")
    return result


def undocumented() -> list[str]:
    """Fields and enum members without a meaning in the tables above (must be empty)."""
    missing = []
    for cls in MESSAGE_CLASSES:
        for f in fields(cls):
            if (cls.__name__, f.name) not in FIELD_NOTES_BY_MESSAGE and f.name not in FIELD_NOTES:
                missing.append(f"{cls.__name__}.{f.name}")
    for enum_type, notes in ENUM_NOTES.items():
        missing += [f"{enum_type.__name__}.{name}" for name in enum_type.__members__ if name not in notes]
    missing += [f"ErrorCode.{c.name}" for c in ErrorCode if c not in ERROR_NOTES]
    missing += [f"EventCode.{c.name}" for c in EventCode if c not in EVENT_NOTES]
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/protocol.md is out of date")
    args = parser.parse_args(argv)
    missing = undocumented()
    if missing:
        print("undocumented: " + ", ".join(missing), file=sys.stderr)
        return 1
    text = DOC.read_text(encoding="utf-8")
    rendered = render_document(text)
    if args.check:
        if rendered != text:
            print(f"{DOC} is out of date: run python tools/make_protocol_tables.py", file=sys.stderr)
            return 1
        return 0
    if rendered != text:
        DOC.write_text(rendered, encoding="utf-8")
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
