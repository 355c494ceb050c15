"""The delivery layer under the client (iontodrive.delivery): event sequencing and the bounded tiers."""

from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from iontodrive.delivery import MAX_GAP_FETCH, DeliveryTier, EventSequencer, Mark, Routing
from iontodrive.protocol import DeviceState, Event, EventCode, Telemetry


def event(no: int, replayed: bool = False) -> Event:
    return Event(no, no, EventCode.SETPOINT_CHANGED, DeviceState.HOLD, 0, replayed)


class Delivered:
    def __init__(self) -> None:
        self.safety: list[int] = []
        self.ordinary: list[int] = []
        self.lost = 0

    def take(self, r: Routing) -> None:
        self.safety += [e.event_no for e in r.both + r.safety]
        self.ordinary += [e.event_no for e in r.both + r.ordinary]
        self.lost += sum(count for _, count, _ in r.lost)


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(1, 300),
    dropped=st.sets(st.integers(1, 300)),
    duplicated=st.sets(st.integers(1, 300)),
    ring=st.integers(1, 64),
    fetch_after=st.integers(0, 20),
    answer=st.booleans(),
)
def test_every_event_is_delivered_once_in_order_or_counted_lost(
    count: int, dropped: set[int], duplicated: set[int], ring: int, fetch_after: int, answer: bool
) -> None:
    seq = EventSequencer(next_no=1)
    out = Delivered()
    waiting = 0  # live events seen since the open gap opened
    last_live = 0

    def fetch(issued: int) -> None:
        gap = seq.gap
        assert gap is not None
        if answer:
            for no in range(max(gap.fetch_from, issued - ring + 1), gap.upto):
                out.take(seq.replayed(event(no, replayed=True)))
        out.take(seq.gap_done(gap))

    for no in range(1, count + 1):
        if no in dropped and no != count:  # (the last one always arrives: it reveals any trailing gap)
            continue
        for _ in range(2 if no in duplicated else 1):
            r = seq.live(event(no))
            out.take(r)
            last_live = no
        if seq.gap is not None:
            waiting += 1
            if waiting > fetch_after:
                fetch(no)
                waiting = 0
    while seq.gap is not None:
        fetch(count)
    assert out.ordinary == sorted(set(out.ordinary))  # in order, once each
    assert len(set(out.safety)) == len(out.safety)  # once each
    assert set(out.safety) == set(out.ordinary)
    assert len(out.ordinary) + out.lost == last_live  # nothing silently lost
    assert seq.lost == out.lost


def test_a_jump_to_four_billion_asks_for_the_newest_numbers_only() -> None:
    seq = EventSequencer(next_no=1)
    r = seq.live(event(4_000_000_000))
    assert r.gap is not None and r.gap.upto - r.gap.fetch_from == MAX_GAP_FETCH
    assert [e.event_no for e in r.safety] == [4_000_000_000]  # the safety tier has it at once
    done = seq.gap_done(r.gap)
    assert [e.event_no for e in done.ordinary] == [4_000_000_000]
    assert done.lost and done.lost[0][1] == 4_000_000_000 - 1
    late = seq.replayed(event(5, replayed=True))  # a late replay of a given-up number: not delivered
    assert late.both == [] and late.safety == []


ENTERED = threading.Event()  # set by a gated handler once it holds an item


def tier(handled: list[object], gate: threading.Event | None = None, **caps: int) -> DeliveryTier:
    def on_item(item: object) -> None:
        if gate is not None:
            ENTERED.set()
            gate.wait(5.0)
        handled.append(item)

    refilled: list[tuple[int, int]] = []

    def refill(first: int, last: int) -> list[Event]:
        refilled.append((first, last))
        return [event(n, replayed=True) for n in range(first, last + 1)]

    t = DeliveryTier(
        "test",
        on_telemetry=on_item,
        on_event=on_item,
        on_error=handled.append,
        refill=refill,
        telemetry_cap=caps.get("telemetry_cap", 5),
        event_cap=caps.get("event_cap", 5),
    )
    t.refills = refilled  # type: ignore[attr-defined]
    return t


def sample(no: int) -> Telemetry:
    return Telemetry(no, no, DeviceState.HOLD, 0, 0, 0, 0, 0, 0, 0)  # type: ignore[arg-type]


def test_a_full_tier_drops_the_oldest_telemetry_and_refills_dropped_events_in_order() -> None:
    handled: list[object] = []
    gate = threading.Event()
    t = tier(handled, gate)
    t.start()
    ENTERED.clear()
    t.put_telemetry(sample(0), 0.0)  # taken at once; blocks in the handler until the gate opens
    assert ENTERED.wait(5.0)
    for n in range(1, 21):
        t.put_telemetry(sample(n), 0.0)  # never blocks: the oldest waiting are dropped
    for n in range(1, 21):
        t.put_event(event(n), 0.0)  # never blocks: 15 of them become one refill
    assert t.dropped_telemetry == 15 and t.dropped_events == 15
    assert t.lag_s() > 0
    mark = Mark()
    t.put_control(mark)
    gate.set()
    assert mark.reached.wait(5.0)
    telemetry = [i.sample_no for i in handled if isinstance(i, Telemetry)]
    events = [i.event_no for i in handled if isinstance(i, Event)]
    assert telemetry == [0, 16, 17, 18, 19, 20]
    assert events == list(range(1, 21))  # the dropped ones fetched again, in order
    assert t.refills == [(6, 20)]  # type: ignore[attr-defined]
    assert t.lag_s() == 0.0
    t.stop()
    t.thread.join(2.0)
    assert not t.thread.is_alive()


def test_stopping_a_tier_behind_a_slow_handler_discards_the_backlog() -> None:
    handled: list[object] = []
    gate = threading.Event()
    t = tier(handled, gate, telemetry_cap=10_000)
    t.start()
    for n in range(5000):
        t.put_telemetry(sample(n), 0.0)
    t.stop()
    gate.set()
    t.thread.join(2.0)
    assert not t.thread.is_alive() and len(handled) <= 1
