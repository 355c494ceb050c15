"""The wire model (firmware_sim.wire) on a virtual clock: pace, shedding, latency timer, both directions."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim import Device
from firmware_sim.wire import USB_PACKET_PAYLOAD_BYTES, WireModel, WireSettings
from iontodrive.protocol import (
    ConfigureTelemetry,
    Decoder,
    DeviceState,
    Event,
    EventCode,
    Frame,
    GetStatus,
    Heartbeat,
    Identify,
    MessageType,
    Polarity,
    StatusFlags,
    Telemetry,
    encode,
)
from iontodrive.protocol.budget import link_budget, wire_time_s


def _run(
    device: Device, wire: WireModel, seconds: float, step_s: float = 0.0005
) -> list[tuple[float, bytes]]:
    """Advance the device in steps, its output through the wire; returns (delivery time, bytes)."""
    out: list[tuple[float, bytes]] = []
    t = device.link_time_s
    end = t + seconds
    while t < end - 1e-12:
        device.advance(step_s)
        t = device.link_time_s
        wire.device_send(device.read_output(), t)
        out += wire.host_receive(t)
    return out


def _frames(pieces: list[tuple[float, bytes]]) -> list[tuple[float, Frame]]:
    decoder = Decoder()
    frames: list[tuple[float, Frame]] = []
    for t, data in pieces:
        for item in decoder.feed(data):
            assert isinstance(item, Frame), item
            frames.append((t, item))
    return frames


def test_at_115200_baud_telemetry_beyond_the_line_arrives_at_the_line_rate_within_5_percent() -> None:
    device = Device("clinic-4", seed=1)
    wire = WireModel(WireSettings(baud=115_200))
    device.receive(encode(ConfigureTelemetry(1000), seq=1))
    frames = _frames(_run(device, wire, 4.5))
    tele = [(t, f) for t, f in frames if isinstance(f.message, Telemetry) and t >= 0.5]  # after settling
    budget = link_budget(115_200)
    rate = (len(tele) - 1) / (tele[-1][0] - tele[0][0])
    assert abs(rate - budget.full_telemetry_hz) / budget.full_telemetry_hz < 0.05, rate
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(tele)]
    frame_s = wire_time_s(budget.telemetry_frame_bytes, 115_200)
    assert abs(sorted(gaps)[len(gaps) // 2] - frame_s) / frame_s < 0.05
    assert wire.shed_telemetry > 0.6 * 4500  # about 1000 - 288 a second, whole frames
    numbers = [f.message.sample_no for _, f in tele if isinstance(f.message, Telemetry)]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)  # whole frames, in order


def test_replies_are_never_shed_and_keep_their_order() -> None:
    device = Device("clinic-4", seed=1)
    wire = WireModel(WireSettings(baud=9_600))
    device.receive(encode(ConfigureTelemetry(1000), seq=1))
    pieces: list[tuple[float, bytes]] = []
    for seq in range(2, 102):  # a request every 10 ms into a line that carries 24 telemetry frames a second
        device.receive(encode(GetStatus() if seq % 2 else Heartbeat(), seq=seq))
        pieces += _run(device, wire, 0.01)
    pieces += _run(device, wire, 6.0)  # the replies alone fill the line for about 3.5 s
    frames = [f for _, f in _frames(pieces)]
    replies = [f.seq for f in frames if not isinstance(f.message, Telemetry) and f.seq]
    assert replies == list(range(1, 102))
    assert wire.shed_telemetry > 0


def test_a_frame_within_the_budget_arrives_one_wire_time_after_it_was_sent() -> None:
    wire = WireModel(WireSettings(baud=115_200))
    frame = encode(Identify(), seq=7)
    wire.device_send(frame, 10.0)
    assert wire.next_host_delivery_s() == 10.0 + wire_time_s(len(frame), 115_200)
    assert wire.host_receive(10.0 + wire_time_s(len(frame), 115_200) / 2)[0][1] == frame[: len(frame) // 2]
    ((t, rest),) = wire.host_receive(11.0)
    assert t == 10.0 + wire_time_s(len(frame), 115_200) and frame.endswith(rest)


def test_host_bytes_reach_the_device_at_the_line_pace() -> None:
    wire = WireModel(WireSettings(baud=9_600))
    request = encode(GetStatus(), seq=3)
    wire.host_send(request, 1.0)
    assert wire.device_receive(1.0) == b""
    assert wire.next_device_delivery_s() == 1.0 + len(request) / 960
    assert wire.device_receive(2.0) == request


def test_the_latency_timer_holds_a_short_reply_for_16_ms_and_sends_full_packets_at_once() -> None:
    wire = WireModel(WireSettings(baud=115_200, latency_timer_ms=16.0))
    reply = encode(Heartbeat(), seq=1)
    wire.device_send(reply, 0.0)
    wire_done = wire_time_s(len(reply), 115_200)
    assert wire.host_receive(wire_done + 0.010) == []  # on the wire long ago, still in the chip
    first_byte = wire_time_s(1, 115_200)
    ((t, data),) = wire.host_receive(0.1)
    assert data == reply and abs(t - (first_byte + 0.016)) < 1e-9
    big = b"".join(encode(GetStatus(), seq=s) for s in range(2, 12))  # 10 frames, > 62 bytes
    wire.device_send(big, 1.0)
    packets = wire.host_receive(1.0 + wire_time_s(USB_PACKET_PAYLOAD_BYTES, 115_200) + 1e-9)
    assert [len(p) for _, p in packets] == [USB_PACKET_PAYLOAD_BYTES]  # full packet leaves at once
    rest = wire.host_receive(2.0)
    assert b"".join(p for _, p in packets + rest) == big


# ------------------------------------------------------------------------------------ properties


def _telemetry(n: int) -> bytes:
    return encode(Telemetry(n, n, DeviceState.HOLD, StatusFlags.NONE, Polarity.CATHODE, 1, 2, 3, 4, 5))


def _event(n: int) -> bytes:
    return encode(
        Event(
            event_no=n,
            device_time_ms=n,
            code=EventCode.STATE_CHANGED,
            state=DeviceState.HOLD,
            value=0,
            replayed=False,
        )
    )


FRAMES = st.lists(
    st.one_of(
        st.integers(0, 10_000).map(lambda n: ("T", _telemetry(n))),
        st.integers(1, 60_000).map(lambda n: ("R", encode(GetStatus(), seq=n))),
        st.integers(1, 1000).map(lambda n: ("E", _event(n))),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(
    frames=FRAMES,
    cuts=st.lists(st.integers(1, 50), min_size=1, max_size=20),
    gaps_ms=st.lists(st.floats(0.0, 20.0), min_size=1, max_size=20),
    baud=st.sampled_from([9_600, 115_200, 921_600]),
    latency=st.sampled_from([None, 2.0, 16.0]),
    cap=st.sampled_from([64, 200, 512]),
)
def test_the_wire_sheds_only_whole_telemetry_frames_keeps_order_and_never_beats_the_baud_rate(
    frames: list[tuple[str, bytes]],
    cuts: list[int],
    gaps_ms: list[float],
    baud: int,
    latency: float | None,
    cap: int,
) -> None:
    wire = WireModel(WireSettings(baud=baud, latency_timer_ms=latency, tx_buffer_bytes=cap))
    stream = b"".join(f for _, f in frames)
    now, pos, i = 0.0, 0, 0
    delivered: list[tuple[float, bytes]] = []
    while pos < len(stream):  # the device's output in arbitrary pieces, at arbitrary times
        piece = stream[pos : pos + cuts[i % len(cuts)]]
        pos += len(piece)
        wire.device_send(piece, now)
        delivered += wire.host_receive(now)
        now += gaps_ms[i % len(gaps_ms)] / 1000.0
        i += 1
    delivered += wire.host_receive(now + len(stream) / (baud / 10) + 1.0)
    got = b"".join(d for _, d in delivered)
    kept = [f for f in got.split(b"\x00")[:-1]]
    sent = [f[:-1] for _, f in frames]
    # whole frames, in order: what arrived is the sent sequence with some telemetry frames left out
    it = iter(sent)
    for frame in kept:
        assert any(frame == s for s in it), (
            "a frame arrived that was not sent next (cut, reordered or mangled)"
        )
    lost = [s for s in sent if s not in kept] if len(set(sent)) == len(sent) else []
    assert all(f[2] == int(MessageType.TELEMETRY) for f in lost)  # only telemetry is ever shed
    assert wire.shed_telemetry == len(sent) - len(kept)
    replies_and_events = [f for kind, f in frames if kind != "T"]
    assert got.count(b"\x00") >= len(replies_and_events)
    # never faster than the line: by any delivery time, at most what the baud rate could have carried
    char = 10 / baud
    total = 0
    for t, data in delivered:
        total += len(data)
        assert total <= t / char + 1 + 1e-6
