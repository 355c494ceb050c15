"""Refusals (``docs/protocol.md`` §3.5, §4.2, §6; S12): every limit the identity states is enforced, and
every NACK names the request, the code, the field, the offending value and the allowed range, and changes
nothing.

Each refusal the suite provokes is a :class:`NackCase`: how to build the request from the identity, the
codes and field the spec allows for it, and the range the NACK must carry where the identity fixes it.
One checker (:func:`check_cases`) runs a list of cases and compares a StatusReport before and after each.
Requests that would start output if wrongly accepted are sent with the longest ramp the identity allows,
and an acceptance is followed by ``Abort`` at once, so a device that fails to enforce a limit never gets
near it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cobs.cobs import decode as cobs_decode

from iontodrive.protocol import (
    Abort,
    Ack,
    CheckContact,
    ConfigureTelemetry,
    ErrorCode,
    EventsReport,
    FetchEvents,
    Field,
    IdentityReport,
    Message,
    MessageType,
    Nack,
    Polarity,
    SetCurrent,
    SetWatchdog,
    Start,
    StatusReport,
    Waveform,
    WaveformSet,
)

from .. import frames
from ..probe import Probe, default_duration_ms, describe
from ..rule import NotApplicable, Rule, RuleFailed, expect, rule

_START_PAYLOAD = struct.Struct("<IIIIIBBHB")
_PROBE_MAX_UA = 50  # S3: the contact probe is at most 50 µA (§4.2 CheckContact)


@dataclass(frozen=True)
class NackCase:
    """One request the device must refuse, and what the refusal must say.

    ``build`` returns a message or raw frame bytes (for values the encoder cannot carry). ``minimum`` and
    ``maximum`` are the range the NACK must report (None: not fixed by the spec; then only
    ``minimum <= maximum`` and the value lying outside is checked, where ``outside`` is True).
    """

    what: str
    build: Callable[[Probe], Message | bytes]
    request_type: int
    codes: tuple[ErrorCode, ...]
    fields: tuple[Field, ...]
    value: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    outside: bool = True


# Status fields a refused request must leave as they were (measurements and the clock may move).
_STABLE = (
    "state",
    "flags",
    "polarity",
    "target_current_ua",
    "target_charge_uas",
    "session_id",
    "last_event_no",
    "watchdog_ms",
    "telemetry_hz",
)


def stable_status(status: StatusReport) -> dict[str, object]:
    """The status fields a refused request must leave as they were (§6)."""
    return {name: getattr(status, name) for name in _STABLE}


def _send_case(probe: Probe, case: NackCase) -> Message:
    built = case.build(probe)
    if isinstance(built, bytes):
        mark = probe.mark()
        probe.write(built)
        found = probe.await_reply(_seq_of(built), probe.reply_timeout_s, mark)
        if found is None:
            raise RuleFailed(f"{case.what}: no reply; the spec requires a NACK (§3.5)")
        return found.message
    return probe.request(built)


def _seq_of(raw: bytes) -> int:
    body: bytes = cobs_decode(raw[:-1])
    return body[2] | (body[3] << 8)


def check_case(probe: Probe, case: NackCase) -> None:
    """Send one case; fail the rule unless it is refused as the case says and changes nothing."""
    before = probe.status()
    reply = _send_case(probe, case)
    if isinstance(reply, Ack):
        probe.request(Abort())  # the device accepted what it must refuse: stop whatever it started
        raise RuleFailed(f"{case.what} was accepted (Ack); it must be refused")
    if not isinstance(reply, Nack):
        raise RuleFailed(f"{case.what} was answered by {describe(reply)}; expected a Nack")
    got = describe(reply)
    if reply.code in _CONTACT_CODES and case.request_type == MessageType.START:
        raise RuleFailed(
            f"{case.what} was refused for its contact ({got}) before its limit could be judged: connect the "
            "load of docs/conformance.md §3"
        )
    expect(
        reply.request_type == case.request_type,
        f"{case.what}: Nack names request type 0x{reply.request_type:02X}, not 0x{case.request_type:02X}: "
        f"{got}",
    )
    expect(
        reply.code in case.codes, f"{case.what}: code {reply.code.name}, expected {_names(case.codes)}: {got}"
    )
    expect(
        reply.field in case.fields,
        f"{case.what}: the Nack names field {reply.field.name}, expected {_names(case.fields)}: {got}",
    )
    if case.value is not None:
        expect(reply.value == case.value, f"{case.what}: value {reply.value}, expected {case.value}: {got}")
    if case.minimum is not None:
        expect(
            reply.minimum == case.minimum,
            f"{case.what}: minimum {reply.minimum}, expected {case.minimum}: {got}",
        )
    if case.maximum is not None:
        expect(
            reply.maximum == case.maximum,
            f"{case.what}: maximum {reply.maximum}, expected {case.maximum}: {got}",
        )
    if case.outside and case.value is not None:
        expect(reply.minimum <= reply.maximum, f"{case.what}: an empty range: {got}")
        expect(
            not reply.minimum <= case.value <= reply.maximum,
            f"{case.what}: the value lies inside the range the Nack reports: {got}",
        )
    after = probe.status()
    changed = {
        k: (v, stable_status(after)[k])
        for k, v in stable_status(before).items()
        if stable_status(after)[k] != v
    }
    expect(not changed, f"{case.what} was refused but changed {changed} (a refusal changes nothing, §6)")


def check_cases(probe: Probe, cases: Sequence[NackCase]) -> str:
    """Run every case (see :func:`check_case`); the evidence lists them."""
    if not cases:
        raise NotApplicable("no case applies to this device")
    for case in cases:
        check_case(probe, case)
    return f"{len(cases)} refusals, each naming its field and range: " + "; ".join(c.what for c in cases)


def _names(items: Sequence[ErrorCode | Field]) -> str:
    return " or ".join(item.name for item in items)


def _safe_start(probe: Probe, **changes: int) -> Start:
    """A Start the device would accept but for ``changes``: longest ramps, so that a wrong acceptance
    makes almost no current before the suite aborts it."""
    ident = probe.ident
    base = probe.session_request(ramp_up_ms=ident.max_ramp_ms, ramp_down_ms=ident.max_ramp_ms)
    values = {
        "target_current_ua": base.target_current_ua,
        "dose_uas": base.dose_uas,
        "duration_ms": base.duration_ms,
        "ramp_up_ms": base.ramp_up_ms,
        "ramp_down_ms": base.ramp_down_ms,
        "polarity": int(base.polarity),
        "waveform": int(base.waveform),
        "pulse_frequency_hz": 0,
        "duty_percent": 0,
    }
    values.update(changes)
    return Start(
        values["target_current_ua"],
        values["dose_uas"],
        values["duration_ms"],
        values["ramp_up_ms"],
        values["ramp_down_ms"],
        Polarity(values["polarity"]),
        Waveform(values["waveform"]),
        values["pulse_frequency_hz"],
        values["duty_percent"],
    )


def _start_with(**changes: int) -> Callable[[Probe], Message]:
    """A case builder: :func:`_safe_start` with these changes."""
    return lambda p: _safe_start(p, **changes)


def _constant(message: Message) -> Callable[[Probe], Message]:
    return lambda p: message


def _contact_probe(probe_ua: int) -> Callable[[Probe], Message]:
    return lambda p: CheckContact(probe_ua, p.test_current_ua)


def _start_raw(probe: Probe, **changes: int) -> bytes:
    """:func:`_safe_start` as a raw frame, so enumerated fields can hold values with no meaning."""
    start = _safe_start(probe)
    values = [
        start.target_current_ua,
        start.dose_uas,
        start.duration_ms,
        start.ramp_up_ms,
        start.ramp_down_ms,
        int(start.polarity),
        int(start.waveform),
        start.pulse_frequency_hz,
        start.duty_percent,
    ]
    names = [
        "target_current_ua",
        "dose_uas",
        "duration_ms",
        "ramp_up_ms",
        "ramp_down_ms",
        "polarity",
        "waveform",
        "pulse_frequency_hz",
        "duty_percent",
    ]
    for name, value in changes.items():
        values[names.index(name)] = value
    return frames.frame(MessageType.START, probe.next_seq(), _START_PAYLOAD.pack(*values))


_OOR = (ErrorCode.OUT_OF_RANGE,)
_CONTACT_CODES = frozenset({ErrorCode.CONTACT_HIGH, ErrorCode.CONTACT_LOW, ErrorCode.CONTACT_OPEN})
DOSE_PROBE_HEADROOM = 1.2  # the dose-cap probe's current delivers 20 % more than the cap in max_duration_ms


def dose_probe_ua(ident: IdentityReport) -> int:
    """The current at which a dose just above the cap could be delivered within ``max_duration_ms``
    (longest ramps), with headroom, so that only the cap can be the reason to refuse it; at most
    ``max_current_ua``. A limit probe: if the device wrongly accepts it, the suite aborts at once."""
    on_s = max(1.0, (ident.max_duration_ms - 2 * ident.max_ramp_ms) / 1000)
    needed = DOSE_PROBE_HEADROOM * (ident.dose_cap_uas + 1) / on_s
    return max(1, min(ident.max_current_ua, int(needed) + 1))


def dose_cap_binds(ident: IdentityReport) -> bool:
    """True when :func:`dose_probe_ua` could deliver more than the cap, so the NACK's maximum must be the "
    "cap."""
    on_s = (ident.max_duration_ms - 2 * ident.max_ramp_ms) / 1000
    return dose_probe_ua(ident) * on_s > ident.dose_cap_uas * DOSE_PROBE_HEADROOM * 0.99


