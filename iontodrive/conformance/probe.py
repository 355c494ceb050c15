"""The conformance suite's side of the link: a deliberately simple, synchronous host.

:class:`Probe` speaks the protocol through the protocol core (:func:`~iontodrive.protocol.encode`,
:class:`~iontodrive.protocol.Decoder`) over any byte link with ``write(bytes)`` and ``read(timeout_s)`` --
a :class:`~iontodrive.link.SerialLink` in the command, so serial ports, ptys, ``socket://`` and ``sim://``
all work. It is not the driver's :class:`~iontodrive.client.DeviceClient` on purpose: a conformance check
needs to control every byte and every silence (no background heartbeats, no automatic retries it did not
ask for, raw frames with a bad CRC or a torn end), and to keep a time-stamped record of everything the
device sent.

Time. The probe reads one clock, the *host clock* (``time.monotonic`` for a real port, the simulator's
virtual clock for ``sim://...?clock=virtual``), for what the protocol states in link time: reply
deadlines and the watchdog (§8). What the device states in device time (ramps, slew rates, telemetry
rates) is judged on the device's own ``device_time_ms`` stamps, so that a simulator running faster than
real time (``--speed``) is judged correctly. :attr:`Probe.speed` is the ratio of the two, measured at
connection, and converts device seconds into how long to wait on the host clock.

Safety. Every Telemetry sample is checked as it arrives: if the measured current exceeds
:attr:`Probe.ceiling_ua` (the device's ``max_current_ua``, lowered to the suite's own ceiling) by more than
the measurement allowance, the probe sends ``Abort`` at once and records a safety violation, which fails
the rule that was running. :meth:`Probe.start` refuses (with :class:`SuiteError`, a bug in the suite) to
ask for more than :attr:`Probe.test_current_ua` unless the request is a deliberate limit probe.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from iontodrive.errors import IontodriveError
from iontodrive.protocol import (
    DEFAULT_REPLY_TIMEOUT_MS,
    DEFAULT_RETRIES,
    DEFAULT_WATCHDOG_MS,
    HEARTBEAT_DIVISOR,
    MAX_HOST_NONCE,
    MAX_SEQ,
    PROTOCOL_VERSION,
    Abort,
    Ack,
    DecodeError,
    DecodeErrorKind,
    Decoder,
    DeviceState,
    Event,
    Frame,
    GetStatus,
    Heartbeat,
    Identify,
    IdentityReport,
    Message,
    MessageKind,
    Nack,
    OpenSession,
    Polarity,
    SessionOpened,
    Start,
    StatusReport,
    Telemetry,
    encode,
    encode_version_probe,
)

from .fixture import Fixture
from .rule import RuleFailed

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

#: Largest current (µA) the suite ever asks for, whatever the device's identity says.
SUITE_CEILING_UA = 10_000
#: The suite's test current is this fraction of the device's maximum (and at most SUITE_CEILING_UA).
TEST_CURRENT_FRACTION = 4
#: Measurement allowance above a ceiling before the probe aborts: this fraction of max_current_ua ...
CEILING_MARGIN_FRACTION = 0.02
#: ... but at least this many µA (ADC offset and noise of a small device).
CEILING_MARGIN_MIN_UA = 20
#: Telemetry rate (device-time Hz) the suite asks for while it watches a ramp, before the speed cap.
OBSERVE_HZ = 100
#: Telemetry frames per host second the suite is willing to decode (caps OBSERVE_HZ on fast simulators).
MAX_FRAMES_PER_HOST_S = 1000
RAW_KEEP_BYTES = 4 * 1024 * 1024  # the raw record of one rule stops growing here
POLL_S = 0.02  # longest single read while waiting (host s)
RAMP_SLACK_S = 1.0  # a ramp is waited for 1.5 times its time plus this (device s): ramp_budget_s


class ByteLink(Protocol):
    """What the probe needs of a link (a :class:`~iontodrive.link.SerialLink` has it)."""

    def write(self, data: bytes) -> None: ...

    def read(self, timeout_s: float | None = None) -> bytes: ...


class SuiteError(Exception):
    """The suite itself misbehaved (a bug): never a verdict about the device."""


class NoReply(RuleFailed):
    """A request got no reply within the deadline, retries included (§7.2, §8.3)."""


@dataclass(frozen=True, slots=True)
class Received:
    """One frame from the device with the host time it was read (s, host clock)."""

    t: float
    seq: int
    message: Message


class Probe:
    """A synchronous protocol host for conformance checks (see the module docstring).

    Args:
        link: the byte link to the device.
        clock: the host clock, seconds (``time.monotonic`` unless the port brings its own).
        reply_timeout_s: wait for one transmission's reply (§8.3 default 0.25 s).
        retries: re-sends of an unanswered request, same bytes (§8.3 default 3).
        seed: seeds the first sequence number (random otherwise, so that a device's memory of an earlier
            host's answers is never hit by accident; §7.3).
        fixture: the load fixture, for the rules that change the load (None: they are not run).
        reconnect: makes the host go away and come back as the transport sees it (close the port and
            open it again) and returns the new link; None where the link cannot (then the rule that needs
            it does not apply).
    """

    def __init__(
        self,
        link: ByteLink,
        clock: Callable[[], float] = time.monotonic,
        *,
        reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_MS / 1000.0,
        retries: int = DEFAULT_RETRIES,
        seed: int | None = None,
        fixture: Fixture | None = None,
        reconnect: Callable[[], ByteLink] | None = None,
    ) -> None:
        self.link = link
        self.fixture = fixture
        self._reconnect = reconnect
        self.clock = clock
        self.reply_timeout_s = reply_timeout_s
        self.retries = retries
        self._rng = random.Random(seed)
        self._next_seq = self._rng.randint(1, MAX_SEQ)
        self.decoder = Decoder()
        self.telemetry: list[tuple[float, Telemetry]] = []
        self.events: list[tuple[float, Event]] = []
        self.replies: list[Received] = []
        self.decode_errors: list[tuple[float, DecodeError]] = []
        self.raw = bytearray()  # every byte read from the device since the rule began (bounded)
        self.reply_times_s: list[float] = []
        self.safety_violations: list[str] = []
        self.last_request_t = clock()
        self.watchdog_ms = DEFAULT_WATCHDOG_MS
        self.heartbeats = True
        self.identity: IdentityReport | None = None
        self._drive: IdentityReport | None = None
        self.nonce = 0  # the host nonce of the probe's present host session (0: none opened)
        self.speed = 1.0
        self.ceiling_ua = SUITE_CEILING_UA

    # ------------------------------------------------------------------------------ identity, limits

    @property
    def ident(self) -> IdentityReport:
        """The identity read at connection (:class:`SuiteError` before :meth:`identify`)."""
        if self.identity is None:
            raise SuiteError("the probe has not identified the device yet")
        return self.identity

    @property
    def drive(self) -> IdentityReport:
        """The limits the suite drives within: the identity with the driver's own caps applied (S18)."""
        return self._drive if self._drive is not None else self.ident

    @drive.setter
    def drive(self, limits: IdentityReport) -> None:
        self._drive = limits

    @property
    def test_current_ua(self) -> int:
        """The current the suite's sessions use: a quarter of the device's maximum, within the ceiling."""
        floor = max(1, self.ident.min_current_ua)
        return max(floor, min(self.ident.max_current_ua // TEST_CURRENT_FRACTION, self.ceiling_ua))

    @property
    def margin_ua(self) -> int:
        """Measurement allowance (µA) used when judging a measured current against a limit."""
        ident = self.identity
        top = ident.max_current_ua if ident is not None else SUITE_CEILING_UA
        return max(CEILING_MARGIN_MIN_UA, round(CEILING_MARGIN_FRACTION * top))

    def identify(self) -> IdentityReport:
        """Open the link as §8.1 says: flush the device's receiver, open a host session, ask Identify;
        then set the ceiling.

        Raises:
            NoReply: the device does not answer OpenSession (after one version probe, §9, whose answer is
                then in :attr:`decode_errors` as WRONG_VERSION) or Identify.
            RuleFailed: it answers with something else, or speaks another protocol version.
        """
        self.write(b"\x00", request=False)
        self.decoder.reset()
        try:
            self.open_session()
        except NoReply:
            self.write(encode_version_probe(self.next_seq()), request=False)
            self.drain(self.reply_timeout_s)
            heard = sorted(
                {
                    e.version
                    for _, e in self.decode_errors
                    if e.version is not None and e.version != PROTOCOL_VERSION
                }
            )
            if heard:
                raise NoReply(
                    f"no answer to OpenSession; the device answers protocol version {heard[0]} (this suite "
                    f"checks version {PROTOCOL_VERSION}, §9)"
                ) from None
            raise
        ident = self.expect_reply(Identify(), IdentityReport)
        if ident.protocol_version != PROTOCOL_VERSION:
            raise RuleFailed(
                f"IdentityReport says protocol version {ident.protocol_version}; this suite checks "
                f"{PROTOCOL_VERSION}"
            )
        self.identity = ident
        self.drive = driver_limits(ident)
        self.ceiling_ua = min(SUITE_CEILING_UA, ident.max_current_ua, self.drive.max_current_ua)
        return ident

    @property
    def can_reconnect(self) -> bool:
        """True if :meth:`reconnect` can make the host go away (see the ``reconnect`` argument)."""
        return self._reconnect is not None

    def reconnect(self) -> None:
        """The host goes away and a host comes back on a new link, without a host session (§7.3: the
        transport sees its host disconnect). The decoder starts afresh.

        Raises:
            SuiteError: the probe was made without ``reconnect`` (check :attr:`can_reconnect`).
        """
        if self._reconnect is None:
            raise SuiteError("this probe's link cannot reconnect")
        self.link = self._reconnect()
        self.decoder.reset()
        self.nonce = 0
        self.write(b"\x00", request=False)  # §8.1: end any partial frame

    @property
    def load_fixture(self) -> Fixture:
        """The fixture (:class:`SuiteError` without one: the runner does not run such rules then)."""
        if self.fixture is None:
            raise SuiteError("a rule that needs a load fixture ran without one")
        return self.fixture

    def new_nonce(self) -> int:
        """A fresh random host nonce, 1..MAX_HOST_NONCE, different from the present one."""
        while True:
            nonce = self._rng.randint(1, MAX_HOST_NONCE)
            if nonce != self.nonce:
                return nonce

    def open_session(self, nonce: int | None = None) -> SessionOpened:
        """Open a host session (§7.3, §8.1): OpenSession with a fresh nonce; require SessionOpened echoing it.

        Raises:
            NoReply: no answer.
            RuleFailed: any other answer, or a SessionOpened for another nonce.
        """
        nonce = self.new_nonce() if nonce is None else nonce
        reply = self.expect_reply(OpenSession(nonce), SessionOpened)
        if reply.host_nonce != nonce:
            raise RuleFailed(f"OpenSession({nonce}) was answered for nonce {reply.host_nonce}")
        self.nonce = nonce
        return reply

    def measure_speed(self, host_s: float = 0.25) -> float:
        """Device seconds per host second, from two StatusReports ``host_s`` apart (1.0 for real hardware).

        Raises NoReply if the device stops answering.
        """
        t0 = self.clock()
        d0 = self.status().device_time_ms
        self.wait(host_s)
        t1 = self.clock()
        d1 = self.status().device_time_ms
        elapsed = max(t1 - t0, 1e-6)
        self.speed = max(0.01, ((d1 - d0) & 0xFFFF_FFFF) / 1000.0 / elapsed)
        return self.speed

    def host_s(self, device_s: float) -> float:
        """Host seconds in which ``device_s`` seconds of device time pass."""
        return device_s / self.speed

    def observe_hz(self) -> int:
        """Telemetry rate for watching ramps: OBSERVE_HZ, capped by the device and by the decoding budget."""
        cap = max(2, int(MAX_FRAMES_PER_HOST_S / self.speed))
        return max(1, min(OBSERVE_HZ, self.ident.max_telemetry_hz, cap))

    # ------------------------------------------------------------------------------------- sending

    def next_seq(self) -> int:
        """A fresh request sequence number (1..65535, wrapping)."""
        seq = self._next_seq
        self._next_seq = seq % MAX_SEQ + 1
        return seq

    def write(self, data: bytes, *, request: bool = True) -> None:
        """Write raw bytes. ``request``: they hold a valid request, so they count as heartbeat traffic."""
        self.link.write(data)
        if request:
            self.last_request_t = self.clock()

    def send(self, message: Message, seq: int | None = None) -> int:
        """Encode and write one request; return its sequence number."""
        if seq is None:
            seq = self.next_seq()
        self.write(encode(message, seq))
        return seq

    # ------------------------------------------------------------------------------------- reading

    def poll(self, timeout_s: float = POLL_S) -> int:
        """Read once (waiting at most ``timeout_s`` host seconds) and file what arrived; return how many
        frames and decode errors it completed."""
        data = self.link.read(timeout_s)
        if not data:
            return 0
        now = self.clock()
        if len(self.raw) < RAW_KEEP_BYTES:
            self.raw += data
        items = self.decoder.feed(data)
        for item in items:
            if isinstance(item, DecodeError):
                self.decode_errors.append((now, item))
                log.debug("decode error from the device: %s", item)
                continue
            self._file(now, item)
        return len(items)

    def _file(self, now: float, frame: Frame) -> None:
        message = frame.message
        if isinstance(message, Telemetry):
            self.telemetry.append((now, message))
            self._guard(message)
        elif isinstance(message, Event):
            self.events.append((now, message))
        elif message.TYPE.kind == MessageKind.REPLY:
            self.replies.append(Received(now, frame.seq, message))
        else:  # a request type from the device: the decoder accepted it, so only the kind is wrong
            self.decode_errors.append(
                (now, DecodeError(DecodeErrorKind.UNKNOWN_TYPE, f"device sent a request {message!r}"))
            )

    def _guard(self, sample: Telemetry) -> None:
        limit = self.ceiling_ua + self.margin_ua
        if sample.measured_ua > limit:
            note = (
                f"measured {sample.measured_ua} uA at device time {sample.device_time_ms} ms, above the "
                f"suite's ceiling {self.ceiling_ua} uA (+{self.margin_ua} uA allowance): Abort sent"
            )
            if not self.safety_violations or self.safety_violations[-1] != note:
                self.safety_violations.append(note)
            self.write(encode(Abort(), self.next_seq()))

    def drain(self, host_s: float = 0.0) -> None:
        """Read whatever arrives for ``host_s`` seconds (at least one read), sending nothing."""
        end = self.clock() + host_s
        self.poll(0.0)
        while self.clock() < end:
            self.poll(min(POLL_S, max(0.0, end - self.clock())))

    def mark(self) -> int:
        """A position in :attr:`replies`: pass it to :meth:`replies_to` / :meth:`await_reply` to see only
        replies filed after this moment (host times can be equal on a virtual clock; positions cannot)."""
        return len(self.replies)

    def replies_to(self, seq: int, after: int = 0) -> list[Received]:
        """Every reply with sequence number ``seq`` filed at or after position ``after`` (see "
        ":meth:`mark`)."""
        return [r for r in self.replies[after:] if r.seq == seq]

    def await_reply(self, seq: int, timeout_s: float, after: int) -> Received | None:
        """Wait up to ``timeout_s`` host seconds for a reply with ``seq`` filed after position ``after``."""
        deadline = self.clock() + timeout_s
        while True:
            found = self.replies_to(seq, after)
            if found:
                return found[0]
            left = deadline - self.clock()
            if left <= 0:
                return None
            self.poll(min(POLL_S, left))

    # ------------------------------------------------------------------------------------ requests

    def request(self, message: Message, seq: int | None = None, *, retries: int | None = None) -> Message:
        """Send ``message`` and return its reply, re-sending the same bytes on silence (§8.3).

        Raises:
            NoReply: no reply after ``1 + retries`` transmissions of ``reply_timeout_s`` each.
        """
        received = self.request_frame(message, seq, retries=retries)
        return received.message

    def request_frame(
        self, message: Message, seq: int | None = None, *, retries: int | None = None
    ) -> Received:
        """:meth:`request`, returning the reply with its host time and sequence number."""
        if seq is None:
            seq = self.next_seq()
        frame = encode(message, seq)
        attempts = 1 + (self.retries if retries is None else retries)
        for _ in range(attempts):
            sent, after = self.clock(), self.mark()
            self.write(frame)
            reply = self.await_reply(seq, self.reply_timeout_s, after)
            if reply is not None:
                self.reply_times_s.append(reply.t - sent)
                return reply
        raise NoReply(
            f"{type(message).__name__} (seq {seq}) got no reply in {attempts} transmission(s) of "
            f"{self.reply_timeout_s * 1000:.0f} ms each"
        )

    def expect_reply(self, message: Message, reply_type: type[M], seq: int | None = None) -> M:
        """:meth:`request`, failing the rule unless the reply is a ``reply_type``."""
        reply = self.request(message, seq)
        if not isinstance(reply, reply_type):
            raise RuleFailed(
                f"{describe(message)} was answered by {describe(reply)}, expected {reply_type.__name__}"
            )
        return reply

    def ack(self, message: Message, seq: int | None = None) -> Ack:
        """Send ``message``; fail the rule unless it is acknowledged."""
        return self.expect_reply(message, Ack, seq)

    def nack(self, message: Message, seq: int | None = None) -> Nack:
        """Send ``message``; fail the rule unless it is refused."""
        return self.expect_reply(message, Nack, seq)

    def status(self) -> StatusReport:
        """GetStatus; fail the rule unless a StatusReport comes back."""
        return self.expect_reply(GetStatus(), StatusReport)

    # ------------------------------------------------------------------------------------- waiting

    def wait(self, host_s: float, *, heartbeat: bool | None = None) -> None:
        """Let ``host_s`` seconds pass, reading everything, sending Heartbeat every watchdog/4 (§8.2) unless
        ``heartbeat`` is False (or :attr:`heartbeats` is off)."""
        self.wait_until(lambda: False, host_s, heartbeat=heartbeat)

    def wait_until(
        self,
        condition: Callable[[], bool],
        host_s: float,
        *,
        what: str | None = None,
        heartbeat: bool | None = None,
    ) -> bool:
        """Read (and heartbeat) until ``condition()`` holds or ``host_s`` seconds passed.

        Returns whether the condition held. With ``what``, a timeout fails the rule instead: the evidence
        says what was awaited and for how long.
        """
        beat = self.heartbeats if heartbeat is None else heartbeat
        interval = self.watchdog_ms / HEARTBEAT_DIVISOR / 1000.0
        end = self.clock() + host_s
        while True:
            if condition():
                return True
            now = self.clock()
            if now >= end:
                break
            due = self.last_request_t + interval  # one expression for both tests: no float gap between them
            if beat and now >= due:
                self.request(Heartbeat())
                continue
            step = min(POLL_S, end - now, due - now) if beat else min(POLL_S, end - now)
            self.poll(step)
        if what is not None:
            raise RuleFailed(f"timed out after {host_s:.2f} s (host clock) waiting for {what}")
        return False

    def latest(self) -> Telemetry | None:
        """The newest telemetry sample, or None."""
        return self.telemetry[-1][1] if self.telemetry else None

    def wait_state(self, states: Iterable[DeviceState], device_s: float) -> StatusReport:
        """Poll GetStatus (about every 50 ms of device time, at most every 20 ms of host time) until the
        state is one of ``states``; fail the rule after ``device_s`` seconds of device time (+1 s of host
        slack)."""
        wanted = frozenset(states)
        end = self.clock() + self.host_s(device_s) + 1.0
        gap = max(POLL_S, self.host_s(0.05))
        while True:
            status = self.status()
            if status.state in wanted:
                return status
            if self.clock() >= end:
                names = ", ".join(sorted(s.name for s in wanted))
                raise RuleFailed(
                    f"the device stayed in {status.state.name} for {device_s:.1f} s of device time; "
                    f"expected {names}"
                )
            self.wait(gap)

    def await_telemetry_state(self, states: Iterable[DeviceState], device_s: float) -> Telemetry:
        """Wait, sending only heartbeats, until a telemetry sample shows one of ``states``; fail the rule
        after ``device_s`` of device time (+1 s of host slack). Telemetry must be on (the rules that use
        this ask for :meth:`observe_hz`). Unlike :meth:`wait_state` it sends no GetStatus, so that the
        device's memory of answers keeps what a rule put there (§7.3: at least the last 64)."""
        wanted = frozenset(states)
        mark = len(self.telemetry)

        def seen() -> bool:
            return any(sample.state in wanted for _, sample in self.telemetry[mark:])

        names = ", ".join(sorted(s.name for s in wanted))
        self.wait_until(seen, self.host_s(device_s) + 1.0, what=f"telemetry showing {names}")
        return next(sample for _, sample in self.telemetry[mark:] if sample.state in wanted)

    # ------------------------------------------------------------------------------------ sessions

    def session_request(
        self,
        *,
        target_ua: int | None = None,
        ramp_up_ms: int | None = None,
        ramp_down_ms: int | None = None,
        duration_ms: int | None = None,
        dose_uas: int = 0,
        polarity: Polarity = Polarity.CATHODE,
        limit_probe: bool = False,
    ) -> Start:
        """A DC Start the device should accept: the test current, the shortest ramps, about 10 minutes.

        ``limit_probe`` allows a target above the test current (a request meant to be refused).

        Raises:
            SuiteError: a target above :attr:`test_current_ua` without ``limit_probe``.
        """
        ident = self.drive
        target = self.test_current_ua if target_ua is None else target_ua
        if target > self.test_current_ua and not limit_probe:
            raise SuiteError(
                f"the suite asked for {target} uA, above its test current {self.test_current_ua} uA"
            )
        up = ident.min_ramp_ms if ramp_up_ms is None else ramp_up_ms
        down = ident.min_ramp_ms if ramp_down_ms is None else ramp_down_ms
        if duration_ms is None and dose_uas == 0:
            duration_ms = default_duration_ms(ident, target, up + down)
        return Start(target, dose_uas, duration_ms or 0, up, down, polarity)

    def start(
        self, start: Start | None = None, *, until: Sequence[DeviceState] = (DeviceState.HOLD,)
    ) -> Start:
        """Send a Start (default :meth:`session_request`), require an Ack, and wait for one of ``until``.

        Raises:
            RuleFailed: refused (the evidence carries the NACK: often a missing load, see the docs), or the
                state was not reached in time.
            SuiteError: a target above the test current.
        """
        start = self.session_request() if start is None else start
        if start.target_current_ua > self.test_current_ua:
            raise SuiteError(f"start() with {start.target_current_ua} uA, above the test current")
        reply = self.request(start)
        if isinstance(reply, Nack):
            hint = (
                " (is a load connected? see docs/conformance.md)"
                if reply.code.name.startswith("CONTACT")
                else ""
            )
            raise RuleFailed(f"{describe(start)} was refused: {describe(reply)}{hint}")
        if not isinstance(reply, Ack):
            raise RuleFailed(f"{describe(start)} was answered by {describe(reply)}, expected Ack")
        if until:
            self.wait_state(until, ramp_budget_s(start.ramp_up_ms))
        return start


def ramp_budget_s(ramp_ms: float, slack_s: float = RAMP_SLACK_S) -> float:
    """How long (device s) a rule waits for a ramp of ``ramp_ms`` to end before it fails: 1.5 times the
    ramp's time plus ``slack_s``."""
    return ramp_ms / 1000 * 1.5 + slack_s


def driver_limits(identity: IdentityReport) -> IdentityReport:
    """``identity`` with the driver's per-family caps applied (S18: :func:`iontodrive.ceilings.
    effective_identity`, issue 13), so that the suite never drives more than the driver itself would.
    Where that module is not installed (a driver before issue 13) the identity is used as it is, within
    the suite's own :data:`SUITE_CEILING_UA`.

    Raises:
        RuleFailed: the driver refuses the identity as contradicting its family (nothing that makes output
            may run against it).
    """
    try:
        from iontodrive.ceilings import effective_identity  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return identity
    try:
        limited: IdentityReport = effective_identity(identity)
    except IontodriveError as exc:
        raise RuleFailed(f"the driver refuses this identity (S18): {exc}") from exc
    return limited


def default_duration_ms(ident: IdentityReport, target_ua: int, ramps_ms: int) -> int:
    """A time-based session of about 10 minutes that stays well within the duration limit and the dose
    cap (planned charge at most 80 % of ``dose_cap_uas``)."""
    duration = min(600_000, ident.max_duration_ms)
    if target_ua > 0 and ident.dose_cap_uas > 0:
        by_cap = int(0.8 * ident.dose_cap_uas * 1000 / target_ua + ramps_ms / 2)
        duration = min(duration, by_cap)
    return max(duration, ramps_ms)


def describe(message: Message) -> str:
    """A short, readable rendering of a message for evidence (enums by name)."""
    if isinstance(message, Nack):
        return (
            f"Nack(request 0x{message.request_type:02X}, {message.code.name}, field {message.field.name}, "
            f"value {message.value}, range {message.minimum}..{message.maximum})"
        )
    return repr(message)
