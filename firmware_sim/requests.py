"""The firmware's request handling: the request x state table enforced, then each request's own checks.

:func:`handle` looks up :data:`iontodrive.protocol.rules.RULES` for the request's type and the present
state first: a refusal there is answered at once (BAD_STATE or FAULT_LATCHED, field STATE), with nothing
changed. Only then does the request's handler check its fields against the model's limits (which are all
in IdentityReport) and act. A handler that refuses changes nothing either.

Adding a request: its class in ``iontodrive/protocol/messages.py``, its row in ``protocol/rules.py`` and
its handler here (registered in :data:`HANDLERS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iontodrive.protocol import (
    MAX_HOST_NONCE,
    Abort,
    Ack,
    CheckContact,
    ClearFault,
    ConfigureTelemetry,
    ContactReport,
    ContactVerdict,
    ErrorCode,
    EventCode,
    FetchEvents,
    Field,
    GetStatus,
    Heartbeat,
    Identify,
    Message,
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
    Stop,
    Waveform,
    WaveformSet,
)
from iontodrive.protocol import DeviceState as S
from iontodrive.protocol.rules import RULES

from .segments import EndReason, Session, flat
from .thresholds import DOSE_AIM_CAP_FRACTION, PROBE_MAX_UA

if TYPE_CHECKING:
    from .firmware import Firmware

Handler = Callable[["Firmware", Any], list[Message]]


def nack(
    request: Message, code: ErrorCode, field: Field = Field.NONE, value: int = 0, lo: int = 0, hi: int = 0
) -> list[Message]:
    return [Nack(int(request.TYPE), code, field, int(value), int(lo), int(hi))]


def ack(request: Message) -> list[Message]:
    return [Ack(int(request.TYPE))]


def handle(fw: Firmware, request: Message) -> list[Message]:
    """Execute one request; return its reply (and, for FetchEvents, the replayed events)."""
    handler = HANDLERS.get(type(request))
    if handler is None:
        return [Nack(int(request.TYPE), ErrorCode.UNKNOWN_REQUEST, Field.NONE, int(request.TYPE))]
    rule = RULES[request.TYPE][fw.state]
    if rule.refusal is not None:
        if isinstance(request, Start) and not fw.output_is_zero() and request.polarity != fw.polarity:
            p = int(fw.polarity)
            return nack(request, ErrorCode.POLARITY_LOCKED, Field.POLARITY, int(request.polarity), p, p)
        return nack(request, rule.refusal, Field.STATE, int(fw.state))
    if rule.needs_zero_output and not fw.output_is_zero():
        return nack(request, ErrorCode.BAD_STATE, Field.STATE, int(fw.state))
    return handler(fw, request)


def _identify(fw: Firmware, request: Identify) -> list[Message]:
    return [fw.model.identity()]


def _get_status(fw: Firmware, request: GetStatus) -> list[Message]:
    return [fw.status()]


def _open_session(fw: Firmware, request: OpenSession) -> list[Message]:
    if not 1 <= request.host_nonce <= MAX_HOST_NONCE:
        return nack(request, ErrorCode.OUT_OF_RANGE, Field.HOST_NONCE, request.host_nonce, 1, MAX_HOST_NONCE)
    previous = fw.host_nonce
    fw.host_nonce = request.host_nonce
    fw.host_session_no += 1
    fw.emit(EventCode.HOST_SESSION_OPENED, fw.host_session_no)
    return [SessionOpened(request.host_nonce, fw.host_session_no & 0xFFFF_FFFF, previous)]


def _check_contact(fw: Firmware, request: CheckContact) -> list[Message]:
    m = fw.model
    if not 1 <= request.probe_current_ua <= PROBE_MAX_UA:
        return nack(
            request, ErrorCode.OUT_OF_RANGE, Field.PROBE_CURRENT_UA, request.probe_current_ua, 1, PROBE_MAX_UA
        )
    if not m.min_current_ua <= request.target_current_ua <= m.max_current_ua:
        return nack(
            request,
            ErrorCode.OUT_OF_RANGE,
            Field.TARGET_CURRENT_UA,
            request.target_current_ua,
            m.min_current_ua,
            m.max_current_ua,
        )
    z, verdict, low, high = fw.measure_contact(request.probe_current_ua, request.target_current_ua)
    fw.set_contact_flag(verdict == ContactVerdict.OK)
    fw.last_impedance = z
    fw.emit(EventCode.CONTACT_OK if verdict == ContactVerdict.OK else EventCode.CONTACT_FAILED, z)
    return [ContactReport(z, verdict, low, high, request.probe_current_ua)]


def _validate_start(fw: Firmware, r: Start) -> list[Message] | None:
    m = fw.model
    oor = ErrorCode.OUT_OF_RANGE
    if not m.min_current_ua <= r.target_current_ua <= m.max_current_ua:
        return nack(r, oor, Field.TARGET_CURRENT_UA, r.target_current_ua, m.min_current_ua, m.max_current_ua)
    if r.dose_uas > m.dose_cap_uas:
        return nack(r, oor, Field.DOSE_UAS, r.dose_uas, 1, m.dose_cap_uas)
    if r.duration_ms > m.max_duration_ms:
        return nack(r, oor, Field.DURATION_MS, r.duration_ms, 2 * m.min_ramp_ms, m.max_duration_ms)
    for value, field in ((r.ramp_up_ms, Field.RAMP_UP_MS), (r.ramp_down_ms, Field.RAMP_DOWN_MS)):
        if not m.min_ramp_ms <= value <= m.max_ramp_ms:
            return nack(r, oor, field, value, m.min_ramp_ms, m.max_ramp_ms)
    if r.polarity == Polarity.NONE:
        return nack(r, oor, Field.POLARITY, int(r.polarity), int(Polarity.ANODE), int(Polarity.CATHODE))
    if r.waveform == Waveform.PULSED_DC:
        if not m.waveforms & WaveformSet.PULSED_DC:
            dc = int(Waveform.DC)
            return nack(r, ErrorCode.UNSUPPORTED, Field.WAVEFORM, int(r.waveform), dc, dc)
        if not m.min_pulse_frequency_hz <= r.pulse_frequency_hz <= m.max_pulse_frequency_hz:
            return nack(
                r,
                oor,
                Field.PULSE_FREQUENCY_HZ,
                r.pulse_frequency_hz,
                m.min_pulse_frequency_hz,
                m.max_pulse_frequency_hz,
            )
        if not m.min_duty_percent <= r.duty_percent <= m.max_duty_percent:
            return nack(r, oor, Field.DUTY_PERCENT, r.duty_percent, m.min_duty_percent, m.max_duty_percent)
    else:
        if r.pulse_frequency_hz != 0:
            return nack(r, ErrorCode.INCONSISTENT, Field.PULSE_FREQUENCY_HZ, r.pulse_frequency_hz, 0, 0)
        if r.duty_percent != 0:
            return nack(r, ErrorCode.INCONSISTENT, Field.DUTY_PERCENT, r.duty_percent, 0, 0)
    if (r.dose_uas == 0) == (r.duration_ms == 0):
        return nack(r, ErrorCode.INCONSISTENT, Field.DOSE_UAS, r.dose_uas, 0, m.dose_cap_uas)
    ramps = r.ramp_up_ms + r.ramp_down_ms
    if r.duration_ms and r.duration_ms < ramps:
        return nack(r, ErrorCode.INCONSISTENT, Field.DURATION_MS, r.duration_ms, ramps, m.max_duration_ms)
    for value, field in ((r.ramp_up_ms, Field.RAMP_UP_MS), (r.ramp_down_ms, Field.RAMP_DOWN_MS)):
        if r.target_current_ua * 1000 > m.slew_limit_ua_per_s * value:
            fastest = math.ceil(r.target_current_ua * 1000 / m.slew_limit_ua_per_s)
            return nack(r, ErrorCode.SLEW_LIMIT, field, value, max(fastest, m.min_ramp_ms), m.max_ramp_ms)
    duty = r.duty_percent / 100.0 if r.waveform == Waveform.PULSED_DC else 1.0
    if r.duration_ms:
        planned = r.target_current_ua * duty * (r.duration_ms - ramps / 2.0) / 1000.0
        if planned > DOSE_AIM_CAP_FRACTION * m.dose_cap_uas:
            longest = int(
                DOSE_AIM_CAP_FRACTION * m.dose_cap_uas * 1000.0 / (r.target_current_ua * duty) + ramps / 2.0
            )
            return nack(r, oor, Field.DURATION_MS, r.duration_ms, ramps, min(longest, m.max_duration_ms))
    else:
        up = r.target_current_ua * duty * r.ramp_up_ms / 2000.0
        down = r.target_current_ua * duty * r.ramp_down_ms / 2000.0
        longest_dose = up + down + r.target_current_ua * duty * (m.max_duration_ms - ramps) / 1000.0
        if r.dose_uas > longest_dose:
            return nack(r, oor, Field.DOSE_UAS, r.dose_uas, 1, min(int(longest_dose), m.dose_cap_uas))
    return None


def _contact_nack(fw: Firmware, request: Message, target_ua: int) -> list[Message] | None:
    z, verdict, low, high = fw.measure_contact(PROBE_MAX_UA, target_ua)
    if verdict == ContactVerdict.OK:
        return None
    code = {
        ContactVerdict.OPEN: ErrorCode.CONTACT_OPEN,
        ContactVerdict.LOW: ErrorCode.CONTACT_LOW,
        ContactVerdict.HIGH: ErrorCode.CONTACT_HIGH,
    }[verdict]
    return nack(request, code, Field.IMPEDANCE_OHM, z, low, high)


def _start(fw: Firmware, r: Start) -> list[Message]:
    refusal = _validate_start(fw, r) or _contact_nack(fw, r, r.target_current_ua)
    if refusal is not None:
        return refusal
    fw.session_id += 1
    fw.session = Session(
        target_ua=r.target_current_ua,
        dose_uas=r.dose_uas,
        duration_ms=r.duration_ms,
        ramp_up_ms=r.ramp_up_ms,
        ramp_down_ms=r.ramp_down_ms,
        polarity=Polarity(r.polarity),
        waveform=Waveform(r.waveform),
        pulse_frequency_hz=r.pulse_frequency_hz,
        duty_percent=r.duty_percent,
        start_step=fw.n,
    )
    fw.polarity = Polarity(r.polarity)
    fw.charge_sum = 0.0
    fw.clear_session_flags()
    fw.emit(EventCode.SESSION_STARTED, r.target_current_ua)
    fw.begin_contact_check(resume=False)
    return ack(r)


def _set_current(fw: Firmware, r: SetCurrent) -> list[Message]:
    m = fw.model
    if not m.min_current_ua <= r.target_current_ua <= m.max_current_ua:
        return nack(
            r,
            ErrorCode.OUT_OF_RANGE,
            Field.TARGET_CURRENT_UA,
            r.target_current_ua,
            m.min_current_ua,
            m.max_current_ua,
        )
    if not m.min_ramp_ms <= r.ramp_ms <= m.max_ramp_ms:
        return nack(r, ErrorCode.OUT_OF_RANGE, Field.RAMP_MS, r.ramp_ms, m.min_ramp_ms, m.max_ramp_ms)
    sp = fw.setpoint
    delta = abs(r.target_current_ua - sp)
    if delta * 1000.0 > m.slew_limit_ua_per_s * r.ramp_ms:
        fastest = math.ceil(delta * 1000.0 / m.slew_limit_ua_per_s)
        return nack(
            r, ErrorCode.SLEW_LIMIT, Field.RAMP_MS, r.ramp_ms, max(fastest, m.min_ramp_ms), m.max_ramp_ms
        )
    fw.change_setpoint(r.target_current_ua, r.ramp_ms)
    return ack(r)


def _pause(fw: Firmware, r: Pause) -> list[Message]:
    if fw.state in (S.RAMP_UP, S.HOLD, S.ADJUST, S.CONTACT_CHECK):
        fw.begin_pausing(fw.pause_rate())
    return ack(r)


def _resume(fw: Firmware, r: Resume) -> list[Message]:
    assert fw.session is not None
    refusal = _contact_nack(fw, r, fw.session.target_ua)
    if refusal is not None:
        return refusal
    fw.begin_contact_check(resume=True)
    return ack(r)


def _stop(fw: Firmware, r: Stop) -> list[Message]:
    if fw.session is not None and fw.state not in (S.RAMP_DOWN, S.IDLE, S.DONE, S.FAULT):
        fw.emit(EventCode.STOPPED, int(fw.charge))
        fw.end_session(EndReason.STOP, None)
    return ack(r)


def _abort(fw: Firmware, r: Abort) -> list[Message]:
    slew = float(fw.model.slew_limit_ua_per_s)
    if fw.session is None or fw.state in (S.IDLE, S.DONE, S.FAULT):
        return ack(r)
    if fw.state == S.RAMP_DOWN and fw.ramp.rate >= slew:
        return ack(r)  # already ramping down at the slew limit
    fw.emit(EventCode.ABORTED, int(fw.charge))
    fw.end_session(EndReason.ABORT, slew)
    return ack(r)


def _heartbeat(fw: Firmware, r: Heartbeat) -> list[Message]:
    return ack(r)


def _configure_telemetry(fw: Firmware, r: ConfigureTelemetry) -> list[Message]:
    if not 0 <= r.rate_hz <= fw.model.max_telemetry_hz:
        return nack(r, ErrorCode.OUT_OF_RANGE, Field.RATE_HZ, r.rate_hz, 0, fw.model.max_telemetry_hz)
    fw.telemetry.set_rate(r.rate_hz, fw.device_time_s)
    fw.emit(EventCode.TELEMETRY_CHANGED, r.rate_hz)
    return ack(r)


def _fetch_events(fw: Firmware, r: FetchEvents) -> list[Message]:
    return fw.ring.fetch(r.from_event_no, r.max_count)  # max_count 0-255 is the field's whole range


def _set_watchdog(fw: Firmware, r: SetWatchdog) -> list[Message]:
    m = fw.model
    if not m.min_watchdog_ms <= r.timeout_ms <= m.max_watchdog_ms:
        return nack(
            r, ErrorCode.OUT_OF_RANGE, Field.TIMEOUT_MS, r.timeout_ms, m.min_watchdog_ms, m.max_watchdog_ms
        )
    fw.watchdog_ms = r.timeout_ms
    fw.emit(EventCode.WATCHDOG_CHANGED, r.timeout_ms)
    return ack(r)


def _clear_fault(fw: Firmware, r: ClearFault) -> list[Message]:
    if fw.hardware_trip_latched():
        # the independent hardware latch is re-armed only by a restart (Reset or power cycle)
        return nack(r, ErrorCode.FAULT_LATCHED, Field.NONE)
    fw.clear_fault()
    return ack(r)


def _reset(fw: Firmware, r: Reset) -> list[Message]:
    fw.reboot_pending = True
    return ack(r)


HANDLERS: dict[type[Message], Handler] = {
    Identify: _identify,
    GetStatus: _get_status,
    OpenSession: _open_session,
    CheckContact: _check_contact,
    Start: _start,
    SetCurrent: _set_current,
    Pause: _pause,
    Resume: _resume,
    Stop: _stop,
    Abort: _abort,
    Heartbeat: _heartbeat,
    ConfigureTelemetry: _configure_telemetry,
    FetchEvents: _fetch_events,
    SetWatchdog: _set_watchdog,
    ClearFault: _clear_fault,
    Reset: _reset,
}
__all__ = ["HANDLERS", "ack", "flat", "handle", "nack"]
