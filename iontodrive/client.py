"""The device client: :class:`DeviceClient` (requests, replies, telemetry, events; no sessions).

**The heartbeat rule (S19).** A heartbeat means "a controller that is alive and up to date is watching".
While no session gate is registered the client heartbeats whenever it is otherwise silent, as long as this
process runs. While at least one gate is registered (:meth:`DeviceClient.gate_heartbeats`; the session
engine registers one for the life of a session) a heartbeat is sent only when *all* of these hold:

1. every gate's ``is_live()`` returns True (a gate that raises counts as False);
2. no safety listener has raised since the first gate was registered;
3. the safety tier is at most :data:`SAFETY_LAG_MAX_S` behind the newest telemetry (:attr:`safety_lag_s`);
4. the newest telemetry the safety tier has processed arrived at most :data:`SAFETY_FRESH_S` ago;
5. the ordinary dispatcher is not wedged: it has handled an item within :data:`DISPATCH_WEDGED_S` whenever
   items wait for it; and the client's threads are alive.

Otherwise heartbeats stop (:attr:`DeviceClient.heartbeat_withheld` says why), the device's watchdog (S10,
2 s by default, never less than 0.5 s) ramps the output down and records LINK_LOST. The bounds are well
under the watchdog: with the default 2 s watchdog and 0.5 s heartbeat period, a controller that stops
being live is followed by the device ramping down within about 2.5 s. Requests the session itself sends
(Stop, Abort, status polls) are not gated: they feed the watchdog too, which is right for a live session
and harmless for a wedged one (a wedged controller sends nothing).

The public :class:`iontodrive.Stimulator` (in :mod:`iontodrive.session`) adds dose sessions on top.

What the client *knows* -- sequence numbers, matching and checking replies, deadlines and retries, the
handshake and opening, event gaps and ``FetchEvents``, the heartbeat schedule and the rule above -- is the
sans-I/O :class:`~iontodrive.clientcore.ClientCore` and its procedures; this module is its threaded
driver (threads, the link, waiting), as :mod:`iontodrive.aio` is its asyncio driver.

Threads (all daemon, all owned by the client, all stopped by :meth:`DeviceClient.close`):

* **reader** -- reads the link whenever no request is waiting (see below), feeds the protocol
  :class:`~iontodrive.protocol.Decoder`, completes pending requests by sequence number and hands telemetry
  and events to the two delivery tiers. It never runs user code and never waits on a queue, so a slow
  callback can never delay a reply (the same holds for a requesting thread that reads the link itself).
* **safety** -- calls *safety* listeners (``safety=True``: the session engine's over-current, lift and
  end checks) in arrival order, ahead of and independent of everything else.
* **dispatch** -- calls ordinary listeners (telemetry, events, errors: user callbacks, record writes) in
  arrival order and fills subscription queues.
* **events** -- fetches missed events (a gap in event numbers) with ``FetchEvents``; the live events
  after a gap are held back until it is filled, so both tiers see every event once, in order.
* **heartbeat** -- sends :class:`~iontodrive.protocol.Heartbeat` whenever no request went out for
  ``heartbeat_s`` (default: a quarter of the device watchdog), subject to the rule above.

Queues (:mod:`iontodrive.delivery`): every one is bounded and none can block the thread reading the link.
Each tier holds at most :data:`TIER_TELEMETRY_CAP` samples (full: the oldest is dropped and counted) and
:data:`TIER_EVENT_CAP` events (full: the event is dropped for that tier, counted, and fetched again from
the device by that tier's thread when it gets there; what cannot be fetched again is reported to error
listeners as :class:`~iontodrive.errors.EventsLostError`). A gap is fetched for at most its newest
:data:`~iontodrive.delivery.MAX_GAP_FETCH` numbers; at most :data:`~iontodrive.delivery.MAX_HELD_EVENTS`
live events wait behind it. Subscriptions drop their oldest item when full.

Locking contract: every public method may be called from any thread, concurrently. Requests from
different threads are in flight at the same time, each matched to its reply by sequence number; the locks
held across I/O are the link's write lock and the *lead* (below). Listener callbacks run on their tier's
thread, one at a time; they may call the client (e.g. ``status()``), but must not block for long. An
exception raised by a listener is logged, delivered to the error listeners and re-raised to the session
that owns the listener (a safety listener's also withholds heartbeats while a gate is registered). A
failure of the reader thread (the link died) is stored and raised by the next call in any thread.

Replies are checked fully: a reply must be of a type the request allows
(:data:`~iontodrive.protocol.REPLY_TYPES_FOR_REQUEST`), and an Ack or Nack must name the request it
answers; anything else is a :class:`~iontodrive.errors.RemoteProtocolError`, never accepted.

Who reads the link: one thread at a time, whichever holds the client's *lead* lock, so frames are decoded
in order. On a POSIX port or pty a thread that sent a request takes the lead and reads (and dispatches)
everything that arrives until its own reply is there -- one thread switch less per round trip than
handing the reply over from the reader thread. The reader thread stays out of the way for ``LEASE_S``
after the last such read (an interrupt wakes it from its wait when a request needs the lead), then reads
telemetry and events as usual. A request that finds another request reading waits for its reply like any
caller; a thread that leaves the lead while other requests still wait hands it straight back to the
reader thread. (In one rare interleaving -- a request registers just after the leaving thread looked, and
tries the lead just before it is released -- that request waits until the reader thread's lease runs out:
at most ``LEASE_S`` longer, never past its deadline. Closing that window by releasing before looking cost
15-25 % of the median with four threads requesting at once, so it stays.) Other links (``socket://``,
``sim://``) are read by the reader thread alone.

Every wait has a deadline: a request is sent, then re-sent with the *same* sequence number after
``timeout_s`` for up to ``retries`` more times (the device executes a repeat at most once, S17), then
:class:`~iontodrive.errors.LinkTimeoutError` is raised. No call blocks forever.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from iontodrive.clientcore import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_WATCHDOG_MS,
    DISPATCH_WEDGED_S,
    FETCH_BATCH,
    HEARTBEAT_RECHECK_S,
    MAX_GAP_REQUESTS,
    SAFETY_FRESH_S,
    SAFETY_LAG_MAX_S,
    SUPPORTED_PROTOCOL_VERSIONS,
    Call,
    ClientCore,
    Fetch,
    LinkStatistics,
    PendingRequest,
    ReplayCollector,
    Step,
    Write,
    check_retries,
    check_timeout_s,
    check_type,
    fill_gap,
    opening,
    refill,
)
from iontodrive.delivery import DeliveryTier, Mark, Routing, Wakeup
from iontodrive.errors import (
    EventsLostError,
    IontodriveError,
    LinkClosedError,
    LinkError,
    LinkTimeoutError,
    RemoteProtocolError,
)
from iontodrive.frametrace import FrameTrace
from iontodrive.link import SerialLink
from iontodrive.oneshot import OneShot
from iontodrive.protocol import (
    Ack,
    CheckContact,
    ClearFault,
    ConfigureTelemetry,
    ContactReport,
    Event,
    EventsReport,
    GetStatus,
    Heartbeat,
    Identify,
    IdentityReport,
    Message,
    Reset,
    SetWatchdog,
    StatusReport,
    Telemetry,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_WATCHDOG_MS",
    "DISPATCH_WEDGED_S",
    "FETCH_BATCH",
    "HEARTBEAT_RECHECK_S",
    "LEASE_S",
    "MAX_GAP_REQUESTS",
    "SAFETY_FRESH_S",
    "SAFETY_LAG_MAX_S",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "TIER_EVENT_CAP",
    "TIER_TELEMETRY_CAP",
    "DeviceClient",
    "LinkStatistics",
    "Subscription",
]

LEASE_S = 0.01  # the reader thread stays parked this long after a requesting thread last read the link
# Delivery tier bounds (items waiting per tier).
TIER_TELEMETRY_CAP = 10_000
TIER_EVENT_CAP = 10_000
_FLUSH = b"\x00"  # a lone delimiter makes the device drop any partial frame
_GET_STATUS = GetStatus()  # messages are immutable: the most frequent request is made once

M = TypeVar("M", bound=Message)
R = TypeVar("R")

TelemetryListener = Callable[[Telemetry], None]
EventListener = Callable[[Event], None]
ErrorListener = Callable[[BaseException], None]


class _Health:
    """The threaded driver's side of the heartbeat rule (:class:`~iontodrive.clientcore.DriverHealth`)."""

    def __init__(self, client: DeviceClient) -> None:
        self._client = client

    def safety_lag_s(self, now: float) -> float:
        return self._client._safety.lag_s(now)

    def safety_checked_at(self) -> float | None:
        return self._client._safety_checked_at()

    def dispatch_stalled_s(self, now: float) -> float:
        return self._client._ordinary.stalled_s(now)

    def dead_worker(self) -> str | None:
        client = self._client
        for thread in (client._safety.thread, client._ordinary.thread, client._reader):
            if not thread.is_alive():
                return f"thread {thread.name}"
        return None


