"""Enumerations carried on the wire.

Every value here is part of protocol version 2 (``docs/protocol.md`` §5). Values are never reused: a
retired member keeps its number.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag


class MessageKind(IntEnum):
    """Direction and role of a message, fixed by the range its type byte falls in."""

    REQUEST = 0  # 0x01-0x3F, host -> device, carries a non-zero sequence number
    REPLY = 1  # 0x80-0xBF, device -> host, echoes the request's sequence number
    UNSOLICITED = 2  # 0xC0-0xFF, device -> host, sequence number 0


class MessageType(IntEnum):
    """The type byte of the frame header."""

    IDENTIFY = 0x01
    GET_STATUS = 0x02
    CHECK_CONTACT = 0x03
    START = 0x04
    SET_CURRENT = 0x05
    PAUSE = 0x06
    RESUME = 0x07
    STOP = 0x08
    ABORT = 0x09
    HEARTBEAT = 0x0A
    CONFIGURE_TELEMETRY = 0x0B
    FETCH_EVENTS = 0x0C
    SET_WATCHDOG = 0x0D
    CLEAR_FAULT = 0x0E
    RESET = 0x0F
    OPEN_SESSION = 0x10  # v2: the host-session handshake

    ACK = 0x80
    NACK = 0x81
    IDENTITY_REPORT = 0x82
    STATUS_REPORT = 0x83
    CONTACT_REPORT = 0x84
    EVENTS_REPORT = 0x85
    SESSION_OPENED = 0x86  # v2: answer to OPEN_SESSION

    TELEMETRY = 0xC0
    EVENT = 0xC1

    @property
    def kind(self) -> MessageKind:
        if self < 0x40:
            return MessageKind.REQUEST
        if self < 0xC0:
            return MessageKind.REPLY
        return MessageKind.UNSOLICITED


class DeviceState(IntEnum):
    """Firmware state. Which request is allowed in which, and where it leads: :mod:`.rules`."""

    IDLE = 0
    CONTACT_CHECK = 1
    RAMP_UP = 2
    HOLD = 3
    ADJUST = 4  # ramping between two non-zero set-points
    RAMP_DOWN = 5  # ramping to zero to end the session (end of dose, stop, abort, latched trip)
    PAUSING = 6  # ramping to zero to pause (pause request, electrode lift, host watchdog)
    PAUSED = 7
    DONE = 8
    FAULT = 9


class Polarity(IntEnum):
    """Which electrode is the active (drug) electrode. Dexamethasone is delivered from the cathode."""

    NONE = 0
    ANODE = 1
    CATHODE = 2


class Waveform(IntEnum):
    DC = 0
    PULSED_DC = 1


class WaveformSet(IntFlag):
    """Waveforms a model supports, as reported by :class:`IdentityReport`."""

    DC = 1
    PULSED_DC = 2


class ContactVerdict(IntEnum):
    OK = 0
    HIGH = 1  # impedance above the start limit (poor contact or compliance would be reached)
    LOW = 2  # impedance below the short-circuit limit
    OPEN = 3  # no measurable current: electrode off the skin


class StatusFlags(IntFlag):
    """Bit field carried by telemetry and status. Bits 12-15 are reserved and sent as 0."""

    NONE = 0
    OUTPUT_ON = 0x0001  # output current is non-zero (or ramping)
    SESSION_ACTIVE = 0x0002  # a session is in progress (including paused)
    DOSE_BASED = 0x0004  # the session ends on delivered charge, not on time
    RESISTANCE_LIMIT = 0x0008  # S5: voltage held at compliance; current held at the reachable level
    TIME_EXTENDED = 0x0010  # S5: session time extended so the dose is still met
    ELECTRODE_LIFT = 0x0020  # S6: lift detected in this session; cleared by a successful resume
    LINK_LOST = 0x0040  # S10: watchdog expired in this session
    OVERCURRENT = 0x0080  # S9: over-current trip latched
    HARDWARE_TRIP = 0x0100  # independent trip (hydro-30, 35 mA) latched
    CONTACT_OK = 0x0200  # last contact check passed
    PULSE_ON = 0x0400  # pulsed DC: the sample was taken in the on phase
    EVENTS_OVERFLOWED = 0x0800  # the event ring dropped events the host never fetched


class ErrorCode(IntEnum):
    """Reason carried by a NACK. ``docs/protocol.md`` §6 describes when each is sent."""

    UNKNOWN_REQUEST = 1  # type byte is not a request type
    BAD_LENGTH = 2  # payload length does not match the request's layout
    OUT_OF_RANGE = 3  # a field is outside the device's limits; NACK carries field, value, min, max
    BAD_STATE = 4  # request not allowed in the present state
    CONTACT_HIGH = 5  # S3: impedance above the start limit
    CONTACT_LOW = 6  # S3: impedance below the short-circuit limit
    CONTACT_OPEN = 7  # S3: no contact at all
    POLARITY_LOCKED = 8  # S8: polarity change while output is non-zero
    FAULT_LATCHED = 9  # S9: a latched fault must be cleared first
    UNSUPPORTED = 10  # the model does not support the requested feature (e.g. pulsed DC)
    INCONSISTENT = 11  # fields contradict each other (e.g. both dose and duration given)
    SLEW_LIMIT = 12  # S1: requested ramp faster than the hard slew limit


class Field(IntEnum):
    """Identifies the offending field in a NACK."""

    NONE = 0
    TARGET_CURRENT_UA = 1
    DOSE_UAS = 2
    DURATION_MS = 3
    RAMP_UP_MS = 4
    RAMP_DOWN_MS = 5
    POLARITY = 6
    WAVEFORM = 7
    PULSE_FREQUENCY_HZ = 8
    DUTY_PERCENT = 9
    RAMP_MS = 10
    RATE_HZ = 11
    TIMEOUT_MS = 12
    PROBE_CURRENT_UA = 13
    IMPEDANCE_OHM = 14
    FROM_EVENT_NO = 15
    MAX_COUNT = 16
    STATE = 17
    HOST_NONCE = 18  # v2


class EventCode(IntEnum):
    """What an :class:`Event` reports; ``value`` is interpreted as documented per code."""

    POWER_ON = 1  # value: 0
    STATE_CHANGED = 2  # value: previous state
    CONTACT_OK = 3  # value: impedance in ohm
    CONTACT_FAILED = 4  # value: impedance in ohm (0xFFFFFFFF if open)
    SESSION_STARTED = 5  # value: target current in uA
    SETPOINT_CHANGED = 6  # value: new set-point in uA
    PAUSED = 7  # value: delivered charge in uA*s
    RESUMED = 8  # value: delivered charge in uA*s
    RESISTANCE_LIMIT = 9  # value: held current in uA
    RESISTANCE_LIMIT_CLEARED = 10  # value: set-point in uA
    TIME_EXTENDED = 11  # value: extension in ms
    ELECTRODE_LIFT = 12  # value: impedance in ohm (0xFFFFFFFF if open)
    SHORT_CIRCUIT = 13  # value: impedance in ohm
    OVERCURRENT_TRIP = 14  # value: measured current in uA
    HARDWARE_TRIP = 15  # value: measured current in uA
    LINK_LOST = 16  # value: milliseconds since the last valid host frame
    DOSE_COMPLETE = 17  # value: delivered charge in uA*s
    SESSION_ENDED = 18  # value: delivered charge in uA*s
    STOPPED = 19  # value: delivered charge in uA*s (stop request)
    ABORTED = 20  # value: delivered charge in uA*s (abort request)
    FAULT_CLEARED = 21  # value: 0
    WATCHDOG_CHANGED = 22  # value: new timeout in ms
    TELEMETRY_CHANGED = 23  # value: new rate in Hz
    EVENTS_LOST = 24  # value: number of events dropped from the ring
    HOST_SESSION_OPENED = 25  # v2; value: the host session number since power-up
