"""The :class:`HostileDevice`: see the package docstring (``tests/hostile/__init__.py``) for the switches."""

from __future__ import annotations

import dataclasses
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from firmware_sim.bridge_pty import PtyTransport
from firmware_sim.models import MODELS
from iontodrive.protocol import (
    Abort,
    Ack,
    CheckContact,
    ClearFault,
    ConfigureTelemetry,
    ContactReport,
    ContactVerdict,
    Decoder,
    DeviceState,
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
    MessageType,
    OpenSession,
    Pause,
    Polarity,
    Reset,
    Resume,
    SessionOpened,
    SetCurrent,
    SetWatchdog,
    Start,
    StatusFlags,
    StatusReport,
    Stop,
    Telemetry,
    encode,
)
from iontodrive.protocol.rules import OUTPUT_STATES, SESSION_STATES

EVENT_RING_SIZE = 256  # as the firmware's ring (firmware_sim/firmware.py)
UINT32_MAX = 0xFFFF_FFFF
FLOOD_CHUNK = 256  # frames a flood writes between two looks at the host's requests


def lying_identity(model: str = "clinic-4", **limits: Any) -> IdentityReport:
    """The simulator's identity for ``model`` (or clinic-4's, renamed, for an unknown family) with ``limits``
    replaced, e.g. ``lying_identity(max_current_ua=1_000_000, slew_limit_ua_per_s=UINT32_MAX,
    min_ramp_ms=0)``: a "clinic-4" claiming 1 A, an unbounded slew and no minimum ramp."""
    base = MODELS[model].identity() if model in MODELS else MODELS["clinic-4"].identity()
    return dataclasses.replace(base, model=model, **limits)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 2.0, poll_s: float = 0.002) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout_s`` passed (False). For conditions that have
    no event to wait on; the kit's own conditions use :meth:`HostileDevice.wait_for`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        threading.Event().wait(poll_s)


