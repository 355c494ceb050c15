"""The message catalog of protocol version 2.

Each message is a frozen dataclass. Its byte layout is declared once, as the ``construct`` struct in its
``LAYOUT`` class attribute; the fast codec (:mod:`iontodrive.protocol.fastpath`) is derived from these
layouts, and field names must match the dataclass fields in order (checked at import).

A request class names its data reply in ``REPLY`` (every request may also be answered by :class:`Nack`)
and marks itself ``SAFETY = True`` when it only lowers the output (Stop, Abort, Pause: never answered from
the reply cache, accepted in every state, ``docs/protocol.md`` §7.3). Each class registers itself with the
:func:`register` decorator; :data:`MESSAGE_CLASSES` and the lookup tables below are derived from the
registry, so a new message is declared in one place (plus its type byte in :mod:`.enums`).

Units are part of every field name: ``_ua`` microampere, ``_mv`` millivolt, ``_ms`` millisecond,
``_uas`` microampere-second (charge), ``_ohm`` ohm, ``_hz`` hertz. All integers are little-endian.

Type ranges: 0x01-0x3F requests (host to device), 0x80-0xBF replies (echo the request's sequence
number), 0xC0-0xFF unsolicited (sequence number 0). ``docs/protocol.md`` §4 gives each layout with
ranges and meanings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypeVar

from construct import Flag, Int8ul, Int16ul, Int32ul, Int64sl, PaddedString, Struct

from .enums import (
    ContactVerdict,
    DeviceState,
    ErrorCode,
    EventCode,
    Field,
    MessageKind,
    MessageType,
    Polarity,
    StatusFlags,
    Waveform,
    WaveformSet,
)

MODEL_NAME_BYTES = 16

__all__ = [
    "MESSAGE_BY_NAME",
    "MESSAGE_BY_TYPE",
    "MESSAGE_CLASSES",
    "REPLY_TYPES_FOR_REQUEST",
    "SAFETY_REQUESTS",
    "Abort",
    "Ack",
    "CheckContact",
    "ClearFault",
    "ConfigureTelemetry",
    "ContactReport",
    "Event",
    "EventsReport",
    "FetchEvents",
    "GetStatus",
    "Heartbeat",
    "Identify",
    "IdentityReport",
    "Message",
    "Nack",
    "OpenSession",
    "Pause",
    "Reset",
    "Resume",
    "SessionOpened",
    "SetCurrent",
    "SetWatchdog",
    "Start",
    "StatusReport",
    "Stop",
    "Telemetry",
    "register",
]


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every message.

    ``TYPE`` is the header type byte and ``LAYOUT`` the payload layout. Requests also set ``REPLY``, the
    message class of their data reply, and ``SAFETY`` (True for the commands that only lower the output).
    """

    TYPE: ClassVar[MessageType]
    LAYOUT: ClassVar[Struct]
    REPLY: ClassVar[type[Message] | None] = None
    SAFETY: ClassVar[bool] = False


_M = TypeVar("_M", bound=type[Message])
_REGISTRY: dict[int, type[Message]] = {}


def register(cls: _M) -> _M:
    """Add a message class to the catalog (used as a class decorator, outside ``@dataclass``).

    Raises:
        TypeError: the type byte is taken, a request names no reply class (or a non-reply one), or a
            reply or unsolicited class names a reply or claims ``SAFETY``.
    """
    type_id = int(cls.TYPE)
    if type_id in _REGISTRY:
        raise TypeError(f"{cls.__name__}: type 0x{type_id:02X} is taken by {_REGISTRY[type_id].__name__}")
    if cls.TYPE.kind is MessageKind.REQUEST:
        reply = cls.REPLY
        if reply is None or reply.TYPE.kind is not MessageKind.REPLY:
            raise TypeError(f"{cls.__name__}: a request must name its reply class in REPLY")
    elif cls.REPLY is not None or cls.SAFETY:
        raise TypeError(f"{cls.__name__}: only requests have REPLY and SAFETY")
    _REGISTRY[type_id] = cls
    return cls