def start_limit_cases(ident: IdentityReport) -> list[NackCase]:
    """Start's limits from the identity (S12): current, dose cap, duration, ramps, polarity."""
    top = ident.max_current_ua
    cases = [
        NackCase(
            f"Start target {top + 1} uA (max_current_ua {top})",
            lambda p: _safe_start(p, target_current_ua=top + 1),
            MessageType.START,
            _OOR,
            (Field.TARGET_CURRENT_UA,),
            top + 1,
            maximum=top,
        ),
        NackCase(
            f"Start target {ident.min_current_ua - 1} uA (min_current_ua {ident.min_current_ua})",
            lambda p: _safe_start(p, target_current_ua=ident.min_current_ua - 1),
            MessageType.START,
            _OOR,
            (Field.TARGET_CURRENT_UA,),
            ident.min_current_ua - 1,
            ident.min_current_ua,
            top,
        ),
        NackCase(
            f"Start dose {ident.dose_cap_uas + 1} uA*s at {dose_probe_ua(ident)} uA (dose_cap_uas "
            f"{ident.dose_cap_uas})",
            lambda p: _safe_start(
                p, target_current_ua=dose_probe_ua(ident), dose_uas=ident.dose_cap_uas + 1, duration_ms=0
            ),
            MessageType.START,
            _OOR,
            (Field.DOSE_UAS,),
            ident.dose_cap_uas + 1,
            maximum=ident.dose_cap_uas if dose_cap_binds(ident) else None,
        ),
        NackCase(
            f"Start duration {ident.max_duration_ms + 1} ms (max_duration_ms {ident.max_duration_ms})",
            lambda p: _safe_start(p, duration_ms=ident.max_duration_ms + 1),
            MessageType.START,
            _OOR,
            (Field.DURATION_MS,),
            ident.max_duration_ms + 1,
        ),
    ]
    for name, fld in (("ramp_up_ms", Field.RAMP_UP_MS), ("ramp_down_ms", Field.RAMP_DOWN_MS)):
        for value in (ident.min_ramp_ms - 1, ident.max_ramp_ms + 1):
            if value < 0:
                continue
            cases.append(
                NackCase(
                    f"Start {name} {value} (ramps {ident.min_ramp_ms}..{ident.max_ramp_ms})",
                    _start_with(**{name: value}),
                    MessageType.START,
                    _OOR,
                    (fld,),
                    value,
                    ident.min_ramp_ms,
                    ident.max_ramp_ms,
                )
            )
    cases.append(
        NackCase(
            "Start polarity NONE",
            lambda p: _safe_start(p, polarity=int(Polarity.NONE)),
            MessageType.START,
            _OOR,
            (Field.POLARITY,),
            int(Polarity.NONE),
        )
    )
    return cases


