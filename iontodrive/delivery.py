"""Delivery of telemetry and events from the reading thread to listeners: bounded, ordered, never blocking.

Two pieces, both used by :class:`iontodrive.client.DeviceClient` and nothing else:

* :class:`EventSequencer` (no threads, no I/O) puts live and replayed events in order, drops duplicates and
  finds gaps in the event numbers. The thread that reads the link calls it for every event; while a gap is
  being fetched from the device, later live events are held back so that listeners see the missed ones
  first. Every number it keeps is bounded: at most :data:`MAX_HELD_EVENTS` held events and
  :data:`MAX_GAP_FETCH` events fetched per gap; an absurd jump (0 -> 4,000,000,000) fetches only the newest
  :data:`MAX_GAP_FETCH` numbers and declares the rest lost (counted, reported, never silently).
* :class:`DeliveryTier`: one thread with one bounded queue, calling a handler for each item in arrival
  order. The client has two: the *safety* tier (safety listeners) and the *ordinary* tier (user
  listeners, subscriptions, record writes). :meth:`DeliveryTier.put` never blocks beyond a short lock;
  overflow policy:

  - telemetry: at most ``telemetry_cap`` samples wait; when full the *oldest* waiting sample is dropped and
    counted (:attr:`DeliveryTier.dropped_telemetry`);
  - events: at most ``event_cap`` wait; an event that finds the queue full is dropped *for this tier*,
    counted (:attr:`DeliveryTier.dropped_events`), and becomes a gap that the tier's own thread fetches
    again from the device (``refill``) when it reaches that point, so its listeners still get it, in
    order. Consecutive drops share one gap, so the queue never grows by more than one marker;
  - errors and marks (the client's own control items) are never dropped; there are a handful at most.

Signals: :meth:`DeliveryTier.put_telemetry` and friends are called by whichever thread reads the link,
which may be the main thread, where Ctrl-C or SIGTERM can strike between any two bytecodes. So they take
only a C-level ``with lock`` (which an interrupt cannot leave taken) and wake the tier through
:class:`Wakeup` (a lock released, never a Condition): nothing an interrupted producer leaves behind can
wedge a tier. (See :mod:`iontodrive.oneshot` for the hazard.)

Time: arrival times are ``time.monotonic()`` seconds, taken by the reading thread. :meth:`DeliveryTier.lag_s`
is how long the oldest item still waiting (or being handled) has been waiting: 0 when the tier is idle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from iontodrive.errors import EventsLostError
from iontodrive.oneshot import OneShot
from iontodrive.protocol import Event, EventCode, Telemetry

logger = logging.getLogger(__name__)

MAX_HELD_EVENTS: Final = 4096  # live events held back behind one gap; more and the gap is given up
MAX_GAP_FETCH: Final = 1024  # newest missing events fetched per gap (4x the firmware's 256-event ring)
SEEN_WINDOW: Final = 4096  # event numbers remembered for de-duplication


@dataclass(frozen=True, slots=True)
class Gap:
    """Missing event numbers ``[first, upto)``; :attr:`lost` of them (the oldest) will not be fetched."""

    first: int
    upto: int

    @property
    def fetch_from(self) -> int:
        return max(self.first, self.upto - MAX_GAP_FETCH)

    @property
    def lost(self) -> int:
        return self.fetch_from - self.first


@dataclass(slots=True)
class Routing:
    """Where the events the sequencer released go: ``both`` tiers, the ``safety`` tier only (it sees an
    event as soon as it is known, even ahead of a gap), the ``ordinary`` tier only (events the safety tier
    already had, now in order), and a ``gap`` to fetch, if one opened."""

    both: list[Event] = field(default_factory=list)
    safety: list[Event] = field(default_factory=list)
    ordinary: list[Event] = field(default_factory=list)
    gap: Gap | None = None
    lost: list[tuple[Gap, int, str]] = field(default_factory=list)  # (gap, events lost from it, why)


class EventSequencer:
    """Orders events, drops duplicates, finds gaps. Thread-safe (one short lock, no I/O, no waiting).

    Ordinary listeners get every event once, in event-number order: live events behind a gap are held
    until the gap is fetched (or given up). Safety listeners get every event once as soon as it is known:
    a live event at once even behind a gap, a fetched one when it arrives -- latency matters more to them
    than order. :meth:`live`, :meth:`replayed` and :meth:`gap_done` say where each event goes
    (:class:`Routing`). After a gap closes, every number below its end counts as handled: a late replay
    of a number that was given up is not delivered out of order.
    """

    def __init__(self, next_no: int | None = None) -> None:
        self._lock = threading.Lock()
        self.next_no = next_no  # the number the next live event should carry (None: unknown)
        self._seen: set[int] = set()
        self._floor = 0  # every number below this was delivered or given up
        self.gap: Gap | None = None
        self._held: list[Event] = []  # live events behind the gap (the safety tier has them already)
        self._filled: dict[int, Event] = {}  # fetched events of the gap (the safety tier has them already)
        self.lost = 0  # events declared lost (not fetchable, or given up)

    def reset(self, next_no: int | None) -> None:
        with self._lock:
            self.next_no = next_no
            self._seen.clear()
            self._floor = 0
            self.gap = None
            self._held.clear()
            self._filled.clear()

    def live(self, event: Event) -> Routing:
        """A live event from the device."""
        with self._lock:
            out = Routing()
            if event.code is EventCode.POWER_ON and event.event_no == 1:
                # the device restarted: numbering starts again; whatever was pending is gone with it
                out.ordinary = self._release_locked(out, "the device restarted")
                self._seen.clear()
                self._floor = 0
                self.next_no = 1
                out.both = self._accept_locked(event)
                return out
            if self._known_locked(event.event_no) or any(e.event_no == event.event_no for e in self._held):
                return out
            if self.gap is not None:
                self._held.append(event)
                out.safety = [event]
                if len(self._held) > MAX_HELD_EVENTS:
                    logger.warning(
                        "event gap %d..%d not filled in time: %d events held, giving up",
                        self.gap.first,
                        self.gap.upto - 1,
                        len(self._held),
                    )
                    out.ordinary = self._release_locked(
                        out, f"more than {MAX_HELD_EVENTS} live events arrived before the gap was fetched"
                    )
                return out
            expected = self.next_no
            if expected is not None and event.event_no > expected:
                self.gap = out.gap = Gap(expected, event.event_no)
                self._held.append(event)
                out.safety = [event]
                return out
            out.both = self._accept_locked(event)
            return out

    def replayed(self, event: Event) -> Routing:
        """An event the device replayed (FetchEvents): kept for the gap it fills, or delivered if new."""
        with self._lock:
            out = Routing()
            no = event.event_no
            if self._known_locked(no) or no in self._filled:
                return out
            gap = self.gap
            if gap is not None:
                if gap.fetch_from <= no < gap.upto:
                    self._filled[no] = event
                    out.safety = [event]
                return out  # (outside the gap while one is open: asked for again later if it matters)
            out.both = self._accept_locked(event)
            return out

    def gap_done(self, gap: Gap, why: str = "the device did not return them") -> Routing:
        """The fetch for ``gap`` is over (filled or failed): release, in order, what waited. Nothing to do
        if ``gap`` is no longer the open one (it was given up meanwhile)."""
        with self._lock:
            out = Routing()
            if self.gap is not gap:
                return out
            held = self._held
            self._held = []
            out.ordinary = self._release_locked(out, why)
            for position, event in enumerate(held):  # the held events may reveal a further gap
                if self._known_locked(event.event_no):
                    continue
                expected = self.next_no
                if expected is not None and event.event_no > expected:
                    self.gap = out.gap = Gap(expected, event.event_no)
                    self._held = list(held[position:])
                    return out
                out.ordinary += self._accept_locked(event)
            return out

    # ------------------------------------------------------------------------------ under the lock

    def _known_locked(self, event_no: int) -> bool:
        return event_no in self._seen or event_no < self._floor

    def _accept_locked(self, event: Event) -> list[Event]:
        no = event.event_no
        self._seen.add(no)
        if len(self._seen) > SEEN_WINDOW:
            self._floor = max(self._floor, max(self._seen) - SEEN_WINDOW // 2)
            self._seen = {n for n in self._seen if n >= self._floor}
        if self.next_no is None or no >= self.next_no:
            self.next_no = no + 1
        return [event]

    def _release_locked(self, routing: Routing, why: str) -> list[Event]:
        """Close the open gap: what was fetched for it, in order, then the held live events; count the
        rest lost (and note it in ``routing.lost``); every number below the gap's end counts as handled
        from now on."""
        gap = self.gap
        out: list[Event] = []
        if gap is not None:
            fetched = [self._filled[n] for n in sorted(self._filled) if not self._known_locked(n)]
            lost = (gap.upto - gap.first) - len(fetched)
            if lost:
                self.lost += lost
                if gap.lost:
                    why = (
                        f"a jump of {gap.upto - gap.first} event numbers; only the newest {MAX_GAP_FETCH} "
                        "were asked for"
                    )
                routing.lost.append((gap, lost, why))
            for event in fetched:
                out += self._accept_locked(event)
            self.gap = None
            self._filled.clear()
            self._floor = max(self._floor, gap.upto)
            if self.next_no is not None and self.next_no < gap.upto:
                self.next_no = gap.upto
        held, self._held = self._held, []
        for event in held:  # (gap_done takes the held events first: here they are given up on)
            if self._known_locked(event.event_no):
                continue
            expected = self.next_no
            if expected is not None and event.event_no > expected:  # a further gap among them: lost too
                hole = Gap(expected, event.event_no)
                self.lost += hole.upto - hole.first
                routing.lost.append((hole, hole.upto - hole.first, why))
            out += self._accept_locked(event)
        return out


# ------------------------------------------------------------------------------------------ tiers


class Wakeup:
    """Wakes one waiting thread. :meth:`signal` never blocks and is safe from a thread that an interrupt
    may strike; :meth:`wait` is for the one consumer thread. A signal before the wait is not lost."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # held = nothing to report

    def signal(self) -> None:
        try:  # noqa: SIM105  (not contextlib.suppress: its Python-level __exit__ could be interrupted)
            self._lock.release()
        except RuntimeError:  # already signalled and not yet consumed
            pass

    def wait(self, timeout_s: float) -> bool:
        """True if signalled (consumes the signal), False after ``timeout_s``."""
        return self._lock.acquire(timeout=timeout_s)