def wait_for(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` like :func:`wait_until`; raise AssertionError naming ``what`` if it never came
    true. For a real-time simulator on the other side, where wall time must pass."""
    if not wait_until(lambda: bool(predicate()), timeout_s, poll_s=0.01):
        raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


class HostileDevice:
    """A scriptable fake stimulator on a pty. ``url`` is the path the driver opens.

    All switches may be flipped from any thread at any time. Frames are written by the device's own thread
    (requests answered, telemetry ticks, floods), so the pty is never written by two threads at once.
    """

    def __init__(
        self,
        identity: IdentityReport | None = None,
        *,
        telemetry_hz: int = 0,
        impedance_ohm: int = 3_000,
        voltage_mv: int = 9_000,
        clock: Callable[[], float] = time.monotonic,
        first_event_no: int = 1,
    ) -> None:
        self.identity = identity if identity is not None else MODELS["clinic-4"].identity()
        self.clock = clock
        self.impedance_ohm = impedance_ohm
        self.voltage_mv = voltage_mv
        self._transport = PtyTransport()
        self.url = self._transport.path
        self.received: list[tuple[int, Message]] = []
        self._received_cond = threading.Condition()
        self._actions: queue.SimpleQueue[tuple[Callable[[], None], threading.Event | None]] = (
            queue.SimpleQueue()
        )
        self._stop = threading.Event()
        self._rng = random.Random(0)
        self._loss = 0.0
        self._bottomless = False
        self._delays: dict[type[Message], float] = {}
        self._delayed: list[tuple[float, list[bytes]]] = []  # (due on clock, frames)
        self._floods: list[list[Any]] = []  # [frames left, write one, done]: worked off between reads
        self._scripted: dict[type[Message], Callable[[int], list[bytes]]] = {}
        # replies
        self._silent_until: float | None = None  # clock time until which no request is answered
        self._silence_after: dict[type[Message], float] = {}  # request kind -> seconds of silence after it
        self._ignored: dict[type[Message], bool] = {}  # request kind -> still answered?
        self._ack_as: dict[type[Message], MessageType] = {}
        # device model
        self.device_time_ms = 0
        self.state = DeviceState.IDLE
        self.polarity = Polarity.NONE
        self.target_ua = 0
        self.setpoint_ua = 0.0
        self.measured_ua = 0
        self.charge_uas = 0.0
        self.session_id = 0
        self.self_raised_ua: int | None = None
        self.watchdog_ms = 2000
        self.host_sessions = 0  # protocol 2: OpenSession count, and the present host's nonce
        self.host_nonce = 0
        self.telemetry_hz = telemetry_hz
        self._rate_ua_per_s = 0.0
        self._start: Start | None = None
        self._session_ms = 0
        self._end_code = EventCode.SESSION_ENDED
        self._sample_no = 0
        self._next_event_no = first_event_no
        self.events: deque[Event] = deque(maxlen=EVENT_RING_SIZE)
        self._ticker_hz = 0
        self._next_tick = 0.0
        self._thread = threading.Thread(target=self._run, name="hostile-device", daemon=True)
        self._thread.start()
        if telemetry_hz:
            self.start_telemetry(telemetry_hz)

    # ------------------------------------------------------------------------------------ lifecycle

    def __enter__(self) -> HostileDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._transport.close()

    # -------------------------------------------------------------------------------------- switches

    def drop_replies(self, for_s: float | None = None) -> None:
        """Answer no request for ``for_s`` seconds of ``clock`` (None: until :meth:`answer_again`).
        Requests still take effect (a real device that lost its transmit line would still act on them)
        unless they are also :meth:`ignore`\\ d; telemetry and events keep flowing."""
        self._silent_until = math.inf if for_s is None else self.clock() + for_s

    def answer_again(self) -> None:
        self._silent_until = None
        self._silence_after.clear()

    def silence_after(self, kind: type[Message], for_s: float | None = None) -> None:
        """Answer the next ``kind`` request, then drop every reply for ``for_s`` s (None: for ever)."""
        self._silence_after[kind] = math.inf if for_s is None else for_s

    def self_raise(self, current_ua: int | None) -> None:
        """Step the output to ``current_ua`` on the next tick and report set-point = measured = that
        (a device whose control loop ran away and reports it as intended); None ends it."""
        self.self_raised_ua = current_ua

    def ignore(self, *kinds: type[Message], answer: bool = True) -> None:
        """Do nothing on these requests; ack them (``answer=True``) or drop them without a reply."""
        for kind in kinds:
            self._ignored[kind] = answer

    def obey(self, *kinds: type[Message]) -> None:
        """Undo :meth:`ignore` for these kinds (all when none given)."""
        if not kinds:
            self._ignored.clear()
        for kind in kinds:
            self._ignored.pop(kind, None)

    def ack_as(self, kind: type[Message], as_kind: type[Message] | MessageType) -> None:
        """Answer ``kind`` with an Ack whose ``request_type`` names ``as_kind`` instead (acting on it)."""
        self._ack_as[kind] = as_kind if isinstance(as_kind, MessageType) else as_kind.TYPE

    def delay_replies(self, kind: type[Message], for_s: float | None) -> None:
        """Answer ``kind`` ``for_s`` seconds (of ``clock``) late, acting on it at once; None undoes it.
        Other requests are answered meanwhile, and telemetry, events and floods go on."""
        if for_s is None:
            self._delays.pop(kind, None)
        else:
            self._delays[kind] = for_s

    def script(self, kind: type[Message], answer: Callable[[int], list[bytes]] | None) -> None:
        """Answer ``kind`` with ``answer(seq)`` (encoded frames) instead of acting on it; None undoes it."""
        if answer is None:
            self._scripted.pop(kind, None)
        else:
            self._scripted[kind] = answer

    def status_report(self) -> StatusReport:
        """The StatusReport the device would answer now (for scripted answers)."""
        return self._status()

    def bottomless_ring(self, on: bool = True) -> None:
        """Answer every FetchEvents with ``max_count`` made-up events from ``from_event_no`` on, whatever
        was asked (a ring that claims to hold every number ever issued)."""
        self._bottomless = on

    def lose_bytes(self, fraction: float, seed: int = 1) -> None:
        """Drop this fraction of the output bytes at random (seeded): frames arrive torn."""
        self._rng = random.Random(seed)
        self._loss = fraction

    def jump_event_numbers(self, to: int) -> None:
        """The next event is numbered ``to`` (the ring keeps its older events)."""
        self._call(lambda: setattr(self, "_next_event_no", to))

    def emit_event(self, code: EventCode, value: int = 0, *, live: bool = True) -> Event:
        """Put an event in the ring and (``live``) send it; ``live=False``: lost on the wire."""
        box: list[Event] = []
        self._call(lambda: box.append(self._emit(code, value, live=live)))
        return box[0]

    def flood_events(
        self, count: int, code: EventCode = EventCode.SETPOINT_CHANGED, wait_s: float = 60.0
    ) -> None:
        """Emit ``count`` live events back to back, still answering requests in between (as a device
        whose event source runs wild would); returns once all are written."""
        self._flood(count, lambda: self._emit(code, int(self.setpoint_ua), live=True), wait_s)

    def flood_telemetry(self, count: int, wait_s: float = 60.0) -> None:
        """Send ``count`` samples back to back without advancing device time, still answering requests
        in between; returns once all are written."""
        self._flood(count, lambda: self._send(encode(self._telemetry())), wait_s)

    def _flood(self, count: int, one: Callable[[], object], wait_s: float) -> None:
        done = threading.Event()
        self._call(lambda: self._floods.append([count, one, done]))
        if not done.wait(wait_s):
            raise TimeoutError("the hostile device did not finish the flood in time")

    def start_telemetry(self, rate_hz: int) -> None:
        """Send telemetry at ``rate_hz`` in real time, each sample advancing device time by 1/rate."""
        self._call(lambda: self._set_ticker(rate_hz))

    def stop_telemetry(self) -> None:
        self._call(lambda: self._set_ticker(0))

    def tick(self, count: int = 1, period_ms: int | None = None) -> None:
        """Advance device time by ``count`` periods of ``period_ms`` (default 1000 / telemetry rate, or
        10 ms) and send one sample per period. Returns once sent."""
        step = period_ms if period_ms is not None else self._period_ms()

        def run() -> None:
            for _ in range(count):
                self._advance(step)

        self._call(run)

    # ----------------------------------------------------------------------------------- observation

    def requests_of(self, kind: type[Message]) -> list[tuple[int, Message]]:
        with self._received_cond:
            return [(s, m) for s, m in self.received if isinstance(m, kind)]

    def wait_for(self, kind: type[Message], count: int = 1, timeout_s: float = 2.0) -> bool:
        """Wait until at least ``count`` requests of ``kind`` arrived (True), or ``timeout_s`` (False)."""
        with self._received_cond:
            return self._received_cond.wait_for(
                lambda: sum(1 for _, m in self.received if isinstance(m, kind)) >= count, timeout_s
            )

    @property
    def silent(self) -> bool:
        return self._silent_until is not None and self.clock() < self._silent_until

    # ------------------------------------------------------------------------------- device thread

    def _call(self, action: Callable[[], None], wait_s: float = 10.0) -> None:
        if threading.current_thread() is self._thread:
            action()
            return
        done = threading.Event()
        self._actions.put((action, done))
        if not done.wait(wait_s):
            raise TimeoutError("the hostile device did not run the action in time")

    def _run(self) -> None:
        decoder = Decoder()
        while not self._stop.is_set():
            while True:
                try:
                    action, done = self._actions.get_nowait()
                except queue.Empty:
                    break
                try:
                    action()
                finally:
                    if done is not None:
                        done.set()
            timeout = 0.005
            if self._delayed:
                now = self.clock()
                due = [d for d in self._delayed if d[0] <= now]
                self._delayed = [d for d in self._delayed if d[0] > now]
                for _, frames in due:
                    for frame in frames:
                        self._send(frame)
                timeout = 0.001
            if self._floods:
                flood = self._floods[0]
                for _ in range(min(FLOOD_CHUNK, flood[0])):
                    flood[1]()
                flood[0] -= min(FLOOD_CHUNK, flood[0])
                if flood[0] <= 0:
                    self._floods.pop(0)
                    flood[2].set()
                timeout = 0.0
            if self._ticker_hz:
                now = time.monotonic()
                period = 1.0 / self._ticker_hz
                behind = 0
                while self._next_tick <= now and behind < 1000:
                    self._advance(1000.0 / self._ticker_hz)
                    self._next_tick += period
                    behind += 1
                if self._next_tick <= now:  # too far behind: do not try to catch up
                    self._next_tick = now + period
                timeout = max(0.0, min(timeout, self._next_tick - time.monotonic()))
            try:
                data = self._transport.read(timeout)
            except OSError:
                return
            if not data:
                continue
            for item in decoder.feed(data):
                if isinstance(item, Frame):
                    with self._received_cond:
                        self.received.append((item.seq, item.message))
                        self._received_cond.notify_all()
                    self._answer(item.seq, item.message)

    def _send(self, frame: bytes) -> None:
        if self._loss:
            frame = bytes(b for b in frame if self._rng.random() >= self._loss)
        self._transport.write(frame)

    def _set_ticker(self, rate_hz: int) -> None:
        self._ticker_hz = rate_hz
        self._next_tick = time.monotonic()
        if rate_hz:
            self.telemetry_hz = rate_hz

    def _period_ms(self) -> float:
        return 1000.0 / self.telemetry_hz if self.telemetry_hz else 10.0

    # -------------------------------------------------------------------------------------- answers

    def _answer(self, seq: int, request: Message) -> None:
        kind = type(request)
        answered = self._ignored.get(kind, True)
        if kind not in self._ignored or kind in (OpenSession, Identify, GetStatus, FetchEvents, CheckContact):
            replies = self._act(seq, request)
        else:
            replies = [encode(Ack(int(request.TYPE)), seq)]
        if kind in self._ack_as:
            replies = [encode(Ack(int(self._ack_as[kind])), seq)]
        if kind in self._scripted:
            replies = self._scripted[kind](seq)
        if not answered or self.silent:
            replies = []  # (events the request raised were sent already: they are not replies)
        if kind in self._delays and replies:
            self._delayed.append((self.clock() + self._delays[kind], replies))
            replies = []
        for frame in replies:
            self._send(frame)
        if kind in self._silence_after:
            for_s = self._silence_after.pop(kind)
            self._silent_until = math.inf if for_s == math.inf else self.clock() + for_s

    def _act(self, seq: int, request: Message) -> list[bytes]:
        """What an honest minimal device does and answers."""
        ack = [encode(Ack(int(request.TYPE)), seq)]
        if isinstance(request, OpenSession):  # the protocol-2 handshake
            self.host_sessions += 1
            previous, self.host_nonce = self.host_nonce, request.host_nonce
            return [encode(SessionOpened(request.host_nonce, self.host_sessions, previous), seq)]
        if isinstance(request, Identify):
            return [encode(self.identity, seq)]
        if isinstance(request, GetStatus):
            return [encode(self._status(), seq)]
        if isinstance(request, CheckContact):
            return [
                encode(
                    ContactReport(
                        self.impedance_ohm, ContactVerdict.OK, 200, 10_000, request.probe_current_ua
                    ),
                    seq,
                )
            ]
        if isinstance(request, FetchEvents) and self._bottomless:
            count = request.max_count
            first = request.from_event_no
            frames = [encode(EventsReport(1, self._next_event_no, count), seq)]
            frames += [
                encode(Event(n, self.device_time_ms, EventCode.SETPOINT_CHANGED, self.state, 0, True))
                for n in range(first, min(first + count, UINT32_MAX + 1))
            ]
            return frames
        if isinstance(request, FetchEvents):
            ring = list(self.events)
            chosen = [e for e in ring if e.event_no >= request.from_event_no][: request.max_count]
            first = ring[0].event_no if ring else self._next_event_no
            frames = [encode(EventsReport(first, self._next_event_no, len(chosen)), seq)]
            frames += [encode(dataclasses.replace(e, replayed=True)) for e in chosen]
            return frames
        if isinstance(request, Start):
            self._start = request
            self.session_id += 1
            self.target_ua = request.target_current_ua
            self.polarity = request.polarity
            self.charge_uas = 0.0
            self._session_ms = 0
            self._rate_ua_per_s = request.target_current_ua * 1000.0 / max(1, request.ramp_up_ms)
            self._set_state(DeviceState.RAMP_UP)
            self._emit(EventCode.SESSION_STARTED, request.target_current_ua)
            return ack
        if isinstance(request, SetCurrent):
            delta = abs(request.target_current_ua - self.setpoint_ua)
            self._rate_ua_per_s = delta * 1000.0 / max(1, request.ramp_ms) if delta else 1.0
            self.target_ua = request.target_current_ua
            self._set_state(DeviceState.ADJUST)
            self._emit(EventCode.SETPOINT_CHANGED, request.target_current_ua)
            return ack
        if isinstance(request, (Stop, Abort, Pause)):
            if self.state not in SESSION_STATES:
                return [self._nack(seq, request)]
            if isinstance(request, Abort):
                self._rate_ua_per_s = float(max(1, self.identity.slew_limit_ua_per_s))
                self._end_code = EventCode.ABORTED
            elif isinstance(request, Stop):
                down = self._start.ramp_down_ms if self._start else 5000
                self._rate_ua_per_s = max(1.0, self.setpoint_ua) * 1000.0 / max(1, down)
                self._end_code = EventCode.STOPPED
            self._set_state(DeviceState.PAUSING if isinstance(request, Pause) else DeviceState.RAMP_DOWN)
            return ack
        if isinstance(request, Resume):
            if self.state is not DeviceState.PAUSED:
                return [self._nack(seq, request)]
            up = self._start.ramp_up_ms if self._start else 5000
            self._rate_ua_per_s = self.target_ua * 1000.0 / max(1, up)
            self._set_state(DeviceState.RAMP_UP)
            self._emit(EventCode.RESUMED, int(self.charge_uas))
            return ack
        if isinstance(request, ConfigureTelemetry):
            self.telemetry_hz = request.rate_hz
            return ack
        if isinstance(request, SetWatchdog):
            self.watchdog_ms = request.timeout_ms
            return ack
        if isinstance(request, ClearFault):
            if self.state is DeviceState.FAULT:
                self._set_state(DeviceState.IDLE)
            return ack
        if isinstance(request, (Heartbeat, Reset)):
            return ack
        return ack

    def _nack(self, seq: int, request: Message) -> bytes:
        from iontodrive.protocol import ErrorCode, Field, Nack

        return encode(Nack(int(request.TYPE), ErrorCode.BAD_STATE, Field.STATE, int(self.state), 0, 0), seq)

    # ------------------------------------------------------------------------------- device model

    def _set_state(self, state: DeviceState) -> None:
        if state is not self.state:
            previous = self.state
            self.state = state
            self._emit(EventCode.STATE_CHANGED, int(previous))

    def _emit(self, code: EventCode, value: int, *, live: bool = True) -> Event:
        event = Event(
            self._next_event_no & UINT32_MAX,
            self.device_time_ms & UINT32_MAX,
            code,
            self.state,
            max(0, min(int(value), UINT32_MAX)),
            False,
        )
        self._next_event_no = (self._next_event_no + 1) & UINT32_MAX
        self.events.append(event)
        if live:
            self._send(encode(event))
        return event

    def _advance(self, dt_ms: float) -> None:
        """One control period of ``dt_ms``: move the output, integrate charge, end sessions, send a sample."""
        self.device_time_ms += max(1, round(dt_ms))
        dt_s = dt_ms / 1000.0
        if self.self_raised_ua is not None:
            self.setpoint_ua = float(self.self_raised_ua)
            if self.state not in SESSION_STATES or self.state in (DeviceState.PAUSED,):
                self._set_state(DeviceState.HOLD)
        elif self.state in OUTPUT_STATES:
            self.setpoint_ua = _toward(self.setpoint_ua, self.target_ua, self._rate_ua_per_s * dt_s)
            if self.setpoint_ua == self.target_ua and self.state is not DeviceState.HOLD:
                self._set_state(DeviceState.HOLD)
        elif self.state in (DeviceState.RAMP_DOWN, DeviceState.PAUSING):
            self.setpoint_ua = _toward(self.setpoint_ua, 0.0, self._rate_ua_per_s * dt_s)
            if self.setpoint_ua == 0.0:
                if self.state is DeviceState.PAUSING:
                    self._set_state(DeviceState.PAUSED)
                    self._emit(EventCode.PAUSED, int(self.charge_uas))
                else:
                    self._emit(self._end_code, int(self.charge_uas))
                    self._set_state(DeviceState.DONE)
                    self._emit(EventCode.SESSION_ENDED, int(self.charge_uas))
                    self._end_code = EventCode.SESSION_ENDED
        self.measured_ua = round(self.setpoint_ua)
        if self.state in SESSION_STATES:
            self.charge_uas += self.measured_ua * dt_s
            self._session_ms += dt_ms
            self._maybe_end()
        self._send(encode(self._telemetry()))

    def _maybe_end(self) -> None:
        start = self._start
        if start is None or self.self_raised_ua is not None:
            return
        if self.state not in (DeviceState.RAMP_UP, DeviceState.HOLD, DeviceState.ADJUST):
            return
        down_s = start.ramp_down_ms / 1000.0
        if start.dose_uas:
            ramp_charge = self.setpoint_ua * down_s / 2
            due = self.charge_uas + ramp_charge >= start.dose_uas
        else:
            due = self._session_ms >= start.duration_ms - start.ramp_down_ms
        if due:
            self._rate_ua_per_s = max(1.0, self.setpoint_ua) / max(1e-3, down_s)
            self._end_code = EventCode.DOSE_COMPLETE if start.dose_uas else EventCode.SESSION_ENDED
            self._set_state(DeviceState.RAMP_DOWN)

    def _flags(self) -> StatusFlags:
        flags = StatusFlags.CONTACT_OK
        if self.measured_ua:
            flags |= StatusFlags.OUTPUT_ON
        if self.state in SESSION_STATES:
            flags |= StatusFlags.SESSION_ACTIVE
            if self._start is not None and self._start.dose_uas:
                flags |= StatusFlags.DOSE_BASED
        return flags

    def _telemetry(self) -> Telemetry:
        self._sample_no = (self._sample_no + 1) & UINT32_MAX
        return Telemetry(
            self._sample_no,
            self.device_time_ms & UINT32_MAX,
            self.state,
            self._flags(),
            self.polarity,
            round(self.setpoint_ua),
            self.measured_ua,
            self.voltage_mv if self.measured_ua else 0,
            self.impedance_ohm,
            min(UINT32_MAX, int(self.charge_uas)),
        )

    def _status(self) -> StatusReport:
        start = self._start
        return StatusReport(
            device_time_ms=self.device_time_ms & UINT32_MAX,
            state=self.state,
            flags=self._flags(),
            polarity=self.polarity,
            target_current_ua=self.target_ua,
            setpoint_ua=round(self.setpoint_ua),
            measured_ua=self.measured_ua,
            voltage_mv=self.voltage_mv if self.measured_ua else 0,
            impedance_ohm=self.impedance_ohm,
            charge_uas=min(UINT32_MAX, int(self.charge_uas)),
            target_charge_uas=start.dose_uas if start else 0,
            remaining_ms=0,
            session_id=self.session_id,
            last_event_no=(self._next_event_no - 1) & UINT32_MAX,
            watchdog_ms=self.watchdog_ms,
            telemetry_hz=self.telemetry_hz,
        )


def _toward(value: float, goal: float, step: float) -> float:
    if value < goal:
        return min(goal, value + step)
    return max(goal, value - step)