# ----------------------------------------------------------------------------------------------- replies


@register
@dataclass(frozen=True, slots=True)
class Ack(Message):
    """The request with this frame's sequence number was accepted (or had already been accepted)."""

    TYPE = MessageType.ACK
    LAYOUT = Struct("request_type" / Int8ul)
    request_type: int


@register
@dataclass(frozen=True, slots=True)
class Nack(Message):
    """The request with this frame's sequence number was refused and changed nothing.

    ``field`` names the offending field (``Field.NONE`` if none); ``value`` is the offending value and
    ``minimum``/``maximum`` the allowed range, all 0 when they do not apply.
    """

    TYPE = MessageType.NACK
    LAYOUT = Struct(
        "request_type" / Int8ul,
        "code" / Int8ul,
        "field" / Int8ul,
        "value" / Int64sl,
        "minimum" / Int64sl,
        "maximum" / Int64sl,
    )
    request_type: int
    code: ErrorCode
    field: Field = Field.NONE
    value: int = 0
    minimum: int = 0
    maximum: int = 0


@register
@dataclass(frozen=True, slots=True)
class IdentityReport(Message):
    """Identity and hard limits of the device (S12): every limit the device enforces on a request.

    Limits cannot be changed over the protocol.
    """

    TYPE = MessageType.IDENTITY_REPORT
    LAYOUT = Struct(
        "model" / PaddedString(MODEL_NAME_BYTES, "ascii"),
        "serial_number" / Int32ul,
        "firmware_major" / Int8ul,
        "firmware_minor" / Int8ul,
        "firmware_patch" / Int8ul,
        "protocol_version" / Int8ul,
        "max_current_ua" / Int32ul,
        "compliance_mv" / Int32ul,
        "dose_cap_uas" / Int32ul,
        "slew_limit_ua_per_s" / Int32ul,
        "min_ramp_ms" / Int32ul,
        "max_ramp_ms" / Int32ul,
        "max_duration_ms" / Int32ul,
        "trip_current_ua" / Int32ul,
        "waveforms" / Int8ul,
        "max_telemetry_hz" / Int16ul,
        "min_pulse_frequency_hz" / Int16ul,
        "max_pulse_frequency_hz" / Int16ul,
        "min_watchdog_ms" / Int16ul,
        "max_watchdog_ms" / Int16ul,
        "min_current_ua" / Int32ul,
        "min_duty_percent" / Int8ul,
        "max_duty_percent" / Int8ul,
    )
    model: str
    serial_number: int
    firmware_major: int
    firmware_minor: int
    firmware_patch: int
    protocol_version: int
    max_current_ua: int
    compliance_mv: int
    dose_cap_uas: int
    slew_limit_ua_per_s: int
    min_ramp_ms: int
    max_ramp_ms: int
    max_duration_ms: int
    trip_current_ua: int
    waveforms: WaveformSet
    max_telemetry_hz: int
    min_pulse_frequency_hz: int
    max_pulse_frequency_hz: int
    min_watchdog_ms: int
    max_watchdog_ms: int
    # v2; the defaults describe a device that states no minimum and no pulsed DC (version-1 records)
    min_current_ua: int = 1
    min_duty_percent: int = 0
    max_duty_percent: int = 0


@register
@dataclass(frozen=True, slots=True)
class StatusReport(Message):
    """A snapshot of the device. ``remaining_ms`` is the device's estimate of session time left."""

    TYPE = MessageType.STATUS_REPORT
    LAYOUT = Struct(
        "device_time_ms" / Int32ul,
        "state" / Int8ul,
        "flags" / Int16ul,
        "polarity" / Int8ul,
        "target_current_ua" / Int32ul,
        "setpoint_ua" / Int32ul,
        "measured_ua" / Int32ul,
        "voltage_mv" / Int32ul,
        "impedance_ohm" / Int32ul,
        "charge_uas" / Int32ul,
        "target_charge_uas" / Int32ul,
        "remaining_ms" / Int32ul,
        "session_id" / Int16ul,
        "last_event_no" / Int32ul,
        "watchdog_ms" / Int16ul,
        "telemetry_hz" / Int16ul,
    )
    device_time_ms: int
    state: DeviceState
    flags: StatusFlags
    polarity: Polarity
    target_current_ua: int
    setpoint_ua: int
    measured_ua: int
    voltage_mv: int
    impedance_ohm: int
    charge_uas: int
    target_charge_uas: int
    remaining_ms: int
    session_id: int
    last_event_no: int
    watchdog_ms: int
    telemetry_hz: int