class Mark:
    """Put in a tier to learn when everything queued before it has been handled."""

    __slots__ = ("reached",)

    def __init__(self) -> None:
        self.reached = OneShot()  # waited for in the caller's thread: see iontodrive.oneshot


@dataclass(slots=True)
class Refill:
    """Events ``[first, last]`` a tier dropped on overflow: fetched again when the tier gets here. Used by
    this module's :class:`DeliveryTier` and by the asyncio client's dispatch queue (one overflow policy)."""

    first: int
    last: int

    @staticmethod
    def extend_or_new(tail: object, event_no: int) -> Refill | None:
        """Consecutive drops share one marker: extend ``tail`` (the queue's last item) and return None if
        it is a :class:`Refill` ending just before ``event_no``, else a new marker to append."""
        if isinstance(tail, Refill) and event_no == tail.last + 1:
            tail.last = event_no
            return None
        return Refill(event_no, event_no)

    @property
    def fetch_from(self) -> int:
        """The first number fetched: at most the newest :data:`MAX_GAP_FETCH` are."""
        return max(self.first, self.last + 1 - MAX_GAP_FETCH)

    def settle(self, events: Sequence[Event], tier: str) -> tuple[list[Event], EventsLostError | None]:
        """The fetched events in order, and the loss to report for any not fetched (or None)."""
        got = sorted(
            {e.event_no: e for e in events if self.first <= e.event_no <= self.last}.values(),
            key=lambda e: e.event_no,
        )
        missing = (self.last - self.first + 1) - len(got)
        lost = None
        if missing:
            lost = EventsLostError(
                missing, self.first, self.last, f"dropped by the {tier} and not fetched again"
            )
        return got, lost