def pulse_cases(ident: IdentityReport) -> list[NackCase]:
    """Pulsed DC: refused as UNSUPPORTED on a DC-only model; frequency and duty ranges otherwise."""
    pulsed = int(Waveform.PULSED_DC)
    if not ident.waveforms & WaveformSet.PULSED_DC:
        return [
            NackCase(
                "Start PULSED_DC on a model without it",
                lambda p: _safe_start(p, waveform=pulsed, pulse_frequency_hz=100, duty_percent=50),
                MessageType.START,
                (ErrorCode.UNSUPPORTED,),
                (Field.WAVEFORM,),
                pulsed,
                outside=False,
            )
        ]
    lo, hi = ident.min_pulse_frequency_hz, ident.max_pulse_frequency_hz
    cases = [
        NackCase(
            f"Start pulse frequency {f} Hz (pulse {lo}..{hi} Hz)",
            _start_with(waveform=pulsed, pulse_frequency_hz=f, duty_percent=50),
            MessageType.START,
            _OOR,
            (Field.PULSE_FREQUENCY_HZ,),
            f,
            lo,
            hi,
        )
        for f in (lo - 1, hi + 1)
        if 0 <= f <= 0xFFFF
    ]
    dlo, dhi = ident.min_duty_percent, ident.max_duty_percent
    cases.extend(
        NackCase(
            f"Start duty {d} % (duty {dlo}..{dhi} %)",
            _start_with(waveform=pulsed, pulse_frequency_hz=lo, duty_percent=d),
            MessageType.START,
            _OOR,
            (Field.DUTY_PERCENT,),
            d,
            dlo,
            dhi,
        )
        for d in (dlo - 1, dhi + 1)
        if 0 <= d <= 0xFF
    )
    return cases


