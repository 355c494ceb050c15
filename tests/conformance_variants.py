"""Deliberately broken simulated devices, for proving that the conformance suite catches each fault.

Every variant is the real simulator (:class:`firmware_sim.Device`) with one thing wrong, made by
subclassing or wrapping -- ``firmware_sim`` itself is never edited. Three ways in:

* :class:`OutputRewriter` rewrites the frames the device sends (a CRC in the wrong byte order, an
  identity that under-reports a limit, a NACK without its field, duplicate replies);
* :class:`RequestInterceptor` sees each decoded request before the device does and may answer it
  itself or change it (a polarity change applied during output, Abort treated as Stop, a reply cache
  keyed on the sequence number alone, no cache at all);
* firmware hooks: the device's ``Firmware`` object gets a subclass that overrides one method (a step
  instead of a ramp) or the device feeds its own watchdog (a watchdog that never fires).

:class:`VirtualLink` connects any of them to a :class:`~iontodrive.conformance.Probe` on a virtual clock:
a read that finds nothing advances the device by its timeout (at most 20 ms) at once, so the suite's
seconds of device time cost no wall time.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from cobs.cobs import DecodeError as CobsDecodeError
from cobs.cobs import decode as cobs_decode
from cobs.cobs import encode as cobs_encode

from firmware_sim import Device, VirtualClock
from firmware_sim.firmware import Firmware
from firmware_sim.triggers import Trigger
from iontodrive.protocol import (
    DEFAULT_TELEMETRY_HZ,
    DEFAULT_WATCHDOG_MS,
    SAFETY_REQUESTS,
    Abort,
    Ack,
    CheckContact,
    ConfigureTelemetry,
    ContactReport,
    ContactVerdict,
    DecodeError,
    DecodeErrorKind,
    Decoder,
    DeviceState,
    ErrorCode,
    Event,
    EventCode,
    Field,
    Frame,
    IdentityReport,
    Message,
    MessageType,
    Nack,
    OpenSession,
    ReplyCache,
    Reset,
    Resume,
    SetCurrent,
    SetWatchdog,
    Start,
    StatusFlags,
    StatusReport,
    Stop,
    Telemetry,
    Waveform,
    encode,
)

READ_STEP_S = 0.02
_PROBE_UA = 50


class VirtualLink:
    """A byte link to an in-process device on a virtual clock (what the probe needs: write, read)."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.clock = VirtualClock()
        self.clock.add_listener(device.advance)

    def write(self, data: bytes) -> None:
        self.device.receive(bytes(data))

    def read(self, timeout_s: float | None = None) -> bytes:
        out = self.device.read_output()
        if out:
            return out
        wait = READ_STEP_S if timeout_s is None else min(timeout_s, READ_STEP_S)
        if wait <= 0:
            return b""
        self.clock.advance(wait)
        return self.device.read_output()


# ------------------------------------------------------------------------------------ output rewriting


class OutputRewriter(Device):
    """A device whose outgoing frames pass through :meth:`rewrite` (body without CRC -> new frames)."""

    def read_output(self) -> bytes:
        data = super().read_output()
        if not data:
            return data
        out = bytearray()
        for part in data.split(b"\x00")[:-1]:
            if not part:
                continue
            try:
                body = cobs_decode(part)
            except CobsDecodeError:
                out += part + b"\x00"
                continue
            for new in self.rewrite(body):
                out += new
        return bytes(out)

    def rewrite(self, body: bytes) -> list[bytes]:
        """Return the frames (encoded, delimited) to send instead of the frame with this body."""
        return [cobs_encode(body) + b"\x00"]

    @staticmethod
    def decoded(body: bytes) -> Frame | None:
        items = Decoder().feed(cobs_encode(body) + b"\x00")
        return items[0] if items and isinstance(items[0], Frame) else None


