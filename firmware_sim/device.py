"""The simulated device as a byte-level peer: the firmware behind the protocol core.

:class:`Device` takes bytes from the host (:meth:`Device.receive`, any chunking, garbage allowed), decodes
them with :class:`iontodrive.protocol.Decoder`, answers each request at most once per (sequence number,
request) within the present host session through :class:`iontodrive.protocol.ReplyCache` (S17), and
queues replies, telemetry and events for :meth:`Device.read_output`. Time moves only through
:meth:`Device.advance`; nothing here starts a thread.

Host sessions (``docs/protocol.md`` §7.3): the reply cache belongs to the host session opened by the last
``OpenSession``; opening one clears it, so a new host is never answered from another host's memory. The
safety commands (Stop, Abort, Pause) are never answered from the cache: they are executed on every arrival
(each is harmless to repeat). A transport that sees its host disconnect calls
:meth:`Device.end_host_session`.

Frames that fail to decode are dropped, except where the header is trustworthy (CRC good) and carries a
non-zero sequence number (§3.5): a version-1 request frame gets the version refusal of §9 (a version-1
Nack, UNSUPPORTED); a frame of this version gets a NACK -- ``UNKNOWN_REQUEST`` (value = the type byte)
for a type that is not a request this device knows, including reply and unsolicited types;
``BAD_LENGTH`` (value = received, minimum = maximum = expected payload length); ``OUT_OF_RANGE`` naming
the field for an enumeration value with no meaning. Only frames that decode as requests feed the
watchdog (§8.2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from iontodrive.protocol import (
    MESSAGE_BY_TYPE,
    PREVIOUS_PROTOCOL_VERSION,
    REPLY_CACHE_SIZE,
    SAFETY_REQUESTS,
    DecodeError,
    DecodeErrorKind,
    Decoder,
    DeviceState,
    ErrorCode,
    Event,
    Field,
    Frame,
    IdentityReport,
    MessageKind,
    MessageType,
    Nack,
    Polarity,
    ReplyCache,
    SessionOpened,
    StatusFlags,
    StatusReport,
    Waveform,
    encode,
    encode_version_refusal,
)

from .faults import FaultSchedule, PlantFault
from .firmware import Firmware
from .link_faults import LinkChannel, LinkFaults
from .models import LoadParams, ModelSpec, resolve_model
from .plant import Plant
from .trace import TraceSink, open_trace

log = logging.getLogger(__name__)

MAX_TX_BYTES = 4 * 1024 * 1024  # a UART driver's buffer would overflow long before this
_REQUEST_CLASSES = frozenset(c for c in MESSAGE_BY_TYPE.values() if c.TYPE.kind == MessageKind.REQUEST)
_REPLY_CLASSES = frozenset(c for c in MESSAGE_BY_TYPE.values() if c.TYPE.kind == MessageKind.REPLY)
_ENUM_FIELDS = {"polarity": (Field.POLARITY, Polarity), "waveform": (Field.WAVEFORM, Waveform)}


class Device:
    """A simulated stimulator: firmware + plant + protocol, stepped by :meth:`advance`.

    Args:
        model: model name (``"clinic-4"``, ``"hydro-30"``) or a :class:`ModelSpec`.
        seed: seeds the ADC noise, the contact probe and the link faults (same seed = same run).
        physics_step_s: physics step (s); 1 ms by default.
        load: electrode–skin load; the model's default load if None.
        trace: CSV path, :class:`~firmware_sim.TraceWriter`, :class:`~firmware_sim.TraceRecorder` or None.
        link_faults: faults applied between the host's bytes and the firmware (see :mod:`.link_faults`).
        max_block_steps: upper bound of a simulation block (1 = step by step; same behaviour, slower).
        telemetry_hz: telemetry rate at power-up (default: the model's, 2 Hz).

    Raises:
        ValueError: unknown model, non-positive physics step or out-of-range option.

    Not thread-safe: one thread calls it (the :class:`~firmware_sim.DeviceRunner` holds a lock).
    """

    def __init__(
        self,
        model: str | ModelSpec = "clinic-4",
        *,
        seed: int = 0,
        physics_step_s: float = 0.001,
        load: LoadParams | None = None,
        trace: TraceSink | str | Path | None = None,
        link_faults: LinkFaults | None = None,
        max_block_steps: int = 65_536,
        telemetry_hz: int | None = None,
    ) -> None:
        self.model = resolve_model(model)
        if not 1e-6 <= physics_step_s <= 0.1:
            raise ValueError(f"physics_step_s = {physics_step_s!r} is out of range: must be in [1e-06, 0.1]")
        self.dt = float(physics_step_s)
        self.seed = int(seed)
        self.load = load if load is not None else self.model.default_load
        self._faults = FaultSchedule()
        self.plant = Plant(self.model, self.load, self.dt, self.seed, self._faults)
        self._trace = open_trace(trace)
        if self._trace is not None and hasattr(self._trace, "bind"):
            self._trace.bind(self.dt)
        self.firmware = Firmware(
            self.model,
            self.plant,
            self.dt,
            self._trace,
            max_block_steps=max_block_steps,
            telemetry_hz=telemetry_hz,
        )
        self._decoder = Decoder()
        self._cache = ReplyCache(REPLY_CACHE_SIZE)
        self._tx = bytearray()
        self._tx_overflowed = 0
        self._sink: Callable[[bytes], None] | None = None
        self.link_faults = link_faults
        self._link = (
            LinkChannel(link_faults, self.seed) if link_faults is not None and link_faults.active else None
        )
        self.injected: list[PlantFault] = []
        self.frames_in = 0
        self.bad_frames_in = 0
        self._closed = False
        self._flush_outbox()

    # ------------------------------------------------------------------------------------ host side

    def receive(self, data: bytes) -> None:
        """Bytes from the host, processed at the present simulator time. Never raises on wire data."""
        if not data:
            return
        if self._link is not None:
            for piece in self._link.inbound(bytes(data), self.firmware.link_now, self.session_time_s):
                self._process(piece)
        else:
            self._process(bytes(data))
        self._flush_outbox()

    def read_output(self) -> bytes:
        """Drain the bytes the device has sent (replies, telemetry, events); b"" if none."""
        tx = self._tx
        if not tx:
            return b""
        if self._link is None:
            out = bytes(tx)
            tx.clear()
            return out
        size = self._link.read_size(len(tx))
        out = bytes(tx[:size])
        del tx[:size]
        return out

    def connect_output(self, sink: Callable[[bytes], None] | None) -> None:
        """Hand everything the device sends to ``sink`` as it is sent, instead of keeping it for
        :meth:`read_output` (``None``: keep it again). A real-time transport uses this so that a reply
        leaves the moment it is encoded, not after the request's bookkeeping. Ignored while link faults
        are configured: their channel delays, drops and splits output, which needs the buffer.
        ``sink`` must not block and must not raise on a dead link (the transports count what they drop).
        """
        self._sink = sink if self._link is None else None
        if self._sink is not None and self._tx:
            pending = bytes(self._tx)
            self._tx.clear()
            self._sink(pending)

    @property
    def output_pending(self) -> int:
        """Bytes waiting in the device's transmit buffer."""
        return len(self._tx)

    def _send(self, frame: bytes) -> None:
        if self._sink is not None:
            self._sink(frame)
            return
        if self._link is not None:
            frame = self._link.outbound(frame, self.firmware.link_now)
        self._tx += frame
        if len(self._tx) > MAX_TX_BYTES:
            excess = len(self._tx) - MAX_TX_BYTES
            del self._tx[:excess]
            if not self._tx_overflowed:
                log.warning("transmit buffer overflow: nobody reads the device; dropping old output")
            self._tx_overflowed += excess

    def _flush_outbox(self) -> None:
        fw = self.firmware
        if fw.outbox:
            messages = fw.outbox
            fw.outbox = []
            if self._link is None:  # a block's telemetry and events leave in one write
                self._send(b"".join([encode(message) for message in messages]))
            else:  # the link-fault channel works frame by frame
                for message in messages:
                    self._send(encode(message))

    def _process(self, data: bytes) -> None:
        fw = self.firmware
        for item in self._decoder.feed(data):
            if isinstance(item, Frame):
                self._on_frame(item)
            else:
                self.bad_frames_in += 1
                self._on_decode_error(item)
            if fw.reboot_pending:
                self._flush_outbox()
                fw.restart()
                self._cache.clear()  # protocol §7.3: the memory of answers is cleared by Reset
                self._decoder.reset()

    def _on_frame(self, frame: Frame) -> None:
        message = frame.message
        if message.__class__ not in _REQUEST_CLASSES:
            # a reply or unsolicited type from the host: not a request this device knows
            self._send(
                encode(
                    Nack(int(message.TYPE), ErrorCode.UNKNOWN_REQUEST, Field.NONE, int(message.TYPE)),
                    frame.seq,
                )
            )
            return
        self.frames_in += 1
        fw = self.firmware
        fw.feed_watchdog()
        seq = frame.seq
        safety = message.__class__ in SAFETY_REQUESTS  # executed whatever its number (S17)
        cached = None if safety else self._cache.lookup(seq, message)
        if cached is not None:
            self._flush_outbox()
            self._send(cached)
            return
        replies = fw.handle(message)
        if replies[0].__class__ is SessionOpened:
            self._cache.clear()  # the new host session starts with an empty memory of answers
        if len(replies) == 1:  # the reply itself (always a reply type)
            encoded = encode(replies[0], seq)
        else:  # FetchEvents: the report, then the replayed events (unsolicited, seq 0)
            encoded = b"".join(encode(r, seq if r.__class__ in _REPLY_CLASSES else None) for r in replies)
        self._send(encoded)
        if not safety:
            self._cache.store(seq, message, encoded)
        self._flush_outbox()  # events the request caused go out after its reply

    def _on_decode_error(self, error: DecodeError) -> None:
        """NACK a frame whose header is trustworthy (CRC good, this version) and carries a sequence number."""
        if error.seq is None or error.type_id is None or error.seq == 0:
            return
        kind = error.kind
        if kind is DecodeErrorKind.WRONG_VERSION:
            if error.version == PREVIOUS_PROTOCOL_VERSION and error.type_id < 0x40:  # a version-1 request
                self._send(encode_version_refusal(error.type_id, error.seq))
            return
        type_id = error.type_id
        cls = MESSAGE_BY_TYPE.get(type_id)
        is_request = cls is not None and MessageType(type_id).kind == MessageKind.REQUEST
        nack: Nack | None = None
        if kind in (DecodeErrorKind.UNKNOWN_TYPE, DecodeErrorKind.BAD_LENGTH, DecodeErrorKind.BAD_VALUE,
                    DecodeErrorKind.BAD_SEQUENCE) and not is_request:  # fmt: skip
            nack = Nack(type_id, ErrorCode.UNKNOWN_REQUEST, Field.NONE, type_id)
        elif kind == DecodeErrorKind.BAD_LENGTH:
            assert cls is not None and error.payload_bytes is not None
            expected = cls.LAYOUT.sizeof()
            nack = Nack(type_id, ErrorCode.BAD_LENGTH, Field.NONE, error.payload_bytes, expected, expected)
        elif kind == DecodeErrorKind.BAD_VALUE:
            nack = self._bad_value_nack(error)
        if nack is not None:
            self._send(encode(nack, error.seq))

    def _bad_value_nack(self, error: DecodeError) -> Nack:
        """NACK for a request whose enumeration field holds no member (only Start has such fields)."""
        assert error.type_id is not None
        known = _ENUM_FIELDS.get(error.field or "")
        if known is not None and error.value is not None:
            field, enum_type = known
            values = [int(member) for member in enum_type]
            low = 1 if enum_type is Polarity else min(values)  # a request names ANODE or CATHODE
            return Nack(error.type_id, ErrorCode.OUT_OF_RANGE, field, error.value, low, max(values))
        return Nack(error.type_id, ErrorCode.OUT_OF_RANGE)

    # ------------------------------------------------------------------------------------------- time

    def advance(self, session_dt_s: float, link_dt_s: float | None = None) -> None:
        """Run firmware and plant forward.

        ``session_dt_s`` drives ramps, dose and skin; ``link_dt_s`` drives the host watchdog (S10) and link
        latency. ``link_dt_s=None`` means equal to ``session_dt_s`` (virtual-clock mode).

        Raises:
            ValueError: negative or non-finite interval.
        """
        if link_dt_s is None:
            link_dt_s = session_dt_s
        fw = self.firmware
        link = self._link
        if link is not None:
            left_s, left_l = float(session_dt_s), float(link_dt_s)
            if left_s < 0 or left_l < 0:
                fw.advance(left_s, left_l)  # raises the precise error
            while True:
                release = link.next_release()
                if release is None or release > fw.link_now + left_l:
                    break
                step_l = max(0.0, release - fw.link_now)
                step_s = left_s * (step_l / left_l) if left_l > 0 else 0.0
                fw.advance(step_s, step_l)
                left_s -= step_s
                left_l -= step_l
                self._flush_outbox()
                for piece in link.due_inbound(fw.link_now):
                    self._process(piece)
                self._flush_outbox()
                self._tx += link.due_outbound(fw.link_now)
            fw.advance(max(left_s, 0.0), max(left_l, 0.0))
            self._flush_outbox()
            for piece in link.due_inbound(fw.link_now):
                self._process(piece)
            self._flush_outbox()
            self._tx += link.due_outbound(fw.link_now)
            return
        fw.advance(session_dt_s, link_dt_s)
        self._flush_outbox()

    def idle_horizon_s(self) -> float:
        """Session seconds the device can go without being advanced and not be late with anything.

        0 while anything is under way (a session, a ramp, link latency holding bytes back); otherwise the
        time to the next telemetry sample (``inf`` if telemetry is off). Advancing later is still exact --
        the physics is simulated for every step -- only output would be delivered later in wall time.
        """
        if self._link is not None and self._link.next_release() is not None:
            return 0.0
        return self.firmware.idle_horizon_s()

    def advance_link(self, link_dt_s: float) -> None:
        """Let link time pass without session time: ``advance(0.0, link_dt_s)``, cheaper.

        Used by the real-time runner before a request it answers between physics ticks, so that the
        request feeds the watchdog (S10) at the link time it arrived. Raises ValueError for a negative or
        non-finite interval.
        """
        if self._link is not None:
            self.advance(0.0, link_dt_s)
        else:
            self.firmware.advance_link(link_dt_s)

    # ----------------------------------------------------------------------------------------- faults

    def inject(self, fault: PlantFault) -> PlantFault:
        """Schedule a plant fault (its ``at_s`` is simulator time; None or past = now).

        Returns the fault with ``at_s`` resolved. Raises TypeError/ValueError for a bad fault.
        """
        resolved = self._faults.add(fault, self.session_time_s)
        self.injected.append(resolved)
        return resolved

    def end_host_session(self) -> None:
        """The host disconnected (a transport calls this when its client goes away).

        Closes the host session and forgets the reply cache, so that whoever connects next starts clean
        even if it never sends ``OpenSession``. Output and session are untouched: without a new host the
        watchdog ramps the output down (S10). Also drops a partial frame left by the old host.
        """
        self.firmware.end_host_session()
        self._cache.clear()
        self._decoder.reset()

    def power_cycle(self) -> None:
        """Power loss and restart: output cut at once, IDLE, session lost, event ring restarts (S15)."""
        self.firmware.power_cycle()
        self._cache.clear()
        self._decoder.reset()
        self._flush_outbox()

    # ---------------------------------------------------------------------------------- introspection

    @property
    def state(self) -> DeviceState:
        return self.firmware.state

    @property
    def output_ua(self) -> float:
        """True current through the load at the last physics step (µA)."""
        return self.firmware.last_output

    @property
    def setpoint_ua(self) -> float:
        """Firmware set-point (envelope) after the last physics step (µA)."""
        return self.firmware.setpoint

    @property
    def charge_uas(self) -> float:
        """Delivered charge of the present session as the firmware counts it (µA·s)."""
        return self.firmware.charge

    @property
    def session_time_s(self) -> float:
        """Simulator time (s of session clock since creation; the trace's ``t_s``)."""
        return self.firmware.n * self.dt

    @property
    def link_time_s(self) -> float:
        """Link time (s since creation; equals session time on a virtual clock)."""
        return self.firmware.link_now

    @property
    def polarity(self) -> Polarity:
        return self.firmware.polarity

    @property
    def flags(self) -> StatusFlags:
        return self.firmware.status().flags

    @property
    def identity(self) -> IdentityReport:
        return self.model.identity()

    @property
    def events(self) -> list[Event]:
        """Every event since the last power-up or reset, oldest first (starts with POWER_ON)."""
        return list(self.firmware.boot_events)

    def status(self) -> StatusReport:
        """The StatusReport the device would send now."""
        return self.firmware.status()

    def close(self) -> None:
        """Flush and close the trace. The device must not be advanced afterwards."""
        if self._closed:
            return
        self._closed = True
        if self._trace is not None:
            self._trace.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
