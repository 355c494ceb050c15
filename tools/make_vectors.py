"""Regenerate ``docs/vectors.json``, the golden frames of protocol version 2, from a fixed list of messages.

The output is deterministic: the same code gives the same bytes. Each vector is
``{"name", "seq", "fields", "hex", "note"}`` as described in ``docs/protocol.md`` §11. There is at least one
vector per message class (a class without a hand-picked example gets one derived from its layout, each
field at the low end of its wire range) and one Nack per error code.

Usage::

    python tools/make_vectors.py           # rewrite docs/vectors.json
    python tools/make_vectors.py --check   # exit 1 if docs/vectors.json is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from enum import IntEnum, IntFlag
from pathlib import Path
from typing import Any

from iontodrive.protocol import (
    MESSAGE_BY_TYPE,
    MESSAGE_CLASSES,
    OPEN_CIRCUIT_OHM,
    PROTOCOL_VERSION,
    Abort,
    Ack,
    CheckContact,
    ClearFault,
    ConfigureTelemetry,
    ContactReport,
    ContactVerdict,
    DeviceState,
    ErrorCode,
    Event,
    EventCode,
    EventsReport,
    FetchEvents,
    Field,
    GetStatus,
    Heartbeat,
    Identify,
    IdentityReport,
    Message,
    MessageKind,
    MessageType,
    Nack,
    OpenSession,
    Pause,
    Polarity,
    Reset,
    Resume,
    SessionOpened,
    SetCurrent,
    SetWatchdog,
    Start,
    StatusFlags,
    StatusReport,
    Stop,
    Telemetry,
    Waveform,
    WaveformSet,
    crc16_ccitt_false,
    encode,
)
from iontodrive.protocol.fastpath import minimal_message

VECTORS_PATH = Path(__file__).resolve().parents[1] / "docs" / "vectors.json"

# A Heartbeat whose CRC contains a 0x00 byte exercises COBS on the CRC itself. The sequence number is
# searched deterministically from this start; tests check the property, not the number.
_CRC_ZERO_SEARCH_START = 1000

_SESSION_FLAGS = StatusFlags.OUTPUT_ON | StatusFlags.SESSION_ACTIVE | StatusFlags.DOSE_BASED
_SESSION_FLAGS |= StatusFlags.CONTACT_OK


def _seq_with_zero_in_crc() -> int:
    for seq in range(_CRC_ZERO_SEARCH_START, 0x10000):
        body = bytes([PROTOCOL_VERSION, int(MessageType.HEARTBEAT)]) + seq.to_bytes(2, "little")
        crc = crc16_ccitt_false(body)
        if crc & 0xFF == 0 or crc >> 8 == 0:
            return seq
    raise AssertionError("no sequence number gives a CRC with a zero byte")  # pragma: no cover


def examples() -> list[tuple[str, int, Message]]:
    """The fixed list of (note, seq, message) the vectors are made from, in file order."""
    return [
        ("Identify, empty payload", 1, Identify()),
        ("GetStatus, empty payload", 2, GetStatus()),
        ("CheckContact with the 50 uA probe for a 4 mA session", 3, CheckContact(50, 4000)),
        (
            "Start: dose-based 40 mA*min (2 400 000 uA*s) at 4 mA from the cathode, 30 s ramps, DC",
            4,
            Start(
                target_current_ua=4000,
                dose_uas=2_400_000,
                duration_ms=0,
                ramp_up_ms=30_000,
                ramp_down_ms=30_000,
                polarity=Polarity.CATHODE,
                waveform=Waveform.DC,
            ),
        ),
        (
            "Start: time-based 15 min at 15 mA from the anode, pulsed DC 1 kHz 50 %",
            5,
            Start(
                target_current_ua=15_000,
                dose_uas=0,
                duration_ms=900_000,
                ramp_up_ms=30_000,
                ramp_down_ms=30_000,
                polarity=Polarity.ANODE,
                waveform=Waveform.PULSED_DC,
                pulse_frequency_hz=1000,
                duty_percent=50,
            ),
        ),
        ("SetCurrent to 3 mA over 10 s", 6, SetCurrent(3000, 10_000)),
        ("Pause, empty payload", 7, Pause()),
        ("Resume, empty payload", 8, Resume()),
        ("Stop, empty payload", 9, Stop()),
        ("Abort, empty payload", 10, Abort()),
        ("Heartbeat, empty payload", 11, Heartbeat()),
        ("ConfigureTelemetry to 10 Hz", 12, ConfigureTelemetry(10)),
        ("FetchEvents from event 1, at most 16", 13, FetchEvents(1, 16)),
        ("SetWatchdog to 2000 ms", 14, SetWatchdog(2000)),
        ("ClearFault, empty payload", 15, ClearFault()),
        ("Reset, empty payload", 16, Reset()),
        ("Heartbeat with the largest sequence number, 65535 (0xFFFF)", 0xFFFF, Heartbeat()),
        ("Heartbeat with sequence number 256: a zero byte in the header", 0x0100, Heartbeat()),
        ("Heartbeat whose CRC has a zero byte", _seq_with_zero_in_crc(), Heartbeat()),
        ("Ack of the Start numbered 4", 4, Ack(int(MessageType.START))),
        (
            "Nack: Start's target current above the model's 4 mA",
            4,
            Nack(int(MessageType.START), ErrorCode.OUT_OF_RANGE, Field.TARGET_CURRENT_UA, 5000, 1, 4000),
        ),
        (
            "Nack with negative i64 values: value -1 and the extreme i64 range",
            0x1234,
            Nack(
                int(MessageType.SET_CURRENT),
                ErrorCode.OUT_OF_RANGE,
                Field.RAMP_MS,
                -1,
                -(2**63),
                2**63 - 1,
            ),
        ),
        (
            "Nack of a Resume refused by the contact check (open circuit)",
            21,
            Nack(
                int(MessageType.RESUME),
                ErrorCode.CONTACT_OPEN,
                Field.IMPEDANCE_OHM,
                OPEN_CIRCUIT_OHM,
                0,
                10_000,
            ),
        ),
        (
            "IdentityReport of a clinic-4 (illustrative limits), model NUL-padded",
            1,
            IdentityReport(
                model="clinic-4",
                serial_number=1001,
                firmware_major=1,
                firmware_minor=2,
                firmware_patch=3,
                protocol_version=PROTOCOL_VERSION,
                max_current_ua=4000,
                compliance_mv=80_000,
                dose_cap_uas=4_800_000,
                slew_limit_ua_per_s=1000,
                min_ramp_ms=5000,
                max_ramp_ms=60_000,
                max_duration_ms=3_600_000,
                trip_current_ua=4400,
                waveforms=WaveformSet.DC,
                max_telemetry_hz=1000,
                min_pulse_frequency_hz=0,
                max_pulse_frequency_hz=0,
                min_watchdog_ms=500,
                max_watchdog_ms=10_000,
                min_current_ua=100,
                min_duty_percent=0,
                max_duty_percent=0,
            ),
        ),
        (
            "IdentityReport of a hydro-30 (illustrative limits): 16-character model, DC and pulsed DC",
            1,
            IdentityReport(
                model="hydro-30-XL-0001",
                serial_number=0xDEADBEEF,
                firmware_major=2,
                firmware_minor=0,
                firmware_patch=0,
                protocol_version=PROTOCOL_VERSION,
                max_current_ua=30_000,
                compliance_mv=60_000,
                dose_cap_uas=36_000_000,
                slew_limit_ua_per_s=6000,
                min_ramp_ms=5000,
                max_ramp_ms=60_000,
                max_duration_ms=2_400_000,
                trip_current_ua=33_000,
                waveforms=WaveformSet.DC | WaveformSet.PULSED_DC,
                max_telemetry_hz=1000,
                min_pulse_frequency_hz=100,
                max_pulse_frequency_hz=10_000,
                min_watchdog_ms=500,
                max_watchdog_ms=10_000,
                min_current_ua=1000,
                min_duty_percent=10,
                max_duty_percent=90,
            ),
        ),
        (
            "StatusReport during a dose-based session",
            2,
            StatusReport(
                device_time_ms=123_456,
                state=DeviceState.HOLD,
                flags=_SESSION_FLAGS,
                polarity=Polarity.CATHODE,
                target_current_ua=4000,
                setpoint_ua=4000,
                measured_ua=3998,
                voltage_mv=18_500,
                impedance_ohm=4625,
                charge_uas=240_000,
                target_charge_uas=2_400_000,
                remaining_ms=570_000,
                session_id=1,
                last_event_no=7,
                watchdog_ms=2000,
                telemetry_hz=2,
            ),
        ),
        ("ContactReport: 4.7 kOhm, OK", 3, ContactReport(4700, ContactVerdict.OK, 200, 10_000, 50)),
        (
            "ContactReport: open circuit (OPEN_CIRCUIT_OHM = 0xFFFFFFFF)",
            3,
            ContactReport(OPEN_CIRCUIT_OHM, ContactVerdict.OPEN, 200, 10_000, 50),
        ),
        ("EventsReport: events 1..41 available, 3 follow", 13, EventsReport(1, 42, 3)),
        (
            "Telemetry during a session",
            0,
            Telemetry(
                sample_no=246,
                device_time_ms=123_000,
                state=DeviceState.HOLD,
                flags=_SESSION_FLAGS,
                polarity=Polarity.CATHODE,
                setpoint_ua=4000,
                measured_ua=4002,
                voltage_mv=18_510,
                impedance_ohm=4625,
                charge_uas=238_000,
            ),
        ),
        (
            "Telemetry at power-up: almost all zero, so COBS needs a code byte per zero (many code bytes)",
            0,
            Telemetry(0, 0, DeviceState.IDLE, StatusFlags.NONE, Polarity.NONE, 0, 0, 0, 0, 0),
        ),
        (
            "Telemetry with the largest u32 values and an open circuit",
            0,
            Telemetry(
                sample_no=0xFFFF_FFFF,
                device_time_ms=0xFFFF_FFFF,
                state=DeviceState.PAUSING,
                flags=StatusFlags(0x0FFF),
                polarity=Polarity.ANODE,
                setpoint_ua=0xFFFF_FFFF,
                measured_ua=0xFFFF_FFFF,
                voltage_mv=0xFFFF_FFFF,
                impedance_ohm=OPEN_CIRCUIT_OHM,
                charge_uas=0xFFFF_FFFF,
            ),
        ),
        ("Event 1: POWER_ON", 0, Event(1, 0, EventCode.POWER_ON, DeviceState.IDLE, 0, False)),
        (
            "Event replayed after FetchEvents: STATE_CHANGED, value = previous state (RAMP_UP)",
            0,
            Event(5, 31_000, EventCode.STATE_CHANGED, DeviceState.HOLD, int(DeviceState.RAMP_UP), True),
        ),
        (
            "Event LINK_LOST: value = ms since the last valid host frame",
            0,
            Event(9, 200_500, EventCode.LINK_LOST, DeviceState.PAUSING, 2004, False),
        ),
        ("OpenSession: the v2 handshake, host nonce 0x5EED1234", 1, OpenSession(0x5EED_1234)),
        (
            "SessionOpened: host session 3, replacing the session of another host (nonce 0x0BADCAFE)",
            1,
            SessionOpened(0x5EED_1234, 3, 0x0BAD_CAFE),
        ),
        (
            "Event HOST_SESSION_OPENED: value = host session number",
            0,
            Event(12, 5_000, EventCode.HOST_SESSION_OPENED, DeviceState.IDLE, 3, False),
        ),
        *_nack_per_code(),
    ]


# One Nack per error code: (request it answers, field, value, minimum, maximum), as a device sends them.
_NACK_CASES: dict[ErrorCode, tuple[MessageType, Field, int, int, int]] = {
    ErrorCode.UNKNOWN_REQUEST: (MessageType(0x80), Field.NONE, 0x80, 0, 0),
    ErrorCode.BAD_LENGTH: (MessageType.SET_WATCHDOG, Field.NONE, 1, 2, 2),
    ErrorCode.OUT_OF_RANGE: (MessageType.SET_WATCHDOG, Field.TIMEOUT_MS, 499, 500, 10_000),
    ErrorCode.BAD_STATE: (MessageType.SET_CURRENT, Field.STATE, int(DeviceState.IDLE), 0, 0),
    ErrorCode.CONTACT_HIGH: (MessageType.START, Field.IMPEDANCE_OHM, 12_000, 200, 10_000),
    ErrorCode.CONTACT_LOW: (MessageType.START, Field.IMPEDANCE_OHM, 150, 200, 10_000),
    ErrorCode.CONTACT_OPEN: (MessageType.RESUME, Field.IMPEDANCE_OHM, OPEN_CIRCUIT_OHM, 200, 10_000),
    ErrorCode.POLARITY_LOCKED: (MessageType.START, Field.POLARITY, int(Polarity.ANODE), 2, 2),
    ErrorCode.FAULT_LATCHED: (MessageType.START, Field.STATE, int(DeviceState.FAULT), 0, 0),
    ErrorCode.UNSUPPORTED: (MessageType.START, Field.WAVEFORM, int(Waveform.PULSED_DC), 0, 0),
    ErrorCode.INCONSISTENT: (MessageType.START, Field.DURATION_MS, 50_000, 60_000, 3_600_000),
    ErrorCode.SLEW_LIMIT: (MessageType.SET_CURRENT, Field.RAMP_MS, 5_000, 10_000, 60_000),
}


def _nack_per_code() -> list[tuple[str, int, Message]]:
    out: list[tuple[str, int, Message]] = []
    for offset, code in enumerate(ErrorCode):
        request, field, value, low, high = _NACK_CASES[code]
        name = MESSAGE_BY_TYPE[int(request)].__name__
        out.append(
            (
                f"Nack {code.name} answering {name}",
                100 + offset,
                Nack(int(request), code, field, value, low, high),
            )
        )
    return out


def all_examples() -> list[tuple[str, int, Message]]:
    """The hand-picked examples, plus a derived one for any message class that has none."""
    chosen = examples()
    covered = {type(message) for _, _, message in chosen}
    for cls in MESSAGE_CLASSES:
        if cls not in covered:
            seq = 0 if cls.TYPE.kind is MessageKind.UNSOLICITED else 1
            chosen.append(
                (
                    f"{cls.__name__}, derived from its layout (no hand-picked example)",
                    seq,
                    minimal_message(cls),
                )
            )
    return chosen


def _json_value(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, IntEnum | IntFlag):
        return int(value)
    return value


def make_vectors() -> list[dict[str, Any]]:
    """Encode every example and return the vector objects."""
    vectors = []
    for note, seq, message in all_examples():
        vectors.append(
            {
                "name": type(message).__name__,
                "seq": seq,
                "fields": {f.name: _json_value(getattr(message, f.name)) for f in fields(message)},
                "hex": encode(message, seq).hex(),
                "note": note,
            }
        )
    return vectors


def render() -> str:
    """The exact text of ``docs/vectors.json``."""
    return json.dumps(make_vectors(), indent=2, ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/vectors.json is out of date")
    args = parser.parse_args(argv)
    text = render()
    current = VECTORS_PATH.read_text(encoding="utf-8") if VECTORS_PATH.exists() else ""
    if args.check:
        if text != current:
            print(f"{VECTORS_PATH} is out of date: run python tools/make_vectors.py", file=sys.stderr)
            return 1
        return 0
    if text != current:
        VECTORS_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {len(make_vectors())} vectors to {VECTORS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