class CrcLittleEndian(OutputRewriter):
    """Sends its CRC least significant byte first (the classic byte-order mistake)."""

    def rewrite(self, body: bytes) -> list[bytes]:
        return [cobs_encode(body[:-2] + body[-2:][::-1]) + b"\x00"]


class IdentityUnderReports(OutputRewriter):
    """Reports a limit below the one the firmware enforces, so a value above the reported limit is
    accepted: the limit of the identity is not enforced."""

    limit_field: ClassVar[str] = "max_current_ua"
    lowered_by: ClassVar[float] = 0.25

    def rewrite(self, body: bytes) -> list[bytes]:
        frame = self.decoded(body)
        if frame is not None and isinstance(frame.message, IdentityReport):
            value = getattr(frame.message, self.limit_field)
            fake = replace(frame.message, **{self.limit_field: int(value * (1 - self.lowered_by))})
            return [encode(fake, frame.seq)]
        return super().rewrite(body)


class DoseCapUnderReported(IdentityUnderReports):
    limit_field = "dose_cap_uas"


class NackWithoutField(OutputRewriter):
    """Every NACK says field NONE."""

    def rewrite(self, body: bytes) -> list[bytes]:
        frame = self.decoded(body)
        if frame is not None and isinstance(frame.message, Nack) and frame.message.field != Field.NONE:
            return [encode(replace(frame.message, field=Field.NONE), frame.seq)]
        return super().rewrite(body)


class DuplicateReplies(OutputRewriter):
    """Sends every reply twice."""

    def rewrite(self, body: bytes) -> list[bytes]:
        frame = self.decoded(body)
        once = super().rewrite(body)
        if frame is not None and frame.seq != 0:
            return once + once
        return once


class EventNumbersSkip(OutputRewriter):
    """Numbers its events 1, 3, 5, ... (a gap after every event)."""

    def rewrite(self, body: bytes) -> list[bytes]:
        frame = self.decoded(body)
        if frame is not None and isinstance(frame.message, Event):
            return [encode(replace(frame.message, event_no=2 * frame.message.event_no - 1))]
        return super().rewrite(body)


# ------------------------------------------------------------------------------- request interception


class RequestInterceptor(Device):
    """A device that sees each decoded request first: :meth:`intercept` returns the bytes to answer with
    (the device itself never sees the request), a replacement request, or None to pass it on unchanged.
    Runs of bytes that do not decode reach the device as they came, so it judges them itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = b""

    def receive(self, data: bytes) -> None:
        *parts, self._pending = (self._pending + bytes(data)).split(b"\x00")
        for part in parts:
            items = Decoder().feed(part + b"\x00") if part else []
            frame = items[0] if items and isinstance(items[0], Frame) else None
            if frame is None:
                Device.receive(self, part + b"\x00")
                continue
            result = self.intercept(frame)
            if isinstance(result, bytes):
                self.firmware.feed_watchdog()
                self._send(result)
            elif isinstance(result, Message):
                self.pass_on(result, frame.seq)
            else:
                self.pass_on(frame.message, frame.seq)

    def pass_on(self, message: Message, seq: int) -> None:
        """Hand a request to the real device."""
        Device.receive(self, encode(message, seq))

    def intercept(self, frame: Frame) -> bytes | Message | None:
        return None


class PolarityAppliedDuringOutput(RequestInterceptor):
    """A Start with the other polarity during output is acknowledged and the polarity switched at once."""

    def intercept(self, frame: Frame) -> bytes | Message | None:
        message = frame.message
        fw = self.firmware
        output = fw.state in (DeviceState.RAMP_UP, DeviceState.HOLD, DeviceState.ADJUST)
        if isinstance(message, Start) and output and message.polarity != fw.polarity:
            fw.polarity = message.polarity
            return encode(Ack(int(MessageType.START)), frame.seq)
        return None


class AbortIsStop(RequestInterceptor):
    """Abort ramps down at the session's ramp-down rate instead of the slew limit."""

    def intercept(self, frame: Frame) -> bytes | Message | None:
        if isinstance(frame.message, Abort):
            reply = self.firmware.handle(Stop())
            if isinstance(reply[0], Ack):
                return encode(Ack(int(MessageType.ABORT)), frame.seq)
        return None