@register
@dataclass(frozen=True, slots=True)
class ContactReport(Message):
    """Result of a contact check: the measured impedance and the limits it was judged against (S3)."""

    TYPE = MessageType.CONTACT_REPORT
    LAYOUT = Struct(
        "impedance_ohm" / Int32ul,
        "verdict" / Int8ul,
        "low_limit_ohm" / Int32ul,
        "high_limit_ohm" / Int32ul,
        "probe_current_ua" / Int16ul,
    )
    impedance_ohm: int
    verdict: ContactVerdict
    low_limit_ohm: int
    high_limit_ohm: int
    probe_current_ua: int


@register
@dataclass(frozen=True, slots=True)
class EventsReport(Message):
    """Answer to :class:`FetchEvents`: the ring's range and how many replayed events follow."""

    TYPE = MessageType.EVENTS_REPORT
    LAYOUT = Struct(
        "first_available_no" / Int32ul,
        "next_event_no" / Int32ul,
        "count" / Int8ul,
    )
    first_available_no: int
    next_event_no: int
    count: int


# ---------------------------------------------------------------------------------------------- requests


@register
@dataclass(frozen=True, slots=True)
class Identify(Message):
    """Ask for the device's identity and hard limits. Answered by :class:`IdentityReport`."""

    TYPE = MessageType.IDENTIFY
    REPLY = IdentityReport
    LAYOUT = Struct()


@register
@dataclass(frozen=True, slots=True)
class GetStatus(Message):
    """Ask for a status snapshot. Answered by :class:`StatusReport`."""

    TYPE = MessageType.GET_STATUS
    REPLY = StatusReport
    LAYOUT = Struct()


@register
@dataclass(frozen=True, slots=True)
class CheckContact(Message):
    """Measure electrode-skin impedance with a probe current (S3: at most 50 uA): a spot measurement.

    ``target_current_ua`` is the current the host intends to deliver; the device uses it to compute the
    compliance-based impedance limit. Answered by :class:`ContactReport` at once; records CONTACT_OK or
    CONTACT_FAILED; the state does not change. Allowed in IDLE, PAUSED and DONE.
    """

    TYPE = MessageType.CHECK_CONTACT
    REPLY = ContactReport
    LAYOUT = Struct(
        "probe_current_ua" / Int16ul,
        "target_current_ua" / Int32ul,
    )
    probe_current_ua: int
    target_current_ua: int


@register
@dataclass(frozen=True, slots=True)
class Start(Message):
    """Start a session. Exactly one of ``dose_uas`` and ``duration_ms`` is non-zero.

    ``duration_ms`` is the whole session time with output on, from the start of the ramp up to the end of
    the ramp down (ramps included, pauses excluded); it must be at least ``ramp_up_ms + ramp_down_ms``.
    For a dose-based session the device plans the ramp down so that the total, ramps included, lands on
    ``dose_uas`` (S11). ``pulse_frequency_hz`` and ``duty_percent`` are 0 for DC.
    """

    TYPE = MessageType.START
    REPLY = Ack
    LAYOUT = Struct(
        "target_current_ua" / Int32ul,
        "dose_uas" / Int32ul,
        "duration_ms" / Int32ul,
        "ramp_up_ms" / Int32ul,
        "ramp_down_ms" / Int32ul,
        "polarity" / Int8ul,
        "waveform" / Int8ul,
        "pulse_frequency_hz" / Int16ul,
        "duty_percent" / Int8ul,
    )
    target_current_ua: int
    dose_uas: int
    duration_ms: int
    ramp_up_ms: int
    ramp_down_ms: int
    polarity: Polarity
    waveform: Waveform = Waveform.DC
    pulse_frequency_hz: int = 0
    duty_percent: int = 0


