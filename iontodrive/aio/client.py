"""The asyncio device client: :class:`AsyncDeviceClient`, the second driver of the sans-I/O core.

Everything the client *knows* is :class:`~iontodrive.clientcore.ClientCore` and its procedures (the same
ones the threaded :class:`~iontodrive.client.DeviceClient` drives): sequence numbers, the full reply check,
deadlines and retries with the same number, the opening handshake, event gaps and ``FetchEvents``, the
heartbeat schedule and the heartbeat rule. What is here is only how it waits: on the event loop.

Tasks and callbacks (all on the client's loop; nothing blocks it):

* the transport's reader callback feeds the core; replies complete their request's future; **safety**
  listeners (``safety=True``) are called right there, in arrival order, ahead of everything else -- so
  the safety tier is never behind telemetry while the loop runs (keep them short: a safety listener that
  blocks blocks the loop, and with it the heartbeats, which is what the heartbeat rule wants);
* ordinary listeners and subscriptions (:meth:`AsyncDeviceClient.telemetry`,
  :meth:`AsyncDeviceClient.events`) get a sample right after the safety listeners, in the reader callback,
  when nothing is waiting for dispatch and every ordinary listener is a plain function (the common case;
  it saves a task wake-up per sample). Otherwise the **dispatch** task calls them, in arrival order, from
  a bounded queue: at most :data:`TIER_TELEMETRY_CAP` samples wait (full: the oldest is dropped and
  counted) and :data:`TIER_EVENT_CAP` events (full: the event is dropped and counted, and fetched again
  from the device when dispatch reaches it, as the threaded client's tiers do; one the device no longer
  holds is reported to error listeners as :class:`~iontodrive.errors.EventsLostError`);
* the **events** task fills gaps in event numbers (:func:`~iontodrive.clientcore.fill_gap`);
* the **heartbeat** task asks :meth:`~iontodrive.clientcore.ClientCore.heartbeat_poll` when to send one.

Requests may be awaited concurrently from any number of tasks; each is matched to its reply by sequence
number. Every await has a deadline: a request is re-sent with the same number after ``timeout_s``, up
to ``retries`` times, then :class:`~iontodrive.errors.LinkTimeoutError` is raised. Cancelling a request's
task stops waiting for it (the device may still execute it once).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from iontodrive.client import TIER_EVENT_CAP, TIER_TELEMETRY_CAP
from iontodrive.clientcore import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_WATCHDOG_MS,
    FETCH_BATCH,
    Call,
    ClientCore,
    Fetch,
    LinkStatistics,
    PendingRequest,
    ReplayCollector,
    Step,
    Write,
    check_type,
    fill_gap,
    opening,
    refill,
)
from iontodrive.delivery import Refill, Routing
from iontodrive.errors import (
    EventsLostError,
    IontodriveError,
    LinkClosedError,
    LinkError,
    LinkTimeoutError,
)
from iontodrive.frametrace import FrameTrace
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

from .transport import AsyncTransport, open_transport

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
R = TypeVar("R")
T = TypeVar("T")

Listener = Callable[[Any], None]
ErrorListener = Callable[[BaseException], None]
_FLUSH = b"\x00"
_GET_STATUS = GetStatus()


class _Owner(Protocol):
    @property
    def closed(self) -> bool: ...

    def _unsubscribe(self, sub: AsyncSubscription[Any]) -> None: ...


class AsyncSubscription(Generic[T]):
    """A bounded queue of telemetry samples or events: ``async for item in sub`` until closed.

    Full: the oldest item is dropped and :attr:`dropped` counts it (a slow consumer never slows the
    device or the client). Iteration ends when the subscription or the client is closed.
    """

    def __init__(self, owner: _Owner, kind: type[T], maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize = {maxsize!r} is out of range: must be at least 1")
        self._owner = owner
        self.kind = kind
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self.dropped = 0
        self.closed = False
        self._on_close: Callable[[], None] | None = None

    def _put(self, item: T) -> None:
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    async def get(self, timeout_s: float | None = None) -> T | None:
        """The next item, or None on timeout or once closed (and drained)."""
        while not self._items:
            if self.closed or self._owner.closed:
                return None
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout_s)
            except TimeoutError:
                return None
        return self._items.popleft()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        item = await self.get()
        if item is None:
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        self.closed = True
        self._owner._unsubscribe(self)
        self._ready.set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class _Health:
    """The asyncio driver's side of the heartbeat rule: safety listeners run inline (never behind); the
    dispatch task is judged by how long it has handled nothing while items wait."""

    def __init__(self, client: AsyncDeviceClient) -> None:
        self._client = client

    def safety_lag_s(self, now: float) -> float:
        return 0.0  # safety listeners run in the reader callback, before the loop does anything else

    def safety_checked_at(self) -> float | None:
        return self._client._core.last_telemetry_at

    def dispatch_stalled_s(self, now: float) -> float:
        client = self._client
        if not client._queue:
            return 0.0
        return now - client._dispatch_progress

    def dead_worker(self) -> str | None:
        for task in self._client._tasks:
            if task.done():
                return f"task {task.get_name()}"
        return None


class AsyncDeviceClient:
    """A connected, identified stimulator on an asyncio loop. Create with
    ``await AsyncDeviceClient.open(url)`` (or ``async with await ...``); see the module docstring.

    Closing (:meth:`aclose`, or leaving ``async with``) first ramps down any running session started through
    this client (S16), then stops the tasks and closes the link.
    """

    def __init__(
        self,
        transport: AsyncTransport,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        watchdog_ms: int | None = DEFAULT_WATCHDOG_MS,
        heartbeat_s: float | None = None,
        trace_path: str | Path | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._core = core = ClientCore(
            timeout_s=timeout_s,
            retries=retries,
            heartbeat_s=heartbeat_s,
            watchdog_ms=watchdog_ms or DEFAULT_WATCHDOG_MS,
            now=self._loop.time(),
        )
        self._transport = transport
        self.url = transport.url
        self.stats: LinkStatistics = core.stats
        self._trace = FrameTrace(trace_path)
        if self._trace.active:
            core.trace = self._trace.received
        self._health = _Health(self)
        self._closed = False
        self._failure: BaseException | None = None
        self._telemetry_listeners: list[Listener] = []
        self._event_listeners: list[Listener] = []
        self._safety_telemetry_listeners: list[Listener] = []
        self._safety_event_listeners: list[Listener] = []
        self._error_listeners: list[ErrorListener] = []
        self._subscriptions: list[AsyncSubscription[Any]] = []
        self._replay_collectors: list[ReplayCollector] = []
        self._queue: deque[Telemetry | Event | Refill | BaseException] = deque()
        self._queued_telemetry = 0
        self._queued_events = 0
        self.dropped_telemetry = 0
        self.dropped_events = 0
        self.refilled_events = 0
        self._queue_ready = asyncio.Event()
        self._dispatch_progress = self._loop.time()
        self._gap_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sweep_at: float | None = None  # when the deadline sweep is armed for (loop time)
        self._dispatching = False  # the dispatch task is handling an item (maybe awaiting a listener)
        self._async_listeners = 0  # ordinary listeners that are coroutine functions
        self._listener_tasks: set[asyncio.Task[None]] = set()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._session_closers: list[Callable[[], Awaitable[None]]] = []
        self.identity: IdentityReport

    # ------------------------------------------------------------------------------------- opening

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        watchdog_ms: int | None = DEFAULT_WATCHDOG_MS,
        heartbeat_s: float | None = None,
        telemetry_hz: int | None = None,
        trace_path: str | Path | None = None,
        **serial_options: Any,
    ) -> Self:
        """Open ``url`` (what :meth:`iontodrive.client.DeviceClient.open` accepts), identify the device and
        return a client (arguments as there).

        Raises:
            PortInUseError: the port is held by another process or client.
            LinkClosedError: the port cannot be opened.
            LinkTimeoutError: the device does not answer.
            IncompatibleDeviceError: the device speaks another protocol version.
        """
        loop = asyncio.get_running_loop()
        transport = await loop.run_in_executor(None, lambda: open_transport(url, loop, **serial_options))
        try:
            client = cls(
                transport,
                timeout_s=timeout_s,
                retries=retries,
                watchdog_ms=watchdog_ms,
                heartbeat_s=heartbeat_s,
                trace_path=trace_path,
            )
        except BaseException:
            transport.close()
            await transport.wait_closed()
            raise
        await client._start(watchdog_ms, telemetry_hz)
        return client

    async def _start(self, watchdog_ms: int | None, telemetry_hz: int | None) -> None:
        self._transport.start(self._on_data, self._fail)
        self._tasks.append(asyncio.create_task(self._dispatch_loop(), name="iontodrive-dispatch"))
        self._tasks.append(asyncio.create_task(self._gap_loop(), name="iontodrive-events"))
        try:
            self._transport.write(_FLUSH)  # flush any partial frame the device holds
            opened = await self._run(opening(self._core, watchdog_ms=watchdog_ms, telemetry_hz=telemetry_hz))
        except BaseException:
            await self._shutdown()
            raise
        self.identity = opened.identity
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="iontodrive-heartbeat"))
        logger.info(
            "connected to %s serial %d on %s", self.identity.model, self.identity.serial_number, self.url
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def core(self) -> ClientCore:
        """The sans-I/O state machine this client drives (read it; do not drive it from outside)."""
        return self._core

    @property
    def timeout_s(self) -> float:
        return self._core.timeout_s

    @property
    def retries(self) -> int:
        return self._core.retries

    @property
    def watchdog_ms(self) -> int:
        return self._core.watchdog_ms

    @property
    def failure(self) -> BaseException | None:
        """The failure that broke the link, if any."""
        return self._failure

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def aclose(self) -> None:
        """Ramp down any session this client started (S16), then stop the tasks and close the link. Safe
        to call more than once. Never raises for a link that is already dead (the device's watchdog then
        ramps the output down, S10)."""
        if self._closed:
            return
        for closer in list(self._session_closers):
            try:
                await closer()
            except IontodriveError as exc:
                logger.warning("ramp-down on close failed (%s); the device watchdog will ramp down", exc)
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._closed = True
        self._transport.close()
        await self._transport.wait_closed()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._wake_all()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = self._sweep_at = None
        for sub in list(self._subscriptions):
            sub.close()
        self._trace.close()

    def _register_session_closer(self, closer: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        self._session_closers.append(closer)

        def remove() -> None:
            if closer in self._session_closers:
                self._session_closers.remove(closer)

        return remove

    # ------------------------------------------------------------------------------------ requests

    async def request(
        self, message: Message, *, timeout_s: float | None = None, retries: int | None = None
    ) -> Message:
        """Send a request and return its reply (never a Nack).

        Raises:
            DeviceRefusal: the device answered NACK; nothing changed on the device.
            LinkTimeoutError: no answer within ``timeout_s`` after ``retries`` re-sends of the same frame.
            LinkClosedError: the link is closed or failed.
            LocalProtocolError: ``message`` cannot be encoded (out-of-range field).
            RemoteProtocolError: the reply cannot answer this request.
        """
        self._raise_if_failed()
        core = self._core
        loop = self._loop
        pending = core.begin(message, timeout_s=timeout_s, retries=retries)
        pending.waiter = waiter = loop.create_future()
        try:
            while True:
                self._send(pending)
                if not waiter.done():
                    self._arm_sweep(pending.deadline)
                    await waiter
                if pending.reply is not None or self._closed:
                    break
                core.expire(pending)  # LinkTimeoutError once no attempt is left
                pending.waiter = waiter = loop.create_future()
        finally:
            core.forget(pending)
        if pending.reply is None:
            self._raise_if_failed()
            raise LinkClosedError(f"link {self.url} closed while waiting for {type(message).__name__}")
        return core.finish(pending)

    def _arm_sweep(self, deadline: float) -> None:
        """Make sure the deadline sweep runs by ``deadline`` (loop time). One timer serves every request
        in flight (a timer per request cost more than the rest of a round trip's bookkeeping)."""
        if self._sweep_at is not None and self._sweep_at <= deadline:
            return
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        self._sweep_at = deadline
        self._sweep_handle = self._loop.call_at(deadline, self._sweep)

    def _sweep(self) -> None:
        """Wake every request whose attempt's deadline has passed (it then retries or times out); arm the
        sweep again for the earliest deadline still ahead."""
        self._sweep_at = self._sweep_handle = None
        now = self._loop.time()
        ahead: float | None = None
        for pending in list(self._core.pending.values()):
            waiter = pending.waiter
            if waiter is None or waiter.done():
                continue
            if pending.deadline <= now:
                waiter.set_result(None)
            elif ahead is None or pending.deadline < ahead:
                ahead = pending.deadline
        if ahead is not None:
            self._arm_sweep(ahead)

    def _send(self, pending: PendingRequest) -> None:
        try:
            self._transport.write(pending.frame)
        except LinkClosedError as exc:
            self._fail(exc)
            raise
        self._core.sent(pending, self._loop.time())
        if self._trace.active:
            self._trace.sent(pending.seq, pending.message, pending.frame)

    async def _request_typed(self, message: Message, reply_type: type[M], **kwargs: Any) -> M:
        return check_type(message, await self.request(message, **kwargs), reply_type)

    async def _run(self, procedure: Generator[Step, Any, R]) -> R:
        """Perform a core procedure (:mod:`iontodrive.clientcore`) step by step, awaiting each."""
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
                    outcome = await self._request_typed(step.message, step.expect, retries=step.retries)
                elif isinstance(step, Write):
                    self._transport.write(step.data)
                else:
                    outcome = await self._fetch_raw(step)
            except IontodriveError as exc:
                error = exc

    async def identify(self) -> IdentityReport:
        """Identity and hard limits (S12)."""
        return await self._request_typed(Identify(), IdentityReport)

    async def status(self) -> StatusReport:
        """A snapshot of the device's state, output and session."""
        return await self._request_typed(_GET_STATUS, StatusReport)

    async def check_contact(self, target_current_ua: int, probe_current_ua: int = 50) -> ContactReport:
        """Measure electrode-skin impedance with ``probe_current_ua`` (<= 50 uA, S3)."""
        return await self._request_typed(CheckContact(probe_current_ua, target_current_ua), ContactReport)

    async def configure_telemetry(self, rate_hz: int) -> None:
        """Set the telemetry rate in hertz (0 = off; maximum ``identity.max_telemetry_hz``)."""
        await self._request_typed(ConfigureTelemetry(rate_hz), Ack)

    async def set_watchdog(self, timeout_ms: int) -> None:
        """Set the device's host-silence timeout (S10) and adapt the heartbeat period to it."""
        await self._request_typed(SetWatchdog(timeout_ms), Ack)
        self._core.watchdog_ms = timeout_ms

    async def clear_fault(self) -> None:
        """Clear a latched fault (S9). Refused while output is not at zero."""
        await self._request_typed(ClearFault(), Ack)

    async def reset(self) -> None:
        """Restart the device firmware (only with output at zero)."""
        await self._request_typed(Reset(), Ack)

    async def heartbeat(self) -> None:
        await self._request_typed(Heartbeat(), Ack)

    async def fetch_events(self, from_event_no: int, max_count: int = FETCH_BATCH) -> list[Event]:
        """Fetch events from the device's ring, from ``from_event_no`` on (at most ``max_count``); replayed
        events not seen before are also delivered to event listeners (once each, in order)."""
        _report, events = await self._fetch_raw(Fetch(from_event_no, max_count))
        return events

    async def _fetch_raw(self, step: Fetch) -> tuple[EventsReport, list[Event]]:
        done = asyncio.Event()
        collector = ReplayCollector(step.from_event_no, done.set)
        self._replay_collectors.append(collector)
        try:
            reply = await self._request_typed(step.message, EventsReport)
            collector.reported(reply)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.timeout_s * (1 + self.retries))
        finally:
            self._replay_collectors.remove(collector)
        events = collector.result()
        self.stats.events_fetched += len(events)
        return reply, events

    # ------------------------------------------------------------------------------ the core's sink

    def _on_data(self, data: bytes) -> None:
        try:
            self._core.receive(data, self._loop.time(), self)
        except Exception as exc:  # a bug while decoding: fail loudly
            self._fail(exc)

    def on_reply(self, pending: PendingRequest) -> None:
        waiter = pending.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_telemetry(self, sample: Telemetry, now: float) -> None:
        for listener in self._safety_telemetry_listeners:
            self._call_safety(listener, sample)
        if not (self._queue or self._dispatching or self._async_listeners):
            # Nothing waits for dispatch and every listener is a plain function: deliver here, in the reader
            # callback, in the same order the dispatch task would (a task wake-up per sample cost more
            # than the listeners at 100 Hz x 16 devices).
            self._deliver_now(sample, self._telemetry_listeners, Telemetry)
            return
        if self._telemetry_listeners or self._subscriptions:
            if self._queued_telemetry >= TIER_TELEMETRY_CAP:
                self._drop_oldest_telemetry()
            self._queue.append(sample)
            self._queued_telemetry += 1
            self._queue_ready.set()

    def on_replay(self, event: Event) -> None:
        for collector in list(self._replay_collectors):
            collector.add(event)

    def on_routing(self, routing: Routing, now: float) -> None:
        for event in routing.safety + routing.both:
            for listener in self._safety_event_listeners:
                self._call_safety(listener, event)
        for event in routing.both + routing.ordinary:
            self._queue_event(event)
        for gap, count, why in routing.lost:
            error = EventsLostError(count, gap.first, gap.upto - 1, why)
            logger.warning("%s", error)
            self._queue.append(error)
        if routing.gap is not None:
            self._gap_ready.set()
        self._queue_ready.set()

    def _queue_event(self, event: Event) -> None:
        if self._queued_events >= TIER_EVENT_CAP:  # fetched again when dispatch gets there (delivery.Refill)
            self.dropped_events += 1
            marker = Refill.extend_or_new(self._queue[-1] if self._queue else None, event.event_no)
            if marker is not None:
                self._queue.append(marker)
            return
        self._queue.append(event)
        self._queued_events += 1

    def _drop_oldest_telemetry(self) -> None:
        for index, item in enumerate(self._queue):
            if item.__class__ is Telemetry:
                del self._queue[index]
                self._queued_telemetry -= 1
                self.dropped_telemetry += 1
                return

    def _call_safety(self, listener: Listener, item: Message) -> None:
        try:
            listener(item)
        except Exception as exc:
            logger.exception("safety listener %r raised", listener)
            self._core.safety_listener_failed(exc)
            self._notify_error(exc)

    # ------------------------------------------------------------------------------------- tasks

    async def _dispatch_loop(self) -> None:
        queue = self._queue
        while True:
            while not queue:
                self._queue_ready.clear()
                await self._queue_ready.wait()
            item = queue.popleft()
            kind = item.__class__
            self._dispatching = True
            try:
                await self._dispatch_one(item, kind)
            finally:
                self._dispatching = False
            self._dispatch_progress = self._loop.time()
            if len(queue) > 256:
                await asyncio.sleep(0)  # a long backlog: let the loop breathe between items

    async def _dispatch_one(self, item: Telemetry | Event | Refill | BaseException, kind: type) -> None:
        if kind is Telemetry:
            self._queued_telemetry -= 1
            await self._deliver(item, self._telemetry_listeners, Telemetry)  # type: ignore[arg-type]
        elif kind is Event:
            self._queued_events -= 1
            await self._deliver(item, self._event_listeners, Event)  # type: ignore[arg-type]
        elif kind is Refill:
            await self._refill(item)  # type: ignore[arg-type]
        else:
            self._notify_error(item)  # type: ignore[arg-type]

    def _deliver_now(self, item: Message, listeners: list[Listener], kind: type[Message]) -> None:
        """:meth:`_call_listeners` outside the dispatch task (see on_telemetry): an awaitable a plain
        listener returns anyway runs as a task of its own."""
        for awaitable in self._call_listeners(item, listeners, kind):
            task = self._loop.create_task(self._await_listener(awaitable))
            self._listener_tasks.add(task)  # (the loop keeps only a weak reference)
            task.add_done_callback(self._listener_tasks.discard)
        self._dispatch_progress = self._loop.time()

    async def _deliver(self, item: Message, listeners: list[Listener], kind: type[Message]) -> None:
        """On the dispatch task: the plain listeners are called, then the item's coroutines are awaited in
        the listeners' order, before the next item is taken."""
        for awaitable in self._call_listeners(item, listeners, kind):
            await self._await_listener(awaitable)

    async def _await_listener(self, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except Exception as exc:
            logger.exception("a coroutine listener raised")
            self._notify_error(exc)

    def _call_listeners(
        self, item: Message, listeners: list[Listener], kind: type[Message]
    ) -> list[Awaitable[Any]]:
        """Give ``item`` to the subscriptions of its kind and call each listener (an exception is logged and
        reported to error listeners); the awaitables coroutine listeners returned, in order."""
        for sub in list(self._subscriptions):
            if sub.kind is kind:
                sub._put(item)
        pending: list[Awaitable[Any]] = []
        for listener in list(listeners):
            try:
                result = listener(item)
            except Exception as exc:
                logger.exception("listener %r raised", listener)
                self._notify_error(exc)
                continue
            if result is not None and inspect.isawaitable(result):
                pending.append(result)
        return pending

    async def _refill(self, gap: Refill) -> None:
        """Events the dispatch queue dropped when full, fetched again from the device's ring and delivered
        here, in order; any the device no longer holds are reported as :class:`EventsLostError`."""
        fetched: list[Event] = []
        if not self._closed and gap.fetch_from <= gap.last:
            try:
                fetched = await self._run(refill(gap.fetch_from, gap.last))
            except IontodriveError as exc:
                logger.warning("events %d..%d could not be fetched again: %s", gap.first, gap.last, exc)
        events, lost = gap.settle(fetched, "dispatch queue")
        self.refilled_events += len(events)
        for event in events:
            await self._deliver(event, self._event_listeners, Event)
        if lost is not None:
            self.stats.events_lost += lost.count
            logger.warning("%s", lost)
            self._notify_error(lost)

    async def _gap_loop(self) -> None:
        core = self._core
        while True:
            await self._gap_ready.wait()
            self._gap_ready.clear()
            gap = core.events.gap
            while gap is not None and not self._closed:
                why = await self._run(fill_gap(gap))
                routing = core.gap_done(gap, why)
                self.on_routing(routing, self._loop.time())
                gap = routing.gap or core.events.gap

    async def _heartbeat_loop(self) -> None:
        core, loop = self._core, self._loop
        while not self._closed:
            wait = core.heartbeat_poll(loop.time(), self._health)
            if wait is not None:  # not due, or withheld by the heartbeat rule (S19)
                await asyncio.sleep(wait)
                continue
            try:
                await self.heartbeat()
            except LinkTimeoutError as exc:
                logger.warning("heartbeat unanswered: %s", exc)
            except IontodriveError as exc:  # link gone, or a device answering nonsense: its watchdog acts
                if not self._closed:
                    logger.error("heartbeats stopped: %s", exc)
                return

    # --------------------------------------------------------------------------------- listeners

    def add_telemetry_listener(self, callback: Listener, *, safety: bool = False) -> Callable[[], None]:
        """Call ``callback(sample)`` for every sample, in arrival order; returns a remover. Ordinary
        listeners run on the loop after the safety ones (a coroutine function's result is awaited, in order,
        on the dispatch task);
        ``safety=True``: called in the reader callback itself, ahead of everything (must be quick and
        synchronous; one that raises withholds heartbeats while a gate is registered)."""
        if safety:
            return self._add(self._safety_telemetry_listeners, callback)
        return self._add_ordinary(self._telemetry_listeners, callback)

    def add_event_listener(self, callback: Listener, *, safety: bool = False) -> Callable[[], None]:
        """Call ``callback(event)`` for every event, once each, in order (``safety`` as above)."""
        if safety:
            return self._add(self._safety_event_listeners, callback)
        return self._add_ordinary(self._event_listeners, callback)

    def add_error_listener(self, callback: ErrorListener) -> Callable[[], None]:
        """Call ``callback(exc)`` for background errors (link failure, listener exceptions, lost events)."""
        return self._add(self._error_listeners, callback)

    def gate_heartbeats(self, is_live: Callable[[], bool]) -> Callable[[], None]:
        """As :meth:`iontodrive.client.DeviceClient.gate_heartbeats` (the same rule, in the core)."""
        return self._core.add_gate(is_live)

    @property
    def heartbeat_withheld(self) -> str | None:
        """Why heartbeats are being withheld right now (the heartbeat rule), or None."""
        return self._core.withheld

    @property
    def safety_lag_s(self) -> float:
        """Always 0 while the loop runs: safety listeners run as telemetry arrives."""
        return 0.0

    def liveness_problem(self) -> str | None:
        """The first clause of the heartbeat rule that fails now, or None."""
        return self._core.liveness_problem(self._loop.time(), self._health)

    def telemetry(self, maxsize: int = 10_000) -> AsyncSubscription[Telemetry]:
        """An async iterator of telemetry samples (``async for sample in client.telemetry()``)."""
        sub: AsyncSubscription[Telemetry] = AsyncSubscription(self, Telemetry, maxsize)
        self._subscriptions.append(sub)
        return sub

    def events(self, maxsize: int = 10_000) -> AsyncSubscription[Event]:
        """An async iterator of events, once each, in order."""
        sub: AsyncSubscription[Event] = AsyncSubscription(self, Event, maxsize)
        self._subscriptions.append(sub)
        return sub

    def _unsubscribe(self, sub: AsyncSubscription[Any]) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    def _add_ordinary(self, listeners: list[Any], callback: Any) -> Callable[[], None]:
        """An ordinary listener; coroutine functions are counted (while there is one, every sample goes
        through the dispatch task, which awaits them in order)."""
        if not inspect.iscoroutinefunction(callback):
            return self._add(listeners, callback)
        self._async_listeners += 1
        remove = self._add(listeners, callback)

        def remove_counted() -> None:
            if callback in listeners:
                self._async_listeners -= 1
            remove()

        return remove_counted

    @staticmethod
    def _add(listeners: list[Any], callback: Any) -> Callable[[], None]:
        listeners.append(callback)

        def remove() -> None:
            if callback in listeners:
                listeners.remove(callback)

        return remove

    # ---------------------------------------------------------------------------------- failures

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            logger.error("link failure on %s: %s", self.url, exc)
            self._notify_error(exc)
        self._wake_all()

    def _wake_all(self) -> None:
        for pending in list(self._core.pending.values()):
            waiter = pending.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            if isinstance(self._failure, LinkError):
                raise LinkClosedError(f"link {self.url} failed: {self._failure}") from self._failure
            raise LinkClosedError(f"link {self.url} failed: {self._failure!r}") from self._failure
        if self._closed:
            raise LinkClosedError(f"link {self.url} is closed")

    def _notify_error(self, exc: BaseException) -> None:
        for listener in list(self._error_listeners):
            try:
                listener(exc)
            except Exception:
                logger.exception("error listener %r raised", listener)


__all__ = ["AsyncDeviceClient", "AsyncSubscription"]
