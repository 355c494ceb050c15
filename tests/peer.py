"""A scripted protocol peer on a local TCP socket, for testing the client in isolation.

It speaks the real protocol (the same codec as the simulator) but answers from a handler the test
provides, so a test can drop requests, answer twice, NACK, go silent or inject events with gaps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from devices import CLINIC

from iontodrive.protocol import (
    Ack,
    Decoder,
    DeviceState,
    Event,
    EventCode,
    EventsReport,
    FetchEvents,
    Frame,
    GetStatus,
    Identify,
    Message,
    OpenSession,
    Polarity,
    SessionOpened,
    StatusFlags,
    StatusReport,
    encode,
)

IDENTITY = dataclasses.replace(
    CLINIC,
    model="peer-4",
    serial_number=4242,
    slew_limit_ua_per_s=5000,
    min_ramp_ms=5000,
    max_ramp_ms=60000,
    max_telemetry_hz=5000,
)


def status(last_event_no: int = 0) -> StatusReport:
    return StatusReport(
        device_time_ms=0,
        state=DeviceState.IDLE,
        flags=StatusFlags.NONE,
        polarity=Polarity.NONE,
        target_current_ua=0,
        setpoint_ua=0,
        measured_ua=0,
        voltage_mv=0,
        impedance_ohm=0,
        charge_uas=0,
        target_charge_uas=0,
        remaining_ms=0,
        session_id=0,
        last_event_no=last_event_no,
        watchdog_ms=2000,
        telemetry_hz=2,
    )


Handler = Callable[["ScriptedPeer", int, Message], list[bytes] | None]


@dataclass
class ScriptedPeer:
    """Accepts one connection at a time; ``handler(peer, seq, request)`` returns frames to send or None.

    Returning None uses the default answers (identity, status, Ack, event replay from ``events``).
    ``received`` lists every (seq, request) in arrival order, duplicates included.
    """

    handler: Handler | None = None
    events: list[Event] = field(default_factory=list)
    received: list[tuple[int, Message]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"socket://127.0.0.1:{self.port}"
        self._conn: socket.socket | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._server.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(0.1)
            with self._lock:
                self._conn = conn
            decoder = Decoder()
            while not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                for item in decoder.feed(data):
                    if isinstance(item, Frame):
                        self.received.append((item.seq, item.message))
                        self._answer(item.seq, item.message)
            with self._lock:
                self._conn = None
            conn.close()

    def _answer(self, seq: int, request: Message) -> None:
        frames = self.handler(self, seq, request) if self.handler else None
        if frames is None:
            frames = self.default_answer(seq, request)
        for frame in frames:
            self.send_raw(frame)

    def default_answer(self, seq: int, request: Message) -> list[bytes]:
        if isinstance(request, OpenSession):
            return [encode(SessionOpened(request.host_nonce, 1, 0), seq)]
        if isinstance(request, Identify):
            return [encode(IDENTITY, seq)]
        if isinstance(request, GetStatus):
            return [encode(status(len(self.events)), seq)]
        if isinstance(request, FetchEvents):
            chosen = [e for e in self.events if e.event_no >= request.from_event_no][: request.max_count]
            first = self.events[0].event_no if self.events else 1
            frames = [encode(EventsReport(first, len(self.events) + 1, len(chosen)), seq)]
            for event in chosen:
                frames.append(
                    encode(
                        Event(
                            event.event_no, event.device_time_ms, event.code, event.state, event.value, True
                        )
                    )
                )
            return frames
        return [encode(Ack(int(request.TYPE)), seq)]

    def send_raw(self, data: bytes) -> None:
        with self._lock:
            conn = self._conn
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sendall(data)

    def emit_event(self, event_no: int, code: EventCode = EventCode.STATE_CHANGED) -> Event:
        """Record an event in the ring and return it (not sent: the test decides what the host sees)."""
        event = Event(event_no, event_no * 10, code, DeviceState.IDLE, event_no, False)
        self.events.append(event)
        return event

    def drop_connection(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.shutdown(socket.SHUT_RDWR)

    def requests_of(self, kind: type[Message]) -> list[tuple[int, Message]]:
        return [(s, m) for s, m in self.received if isinstance(m, kind)]

    def close(self) -> None:
        self._stop.set()
        self.drop_connection()
        self._server.close()
        self._thread.join(timeout=2)