@register
@dataclass(frozen=True, slots=True)
class SetCurrent(Message):
    """Ramp to a new non-zero set-point over ``ramp_ms`` (S1; refused if faster than the slew limit)."""

    TYPE = MessageType.SET_CURRENT
    REPLY = Ack
    LAYOUT = Struct(
        "target_current_ua" / Int32ul,
        "ramp_ms" / Int32ul,
    )
    target_current_ua: int
    ramp_ms: int


@register
@dataclass(frozen=True, slots=True)
class Pause(Message):
    """Ramp to zero at the session's ramp-down rate and hold the delivered dose (S7).

    A safety command: accepted in every state (no change where the output is already at or going to
    zero) and never answered from the reply cache.
    """

    TYPE = MessageType.PAUSE
    REPLY = Ack
    SAFETY = True
    LAYOUT = Struct()


@register
@dataclass(frozen=True, slots=True)
class Resume(Message):
    """Repeat the contact check and ramp back up to the set-point (S7)."""

    TYPE = MessageType.RESUME
    REPLY = Ack
    LAYOUT = Struct()


@register
@dataclass(frozen=True, slots=True)
class Stop(Message):
    """End the session with a ramp at the session's ramp-down rate (from the target: ``ramp_down_ms``).

    A safety command: accepted in every state (no change without a session to end) and never answered
    from the reply cache.
    """

    TYPE = MessageType.STOP
    REPLY = Ack
    SAFETY = True
    LAYOUT = Struct()


@register
@dataclass(frozen=True, slots=True)
class Abort(Message):
    """End the session with the fastest ramp the model allows (its hard slew limit), never a step.

    A safety command: accepted in every state (no change without a session to end) and never answered
    from the reply cache.
    """

    TYPE = MessageType.ABORT
    REPLY = Ack
    SAFETY = True
    LAYOUT = Struct()


