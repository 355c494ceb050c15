"""The firmware's numbered events: the ring FetchEvents replays, and the simulator's own logs.

Events are numbered from 1 after each boot, +1 per event (``docs/protocol.md`` §5). ``Event.state`` is the
device state *after* the stimulus that caused the event has been handled (a request, a trigger or a
scheduled step): the firmware records events while it reacts (:meth:`EventRing.record`) and stamps them
with the state it ends in (:meth:`EventRing.commit`), so every event of one reaction carries the same
state, the one the host will see next.

When the ring overwrites an event no host has fetched, the ring sets ``overflowed`` and records
``EVENTS_LOST`` once per overflow episode, until a FetchEvents from the ring's start acknowledges it.
"""

from __future__ import annotations

from collections import deque

from iontodrive.protocol import DeviceState, Event, EventCode, EventsReport, Message

from .thresholds import EVENT_LOG_SIZE, EVENT_RING_SIZE

_U32 = 0xFFFF_FFFF


class EventRing:
    """Events of one boot (ring and boot log) plus the simulator's log across boots (``log``)."""

    __slots__ = (
        "boot_log",
        "dropped",
        "last_fetched_no",
        "log",
        "next_event_no",
        "overflowed",
        "pending",
        "ring",
    )

    def __init__(self, log: deque[Event] | None = None) -> None:
        self.ring: deque[Event] = deque()
        self.boot_log: deque[Event] = deque(maxlen=EVENT_LOG_SIZE)  # every event since this boot
        self.log: deque[Event] = log if log is not None else deque(maxlen=EVENT_LOG_SIZE)  # across boots
        self.next_event_no = 1
        self.last_fetched_no = 0
        self.dropped = 0  # unfetched events dropped from the ring in this overflow episode
        self.overflowed = False
        self.pending: list[tuple[int, int, EventCode, int]] = []  # recorded, not yet stamped and sent

    @property
    def last_event_no(self) -> int:
        """Number of the newest event recorded (0 before the first)."""
        return (self.next_event_no - 1) & _U32

    def record(self, code: EventCode, value: int, device_time_ms: int) -> None:
        """Number an event now; it is stamped with a state and sent by the next :meth:`commit`."""
        self.pending.append((self.next_event_no & _U32, device_time_ms, code, int(value)))
        self.next_event_no += 1

    def commit(self, state: DeviceState, outbox: list[Message]) -> None:
        """Stamp the recorded events with ``state``, keep them in the ring and send them (``outbox``)."""
        while self.pending:
            pending = self.pending
            self.pending = []
            for event_no, time_ms, code, value in pending:
                event = Event(event_no=event_no, device_time_ms=time_ms, code=code, state=state, value=value)
                self._keep(event, time_ms)
                outbox.append(event)

    def _keep(self, event: Event, time_ms: int) -> None:
        first_loss = False
        if len(self.ring) >= EVENT_RING_SIZE:
            dropped = self.ring.popleft()
            if dropped.event_no > self.last_fetched_no:
                first_loss = not self.overflowed
                self.overflowed = True
                self.dropped += 1
        self.ring.append(event)
        self.log.append(event)
        self.boot_log.append(event)
        if first_loss:  # once per overflow episode (until a FetchEvents acknowledges it)
            self.record(EventCode.EVENTS_LOST, self.dropped, time_ms)

    def fetch(self, from_event_no: int, max_count: int) -> list[Message]:
        """Answer FetchEvents: the EventsReport, then up to ``max_count`` replayed events (§7.4).

        ``max_count`` 0 answers the ring's range alone. Fetching from the ring's start (or earlier)
        acknowledges an overflow.
        """
        first = self.ring[0].event_no if self.ring else 0
        start = max(from_event_no, first)
        chosen = [e for e in self.ring if e.event_no >= start][:max_count]
        replies: list[Message] = [EventsReport(first, self.next_event_no & _U32, len(chosen))]
        replies.extend(
            Event(e.event_no, e.device_time_ms, e.code, e.state, e.value, replayed=True) for e in chosen
        )
        if chosen:
            self.last_fetched_no = max(self.last_fetched_no, chosen[-1].event_no)
        if from_event_no <= first:  # the host has now seen where the ring starts: loss acknowledged
            self.overflowed = False
            self.dropped = 0
        return replies