def inconsistent_cases(ident: IdentityReport) -> list[NackCase]:
    """Fields that contradict each other (§6 INCONSISTENT)."""
    inc = (ErrorCode.INCONSISTENT,)
    ramps = 2 * ident.max_ramp_ms
    return [
        NackCase(
            "Start with both dose and duration",
            lambda p: _safe_start(p, dose_uas=60_000),
            MessageType.START,
            inc,
            (Field.DOSE_UAS, Field.DURATION_MS),
        ),
        NackCase(
            "Start with neither dose nor duration",
            lambda p: _safe_start(p, dose_uas=0, duration_ms=0),
            MessageType.START,
            inc,
            (Field.DOSE_UAS, Field.DURATION_MS),
        ),
        NackCase(
            f"Start duration {ramps - 1} ms, shorter than its ramps ({ramps} ms)",
            lambda p: _safe_start(p, duration_ms=ramps - 1),
            MessageType.START,
            inc,
            (Field.DURATION_MS, Field.RAMP_UP_MS, Field.RAMP_DOWN_MS),
            ramps - 1,
        ),
        NackCase(
            "Start DC with a pulse frequency",
            lambda p: _safe_start(p, pulse_frequency_hz=100),
            MessageType.START,
            inc,
            (Field.PULSE_FREQUENCY_HZ, Field.WAVEFORM),
            100,
            outside=False,
        ),
    ]


def setting_cases(ident: IdentityReport) -> list[NackCase]:
    """Watchdog, telemetry and contact-probe limits."""
    lo, hi = ident.min_watchdog_ms, ident.max_watchdog_ms
    top = ident.max_current_ua
    cases = [
        NackCase(
            f"SetWatchdog {v} ms (watchdog {lo}..{hi} ms)",
            _constant(SetWatchdog(v)),
            MessageType.SET_WATCHDOG,
            _OOR,
            (Field.TIMEOUT_MS,),
            v,
            lo,
            hi,
        )
        for v in (lo - 1, hi + 1)
        if 0 <= v <= 0xFFFF
    ]
    if ident.max_telemetry_hz < 0xFFFF:
        rate = ident.max_telemetry_hz + 1
        cases.append(
            NackCase(
                f"ConfigureTelemetry {rate} Hz (max_telemetry_hz {ident.max_telemetry_hz})",
                lambda p: ConfigureTelemetry(rate),
                MessageType.CONFIGURE_TELEMETRY,
                _OOR,
                (Field.RATE_HZ,),
                rate,
                0,
                ident.max_telemetry_hz,
            )
        )
    cases.extend(
        NackCase(
            f"CheckContact probe {v} uA (at most {_PROBE_MAX_UA})",
            _contact_probe(v),
            MessageType.CHECK_CONTACT,
            _OOR,
            (Field.PROBE_CURRENT_UA,),
            v,
            maximum=_PROBE_MAX_UA,
        )
        for v in (0, _PROBE_MAX_UA + 1)
    )
    cases.append(
        NackCase(
            f"CheckContact target {top + 1} uA",
            lambda p: CheckContact(_PROBE_MAX_UA, top + 1),
            MessageType.CHECK_CONTACT,
            _OOR,
            (Field.TARGET_CURRENT_UA,),
            top + 1,
            maximum=top,
        )
    )
    return cases


