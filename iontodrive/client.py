"""The device client: :class:`DeviceClient` (requests, replies, telemetry, events; no sessions).

The public :class:`iontodrive.Stimulator` (in :mod:`iontodrive.session`) adds dose sessions on top.

Threads (all daemon, all owned by the client, all stopped by :meth:`DeviceClient.close`):

* **reader** -- reads the link whenever no request is waiting (see below), feeds the protocol
  :class:`~iontodrive.protocol.Decoder`, completes pending requests by sequence number and queues telemetry
  and events for dispatch. It never runs user code, so a slow callback can never delay a reply.
* **dispatcher** -- calls listeners (telemetry, events, errors) in arrival order and fills subscription
  queues; fetches missed events when it sees a gap in event numbers.
* **heartbeat** -- sends :class:`~iontodrive.protocol.Heartbeat` whenever no request went out for
  ``heartbeat_s`` (default: a quarter of the device watchdog), so the device's watchdog (S10) stays fed
  exactly as long as this process is alive.

Locking contract: every public method may be called from any thread, concurrently. Requests from
different threads are in flight at the same time, each matched to its reply by sequence number; the locks
held across I/O are the link's write lock and the *lead* (below). Listener callbacks run on the dispatcher
thread, one at a time; they may call the client (e.g. ``status()``), but must not block for long. An
exception raised by a listener is logged, delivered to the error listeners and re-raised to the session
that owns the listener. A failure of the reader thread (the link died) is stored and raised by the next
call in any thread.

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
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from iontodrive.errors import (
    DeviceRefusal,
    IncompatibleDeviceError,
    IontodriveError,
    LinkClosedError,
    LinkError,
    LinkTimeoutError,
    LocalProtocolError,
    RemoteProtocolError,
)
from iontodrive.frametrace import FrameTrace
from iontodrive.link import SerialLink
from iontodrive.oneshot import OneShot
from iontodrive.protocol import (
    MAX_HOST_NONCE,
    MESSAGE_CLASSES,
    PROTOCOL_VERSION,
    Ack,
    CheckContact,
    ClearFault,
    ConfigureTelemetry,
    ContactReport,
    Decoder,
    EncodeError,
    Event,
    EventCode,
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
    Reset,
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
_REQUEST_CLASSES = frozenset(c for c in MESSAGE_CLASSES if c.TYPE.kind is MessageKind.REQUEST)
DEFAULT_TIMEOUT_S = 0.25
DEFAULT_RETRIES = 3
DEFAULT_WATCHDOG_MS = 2000
FETCH_BATCH = 32
LEASE_S = 0.01  # the reader thread stays parked this long after a requesting thread last read the link
_FLUSH = b"\x00"  # a lone delimiter makes the device drop any partial frame
_GET_STATUS = GetStatus()  # messages are immutable: the most frequent request is made once

M = TypeVar("M", bound=Message)

TelemetryListener = Callable[[Telemetry], None]
EventListener = Callable[[Event], None]
ErrorListener = Callable[[BaseException], None]


class _DispatchMark:
    """Put in the dispatch queue to learn when everything queued before it has reached the listeners."""

    __slots__ = ("reached",)

    def __init__(self) -> None:
        self.reached = OneShot()  # waited for in the caller's thread: see iontodrive.oneshot


_Dispatched = Message | BaseException | _DispatchMark | None  # None stops the dispatcher


class _Pending(OneShot):
    """One request waiting for its reply: set once :attr:`reply` is in, or once the client failed or closed
    (then :attr:`reply` stays None)."""

    reply: Message | None = None  # a class default, so that making one runs no __init__ of its own


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
    caller_reads: int = 0  # replies read by the requesting thread itself (no reader-thread hand-over)


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
        if isinstance(timeout_s, bool) or not (
            isinstance(timeout_s, (int, float)) and 0.001 <= timeout_s <= 60
        ):
            raise ValueError(f"timeout_s = {timeout_s!r} is out of range: must be in [0.001, 60]")
        if isinstance(retries, bool) or not (isinstance(retries, int) and 0 <= retries <= 20):
            raise ValueError(f"retries = {retries!r} is out of range: must be an integer in [0, 20]")
        if heartbeat_s is not None and (
            isinstance(heartbeat_s, bool)
            or not (isinstance(heartbeat_s, (int, float)) and 0.01 <= heartbeat_s <= 60)
        ):
            raise ValueError(f"heartbeat_s = {heartbeat_s!r} is out of range: must be None or in [0.01, 60]")
        self._link = link
        self.url = link.url
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.stats = LinkStatistics()
        self._trace = FrameTrace(trace_path)
        self._decoder = Decoder()
        # a new host never reuses a recent seq; shared by all threads without a lock (see SequenceCounter)
        self._seq = SequenceCounter(random.randint(1, 0xFFFF))
        # seq -> request awaiting its reply. Single dict operations only (atomic under the GIL); code that
        # walks it takes a snapshot first (``list(d.values())`` is one operation too).
        self._pending: dict[int, _Pending] = {}
        self._last_sent = time.monotonic()
        self._last_received = time.monotonic()
        self._closed = threading.Event()
        self._failure: BaseException | None = None
        self._telemetry_listeners: list[TelemetryListener] = []
        self._event_listeners: list[EventListener] = []
        self._error_listeners: list[ErrorListener] = []
        self._subscriptions: list[Subscription[Any]] = []
        self._replay_collectors: list[Callable[[Event], None]] = []
        self._listener_lock = threading.Lock()
        self._dispatch_queue: queue.Queue[_Dispatched] = queue.Queue(100_000)
        self._next_event_no: int | None = None
        self._seen_events: set[int] = set()
        self._last_sample_no: int | None = None
        self._session_closers: list[Callable[[], None]] = []
        self.identity: IdentityReport
        self.watchdog_ms = watchdog_ms or DEFAULT_WATCHDOG_MS
        self._heartbeat_s = heartbeat_s
        self._caller_reads = bool(caller_reads) and link.interruptible
        # Held by whichever thread reads the link. An RLock, never taken twice, only so that a thread can ask
        # whether it holds it (_await_reply: Ctrl-C or SIGTERM may strike just after it was taken).
        self._lead = threading.RLock()
        self._lease_until = 0.0  # monotonic time until which the reader thread stays parked
        self._reader_resume = threading.Event()

        self._reader = threading.Thread(target=self._read_loop, name="iontodrive-reader", daemon=True)
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="iontodrive-dispatch", daemon=True
        )
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="iontodrive-heartbeat", daemon=True
        )
        self._reader.start()
        self._dispatcher.start()
        try:
            self._link.write(_FLUSH)  # flush any partial frame the device holds
            self._open_host_session()
            self.identity = self.identify()
            if self.identity.protocol_version not in SUPPORTED_PROTOCOL_VERSIONS:
                raise IncompatibleDeviceError(self.identity.protocol_version, SUPPORTED_PROTOCOL_VERSIONS)
            if watchdog_ms is not None:
                self.set_watchdog(watchdog_ms)
            if telemetry_hz is not None:
                self.configure_telemetry(telemetry_hz)
            status = self.status()
            self._next_event_no = status.last_event_no + 1
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

    def _open_host_session(self) -> None:
        """The protocol-2 handshake (``docs/protocol.md`` §7.3, §9): open this host's session on the device.

        A random non-zero nonce names the session; the device answers ``SessionOpened`` and starts a reply
        cache of its own for it, so no answer meant for an earlier host can reach this one (S17). The
        random first sequence number is no longer needed for that; it stays as a guard against replies
        to a previous host still in flight on a serial line. A device that does not answer is sent one
        version-1 Identify (which changes nothing): if anything it sends is of another protocol version,
        it is refused as incompatible.

        Raises:
            IncompatibleDeviceError: the device speaks another protocol version (e.g. version 1).
            LinkTimeoutError: no answer and no frame of another version either.
            RemoteProtocolError: the answer does not echo this host's nonce.
        """
        nonce = secrets.randbelow(MAX_HOST_NONCE) + 1
        try:
            opened = self._request_typed(OpenSession(nonce), SessionOpened)
        except LinkTimeoutError:
            if self._decoder.foreign_version is None:
                self._link.write(encode_version_probe(self._seq.next()))
                with contextlib.suppress(LinkTimeoutError):  # only listening: a version-1 device answers
                    self.request(Heartbeat(), retries=0)
            if self._decoder.foreign_version is not None:
                version = self._decoder.foreign_version
                raise IncompatibleDeviceError(version, SUPPORTED_PROTOCOL_VERSIONS) from None
            raise
        if opened.host_nonce != nonce:
            raise RemoteProtocolError(f"SessionOpened echoes nonce {opened.host_nonce}, sent {nonce}")
        if opened.previous_nonce:
            logger.info("host session %d replaces another host's session", opened.host_session_no)

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
        self._dispatch_queue.put(None)
        for thread in (self._reader, self._dispatcher, self._heartbeat):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=2.0)
        for pending in list(self._pending.values()):
            pending.set()
        with self._listener_lock:
            subscriptions = list(self._subscriptions)
        for sub in subscriptions:
            sub.close()
        self._trace.close()

    # ----------------------------------------------------------------------------------- requests

    def request(
        self, message: Message, *, timeout_s: float | None = None, retries: int | None = None
    ) -> Message:
        """Send a request and return its reply (never a Nack).

        Raises:
            DeviceRefusal: the device answered NACK; nothing changed on the device.
            LinkTimeoutError: no answer within ``timeout_s`` after ``retries`` re-sends of the same frame.
            LinkClosedError: the link is closed or failed (also raised for an earlier reader failure).
            LocalProtocolError: ``message`` cannot be encoded (out-of-range field).
        """
        self._raise_if_failed()
        # the protocol's own request classes by a set lookup; anything else (a subclass, a non-message) by
        # its TYPE, which costs ten times as much
        if message.__class__ not in _REQUEST_CLASSES and (
            getattr(getattr(message, "TYPE", None), "kind", None) is not MessageKind.REQUEST
        ):
            raise LocalProtocolError(f"{type(message).__name__} is not a request")
        deadline = self.timeout_s if timeout_s is None else timeout_s
        attempts = 1 + (self.retries if retries is None else retries)
        seq = self._seq.next()
        try:
            frame = encode(message, seq)
        except EncodeError as exc:
            raise LocalProtocolError(str(exc)) from exc
        pending = _Pending()
        try:
            self._pending[seq] = pending
            for attempt in range(attempts):
                if attempt:
                    self.stats.retries += 1
                    logger.debug("retry %d of %s seq %d", attempt, type(message).__name__, seq)
                self._send(seq, message, frame)
                if self._await_reply(pending, deadline):
                    break
                if self._closed.is_set():
                    break
            else:
                self.stats.timeouts += 1
                raise LinkTimeoutError(type(message).__name__, seq, attempts, deadline)
        finally:
            self._pending.pop(seq, None)
        reply = pending.reply
        if reply is None:
            self._raise_if_failed()
            raise LinkClosedError(f"link {self.url} closed while waiting for {type(message).__name__}")
        if isinstance(reply, Nack):
            raise DeviceRefusal(
                reply.request_type, reply.code, reply.field, reply.value, reply.minimum, reply.maximum
            )
        return reply

    def _await_reply(self, pending: _Pending, timeout_s: float) -> bool:
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
                        others_wait = any(not p.is_set() for p in waiting if p is not pending)
                finally:
                    lead.release()
                if others_wait:  # hand the lead straight back to the reader thread
                    self._lease_until = 0.0
                    self._reader_resume.set()
        return pending.is_set()

    def _request_typed(self, message: Message, reply_type: type[M], **kwargs: Any) -> M:
        reply = self.request(message, **kwargs)
        if not isinstance(reply, reply_type):
            got, want = type(reply).__name__, reply_type.__name__
            raise RemoteProtocolError(f"{type(message).__name__} answered with {got}, expected {want}")
        return reply

    def _send(self, seq: int, message: Message, frame: bytes) -> None:
        try:
            self._link.write(frame)
        except LinkClosedError as exc:
            self._fail(exc)
            raise
        # the bookkeeping after the write: the device is already at work on the request meanwhile
        self._last_sent = time.monotonic()
        self.stats.requests += 1
        if self._trace.active:
            self._trace.sent(seq, message, frame)

    def identify(self) -> IdentityReport:
        """Identity and hard limits (S12)."""
        return self._request_typed(Identify(), IdentityReport)

    def status(self) -> StatusReport:
        """A snapshot of the device's state, output and session."""
        reply = self.request(_GET_STATUS)
        if reply.__class__ is not StatusReport:
            got = type(reply).__name__
            raise RemoteProtocolError(f"GetStatus answered with {got}, expected StatusReport")
        return reply  # type: ignore[return-value]

    def check_contact(self, target_current_ua: int, probe_current_ua: int = 50) -> ContactReport:
        """Measure electrode-skin impedance with ``probe_current_ua`` (<= 50 uA, S3).

        ``target_current_ua`` is the current you intend to deliver; the device judges the impedance against
        the compliance it would need. Raises DeviceRefusal if output is not at zero.
        """
        return self._request_typed(CheckContact(probe_current_ua, target_current_ua), ContactReport)

    def configure_telemetry(self, rate_hz: int) -> None:
        """Set the telemetry rate in hertz (0 = off; maximum ``identity.max_telemetry_hz``)."""
        self._request_typed(ConfigureTelemetry(rate_hz), Ack)

    def set_watchdog(self, timeout_ms: int) -> None:
        """Set the device's host-silence timeout (S10) and adapt the heartbeat period to it."""
        self._request_typed(SetWatchdog(timeout_ms), Ack)
        self.watchdog_ms = timeout_ms

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

        The replayed events are also dispatched to event listeners (once each, in order); when this is
        called from any thread but the dispatcher, they have reached the listeners when it returns.
        """
        collector: list[Event] = []
        done = OneShot()  # waited for in the caller's thread: see iontodrive.oneshot
        report: list[EventsReport] = []

        def collect(event: Event) -> None:
            if event.replayed and event.event_no >= from_event_no:
                collector.append(event)
                if report and len(collector) >= report[0].count:
                    done.set()

        with self._listener_lock:
            self._replay_collectors.append(collect)
        try:
            reply = self._request_typed(FetchEvents(from_event_no, max_count), EventsReport)
            report.append(reply)
            if len(collector) >= reply.count:
                done.set()
            done.wait(self.timeout_s * (1 + self.retries))
            if threading.current_thread() is not self._dispatcher:
                self._wait_dispatched(self.timeout_s * (1 + self.retries))
        finally:
            with self._listener_lock:
                self._replay_collectors.remove(collect)
        self.stats.events_fetched += len(collector)
        return sorted(collector, key=lambda e: e.event_no)

    def _wait_dispatched(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until every item queued for dispatch so far has been dispatched."""
        mark = _DispatchMark()
        try:
            self._dispatch_queue.put(mark, timeout=timeout_s)
        except queue.Full:
            return False
        return mark.reached.wait(timeout_s)

    # ------------------------------------------------------------------------------ subscriptions

    def add_telemetry_listener(self, callback: TelemetryListener) -> Callable[[], None]:
        """Call ``callback(sample)`` on the dispatcher thread for every sample; returns a remover."""
        return self._add(self._telemetry_listeners, callback)

    def add_event_listener(self, callback: EventListener) -> Callable[[], None]:
        """Call ``callback(event)`` for every event, live or fetched after a gap, once each, in order."""
        return self._add(self._event_listeners, callback)

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
            with contextlib.suppress(queue.Full):
                self._dispatch_queue.put_nowait(exc)
        for pending in list(self._pending.values()):
            pending.set()

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
        return time.monotonic() - self._last_received

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
        thread holding the lead."""
        for item in self._decoder.feed(data):
            if tracing:
                self._trace.received(item)
            if item.__class__ is not Frame:
                self.stats.decode_errors += 1
                logger.debug("dropped bad frame: %s %s", item.kind.value, item.detail)  # type: ignore[union-attr]
                continue
            self._on_frame(item)  # type: ignore[arg-type]

    def _on_frame(self, frame: Frame) -> None:
        self.stats.frames_received += 1
        self._last_received = time.monotonic()
        seq, message = frame
        if seq:
            pending = self._pending.get(seq)  # one dict lookup: atomic, no lock needed
            if pending is None:
                return  # a late duplicate answer to a retried request
            if pending.is_set():
                return
            pending.reply = message
            pending.set()
            return
        try:
            self._dispatch_queue.put_nowait(message)
        except queue.Full:
            if isinstance(message, Telemetry):
                self.stats.telemetry_lost += 1
            else:  # never drop an event silently: wait for the dispatcher
                self._dispatch_queue.put(message)
        if type(message) is Event and message.replayed:
            # collected here, not by the dispatcher: fetch_events() may be running on the dispatcher itself;
            # queued first, so that a caller that then waits for the dispatcher sees them delivered
            with self._listener_lock:
                collectors = list(self._replay_collectors)
            for collect in collectors:
                collect(message)

    def _dispatch_loop(self) -> None:
        while True:
            item = self._dispatch_queue.get()
            if item is None:
                return
            if type(item) is _DispatchMark:
                item.reached.set()
            elif isinstance(item, BaseException):
                self._notify_error(item)
            elif isinstance(item, Telemetry):
                self._dispatch_telemetry(item)
            elif isinstance(item, Event):
                self._dispatch_event(item)

    def _dispatch_telemetry(self, sample: Telemetry) -> None:
        self.stats.telemetry_received += 1
        last = self._last_sample_no
        if last is not None and sample.sample_no > last + 1:
            self.stats.telemetry_gaps += 1
            self.stats.telemetry_lost += sample.sample_no - last - 1
        self._last_sample_no = sample.sample_no
        with self._listener_lock:
            listeners = list(self._telemetry_listeners)
            subs = [s for s in self._subscriptions if s.kind is Telemetry]
        for sub in subs:
            sub._put(sample)
        for listener in listeners:
            self._call_listener(listener, sample)

    def _dispatch_event(self, event: Event) -> None:
        self.stats.events_received += 1
        if event.code is EventCode.POWER_ON and event.event_no == 1 and not event.replayed:
            self._seen_events.clear()  # the device restarted: numbering starts again
            self._next_event_no = 1
        expected = self._next_event_no
        if not event.replayed and expected is not None and event.event_no > expected:
            self._fill_gap(expected, event.event_no)
        self._deliver_event(event)

    def _fill_gap(self, first_missing: int, upto: int) -> None:
        """Fetch events [first_missing, upto) from the device; runs on the dispatcher thread."""
        logger.info("event gap: %d..%d missing, fetching", first_missing, upto - 1)
        next_no = first_missing
        while next_no < upto and not self._closed.is_set():
            try:
                fetched = self.fetch_events(next_no, min(FETCH_BATCH, upto - next_no))
            except IontodriveError as exc:
                logger.warning("could not fetch missed events from %d: %s", next_no, exc)
                return
            if not fetched:
                return
            for event in fetched:
                if event.event_no < upto:
                    self._deliver_event(event)
            next_no = fetched[-1].event_no + 1

    def _deliver_event(self, event: Event) -> None:
        if event.event_no in self._seen_events:
            return
        self._seen_events.add(event.event_no)
        if len(self._seen_events) > 4096:
            floor = max(self._seen_events) - 2048
            self._seen_events = {n for n in self._seen_events if n > floor}
        if self._next_event_no is None or event.event_no >= self._next_event_no:
            self._next_event_no = event.event_no + 1
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
            period = self._heartbeat_s or self.watchdog_ms / 4000.0
            idle = time.monotonic() - self._last_sent
            if idle < period:
                self._closed.wait(period - idle)
                continue
            try:
                self.heartbeat()
            except LinkTimeoutError as exc:
                logger.warning("heartbeat unanswered: %s", exc)
            except IontodriveError:
                return