@register
@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Keep the host watchdog (S10) fed. Any valid request feeds it; this one does nothing else."""

    TYPE = MessageType.HEARTBEAT
    REPLY = Ack
    LAYOUT = Struct()


@register
@dataclass(frozen=True, slots=True)
class ConfigureTelemetry(Message):
    """Set the telemetry rate in device-time hertz; 0 turns telemetry off (S14)."""

    TYPE = MessageType.CONFIGURE_TELEMETRY
    REPLY = Ack
    LAYOUT = Struct("rate_hz" / Int16ul)
    rate_hz: int


@register
@dataclass(frozen=True, slots=True)
class FetchEvents(Message):
    """Ask for events from ``from_event_no`` on. Answered by :class:`EventsReport`, which is followed by
    up to ``max_count`` :class:`Event` frames with ``replayed`` set."""

    TYPE = MessageType.FETCH_EVENTS
    REPLY = EventsReport
    LAYOUT = Struct(
        "from_event_no" / Int32ul,
        "max_count" / Int8ul,
    )
    from_event_no: int
    max_count: int


@register
@dataclass(frozen=True, slots=True)
class SetWatchdog(Message):
    """Set the host-silence timeout of the watchdog (S10)."""

    TYPE = MessageType.SET_WATCHDOG
    REPLY = Ack
    LAYOUT = Struct("timeout_ms" / Int16ul)
    timeout_ms: int


@register
@dataclass(frozen=True, slots=True)
class ClearFault(Message):
    """Clear a latched fault (S9) once output is at zero; the device returns to IDLE."""

    TYPE = MessageType.CLEAR_FAULT
    REPLY = Ack
    LAYOUT = Struct()


@register
@dataclass(frozen=True, slots=True)
class Reset(Message):
    """Restart the firmware as at power-up, after the Ack (S15). Refused unless output is at zero.

    Everything restarts: state IDLE, no session, latches cleared, no host session, empty reply cache, the
    device clock, event and sample numbers, the watchdog and telemetry at their power-up values.
    """

    TYPE = MessageType.RESET
    REPLY = Ack
    LAYOUT = Struct()


# ------------------------------------------------------------------------------------------- unsolicited


@register
@dataclass(frozen=True, slots=True)
class Telemetry(Message):
    """One telemetry sample. ``sample_no`` increases by one per sample so a host can count losses.

    ``measured_ua`` is the ADC reading of the output current (magnitude), ``charge_uas`` the session's
    delivered charge so far (integral of measured current, ramps included, S11).
    """

    TYPE = MessageType.TELEMETRY
    LAYOUT = Struct(
        "sample_no" / Int32ul,
        "device_time_ms" / Int32ul,
        "state" / Int8ul,
        "flags" / Int16ul,
        "polarity" / Int8ul,
        "setpoint_ua" / Int32ul,
        "measured_ua" / Int32ul,
        "voltage_mv" / Int32ul,
        "impedance_ohm" / Int32ul,
        "charge_uas" / Int32ul,
    )
    sample_no: int
    device_time_ms: int
    state: DeviceState
    flags: StatusFlags
    polarity: Polarity
    setpoint_ua: int
    measured_ua: int
    voltage_mv: int
    impedance_ohm: int
    charge_uas: int


@register
@dataclass(frozen=True, slots=True)
class Event(Message):
    """A numbered event. Numbers start at 1 after power-up and increase by one, so a gap means loss."""

    TYPE = MessageType.EVENT
    LAYOUT = Struct(
        "event_no" / Int32ul,
        "device_time_ms" / Int32ul,
        "code" / Int8ul,
        "state" / Int8ul,
        "value" / Int64sl,
        "replayed" / Flag,
    )
    event_no: int
    device_time_ms: int
    code: EventCode
    state: DeviceState
    value: int = 0
    replayed: bool = False


@register
@dataclass(frozen=True, slots=True)
class SessionOpened(Message):
    """Answer to :class:`OpenSession` (v2): the host session is open and the reply cache is its own.

    ``host_session_no`` counts host sessions since power-up (1 for the first); ``previous_nonce`` is the
    nonce of the host session this one replaced (0 if there was none), so a host can tell that another
    host was connected before it.
    """

    TYPE = MessageType.SESSION_OPENED
    LAYOUT = Struct(
        "host_nonce" / Int32ul,
        "host_session_no" / Int32ul,
        "previous_nonce" / Int32ul,
    )
    host_nonce: int
    host_session_no: int
    previous_nonce: int


@register
@dataclass(frozen=True, slots=True)
class OpenSession(Message):
    """Open a host session (v2 handshake): the first request a host sends after opening the link.

    ``host_nonce`` is a random non-zero number the host draws once per connection. The device starts a
    new reply cache for the session (no answer remembered for another host is ever sent in it), closes
    any previous host session, and answers :class:`SessionOpened`. A retry of the same OpenSession (same
    sequence number, same nonce) gets the same answer.
    """

    TYPE = MessageType.OPEN_SESSION
    REPLY = SessionOpened
    LAYOUT = Struct("host_nonce" / Int32ul)
    host_nonce: int


# ----------------------------------------------------------------------------------------------- catalog

MESSAGE_CLASSES: tuple[type[Message], ...] = tuple(_REGISTRY[type_id] for type_id in sorted(_REGISTRY))

MESSAGE_BY_TYPE: dict[int, type[Message]] = {cls.TYPE: cls for cls in MESSAGE_CLASSES}
MESSAGE_BY_NAME: dict[str, type[Message]] = {cls.__name__: cls for cls in MESSAGE_CLASSES}

REPLY_TYPES_FOR_REQUEST: dict[MessageType, tuple[MessageType, ...]] = {
    cls.TYPE: (MessageType.NACK, cls.REPLY.TYPE) for cls in MESSAGE_CLASSES if cls.REPLY is not None
}
SAFETY_REQUESTS: frozenset[type[Message]] = frozenset(cls for cls in MESSAGE_CLASSES if cls.SAFETY)