class CacheBySeqOnly(RequestInterceptor):
    """Remembers answers by sequence number alone: a new request reusing a number gets the old answer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._answers: dict[int, bytes] = {}

    def intercept(self, frame: Frame) -> bytes | Message | None:
        known = self._answers.get(frame.seq)
        if known is not None:
            return known
        before = len(self._tx)
        self.pass_on(frame.message, frame.seq)
        self._answers[frame.seq] = bytes(self._tx[before:])
        return b""


class _Forgetful(ReplyCache):
    __slots__ = ()

    def lookup(self, seq: int, request: Message) -> bytes | None:
        return None


class NoReplyCache(Device):
    """Executes every retry again (no memory of answers)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cache = _Forgetful(64)


class RefusalChangesWatchdog(RequestInterceptor):
    """A SetWatchdog above the maximum is refused, but the watchdog is set to the maximum anyway."""

    def intercept(self, frame: Frame) -> bytes | Message | None:
        message = frame.message
        if isinstance(message, SetWatchdog) and message.timeout_ms > self.model.max_watchdog_ms:
            self.pass_on(message, frame.seq)
            self.firmware.watchdog_ms = self.model.max_watchdog_ms
            return b""
        return None


class TelemetryAtHalfRate(RequestInterceptor):
    """Sends telemetry at half the rate it was asked for."""

    def intercept(self, frame: Frame) -> bytes | Message | None:
        message = frame.message
        if isinstance(message, ConfigureTelemetry) and message.rate_hz > DEFAULT_TELEMETRY_HZ:
            return ConfigureTelemetry(message.rate_hz // 2)
        return None


# ------------------------------------------------------------------------------------- firmware hooks


class WatchdogNeverFires(Device):
    """The host watchdog is fed before every advance: silence never trips it."""

    def advance(self, session_dt_s: float, link_dt_s: float | None = None) -> None:
        self.firmware.feed_watchdog()
        super().advance(session_dt_s, link_dt_s)


class _SteppingFirmware(Firmware):
    """Firmware whose ramps up are steps (every rise at an effectively infinite rate)."""

    __slots__ = ()

    def start_ramp(self, goal: float, rate: float, settle: bool = False) -> None:
        if goal > self.setpoint and goal > _PROBE_UA:  # the contact probe's own ramp stays as it is
            rate = 1e12
        super().start_ramp(goal, rate, settle)


class StepInsteadOfRamp(Device):
    """Start (and Resume) step the output to the target instead of ramping."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.firmware.__class__ = _SteppingFirmware


class _StopStepsFirmware(Firmware):
    __slots__ = ()

    def end_session(self, reason: Any, rate: float | None) -> None:
        super().end_session(reason, 1e12)


class StopStepsToZero(Device):
    """Stop, Abort and the end of a session cut the output in one step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.firmware.__class__ = _StopStepsFirmware


class ResetKeepsWatchdog(RequestInterceptor):
    """Reset restarts the firmware but keeps the watchdog timeout it had (S15 broken)."""

    def intercept(self, frame: Frame) -> bytes | Message | None:
        if isinstance(frame.message, Reset) and self.firmware.watchdog_ms != DEFAULT_WATCHDOG_MS:
            keep = self.firmware.watchdog_ms
            self.pass_on(frame.message, frame.seq)
            self.firmware.watchdog_ms = keep
            return b""
        return None


# ------------------------------------------------------------------------------- version-2 variants


class SharedCacheAcrossHosts(RequestInterceptor):
    """OpenSession does not start a fresh memory of answers: a second host numbering its requests as
    the first did is answered from the first host's memory (the flaw of version 1)."""

    def intercept(self, frame: Frame) -> bytes | Message | None:
        if isinstance(frame.message, OpenSession):
            replies = self.firmware.handle(frame.message)
            encoded = encode(replies[0], frame.seq)
            self._cache.store(frame.seq, frame.message, encoded)
            self._flush_outbox()
            return encoded
        return None


class SafetyFromCache(RequestInterceptor):
    """Stop, Abort and Pause repeated with a remembered number and bytes are answered from memory and
    not executed (version 1's rule)."""

    def intercept(self, frame: Frame) -> bytes | Message | None:
        message = frame.message
        if message.__class__ not in SAFETY_REQUESTS:
            return None
        cached = self._cache.lookup(frame.seq, message)
        if cached is not None:
            return cached
        before = len(self._tx)
        self.pass_on(message, frame.seq)
        self._cache.store(frame.seq, message, bytes(self._tx[before:]))
        return b""


class NoVersionRefusal(Device):
    """Drops version-1 requests silently instead of answering the version refusal."""

    def _on_decode_error(self, error: DecodeError) -> None:
        if error.kind is DecodeErrorKind.WRONG_VERSION:
            return
        super()._on_decode_error(error)


class EventStateBefore(OutputRewriter):
    """Stamps each event (but STATE_CHANGED) with the state *before* its reaction, as version 1 did."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._state = DeviceState.IDLE

    def rewrite(self, body: bytes) -> list[bytes]:
        frame = self.decoded(body)
        if frame is None or not isinstance(frame.message, Event) or frame.message.replayed:
            return super().rewrite(body)
        event = frame.message
        if event.code == EventCode.STATE_CHANGED:
            self._state = event.state
            return super().rewrite(body)
        return [encode(replace(event, state=self._state))]


class MinCurrentOverReported(IdentityUnderReports):
    """Reports twice the minimum current it enforces: a target between the two is accepted."""

    limit_field = "min_current_ua"
    lowered_by = -1.0


class ContactCheckDuringOutput(RequestInterceptor):
    """Answers CheckContact with a measurement while output flows (the table says BAD_STATE)."""

    def intercept(self, frame: Frame) -> bytes | Message | None:
        if isinstance(frame.message, CheckContact) and self.firmware.state in (
            DeviceState.RAMP_UP,
            DeviceState.HOLD,
            DeviceState.ADJUST,
        ):
            return encode(ContactReport(1000, ContactVerdict.OK, 200, 10_000, 50), frame.seq)
        return None


class SlewUnderReported(IdentityUnderReports):
    """Reports a tenth of the slew limit it enforces: a ramp faster than the reported limit is accepted."""

    limit_field = "slew_limit_ua_per_s"
    lowered_by = 0.9


class OffsetAtZeroOutput(OutputRewriter):
    """Reports the measurement chain's offset (7 uA) instead of 0 while the output is disabled (§4.3)."""

    def rewrite(self, body: bytes) -> list[bytes]:
        frame = self.decoded(body)
        if (
            frame is not None
            and isinstance(frame.message, Telemetry | StatusReport)
            and frame.message.setpoint_ua == 0
            and frame.message.state in (DeviceState.IDLE, DeviceState.DONE, DeviceState.PAUSED)
        ):
            return [encode(replace(frame.message, measured_ua=7), frame.seq)]
        return super().rewrite(body)


# ---------------------------------------------------------------- variants only a load fixture exposes


class SetCurrentInFault(RequestInterceptor):
    """Accepts SetCurrent while a fault is latched (the table says FAULT_LATCHED) and takes the new target."""

    def intercept(self, frame: Frame) -> bytes | Message | None:
        fw = self.firmware
        if isinstance(frame.message, SetCurrent) and fw.state == DeviceState.FAULT and fw.session is not None:
            fw.session.target_ua = frame.message.target_current_ua
            return encode(Ack(int(MessageType.SET_CURRENT)), frame.seq)
        return None


_CONTACT_CODES = frozenset({ErrorCode.CONTACT_HIGH, ErrorCode.CONTACT_LOW, ErrorCode.CONTACT_OPEN})


class ContactNackNamesTarget(OutputRewriter):
    """Its contact refusals name the target current instead of the impedance (field, value and range)."""

    def rewrite(self, body: bytes) -> list[bytes]:
        frame = self.decoded(body)
        if frame is not None and isinstance(frame.message, Nack) and frame.message.code in _CONTACT_CODES:
            nack = replace(frame.message, field=Field.TARGET_CURRENT_UA, value=0, minimum=0, maximum=0)
            return [encode(nack, frame.seq)]
        return super().rewrite(body)


class ResumeSkipsContactSpot(RequestInterceptor):
    """Resume skips its spot measurement: on a failed contact it is acknowledged (and its CONTACT_CHECK
    state then fails) instead of being refused with CONTACT_* at once."""

    def intercept(self, frame: Frame) -> bytes | Message | None:
        fw = self.firmware
        if isinstance(frame.message, Resume) and fw.state == DeviceState.PAUSED:
            fw.begin_contact_check(resume=True)
            self._flush_outbox()
            return encode(Ack(int(MessageType.RESUME)), frame.seq)
        return None


class _NoResistanceLimitFirmware(Firmware):
    __slots__ = ()

    def handle_trigger(self, trigger: Any, i_true: float, i_meas: float, delivered: float, z: float) -> None:
        if trigger in (Trigger.COMPLIANCE, Trigger.COMPLIANCE_CLEAR):
            self.comp_run = 0
            self.clear_run = 0
            return  # S5 ignored: no flag, no event, the set-point stays above what the load lets through
        super().handle_trigger(trigger, i_true, i_meas, delivered, z)


class IgnoresResistanceLimit(Device):
    """Never reports the resistance limit (S5): at compliance it keeps asking for the set-point."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.firmware.__class__ = _NoResistanceLimitFirmware


class _SlowLiftFirmware(Firmware):
    __slots__ = ()

    def handle_trigger(self, trigger: Any, i_true: float, i_meas: float, delivered: float, z: float) -> None:
        if trigger in (Trigger.LIFT, Trigger.OPEN) and self.state == DeviceState.PAUSING:
            return  # no hurrying up the slow ramp it chose
        super().handle_trigger(trigger, i_true, i_meas, delivered, z)

    def begin_pausing(self, rate: float) -> None:
        if self.flags & StatusFlags.ELECTRODE_LIFT and self.session is not None:
            rate = self.session.rate_down(self.setpoint)  # as a Pause would: seconds, not the slew limit
        super().begin_pausing(rate)


class LiftRampsLikePause(Device):
    """An electrode lift ramps down at the session's ramp-down rate (5 s) instead of the slew limit (S6)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.firmware.__class__ = _SlowLiftFirmware


class CacheSurvivesDisconnect(Device):
    """Its transport's disconnect ends the host session but keeps the memory of answers (§7.3 broken)."""

    def end_host_session(self) -> None:
        self.firmware.end_host_session()
        self._decoder.reset()


class PulseReadsAverage(OutputRewriter):
    """In pulsed DC every sample reads the average current (set-point x duty), never the pulse (§4.3)."""

    def rewrite(self, body: bytes) -> list[bytes]:
        frame = self.decoded(body)
        session = self.firmware.session
        if (
            frame is not None
            and isinstance(frame.message, Telemetry)
            and session is not None
            and session.waveform == Waveform.PULSED_DC
        ):
            average = round(frame.message.setpoint_ua * session.duty)
            telemetry = replace(
                frame.message, measured_ua=average, flags=frame.message.flags & ~StatusFlags.PULSE_ON
            )
            return [encode(telemetry)]
        return super().rewrite(body)
