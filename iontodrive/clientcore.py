"""The sans-I/O client core: everything the driver knows about talking to a device, with no threads,
sockets or clocks.

:class:`ClientCore` is one state machine. Bytes from the device and "time now" (seconds on any monotonic
clock the driver chooses; tests use a virtual one) go in; bytes to send, delivered replies, telemetry,
events (in order, gaps found) and timer deadlines come out. The threaded
:class:`~iontodrive.client.DeviceClient` and the asyncio :class:`~iontodrive.aio.AsyncDeviceClient` are thin
drivers of it: they own the link, the threads or tasks and the waiting; neither repeats what is here.

What the core holds:

* **requests** -- sequence numbers (:class:`~iontodrive.protocol.SequenceCounter`, a random first number),
  encoding, the table of requests in flight, deadlines and retries with the *same* sequence number (the
  device executes a repeat at most once, S17), and the full reply check: a reply must be of a type the
  request allows (:data:`~iontodrive.protocol.REPLY_TYPES_FOR_REQUEST`) and an Ack or Nack must name the
  request it answers, else :class:`~iontodrive.errors.RemoteProtocolError` (issue 13).
  :meth:`ClientCore.begin` -> :meth:`ClientCore.sent` -> (:meth:`ClientCore.expire` on each missed
  deadline) -> :meth:`ClientCore.finish`.
* **inbound** -- :meth:`ClientCore.receive` decodes bytes, completes requests by sequence number, counts
  telemetry gaps and runs events through the :class:`~iontodrive.delivery.EventSequencer` (order,
  duplicates, gaps); what comes out goes to the driver's :class:`CoreSink`.
* **procedures** -- the multi-step exchanges are generators of :class:`Call` / :class:`Write` /
  :class:`Fetch` steps that a driver performs and sends the outcome back into (:func:`opening`: the
  protocol-2 handshake with ``OpenSession``, the version probe, Identify, watchdog, telemetry rate and the
  first status; :func:`fill_gap` and :func:`refill`: ``FetchEvents`` for missed events). One copy of each
  procedure; the threaded driver runs them with blocking calls, the asyncio one with ``await``.
* **the heartbeat rule (S19)** -- the schedule (a heartbeat whenever no request went out for the period:
  ``heartbeat_s``, default a quarter of the watchdog) and the rule that a heartbeat is an *output of the
  core emitted only while the checks are current*: with session gates registered (:meth:`ClientCore.add_gate`)
  every gate must say True, no safety listener may have failed, and the driver's :class:`DriverHealth`
  must show the safety checks at most :data:`SAFETY_LAG_MAX_S` behind the newest telemetry, having
  processed telemetry that arrived at most :data:`SAFETY_FRESH_S` ago, an ordinary tier that is not wedged
  (:data:`DISPATCH_WEDGED_S`) and no dead worker. :meth:`ClientCore.heartbeat_poll` is the whole decision.

Thread safety: the core takes no locks of its own except the sequencer's. The threaded driver calls it
from several threads under the rules in :mod:`iontodrive.client` (single dict operations on the request
table, one thread at a time in :meth:`receive`); the asyncio driver calls it from the loop only.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from iontodrive.delivery import EventSequencer, Gap, Routing
from iontodrive.errors import (
    DeviceRefusal,
    IncompatibleDeviceError,
    IontodriveError,
    LinkTimeoutError,
    LocalProtocolError,
    RemoteProtocolError,
    SafetyRefusal,
)
from iontodrive.protocol import (
    MAX_HOST_NONCE,
    MESSAGE_BY_TYPE,
    MESSAGE_CLASSES,
    PROTOCOL_VERSION,
    REPLY_TYPES_FOR_REQUEST,
    Ack,
    ConfigureTelemetry,
    Decoder,
    EncodeError,
    Event,
    EventsReport,
    FetchEvents,
    Frame,
    GetStatus,
    Heartbeat,
    Identify,
    IdentityReport,
    Message,
    MessageKind,
    Nack,
    OpenSession,
    SequenceCounter,
    SessionOpened,
    SetWatchdog,
    StatusReport,
    Telemetry,
    encode,
    encode_version_probe,
)

logger = logging.getLogger(__name__)

SUPPORTED_PROTOCOL_VERSIONS: tuple[int, ...] = (PROTOCOL_VERSION,)
DEFAULT_TIMEOUT_S: Final = 0.25
DEFAULT_RETRIES: Final = 3
DEFAULT_WATCHDOG_MS: Final = 2000
FETCH_BATCH: Final = 32
MAX_GAP_REQUESTS: Final = 64  # FetchEvents per gap at most (MAX_GAP_FETCH / FETCH_BATCH, twice over)
# The heartbeat rule (module docstring). Seconds on the driver's monotonic clock.
SAFETY_LAG_MAX_S: Final = 0.25  # the safety tier may be this far behind the newest telemetry
SAFETY_FRESH_S: Final = 1.0  # the newest telemetry the safety tier processed arrived at most this long ago
DISPATCH_WEDGED_S: Final = 2.0  # the ordinary tier handled nothing for this long while items wait: wedged
HEARTBEAT_RECHECK_S: Final = 0.01  # while heartbeats are withheld, the rule is asked again this often

M = TypeVar("M", bound=Message)

_REQUEST_CLASSES: Final = frozenset(c for c in MESSAGE_CLASSES if c.TYPE.kind is MessageKind.REQUEST)
_REPLY_CLASSES: Final[dict[type[Message], frozenset[type[Message]]]] = {
    cls: frozenset(c for c in MESSAGE_CLASSES if c.TYPE in REPLY_TYPES_FOR_REQUEST[cls.TYPE])
    for cls in _REQUEST_CLASSES
}


@dataclass
class LinkStatistics:
    """Counters for bench tools and the soak test."""

    requests: int = 0
    retries: int = 0
    timeouts: int = 0
    frames_received: int = 0
    decode_errors: int = 0
    telemetry_received: int = 0
    telemetry_gaps: int = 0
    telemetry_lost: int = 0
    events_received: int = 0
    events_fetched: int = 0
    events_lost: int = 0  # events that could not be delivered (reported as EventsLostError)
    bad_replies: int = 0  # replies of the wrong type or naming another request (RemoteProtocolError)
    caller_reads: int = 0  # replies read by the requesting thread itself (no reader-thread hand-over)


def check_timeout_s(timeout_s: object) -> float:
    """``timeout_s`` as seconds, or :class:`~iontodrive.errors.SafetyRefusal` (a ValueError) naming it and
    the range (0.001..60 s)."""
    if isinstance(timeout_s, bool) or not (isinstance(timeout_s, (int, float)) and 0.001 <= timeout_s <= 60):
        raise SafetyRefusal("timeout_s", timeout_s, 0.001, 60)
    return float(timeout_s)


def check_retries(retries: object) -> int:
    """``retries``, or :class:`~iontodrive.errors.SafetyRefusal` (a ValueError) naming it and the range
    (an integer 0..20)."""
    if isinstance(retries, bool) or not (isinstance(retries, int) and 0 <= retries <= 20):
        raise SafetyRefusal("retries", retries, 0, 20, "an integer")
    return retries


class PendingRequest:
    """One request in flight. :attr:`reply` is set by :meth:`ClientCore.receive`; :attr:`waiter` belongs to
    the driver (a thread's one-shot, an asyncio future): the core never touches it."""

    __slots__ = (
        "attempts",
        "attempts_left",
        "deadline",
        "frame",
        "message",
        "reply",
        "seq",
        "timeout_s",
        "waiter",
    )

    def __init__(self, seq: int, message: Message, frame: bytes, timeout_s: float, attempts: int) -> None:
        self.seq = seq
        self.message = message
        self.frame = frame
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.attempts_left = attempts
        self.deadline = float("inf")  # set by ClientCore.sent
        self.reply: Message | None = None
        self.waiter: Any = None


class CoreSink(Protocol):
    """Where :meth:`ClientCore.receive` delivers (implemented by the driver). Must not block."""

    def on_reply(self, pending: PendingRequest) -> None:
        """``pending.reply`` has just been set."""

    def on_telemetry(self, sample: Telemetry, now: float) -> None:
        """A telemetry sample arrived at ``now``."""

    def on_routing(self, routing: Routing, now: float) -> None:
        """The sequencer released events (and perhaps opened a gap to fetch with :func:`fill_gap`)."""

    def on_replay(self, event: Event) -> None:
        """A replayed event arrived (for :class:`ReplayCollector`s waiting on a FetchEvents)."""


class DriverHealth(Protocol):
    """What the heartbeat rule needs from the driver's delivery (its tiers and workers)."""

    def safety_lag_s(self, now: float) -> float:
        """How long the oldest item the safety tier has not finished has waited (0 when idle)."""

    def safety_checked_at(self) -> float | None:
        """Arrival time of the newest sample the safety tier has processed (None: none yet)."""

    def dispatch_stalled_s(self, now: float) -> float:
        """How long the ordinary tier has handled nothing while items wait (0 when idle)."""

    def dead_worker(self) -> str | None:
        """The name of a worker (thread, task) that has died, or None."""


class ClientCore:
    """The client's state machine (see the module docstring). All times are the driver's "now".

    Args:
        timeout_s: reply deadline per attempt, seconds (0.001..60).
        retries: re-sends with the same sequence number after a missed deadline (0..20).
        heartbeat_s: heartbeat period, seconds (0.01..60), or None for a quarter of the watchdog.
        watchdog_ms: the device watchdog the driver sets (its heartbeat period follows it).
        first_seq: the first sequence number (random by default: a new host never reuses a recent one).
        now: the time the core is created (its "last sent" and "last received").

    Raises:
        ValueError: an argument out of range (named, with the range).
    """

    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        heartbeat_s: float | None = None,
        watchdog_ms: int = DEFAULT_WATCHDOG_MS,
        first_seq: int | None = None,
        now: float = 0.0,
    ) -> None:
        check_timeout_s(timeout_s)
        check_retries(retries)
        if heartbeat_s is not None and (
            isinstance(heartbeat_s, bool)
            or not (isinstance(heartbeat_s, (int, float)) and 0.01 <= heartbeat_s <= 60)
        ):
            raise SafetyRefusal("heartbeat_s", heartbeat_s, 0.01, 60, "None or seconds")
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.heartbeat_s = heartbeat_s
        self.watchdog_ms = watchdog_ms
        self.stats = LinkStatistics()
        self.decoder = Decoder()
        self.seq = SequenceCounter(first_seq if first_seq is not None else random.randint(1, 0xFFFF))
        # seq -> request awaiting its reply. Single dict operations only (atomic under the GIL); code that
        # walks it takes a snapshot first (``list(d.values())`` is one operation too).
        self.pending: dict[int, PendingRequest] = {}
        self.events = EventSequencer()
        self.last_sent = now
        self.last_received = now
        self.last_sample_no: int | None = None
        self.last_telemetry_at: float | None = None  # arrival of the newest sample
        self.trace: Callable[[Any], None] | None = None  # called with every decoded item (frame or error)
        self.gates: list[Callable[[], bool]] = []
        self.safety_failure: BaseException | None = None  # latched while gates are registered
        self.withheld: str | None = None  # why heartbeats are withheld right now, or None

    # --------------------------------------------------------------------------------- requests

    def begin(
        self, message: Message, *, timeout_s: float | None = None, retries: int | None = None
    ) -> PendingRequest:
        """Number and encode ``message`` and register it; the driver sends ``pending.frame`` and calls
        :meth:`sent`. Raises LocalProtocolError for a non-request or a field that cannot be encoded."""
        # the protocol's own request classes by a set lookup; anything else (a subclass, a non-message) by
        # its TYPE, which costs ten times as much
        if message.__class__ not in _REQUEST_CLASSES and (
            getattr(getattr(message, "TYPE", None), "kind", None) is not MessageKind.REQUEST
        ):
            raise LocalProtocolError(f"{type(message).__name__} is not a request")
        seq = self.seq.next()
        try:
            frame = encode(message, seq)
        except EncodeError as exc:
            raise LocalProtocolError(str(exc)) from exc
        attempts = 1 + (self.retries if retries is None else retries)
        deadline_s = self.timeout_s if timeout_s is None else timeout_s
        pending = PendingRequest(seq, message, frame, deadline_s, attempts)
        self.pending[seq] = pending
        return pending

    def sent(self, pending: PendingRequest, now: float) -> None:
        """``pending.frame`` went out at ``now``: one attempt used, the next deadline set."""
        pending.attempts_left -= 1
        pending.deadline = now + pending.timeout_s
        self.last_sent = now
        self.stats.requests += 1

    def expire(self, pending: PendingRequest) -> None:
        """``pending``'s deadline passed with no reply. Returns if it may be sent again (the same frame,
        the same sequence number: send it and call :meth:`sent`); otherwise forgets it and raises
        :class:`~iontodrive.errors.LinkTimeoutError`."""
        if pending.reply is not None:
            return
        if pending.attempts_left > 0:
            self.stats.retries += 1
            logger.debug("retry of %s seq %d", type(pending.message).__name__, pending.seq)
            return
        self.pending.pop(pending.seq, None)
        self.stats.timeouts += 1
        name = type(pending.message).__name__
        raise LinkTimeoutError(name, pending.seq, pending.attempts, pending.timeout_s)

    def forget(self, pending: PendingRequest) -> None:
        """Stop tracking ``pending`` (the driver gave up on it: closed, failed, interrupted)."""
        self.pending.pop(pending.seq, None)

    def finish(self, pending: PendingRequest) -> Message:
        """The checked reply of a completed request (never a Nack); forgets the request.

        Raises:
            DeviceRefusal: the device answered NACK; nothing changed on the device.
            RemoteProtocolError: the reply cannot answer this request (its type, or the request an Ack or
                Nack names).
        """
        self.pending.pop(pending.seq, None)
        reply = pending.reply
        if reply is None:
            raise ValueError("finish() called before the reply arrived")
        message = pending.message
        kind = reply.__class__
        allowed = _REPLY_CLASSES.get(message.__class__)
        if (allowed is not None and kind not in allowed) or (
            (kind is Ack or kind is Nack) and reply.request_type != message.TYPE  # type: ignore[attr-defined]
        ):
            self.stats.bad_replies += 1
            raise RemoteProtocolError(describe_bad_reply(message, pending.seq, reply))
        if kind is Nack:
            raise DeviceRefusal(
                reply.request_type,  # type: ignore[attr-defined]
                reply.code,  # type: ignore[attr-defined]
                reply.field,  # type: ignore[attr-defined]
                reply.value,  # type: ignore[attr-defined]
                reply.minimum,  # type: ignore[attr-defined]
                reply.maximum,  # type: ignore[attr-defined]
            )
        return reply

    def next_deadline(self) -> float | None:
        """The earliest reply deadline of the requests in flight (None: nothing in flight)."""
        waiting = [p.deadline for p in list(self.pending.values()) if p.reply is None]
        return min(waiting) if waiting else None

    def overdue(self, now: float) -> list[PendingRequest]:
        """The requests whose deadline has passed at ``now`` without a reply (for :meth:`expire`)."""
        return [p for p in list(self.pending.values()) if p.reply is None and p.deadline <= now]

    # ---------------------------------------------------------------------------------- inbound

    def receive(self, data: bytes, now: float, sink: CoreSink) -> None:
        """Decode ``data`` (bytes from the device at ``now``) and deliver every frame to ``sink``."""
        trace = self.trace
        for item in self.decoder.feed(data):
            if trace is not None:
                trace(item)
            if item.__class__ is not Frame:
                self.stats.decode_errors += 1
                logger.debug("dropped bad frame: %s %s", item.kind.value, item.detail)  # type: ignore[union-attr]
                continue
            self.on_frame(item, now, sink)

    def on_frame(self, frame: Frame, now: float, sink: CoreSink) -> None:
        """Act on one decoded frame (what :meth:`receive` does for each)."""
        self.stats.frames_received += 1
        self.last_received = now
        seq, message = frame
        if seq:
            pending = self.pending.get(seq)  # one dict lookup: atomic, no lock needed
            if pending is None or pending.reply is not None:
                return  # a late duplicate answer to a retried request
            pending.reply = message
            sink.on_reply(pending)
            return
        kind = message.__class__
        if kind is Telemetry:
            self._on_telemetry(message, now, sink)  # type: ignore[arg-type]
        elif kind is Event:
            self._on_event(message, now, sink)  # type: ignore[arg-type]

    def _on_telemetry(self, sample: Telemetry, now: float, sink: CoreSink) -> None:
        self.stats.telemetry_received += 1
        last = self.last_sample_no
        if last is not None and sample.sample_no > last + 1:
            self.stats.telemetry_gaps += 1
            self.stats.telemetry_lost += sample.sample_no - last - 1
        self.last_sample_no = sample.sample_no
        self.last_telemetry_at = now
        sink.on_telemetry(sample, now)

    def _on_event(self, event: Event, now: float, sink: CoreSink) -> None:
        if event.replayed:
            routing = self.events.replayed(event)
            sink.on_replay(event)
        else:
            routing = self.events.live(event)
        self.count_routing(routing)
        sink.on_routing(routing, now)
        if routing.gap is not None:
            logger.info("event gap: %d..%d missing, fetching", routing.gap.first, routing.gap.upto - 1)

    def count_routing(self, routing: Routing) -> None:
        """Count what ``routing`` delivers and loses (the driver hands it to its tiers)."""
        self.stats.events_received += len(routing.both) + len(routing.ordinary)
        for _gap, count, _why in routing.lost:
            self.stats.events_lost += count

    def gap_done(self, gap: Gap, why: str) -> Routing:
        """The fetch for ``gap`` (:func:`fill_gap`) is over: what waited behind it, counted."""
        routing = self.events.gap_done(gap, why)
        self.count_routing(routing)
        return routing

    # ---------------------------------------------------------------------------- heartbeat rule

    @property
    def heartbeat_period_s(self) -> float:
        return self.heartbeat_s or self.watchdog_ms / 4000.0

    def add_gate(self, is_live: Callable[[], bool]) -> Callable[[], None]:
        """Register a session gate (see :meth:`iontodrive.client.DeviceClient.gate_heartbeats`); returns
        its remover. Registering the first gate and removing the last clear a latched safety failure."""
        if not self.gates:
            self.safety_failure = None
        self.gates.append(is_live)

        def remove() -> None:
            if is_live in self.gates:
                self.gates.remove(is_live)
            if not self.gates:
                self.safety_failure = None
                self.withheld = None

        return remove

    def safety_listener_failed(self, exc: BaseException) -> None:
        """A safety listener raised: latched (heartbeats withheld) while gates are registered."""
        if self.gates and self.safety_failure is None:
            self.safety_failure = exc

    def liveness_problem(self, now: float, health: DriverHealth) -> str | None:
        """The first clause of the heartbeat rule that fails at ``now``, in words, or None when heartbeats
        may be sent. Without gates there is no rule: always None."""
        gates = list(self.gates)
        if not gates:
            return None
        for gate in gates:
            try:
                live = bool(gate())
            except Exception as exc:
                return f"a session gate raised {exc!r}"
            if not live:
                return (
                    f"a session gate says its controller is not live ({getattr(gate, '__qualname__', gate)})"
                )
        failure = self.safety_failure
        if failure is not None:
            return f"a safety listener raised {failure!r}"
        lag = health.safety_lag_s(now)
        if lag > SAFETY_LAG_MAX_S:
            return f"the safety checks are {lag:.3f} s behind telemetry (bound {SAFETY_LAG_MAX_S} s)"
        checked = health.safety_checked_at()
        if checked is None or now - checked > SAFETY_FRESH_S:
            age = "no telemetry yet" if checked is None else f"the newest is {now - checked:.3f} s old"
            return f"no recent telemetry checked by the safety tier ({age}; bound {SAFETY_FRESH_S} s)"
        stalled = health.dispatch_stalled_s(now)
        if stalled > DISPATCH_WEDGED_S:
            return f"the dispatcher is wedged: nothing handled for {stalled:.3f} s while items wait"
        dead = health.dead_worker()
        if dead is not None:
            return f"{dead} has died"
        return None

    def heartbeat_poll(self, now: float, health: DriverHealth) -> float | None:
        """The heartbeat schedule and rule in one: None means "send a Heartbeat now"; otherwise the
        seconds to wait before asking again (the rest of the idle period, or :data:`HEARTBEAT_RECHECK_S`
        while the rule withholds heartbeats -- then :attr:`withheld` says why)."""
        idle = now - self.last_sent
        period = self.heartbeat_period_s
        if idle < period:
            return period - idle
        problem = self.liveness_problem(now, health)
        if problem is not None:  # S19: no heartbeat for a controller that is not live and current
            if problem != self.withheld:
                logger.warning("heartbeats withheld (the device watchdog will act): %s", problem)
            self.withheld = problem
            return HEARTBEAT_RECHECK_S
        if self.withheld is not None:
            logger.info("heartbeats resumed")
            self.withheld = None
        return None