def decode_cases(ident: IdentityReport) -> list[NackCase]:
    """Frames with a good CRC that fail the type, length or value checks (§3.5)."""
    unused = 0x3F
    return [
        NackCase(
            f"request type 0x{unused:02X} (not a request of this version)",
            lambda p: frames.frame(unused, p.next_seq()),
            unused,
            (ErrorCode.UNKNOWN_REQUEST,),
            (Field.NONE,),
            unused,
            outside=False,
        ),
        NackCase(
            "a reply type (Ack, 0x80) sent as a request",
            lambda p: frames.frame(MessageType.ACK, p.next_seq(), bytes([MessageType.HEARTBEAT])),
            MessageType.ACK,
            (ErrorCode.UNKNOWN_REQUEST,),
            (Field.NONE,),
            int(MessageType.ACK),
            outside=False,
        ),
        NackCase(
            "SetWatchdog with a 3-byte payload (layout: 2)",
            lambda p: frames.frame(MessageType.SET_WATCHDOG, p.next_seq(), b"\xe8\x03\x00"),
            MessageType.SET_WATCHDOG,
            (ErrorCode.BAD_LENGTH,),
            (Field.NONE,),
            3,
            2,
            2,
        ),
        NackCase(
            "Start with polarity byte 7 (no such Polarity)",
            lambda p: _start_raw(p, polarity=7),
            MessageType.START,
            _OOR,
            (Field.POLARITY,),
            7,
        ),
        NackCase(
            "Start with waveform byte 9 (no such Waveform)",
            lambda p: _start_raw(p, waveform=9),
            MessageType.START,
            _OOR,
            (Field.WAVEFORM,),
            9,
        ),
    ]


@rule(
    "LIMIT-START",
    "§4.2, §6, S12",
    "Start outside the identity's limits is refused with field, value and range",
    needs_load=True,
)
def limit_start(probe: Probe) -> str:
    return check_cases(probe, start_limit_cases(probe.ident))


@rule(
    "LIMIT-PULSE",
    "§4.2, §6",
    "pulsed DC is UNSUPPORTED where the identity lacks it, else its ranges hold",
    needs_load=True,
)
def limit_pulse(probe: Probe) -> str:
    return check_cases(probe, pulse_cases(probe.ident))


@rule(
    "LIMIT-SETTINGS",
    "§4.2, §6, S10, S14, S3",
    "watchdog, telemetry and probe limits refused with their range",
)
def limit_settings(probe: Probe) -> str:
    return check_cases(probe, setting_cases(probe.ident))


@rule(
    "NACK-INCONSISTENT",
    "§6",
    "contradicting Start fields are refused INCONSISTENT, naming one of them",
    needs_load=True,
)
def nack_inconsistent(probe: Probe) -> str:
    return check_cases(probe, inconsistent_cases(probe.ident))


@rule(
    "NACK-DECODE", "§3.5, §6", "unknown type, wrong length, undefined enum value: NACKed naming what is wrong"
)
def nack_decode(probe: Probe) -> str:
    return check_cases(probe, decode_cases(probe.ident))


@rule(
    "LIMIT-BOUNDS-ACCEPTED", "§4.2, S10, S14", "the identity's own watchdog and telemetry bounds are accepted"
)
def limit_bounds_accepted(probe: Probe) -> str:
    ident = probe.ident
    for value in (ident.min_watchdog_ms, ident.max_watchdog_ms):
        probe.ack(SetWatchdog(value))
        got = probe.status().watchdog_ms
        expect(got == value, f"SetWatchdog({value}) acknowledged but the status says {got} ms")
    probe.ack(
        SetWatchdog(2000 if ident.min_watchdog_ms <= 2000 <= ident.max_watchdog_ms else ident.min_watchdog_ms)
    )
    probe.ack(ConfigureTelemetry(0))
    probe.ack(ConfigureTelemetry(ident.max_telemetry_hz))
    probe.ack(ConfigureTelemetry(0))
    return (
        f"SetWatchdog {ident.min_watchdog_ms} and {ident.max_watchdog_ms} ms, ConfigureTelemetry 0 and "
        f"{ident.max_telemetry_hz} Hz accepted"
    )


@rule(
    "EVENTS-FETCH-ZERO",
    "§4.2 FetchEvents",
    "FetchEvents with max_count 0 (in its range 0-255) is answered, count 0",
)
def events_fetch_zero(probe: Probe) -> str:
    reply = probe.request(FetchEvents(0, 0))
    if not isinstance(reply, EventsReport):
        raise RuleFailed(f"FetchEvents(0, max_count=0) was answered by {describe(reply)}; §4.2 allows 0")
    expect(reply.count == 0, f"EventsReport count {reply.count} for max_count 0")
    return "EventsReport with count 0"