class Subscription(Iterator[M]):
    """A bounded queue of telemetry samples or events, iterable until closed.

    When full, the oldest item is dropped and :attr:`dropped` counts it (the device is never slowed down
    by a slow consumer). Iteration ends when the subscription or the client is closed.
    """

    def __init__(self, owner: DeviceClient, kind: type[M], maxsize: int) -> None:
        self._owner = owner
        self.kind = kind
        self._queue: queue.Queue[M | None] = queue.Queue(maxsize)
        self.dropped = 0
        self._closed = False

    def _put(self, item: M) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
                    self.dropped += 1

    def get(self, timeout: float | None = None) -> M | None:
        """Next item, or None on timeout or when closed."""
        if self._closed and self._queue.empty():
            return None
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def __next__(self) -> M:
        while True:
            item = self.get(timeout=0.1)
            if item is not None:
                return item
            if self._closed or self._owner.closed:
                raise StopIteration

    def close(self) -> None:
        self._closed = True
        self._owner._unsubscribe(self)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    def __enter__(self) -> Subscription[M]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeviceClient:
    """A connected, identified stimulator. Create with :meth:`open`; use as a context manager.

    Closing (or leaving the ``with`` block, whatever the reason) first ramps down any running session
    started through this client (S16), then stops the threads and closes the link.
    """

    def __init__(
        self,
        link: SerialLink,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        watchdog_ms: int | None = DEFAULT_WATCHDOG_MS,
        heartbeat_s: float | None = None,
        telemetry_hz: int | None = None,
        trace_path: str | Path | None = None,
        caller_reads: bool = True,
    ) -> None:
        self._core = core = ClientCore(
            timeout_s=timeout_s,
            retries=retries,
            heartbeat_s=heartbeat_s,
            watchdog_ms=watchdog_ms or DEFAULT_WATCHDOG_MS,
            now=time.monotonic(),
        )
        self._link = link
        self.url = link.url
        self.stats = core.stats
        self._trace = FrameTrace(trace_path)
        self._decoder = core.decoder
        self._seq = core.seq  # shared by all threads without a lock (see SequenceCounter)
        self._pending = core.pending  # seq -> request in flight (single dict operations only)
        self._health = _Health(self)
        self._closed = threading.Event()
        self._failure: BaseException | None = None
        self._telemetry_listeners: list[TelemetryListener] = []
        self._event_listeners: list[EventListener] = []
        self._safety_telemetry_listeners: list[TelemetryListener] = []
        self._safety_event_listeners: list[EventListener] = []
        self._error_listeners: list[ErrorListener] = []
        self._subscriptions: list[Subscription[Any]] = []
        self._replay_collectors: list[ReplayCollector] = []
        self._listener_lock = threading.Lock()
        self._events = core.events
        self._gap_wake = Wakeup()
        self._safety = DeliveryTier(
            "safety",
            on_telemetry=self._safety_telemetry,
            on_event=self._safety_event,
            on_error=self._notify_error,
            refill=self._refill_events,
            telemetry_cap=TIER_TELEMETRY_CAP,
            event_cap=TIER_EVENT_CAP,
        )
        self._ordinary = DeliveryTier(
            "dispatch",
            on_telemetry=self._ordinary_telemetry,
            on_event=self._ordinary_event,
            on_error=self._notify_error,
            refill=self._refill_events,
            telemetry_cap=TIER_TELEMETRY_CAP,
            event_cap=TIER_EVENT_CAP,
        )
        self._dispatcher = self._ordinary.thread
        self._session_closers: list[Callable[[], None]] = []
        self.identity: IdentityReport
        self._caller_reads = bool(caller_reads) and link.interruptible
        # Held by whichever thread reads the link. An RLock, never taken twice, only so that a thread can ask
        # whether it holds it (_await_reply: Ctrl-C or SIGTERM may strike just after it was taken).
        self._lead = threading.RLock()
        self._lease_until = 0.0  # monotonic time until which the reader thread stays parked
        self._reader_resume = threading.Event()

        self._reader = threading.Thread(target=self._read_loop, name="iontodrive-reader", daemon=True)
        self._gap_fetcher = threading.Thread(target=self._gap_loop, name="iontodrive-events", daemon=True)
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="iontodrive-heartbeat", daemon=True
        )
        self._reader.start()
        self._safety.start()
        self._ordinary.start()
        self._gap_fetcher.start()
        try:
            self._link.write(_FLUSH)  # flush any partial frame the device holds
            self.identity = self._run(
                opening(core, watchdog_ms=watchdog_ms, telemetry_hz=telemetry_hz)
            ).identity
        except BaseException:
            self._shutdown()
            raise
        self._heartbeat.start()
        logger.info(
            "connected to %s serial %d (firmware %d.%d.%d) on %s",
            self.identity.model,
            self.identity.serial_number,
            self.identity.firmware_major,
            self.identity.firmware_minor,
            self.identity.firmware_patch,
            self.url,
        )

    # ------------------------------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        watchdog_ms: int | None = DEFAULT_WATCHDOG_MS,
        heartbeat_s: float | None = None,
        telemetry_hz: int | None = None,
        trace_path: str | Path | None = None,
        caller_reads: bool = True,
        **serial_options: Any,
    ) -> Self:
        """Open ``url`` (anything pyserial's ``serial_for_url`` takes), identify the device, return a client.

        Args:
            timeout_s: reply deadline per attempt.
            retries: re-sends with the same sequence number after a missed deadline.
            watchdog_ms: host-silence timeout to set on the device (S10), or None to leave it as is.
            heartbeat_s: heartbeat period; default a quarter of the watchdog.
            telemetry_hz: telemetry rate to configure, or None to leave the device's (2 Hz after power-up).
            trace_path: also write the decoded frame trace to this file.
            caller_reads: let a requesting thread read its own reply when the link allows it (the
                default; see "Who reads the link"); False leaves all reading to the reader thread.
            serial_options: passed to pyserial (e.g. ``baudrate``).

        Raises:
            LinkClosedError: the port cannot be opened.
            LinkTimeoutError: the device does not answer.
            IncompatibleDeviceError: the device speaks another protocol version.
        """
        link = SerialLink.open(url, **serial_options)
        try:
            return cls(
                link,
                timeout_s=timeout_s,
                retries=retries,
                watchdog_ms=watchdog_ms,
                heartbeat_s=heartbeat_s,
                telemetry_hz=telemetry_hz,
                trace_path=trace_path,
                caller_reads=caller_reads,
            )
        except BaseException:
            link.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def timeout_s(self) -> float:
        """Reply deadline per attempt, seconds (settable: applies to requests made afterwards)."""
        return self._core.timeout_s

    @timeout_s.setter
    def timeout_s(self, value: float) -> None:
        self._core.timeout_s = check_timeout_s(value)

    @property
    def retries(self) -> int:
        """Re-sends with the same sequence number after a missed deadline (settable, as ``timeout_s``)."""
        return self._core.retries

    @retries.setter
    def retries(self, value: int) -> None:
        self._core.retries = check_retries(value)

    @property
    def watchdog_ms(self) -> int:
        """The device watchdog this client set (S10); the heartbeat period follows it."""
        return self._core.watchdog_ms

    @property
    def core(self) -> ClientCore:
        """The sans-I/O state machine this client drives (read it; do not drive it from outside)."""
        return self._core

    @property
    def link(self) -> SerialLink:
        return self._link

    def close(self) -> None:
        """Ramp down any session this client started (S16), then stop the threads and close the link.

        Safe to call more than once and from any thread. Never raises for a link that is already dead: in
        that case the device's watchdog ramps the output down (S10), and this is logged.
        """
        if self._closed.is_set():
            return
        for closer in list(self._session_closers):
            try:
                closer()
            except IontodriveError as exc:
                logger.warning("ramp-down on close failed (%s); the device watchdog will ramp down", exc)
        self._shutdown()

    def _shutdown(self) -> None:
        self._closed.set()
        self._reader_resume.set()
        self._link.close()
        self._safety.stop()
        self._ordinary.stop()
        self._gap_wake.signal()
        threads = (
            self._reader,
            self._safety.thread,
            self._ordinary.thread,
            self._gap_fetcher,
            self._heartbeat,
        )
        deadline = time.monotonic() + 2.0  # for all of them together: a wedged listener cannot hold close()
        for thread in threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for pending in list(self._pending.values()):
            waiter = pending.waiter
            if waiter is not None:
                waiter.set()
        with self._listener_lock:
            subscriptions = list(self._subscriptions)
        for sub in subscriptions:
            sub.close()
        self._trace.close()

    # ----------------------------------------------------------------------------------- requests

    def send_safety_command(self, message: Message) -> None:
        """Send ``message`` (``Abort``, ``Stop``) at once, from the calling thread, with no retry.

        Failures are logged, never raised: the caller confirms zero output from telemetry and sends again.
        (The session engine calls this from a safety listener; :class:`iontodrive.aio.LoopClient` has the
        same method for a loop, where the answer cannot be waited for.)"""
        try:
            self.request(message, retries=0)
        except IontodriveError as exc:
            logger.warning("%s unanswered: %s", type(message).__name__, exc)

    def request(
        self, message: Message, *, timeout_s: float | None = None, retries: int | None = None
    ) -> Message:
        """Send a request and return its reply (never a Nack).

        Raises:
            DeviceRefusal: the device answered NACK; nothing changed on the device.
            LinkTimeoutError: no answer within ``timeout_s`` after ``retries`` re-sends of the same frame.
            LinkClosedError: the link is closed or failed (also raised for an earlier reader failure).
            LocalProtocolError: ``message`` cannot be encoded (out-of-range field).
            RemoteProtocolError: the reply is of a type that cannot answer ``message``, or an Ack/Nack
                names another request (the request may have taken effect: treat it as unconfirmed).
        """
        self._raise_if_failed()
        core = self._core
        pending = core.begin(message, timeout_s=timeout_s, retries=retries)
        pending.waiter = waiter = OneShot()
        try:
            while True:
                self._send(pending)
                if self._await_reply(waiter, pending.timeout_s):
                    break
                if self._closed.is_set():
                    break
                core.expire(pending)  # LinkTimeoutError once no attempt is left
        finally:
            core.forget(pending)
        if pending.reply is None:
            self._raise_if_failed()
            raise LinkClosedError(f"link {self.url} closed while waiting for {type(message).__name__}")
        return core.finish(pending)

    def _await_reply(self, pending: OneShot, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for ``pending``'s reply, reading the link ourselves when we can take
        the lead (see "Who reads the link" in the module docstring). True once the reply (or a failure)
        is in."""
        if not self._caller_reads:
            return pending.wait(timeout_s)
        monotonic = time.monotonic
        now = monotonic()
        another_caller_reads = self._lease_until > now
        self._lease_until = now + LEASE_S
        lead = self._lead
        # Ctrl-C and SIGTERM (session.Terminated) are raised in the main thread wherever it is, also just
        # after an acquire() has returned. So the lead is taken inside `try` and released in `finally` if
        # this thread holds it; and since Python cannot close every such gap (one can strike between any
        # two calls), a lead this thread still holds from an interrupted request is given back here, by
        # its next request -- such as the Stop that a session sends when interrupted.
        while lead._is_owned():  # type: ignore[attr-defined]  # (RLock's own test, as Condition uses it)
            lead.release()
        try:
            if not lead.acquire(blocking=False):
                if another_caller_reads:  # it reads (and completes) our reply too
                    return pending.wait(timeout_s)
                self._link.interrupt()  # the reader thread holds the lead: wake it from its wait
                if not lead.acquire(timeout=timeout_s):
                    return pending.is_set()
            end = now + timeout_s  # the request's deadline: time spent waiting for the lead counts too
            read = self._link.read
            tracing = self._trace.active  # asked here, while the device works, not when the reply is in
            while not pending.is_set():  # (the reader thread may have completed it before we took the lead)
                left = end - monotonic()
                if left <= 0:
                    break
                data = read(left)
                if data:
                    self._process(data, tracing)
                elif self._closed.is_set():
                    break
        except LinkClosedError as exc:
            if not self._closed.is_set():
                self._fail(exc)
        except Exception as exc:  # a bug while decoding: fail loudly, like the reader thread
            self._fail(exc)
        finally:
            if lead._is_owned():  # type: ignore[attr-defined]
                others_wait = False
                try:  # the release in a finally of its own: a signal during this bookkeeping must not keep it
                    self._lease_until = monotonic() + LEASE_S  # the reader thread stays parked after our read
                    if pending.is_set():
                        self.stats.caller_reads += 1
                    if len(self._pending) > 1:  # ours is one of them
                        waiting = list(self._pending.values())
                        others_wait = any(p.reply is None for p in waiting if p.waiter is not pending)
                finally:
                    lead.release()
                if others_wait:  # hand the lead straight back to the reader thread
                    self._lease_until = 0.0
                    self._reader_resume.set()
        return pending.is_set()

    def _request_typed(self, message: Message, reply_type: type[M], **kwargs: Any) -> M:
        return check_type(message, self.request(message, **kwargs), reply_type)

    def _send(self, pending: PendingRequest) -> None:
        try:
            self._link.write(pending.frame)
        except LinkClosedError as exc:
            self._fail(exc)
            raise
        # the bookkeeping after the write: the device is already at work on the request meanwhile
        self._core.sent(pending, time.monotonic())
        if self._trace.active:
            self._trace.sent(pending.seq, pending.message, pending.frame)

    def _run(self, procedure: Generator[Step, Any, R]) -> R:
        """Perform a core procedure (:mod:`iontodrive.clientcore`) step by step with blocking calls."""
        outcome: Any = None
        error: IontodriveError | None = None
        while True:
            try:
                step = procedure.send(outcome) if error is None else procedure.throw(error)
            except StopIteration as stop:
                result: R = stop.value
                return result
            outcome, error = None, None
            try:
                if isinstance(step, Call):
                    outcome = self._request_typed(step.message, step.expect, retries=step.retries)
                elif isinstance(step, Write):
                    self._link.write(step.data)
                else:
                    outcome = self._fetch_raw(step)
            except IontodriveError as exc:
                error = exc

    def identify(self) -> IdentityReport:
        """Identity and hard limits (S12)."""
        return self._request_typed(Identify(), IdentityReport)

    def status(self) -> StatusReport:
        """A snapshot of the device's state, output and session."""
        reply = self.request(_GET_STATUS)
        if reply.__class__ is not StatusReport:
            got = type(reply).__name__
            raise RemoteProtocolError(f"GetStatus answered with {got}, expected StatusReport")
        return reply

    def check_contact(self, target_current_ua: int, probe_current_ua: int = 50) -> ContactReport:
        """Measure electrode-skin impedance with ``probe_current_ua`` (<= 50 uA, S3).

        ``target_current_ua`` is the current you intend to deliver; the device judges the impedance against
        the compliance it would need. Raises DeviceRefusal if output is not at zero.
        """
        return self._request_typed(CheckContact(probe_current_ua, target_current_ua), ContactReport)

    def configure_telemetry(self, rate_hz: int) -> None:
        """Set the telemetry rate in hertz (0 = off; maximum ``identity.max_telemetry_hz``).

        Over a serial port paced by a UART, a rate its baud rate cannot carry is refused with
        ``SafetyRefusal`` (field ``rate_hz``) and one that leaves no room for replies is logged
        (:mod:`iontodrive.telemetry_budget`)."""
        from iontodrive.telemetry_budget import check_telemetry_rate, paced_baud  # link budget (issue 19)

        check_telemetry_rate(rate_hz, paced_baud(getattr(self._link, "port", None)))
        self._request_typed(ConfigureTelemetry(rate_hz), Ack)

    def set_watchdog(self, timeout_ms: int) -> None:
        """Set the device's host-silence timeout (S10) and adapt the heartbeat period to it."""
        self._request_typed(SetWatchdog(timeout_ms), Ack)
        self._core.watchdog_ms = timeout_ms

    def clear_fault(self) -> None:
        """Clear a latched fault (S9). Refused while output is not at zero."""
        self._request_typed(ClearFault(), Ack)

    def reset(self) -> None:
        """Restart the device firmware (only with output at zero). Events restart at 1 afterwards."""
        self._request_typed(Reset(), Ack)

    def heartbeat(self) -> None:
        self._request_typed(Heartbeat(), Ack)

    def fetch_events(self, from_event_no: int, max_count: int = FETCH_BATCH) -> list[Event]:
        """Fetch events from the device's ring, from ``from_event_no`` on (at most ``max_count``).

        Replayed events not seen before are also delivered to event listeners (once each, in order); when
        this is called from any thread but the client's own, they have reached the listeners when it
        returns (waiting at most one request deadline for each tier).
        """
        _report, events = self._fetch_raw(Fetch(from_event_no, max_count))
        if threading.current_thread() not in (self._safety.thread, self._ordinary.thread, self._gap_fetcher):
            self._wait_dispatched(self.timeout_s * (1 + self.retries))
        return events

    def _fetch_raw(self, step: Fetch) -> tuple[EventsReport, list[Event]]:
        """One FetchEvents: the report and the replayed events it announced (sorted; those that arrived
        within a request deadline). The events go through the sequencer as they arrive (see on_replay)."""
        done = OneShot()  # waited for in the caller's thread: see iontodrive.oneshot
        collector = ReplayCollector(step.from_event_no, done.set)
        with self._listener_lock:
            self._replay_collectors.append(collector)
        try:
            reply = self._request_typed(step.message, EventsReport)
            collector.reported(reply)
            done.wait(self.timeout_s * (1 + self.retries))
        finally:
            with self._listener_lock:
                self._replay_collectors.remove(collector)
        events = collector.result()
        self.stats.events_fetched += len(events)
        return reply, events

    def _refill_events(self, first: int, last: int) -> list[Event]:
        """Events ``[first, last]`` fetched again for a tier that dropped them (runs on that tier)."""
        if self._closed.is_set():
            return []
        return self._run(refill(first, last))

    def _wait_dispatched(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until every item queued so far has been handled by both tiers."""
        marks = (Mark(), Mark())
        self._safety.put_control(marks[0])
        self._ordinary.put_control(marks[1])
        deadline = time.monotonic() + timeout_s
        return all(mark.reached.wait(max(0.0, deadline - time.monotonic())) for mark in marks)

    # ------------------------------------------------------------------------------ subscriptions

    def add_telemetry_listener(
        self, callback: TelemetryListener, *, safety: bool = False
    ) -> Callable[[], None]:
        """Call ``callback(sample)`` for every sample, in arrival order; returns a remover.

        Ordinary listeners run on the dispatcher thread. ``safety=True``: on the client's safety thread,
        ahead of and independent of ordinary listeners (a slow ordinary listener cannot delay it). Keep
        safety listeners short (the heartbeat rule allows them :data:`SAFETY_LAG_MAX_S` of lag); one that
        raises is reported to error listeners and withholds heartbeats while a gate is registered.
        """
        return self._add(self._safety_telemetry_listeners if safety else self._telemetry_listeners, callback)

    def add_event_listener(self, callback: EventListener, *, safety: bool = False) -> Callable[[], None]:
        """Call ``callback(event)`` for every event, live or fetched after a gap, once each, in order
        (``safety``: as for :meth:`add_telemetry_listener`)."""
        return self._add(self._safety_event_listeners if safety else self._event_listeners, callback)

    def gate_heartbeats(self, is_live: Callable[[], bool]) -> Callable[[], None]:
        """Send heartbeats only while ``is_live()`` (and the rest of the heartbeat rule, see the module
        docstring) holds; returns the function that removes this gate.

        ``is_live`` is called from the heartbeat thread about every :data:`HEARTBEAT_RECHECK_S` while a
        heartbeat is due; it must be quick and must not call the client. Registering the first gate and
        removing the last clear a latched safety-listener failure.
        """
        with self._listener_lock:
            remove_gate = self._core.add_gate(is_live)

        def remove() -> None:
            with self._listener_lock:
                remove_gate()

        return remove

    @property
    def safety_lag_s(self) -> float:
        """Seconds the safety tier is behind the newest telemetry (or event): how long the oldest item it
        has not finished has waited; 0 when it is up to date."""
        return self._safety.lag_s()

    @property
    def heartbeat_withheld(self) -> str | None:
        """Why heartbeats are being withheld right now (the heartbeat rule), or None."""
        return self._core.withheld

    def liveness_problem(self) -> str | None:
        """The first clause of the heartbeat rule that fails now, in words, or None when heartbeats may
        be sent. Without gates there is no rule: always None."""
        return self._core.liveness_problem(time.monotonic(), self._health)

    def _safety_checked_at(self) -> float | None:
        """Arrival time of the newest sample the safety tier has processed (every sample counts as
        processed at once while there are no safety listeners)."""
        if self._safety_telemetry_listeners or self._safety_event_listeners:
            return self._safety.last_telemetry_arrival
        return self._core.last_telemetry_at

    @property
    def delivery_stats(self) -> dict[str, dict[str, int]]:
        """Per tier: items handled, telemetry dropped (oldest first), events dropped and refilled."""
        return {
            tier.name: {
                "handled": tier.handled,
                "dropped_telemetry": tier.dropped_telemetry,
                "dropped_events": tier.dropped_events,
                "refilled_events": tier.refilled_events,
            }
            for tier in (self._safety, self._ordinary)
        }

    def add_error_listener(self, callback: ErrorListener) -> Callable[[], None]:
        """Call ``callback(exc)`` for errors on background threads (link failure, listener exceptions)."""
        return self._add(self._error_listeners, callback)

    def subscribe_telemetry(self, maxsize: int = 10_000) -> Subscription[Telemetry]:
        """A queue of telemetry samples (iterate it, or ``get(timeout)``)."""
        sub: Subscription[Telemetry] = Subscription(self, Telemetry, maxsize)
        with self._listener_lock:
            self._subscriptions.append(sub)
        return sub

    def subscribe_events(self, maxsize: int = 10_000) -> Subscription[Event]:
        """A queue of events (iterate it, or ``get(timeout)``)."""
        sub: Subscription[Event] = Subscription(self, Event, maxsize)
        with self._listener_lock:
            self._subscriptions.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription[Any]) -> None:
        with self._listener_lock:
            if sub in self._subscriptions:
                self._subscriptions.remove(sub)

    def _add(self, listeners: list[Any], callback: Any) -> Callable[[], None]:
        with self._listener_lock:
            listeners.append(callback)

        def remove() -> None:
            with self._listener_lock:
                if callback in listeners:
                    listeners.remove(callback)

        return remove

    # Sessions register a closer so that closing the client ramps them down (S16).
    def _register_session_closer(self, closer: Callable[[], None]) -> Callable[[], None]:
        self._session_closers.append(closer)

        def remove() -> None:
            if closer in self._session_closers:
                self._session_closers.remove(closer)

        return remove

    # --------------------------------------------------------------------------------- failures

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            logger.error("link failure on %s: %s", self.url, exc)
            self._ordinary.put_control(exc)
        for pending in list(self._pending.values()):
            waiter = pending.waiter
            if waiter is not None:
                waiter.set()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            if isinstance(self._failure, LinkError):
                raise LinkClosedError(f"link {self.url} failed: {self._failure}") from self._failure
            raise LinkClosedError(f"link {self.url} failed: {self._failure!r}") from self._failure
        if self._closed.is_set():
            raise LinkClosedError(f"link {self.url} is closed")

    @property
    def last_frame_age_s(self) -> float:
        """Seconds since the last valid frame arrived from the device (wall clock)."""
        return time.monotonic() - self._core.last_received

    @property
    def failure(self) -> BaseException | None:
        """The background failure that broke the link, if any."""
        return self._failure

    # ---------------------------------------------------------------------------------- threads

    def _read_loop(self) -> None:
        link = self._link
        lead = self._lead
        caller_reads = self._caller_reads
        while not self._closed.is_set():
            if caller_reads:
                parked = self._lease_until - time.monotonic()
                if parked > 0:  # requesting threads are reading the link: stay out of their way
                    self._reader_resume.wait(parked)
                    self._reader_resume.clear()
                    continue
                if not lead.acquire(timeout=LEASE_S):
                    continue
            try:
                data = link.read()
                if data:
                    self._process(data, self._trace.active)
            except LinkClosedError as exc:
                if not self._closed.is_set():
                    self._fail(exc)
                return
            except Exception as exc:  # a bug or an unexpected port error: never die silently
                self._fail(exc)
                return
            finally:
                if caller_reads:
                    lead.release()

    def _process(self, data: bytes, tracing: bool) -> None:
        """Decode ``data`` and act on every frame in it (and trace it, if ``tracing``); called only by the
        thread holding the lead. Never waits on a queue."""
        core = self._core
        if tracing or core.trace is not None:
            core.trace = self._trace.received if tracing else None
        core.receive(data, time.monotonic(), self)

    # the core's sink (iontodrive.clientcore.CoreSink): called by whichever thread holds the lead

    def on_reply(self, pending: PendingRequest) -> None:
        waiter = pending.waiter
        if waiter is not None:
            waiter.set()

    def on_telemetry(self, sample: Telemetry, now: float) -> None:
        if self._safety_telemetry_listeners or self._safety_event_listeners:
            self._safety.put_telemetry(sample, now)
        if self._telemetry_listeners or self._subscriptions:
            self._ordinary.put_telemetry(sample, now)

    def on_replay(self, event: Event) -> None:
        # collected here, not by a tier: fetch_events() may be running on a tier's thread itself
        with self._listener_lock:
            collectors = list(self._replay_collectors)
        for collector in collectors:
            collector.add(event)

    def on_routing(self, routing: Routing, now: float) -> None:
        """Hand the sequencer's events to the tiers (see :class:`~iontodrive.delivery.Routing`)."""
        safety, ordinary = self._safety, self._ordinary
        for event in routing.safety:
            safety.put_event(event, now)
        for event in routing.both:
            safety.put_event(event, now)
            ordinary.put_event(event, now)
        for event in routing.ordinary:
            ordinary.put_event(event, now)
        for gap, count, why in routing.lost:  # never silently: counted (by the core), logged, told
            error = EventsLostError(count, gap.first, gap.upto - 1, why)
            logger.warning("%s", error)
            ordinary.put_control(error)
        if routing.gap is not None:
            self._gap_wake.signal()

    def _gap_loop(self) -> None:
        """The events thread: fill each gap the sequencer found, then release what waited behind it."""
        while not self._closed.is_set():
            if not self._gap_wake.wait(0.5):
                continue
            gap = self._events.gap
            while gap is not None and not self._closed.is_set():
                why = self._run(fill_gap(gap))
                routing = self._core.gap_done(gap, why)
                self.on_routing(routing, time.monotonic())
                gap = routing.gap or self._events.gap

    # the two tiers' handlers (each runs on its tier's thread)

    def _safety_telemetry(self, sample: Telemetry) -> None:
        for listener in list(self._safety_telemetry_listeners):
            self._call_safety_listener(listener, sample)

    def _safety_event(self, event: Event) -> None:
        for listener in list(self._safety_event_listeners):
            self._call_safety_listener(listener, event)

    def _call_safety_listener(self, listener: Callable[[Any], None], item: Message) -> None:
        try:
            listener(item)
        except Exception as exc:
            logger.exception("safety listener %r raised", listener)
            with self._listener_lock:
                self._core.safety_listener_failed(exc)
            self._notify_error(exc)

    def _ordinary_telemetry(self, sample: Telemetry) -> None:
        with self._listener_lock:
            listeners = list(self._telemetry_listeners)
            subs = [s for s in self._subscriptions if s.kind is Telemetry]
        for sub in subs:
            sub._put(sample)
        for listener in listeners:
            self._call_listener(listener, sample)

    def _ordinary_event(self, event: Event) -> None:
        with self._listener_lock:
            listeners = list(self._event_listeners)
            subs = [s for s in self._subscriptions if s.kind is Event]
        for sub in subs:
            sub._put(event)
        for listener in listeners:
            self._call_listener(listener, event)

    def _call_listener(self, listener: Callable[[Any], None], item: Message) -> None:
        try:
            listener(item)
        except Exception as exc:
            logger.exception("listener %r raised", listener)
            self._notify_error(exc)

    def _notify_error(self, exc: BaseException) -> None:
        with self._listener_lock:
            listeners = list(self._error_listeners)
        for listener in listeners:
            try:
                listener(exc)
            except Exception:
                logger.exception("error listener %r raised", listener)

    def _heartbeat_loop(self) -> None:
        while not self._closed.is_set():
            wait = self._core.heartbeat_poll(time.monotonic(), self._health)
            if wait is not None:  # not due, or withheld by the heartbeat rule (S19)
                self._closed.wait(wait)
                continue
            try:
                self.heartbeat()
            except LinkTimeoutError as exc:
                logger.warning("heartbeat unanswered: %s", exc)
            except IontodriveError as exc:  # link gone, or a device answering nonsense: its watchdog acts
                if not self._closed.is_set():
                    logger.error("heartbeats stopped: %s", exc)
                return