def describe_bad_reply(message: Message, seq: int, reply: Message) -> str:
    """Why ``reply`` cannot answer ``message`` (sent as ``seq``), in words."""
    name = type(message).__name__
    if isinstance(reply, (Ack, Nack)) and reply.request_type != message.TYPE:
        try:
            named = MESSAGE_BY_TYPE[reply.request_type].__name__
        except KeyError:
            named = f"0x{reply.request_type:02X}"
        return (
            f"{name} (seq {seq}) answered with {type(reply).__name__} naming {named}: the reply does not "
            f"answer this request; not accepted"
        )
    return f"{name} (seq {seq}) answered with {type(reply).__name__}, which cannot answer it; not accepted"


# ------------------------------------------------------------------------------------ procedures
#
# Each procedure is a generator of steps. The driver performs each step and sends the outcome back in:
# a Call's checked reply (or throws the IontodriveError it raised), None after a Write, a Fetch's
# (report, events). The procedure's return value is the result.


@dataclass(frozen=True, slots=True)
class Call:
    """Send ``message`` as a request (with the driver's deadline and retries, or ``retries``) and send back
    its checked reply, which must be an instance of ``expect`` (else RemoteProtocolError)."""

    message: Message
    expect: type[Message] = Message
    retries: int | None = None


@dataclass(frozen=True, slots=True)
class Write:
    """Write raw bytes (not a request: nothing is awaited)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Fetch:
    """One FetchEvents: send back ``(report, events)``, the replayed events collected for it
    (:class:`ReplayCollector`), sorted by number."""

    from_event_no: int
    max_count: int

    @property
    def message(self) -> FetchEvents:
        return FetchEvents(self.from_event_no, self.max_count)


Step = Call | Write | Fetch
Procedure = Generator[Step, Any, M]


def check_type(message: Message, reply: Message, expect: type[M]) -> M:
    """``reply`` as ``expect``, or RemoteProtocolError naming both."""
    if not isinstance(reply, expect):
        got, want = type(reply).__name__, expect.__name__
        raise RemoteProtocolError(f"{type(message).__name__} answered with {got}, expected {want}")
    return reply


@dataclass(frozen=True, slots=True)
class Opened:
    """What :func:`opening` learned."""

    identity: IdentityReport
    status: StatusReport


def opening(
    core: ClientCore, *, watchdog_ms: int | None, telemetry_hz: int | None
) -> Generator[Step, Any, Opened]:
    """Open a connection: the protocol-2 handshake (``docs/protocol.md`` §7.3, §9), Identify (refusing
    another protocol version), the watchdog, the telemetry rate and the first status (which numbers the
    events from then on).

    The handshake: a random non-zero nonce names this host's session; the device answers ``SessionOpened``
    and starts a reply cache of its own for it, so no answer meant for an earlier host can reach this one
    (S17). A device that does not answer is sent one version-1 Identify (which changes nothing): if
    anything it sends is of another protocol version, it is refused as incompatible.

    Raises (through the driver):
        IncompatibleDeviceError: the device speaks another protocol version (e.g. version 1).
        LinkTimeoutError: no answer and no frame of another version either.
        RemoteProtocolError: the answer does not echo this host's nonce.
    """
    nonce = secrets.randbelow(MAX_HOST_NONCE) + 1
    try:
        opened = yield Call(OpenSession(nonce), SessionOpened)
    except LinkTimeoutError:
        if core.decoder.foreign_version is None:
            yield Write(encode_version_probe(core.seq.next()))
            with contextlib.suppress(LinkTimeoutError):  # only listening: a version-1 device answers
                yield Call(Heartbeat(), Message, retries=0)
        if core.decoder.foreign_version is not None:
            version = core.decoder.foreign_version
            raise IncompatibleDeviceError(version, SUPPORTED_PROTOCOL_VERSIONS) from None
        raise
    if opened.host_nonce != nonce:
        raise RemoteProtocolError(f"SessionOpened echoes nonce {opened.host_nonce}, sent {nonce}")
    if opened.previous_nonce:
        logger.info("host session %d replaces another host's session", opened.host_session_no)
    identity = yield Call(Identify(), IdentityReport)
    if identity.protocol_version not in SUPPORTED_PROTOCOL_VERSIONS:
        raise IncompatibleDeviceError(identity.protocol_version, SUPPORTED_PROTOCOL_VERSIONS)
    if watchdog_ms is not None:
        yield Call(SetWatchdog(watchdog_ms), Ack)
        core.watchdog_ms = watchdog_ms
    if telemetry_hz is not None:
        yield Call(ConfigureTelemetry(telemetry_hz), Ack)
    status = yield Call(GetStatus(), StatusReport)
    core.events.reset(status.last_event_no + 1)
    return Opened(identity, status)


def _contiguous_from(start: int, events: list[Event]) -> int:
    """The first number from ``start`` on that ``events`` lacks: where the next fetch begins (a replayed
    event lost on the link is asked for again, not skipped)."""
    got = {e.event_no for e in events}
    number = start
    while number in got:
        number += 1
    return number


def fill_gap(gap: Gap) -> Generator[Step, Any, str]:
    """Fetch ``gap``'s events (they reach the sequencer as they arrive); bounded in requests. Returns why
    whatever is still missing is missing (for :meth:`ClientCore.gap_done`).

    The device replays events as frames of their own after its ``EventsReport``; one lost on the link is
    fetched again (from the first number missing), so only events the device's ring no longer holds, or
    that :data:`MAX_GAP_REQUESTS` fetches could not bring, are reported lost -- each with the true reason."""
    next_no = gap.fetch_from
    replays_lost = False
    for _ in range(MAX_GAP_REQUESTS):
        if next_no >= gap.upto:
            return "the device's ring no longer held them"
        try:
            report, events = yield Fetch(next_no, min(FETCH_BATCH, gap.upto - next_no))
        except IontodriveError as exc:
            logger.warning("could not fetch missed events from %d: %s", next_no, exc)
            return f"fetching them failed ({exc})"
        next_no = max(next_no, report.first_available_no)
        if report.count == 0 or next_no >= report.next_event_no:
            return "the device's ring no longer held them"
        resumed = _contiguous_from(next_no, events)
        replays_lost = replays_lost or resumed < min(gap.upto, next_no + report.count)
        next_no = resumed
    if replays_lost:
        return f"their replays were lost on the link in {MAX_GAP_REQUESTS} FetchEvents"
    return f"more than {MAX_GAP_REQUESTS} FetchEvents would have been needed"


def refill(first: int, last: int) -> Generator[Step, Any, list[Event]]:
    """Events ``[first, last]`` fetched again (for a delivery tier that dropped them); a replay lost on the
    link is fetched again (as in :func:`fill_gap`). Bounded by :data:`MAX_GAP_REQUESTS`."""
    got: dict[int, Event] = {}
    next_no = first
    for _ in range(MAX_GAP_REQUESTS):
        if next_no > last:
            break
        report, events = yield Fetch(next_no, min(FETCH_BATCH, last - next_no + 1))
        next_no = max(next_no, report.first_available_no)
        if report.count == 0 or next_no >= report.next_event_no:
            break
        got.update((e.event_no, e) for e in events if next_no <= e.event_no <= last)
        next_no = _contiguous_from(next_no, list(got.values()))
    return [got[n] for n in sorted(got)]


class ReplayCollector:
    """Collects the replayed events that answer one FetchEvents from ``from_event_no``: :attr:`complete`
    once the report is in and as many events as it announced have arrived; ``on_complete`` (the driver's
    wake-up) is called once then."""

    def __init__(self, from_event_no: int, on_complete: Callable[[], None]) -> None:
        self.from_event_no = from_event_no
        self.events: list[Event] = []
        self.report: EventsReport | None = None
        self._on_complete = on_complete
        self.complete = False

    def add(self, event: Event) -> None:
        if event.event_no >= self.from_event_no:
            self.events.append(event)
            self._check()

    def reported(self, report: EventsReport) -> None:
        self.report = report
        self._check()

    def _check(self) -> None:
        if not self.complete and self.report is not None and len(self.events) >= self.report.count:
            self.complete = True
            self._on_complete()

    def result(self) -> list[Event]:
        return sorted(self.events, key=lambda e: e.event_no)