def session_cases(ident: IdentityReport, setpoint_ua: int) -> list[NackCase]:
    """SetCurrent out of range during a session (the current limits of the identity, the ramp range)."""
    top = ident.max_current_ua
    return [
        NackCase(
            f"SetCurrent {top + 1} uA (max_current_ua {top})",
            lambda p: SetCurrent(top + 1, ident.max_ramp_ms),
            MessageType.SET_CURRENT,
            _OOR,
            (Field.TARGET_CURRENT_UA,),
            top + 1,
            maximum=top,
        ),
        NackCase(
            f"SetCurrent {ident.min_current_ua - 1} uA (min_current_ua {ident.min_current_ua})",
            lambda p: SetCurrent(ident.min_current_ua - 1, ident.max_ramp_ms),
            MessageType.SET_CURRENT,
            _OOR,
            (Field.TARGET_CURRENT_UA,),
            ident.min_current_ua - 1,
            ident.min_current_ua,
            top,
        ),
        NackCase(
            f"SetCurrent ramp {ident.min_ramp_ms - 1} ms (ramps {ident.min_ramp_ms}..{ident.max_ramp_ms})",
            lambda p: SetCurrent(setpoint_ua, ident.min_ramp_ms - 1),
            MessageType.SET_CURRENT,
            _OOR,
            (Field.RAMP_MS,),
            ident.min_ramp_ms - 1,
            ident.min_ramp_ms,
            ident.max_ramp_ms,
        ),
        NackCase(
            f"SetCurrent ramp {ident.max_ramp_ms + 1} ms",
            lambda p: SetCurrent(setpoint_ua, ident.max_ramp_ms + 1),
            MessageType.SET_CURRENT,
            _OOR,
            (Field.RAMP_MS,),
            ident.max_ramp_ms + 1,
            ident.min_ramp_ms,
            ident.max_ramp_ms,
        ),
    ]


@rule(
    "LIMIT-SETCURRENT",
    "§4.2 SetCurrent, §6, S12",
    "during a session, SetCurrent outside the limits is refused with its range",
    needs_load=True,
)
def limit_setcurrent(probe: Probe) -> str:
    start = probe.start()
    return check_cases(probe, session_cases(probe.ident, start.target_current_ua))


@rule(
    "LIMIT-SLEW",
    "§6 SLEW_LIMIT, S1",
    "a Start whose ramp would be faster than slew_limit_ua_per_s is refused SLEW_LIMIT with the shortest "
    "ramp",
    needs_load=True,
)
def limit_slew(probe: Probe) -> str:
    ident = probe.ident
    fastest_ua_per_s = ident.max_current_ua * 1000 / max(1, ident.min_ramp_ms)
    if fastest_ua_per_s <= ident.slew_limit_ua_per_s:
        raise NotApplicable(
            "no request within the identity's limits can exceed the slew limit: max_current_ua / "
            "min_ramp_ms "
            f"= {fastest_ua_per_s:.0f} uA/s <= {ident.slew_limit_ua_per_s} uA/s"
        )
    target = min(ident.max_current_ua, ident.slew_limit_ua_per_s * ident.min_ramp_ms // 1000 + 1)
    shortest = -(-target * 1000 // ident.slew_limit_ua_per_s)
    duration = default_duration_ms(ident, target, ident.min_ramp_ms + ident.max_ramp_ms)
    case = NackCase(
        f"Start {target} uA with ramp_up_ms {ident.min_ramp_ms} (slew limit {ident.slew_limit_ua_per_s} "
        "uA/s)",
        lambda p: Start(target, 0, duration, ident.min_ramp_ms, ident.max_ramp_ms, Polarity.CATHODE),
        MessageType.START,
        (ErrorCode.SLEW_LIMIT,),
        (Field.RAMP_UP_MS,),
        ident.min_ramp_ms,
        shortest,
        outside=False,
    )
    return check_cases(probe, [case])


RULES: tuple[Rule, ...] = (
    limit_start,
    limit_pulse,
    limit_settings,
    limit_bounds_accepted,
    nack_inconsistent,
    nack_decode,
    events_fetch_zero,
    limit_setcurrent,
    limit_slew,
)
