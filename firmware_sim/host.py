"""A minimal in-process host for a :class:`Device` on a virtual clock, for tests, benches and examples.

It speaks the protocol core directly (no driver): :meth:`SimHost.request` encodes a request, hands it to
the device and returns the reply; :meth:`SimHost.run` advances time while sending heartbeats, as a live
host would. Everything unsolicited is collected in :attr:`SimHost.telemetry` and :attr:`SimHost.events`.
"""

from __future__ import annotations

from collections.abc import Callable

from iontodrive.protocol import (
    DecodeError,
    Decoder,
    Event,
    Frame,
    GetStatus,
    Heartbeat,
    Message,
    MessageKind,
    SequenceCounter,
    StatusReport,
    Telemetry,
    encode,
)

from .device import Device


class SimHost:
    """Host side of an in-process link to ``device`` (no link faults expected unless you handle them)."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.decoder = Decoder()
        self.seq = SequenceCounter()
        self.telemetry: list[Telemetry] = []
        self.events: list[Event] = []
        self.replies: list[Frame] = []
        self.decode_errors: list[DecodeError] = []

    def pump(self) -> list[Frame]:
        """Read and decode everything the device has sent; returns the reply frames among it."""
        replies: list[Frame] = []
        while True:
            data = self.device.read_output()
            if not data:
                break
            for item in self.decoder.feed(data):
                if isinstance(item, DecodeError):
                    self.decode_errors.append(item)
                elif isinstance(item.message, Telemetry):
                    self.telemetry.append(item.message)
                elif isinstance(item.message, Event):
                    self.events.append(item.message)
                    if item.message.replayed:
                        replies.append(item)
                elif item.message.TYPE.kind == MessageKind.REPLY:
                    replies.append(item)
        self.replies.extend(replies)
        return replies

    def send(self, message: Message, seq: int | None = None) -> tuple[int, list[Frame]]:
        """Send ``message`` (new sequence number unless given); return (seq, reply frames received)."""
        if seq is None:
            seq = self.seq.next()
        self.pump()
        self.device.receive(encode(message, seq))
        return seq, self.pump()

    def request(self, message: Message, seq: int | None = None) -> Message:
        """Send ``message`` and return its reply message (the first reply frame with its sequence number).

        Raises:
            AssertionError: the device did not answer (it always answers a valid request at once).
        """
        seq, frames = self.send(message, seq)
        for frame in frames:
            if frame.seq == seq:
                return frame.message
        raise AssertionError(f"no reply to {message!r} (seq {seq})")

    def status(self) -> StatusReport:
        reply = self.request(GetStatus())
        assert isinstance(reply, StatusReport)
        return reply

    def run(
        self,
        seconds: float,
        *,
        step_s: float = 0.5,
        heartbeat: bool = True,
        until: Callable[[Device], bool] | None = None,
    ) -> float:
        """Advance ``seconds`` in ``step_s`` increments, sending a Heartbeat after each (if ``heartbeat``).

        Stops early when ``until(device)`` becomes true; returns the time actually advanced (s).
        """
        done = 0.0
        while done < seconds - 1e-12:
            dt = min(step_s, seconds - done)
            self.device.advance(dt)
            done += dt
            if heartbeat:
                self.send(Heartbeat())
            else:
                self.pump()
            if until is not None and until(self.device):
                break
        return done