_STOP: Final = object()


class DeliveryTier:
    """One thread calling ``on_telemetry`` / ``on_event`` / ``on_error`` for each item in arrival order.

    ``refill(first, last)`` fetches events the tier dropped on overflow (returns them in order, may
    raise); it runs on this tier's thread. See the module docstring for the overflow policy.
    """

    def __init__(
        self,
        name: str,
        *,
        on_telemetry: Callable[[Telemetry], None],
        on_event: Callable[[Event], None],
        on_error: Callable[[BaseException], None],
        refill: Callable[[int, int], Sequence[Event]],
        telemetry_cap: int,
        event_cap: int,
    ) -> None:
        self.name = name
        self._on_telemetry = on_telemetry
        self._on_event = on_event
        self._on_error = on_error
        self._refill = refill
        self._telemetry_cap = telemetry_cap
        self._event_cap = event_cap
        self._lock = threading.Lock()
        self._wake = Wakeup()
        self._telemetry: deque[tuple[int, float, Telemetry]] = deque()
        self._other: deque[tuple[int, float, Any]] = deque()  # events, refills, errors, marks, stop
        self._events_waiting = 0
        self._index = 0
        self._busy_since: float | None = None  # arrival time of the item being handled
        self.dropped_telemetry = 0
        self.dropped_events = 0
        self.refilled_events = 0
        self.handled = 0
        self.last_progress = time.monotonic()  # when the last item was handled (or the tier went idle)
        self.last_telemetry_arrival: float | None = None  # arrival time of the newest sample handled
        self._thread = threading.Thread(target=self._run, name=f"iontodrive-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def put_telemetry(self, sample: Telemetry, arrival: float) -> None:
        with self._lock:
            if len(self._telemetry) >= self._telemetry_cap:
                self._telemetry.popleft()
                self.dropped_telemetry += 1
            self._index += 1
            self._telemetry.append((self._index, arrival, sample))
        self._wake.signal()

    def put_event(self, event: Event, arrival: float) -> None:
        with self._lock:
            if self._events_waiting >= self._event_cap:
                self.dropped_events += 1
                marker = Refill.extend_or_new(self._other[-1][2] if self._other else None, event.event_no)
                if marker is None:
                    return
                item: Any = marker
            else:
                item = event
                self._events_waiting += 1
            self._index += 1
            self._other.append((self._index, arrival, item))
        self._wake.signal()

    def put_control(self, item: BaseException | Mark) -> None:
        with self._lock:
            self._index += 1
            self._other.append((self._index, time.monotonic(), item))
        self._wake.signal()

    def stop(self) -> None:
        """Stop the thread after the item in hand; whatever still waits is discarded (the client is
        closing), so a backlog behind a slow listener cannot hold up ``close()``."""
        with self._lock:
            self._telemetry.clear()
            self._other.clear()
            self._events_waiting = 0
            self._index += 1
            self._other.append((self._index, time.monotonic(), _STOP))
        self._wake.signal()

    def lag_s(self, now: float | None = None) -> float:
        """Seconds the oldest waiting (or in-hand) item has waited; 0 when idle."""
        now = time.monotonic() if now is None else now
        with self._lock:
            oldest = self._busy_since
            for q in (self._telemetry, self._other):
                if q and (oldest is None or q[0][1] < oldest):
                    oldest = q[0][1]
        return 0.0 if oldest is None else max(0.0, now - oldest)

    def stalled_s(self, now: float | None = None) -> float:
        """Seconds since this tier last handled an item while items wait (0 when idle): a wedged tier."""
        now = time.monotonic() if now is None else now
        with self._lock:
            waiting = self._busy_since is not None or bool(self._telemetry) or bool(self._other)
        return max(0.0, now - self.last_progress) if waiting else 0.0

    def _next(self) -> tuple[float, Any]:
        while True:
            with self._lock:
                if self._telemetry or self._other:
                    break
                self.last_progress = time.monotonic()
            self._wake.wait(1.0)
        with self._lock:
            tq, oq = self._telemetry, self._other
            if tq and (not oq or tq[0][0] < oq[0][0]):
                _, arrival, item = tq.popleft()
            else:
                _, arrival, item = oq.popleft()
                if type(item) is Event:
                    self._events_waiting -= 1
            self._busy_since = arrival
            return arrival, item

    def _run(self) -> None:
        while True:
            arrival, item = self._next()
            try:
                if item is _STOP:
                    return
                kind = type(item)
                if kind is Telemetry:
                    self._on_telemetry(item)
                    self.last_telemetry_arrival = arrival
                elif kind is Event:
                    self._on_event(item)
                elif kind is Refill:
                    self._do_refill(item)
                elif kind is Mark:
                    item.reached.set()
                elif isinstance(item, BaseException):
                    self._on_error(item)
            except Exception as exc:  # a handler bug: report it, keep delivering
                logger.exception("%s tier: handling %r raised", self.name, item)
                try:
                    self._on_error(exc)
                except Exception:
                    logger.exception("%s tier: error handler raised", self.name)
            finally:
                with self._lock:
                    self._busy_since = None
                    self.handled += 1
                    self.last_progress = time.monotonic()

    def _do_refill(self, gap: Refill) -> None:
        first = gap.fetch_from
        events, lost = gap.settle(
            list(self._refill(first, gap.last)) if first <= gap.last else [], f"{self.name} tier"
        )
        self.refilled_events += len(events)
        for event in events:
            self._on_event(event)
        if lost is not None:
            raise lost
