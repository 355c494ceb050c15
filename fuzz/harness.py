"""Checks shared by the atheris harnesses (``fuzz/*.py``) and the hypothesis tests
(``tests/test_fuzz_hypothesis.py``): one input in, every property asserted, nothing else.

* :func:`check_decoder` -- bytes into :class:`iontodrive.protocol.Decoder` in any chunking: never raises,
  never holds more than one frame's worth of bytes, gives the same result however the bytes are split,
  and every frame it returns is exactly what :func:`encode` makes of its message (no alternative
  encodings accepted).
* :func:`check_device` -- bytes into a simulated :class:`firmware_sim.Device` in the middle of a session
  (HOLD at 2 mA on clinic-4, or 15 mA pulsed DC on hydro-30), next to an identical twin that gets nothing:
  the device never raises, its decoder and transmit buffer stay bounded, and if every reply it gave was a
  NACK or a read-only report, one second later its output, set-point, state, dose, polarity and flags are
  exactly the twin's: no refused or out-of-range command ever changes the output.
* :func:`raw_frame` -- a frame with a valid CRC around an arbitrary payload (to reach the length and
  value checks behind the CRC).
"""

from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import dataclass

from cobs.cobs import encode as cobs_encode

from firmware_sim import Device
from firmware_sim.device import MAX_TX_BYTES
from firmware_sim.host import SimHost
from iontodrive.protocol import (
    Ack,
    DecodeError,
    Decoder,
    EventsReport,
    Frame,
    IdentityReport,
    MessageKind,
    Nack,
    Polarity,
    Start,
    StatusReport,
    Waveform,
    encode,
)
from iontodrive.protocol.constants import MAX_FRAME_BYTES, PROTOCOL_VERSION
from iontodrive.protocol.crc import crc16_ccitt_false

UNCHANGING_REPLIES = (Nack, IdentityReport, StatusReport, EventsReport)
CHECK_AFTER_S = 1.0


def raw_frame(type_id: int, seq: int, payload: bytes, version: int = PROTOCOL_VERSION) -> bytes:
    """A COBS frame (delimiter included) of ``payload`` under a correct CRC-16/CCITT-FALSE."""
    body = bytes([version & 0xFF, type_id & 0xFF]) + (seq & 0xFFFF).to_bytes(2, "little") + payload
    return cobs_encode(body + crc16_ccitt_false(body).to_bytes(2, "big")) + b"\x00"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given positions (any values; clamped and sorted)."""
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


# ------------------------------------------------------------------------------------------- decoder


def check_decoder(data: bytes, cuts: list[int]) -> list[Frame | DecodeError]:
    """Feed ``data`` whole and split at ``cuts``; assert the decoder's properties; return the items."""
    whole = Decoder()
    expected = whole.feed(data)
    assert whole.pending_bytes <= MAX_FRAME_BYTES - 1
    pieces = Decoder()
    got: list[Frame | DecodeError] = []
    for chunk in split(data, cuts):
        got += pieces.feed(chunk)
        assert pieces.pending_bytes <= MAX_FRAME_BYTES - 1
    assert got == expected, "the result depends on how the bytes were split"
    assert pieces.pending_bytes == whole.pending_bytes
    for item in expected:
        if isinstance(item, Frame):
            again = Decoder().feed(encode(item.message, item.seq))
            assert again == [item], "a decoded frame does not survive re-encoding"
        else:
            assert isinstance(item, DecodeError) and item.kind is not None
    return expected


# -------------------------------------------------------------------------------------------- device


@dataclass(frozen=True)
class Snapshot:
    """What must not change: the output and everything that decides it."""

    state: int
    setpoint_ua: float
    output_ua: float
    charge_uas: float
    polarity: int
    flags: int
    session_id: int


def snapshot(device: Device) -> Snapshot:
    status = device.status()
    return Snapshot(
        int(device.state),
        round(device.setpoint_ua, 6),
        round(device.output_ua, 6),
        round(device.charge_uas, 6),
        int(device.polarity),
        int(status.flags),
        status.session_id,
    )


SCENES = ("clinic-dc", "hydro-pulsed")


@functools.cache
def _template(scene: str) -> tuple[Device, SimHost]:
    """A device in HOLD of a running session (built once; every check works on deep copies)."""
    if scene == "clinic-dc":
        device = Device("clinic-4", seed=1)
        start = Start(2000, 600_000, 0, 5000, 5000, Polarity.CATHODE)
    else:
        device = Device("hydro-30", seed=1)
        start = Start(15_000, 0, 600_000, 5000, 5000, Polarity.ANODE, Waveform.PULSED_DC, 100, 50)
    host = SimHost(device)
    reply = host.request(start)
    assert isinstance(reply, Ack), reply
    host.run(6.0, step_s=0.25)
    assert device.state.name == "HOLD", device.state
    return device, host


def twins(scene: str) -> tuple[SimHost, SimHost]:
    """Two identical hosts+devices in HOLD: the first gets the fuzz input, the second is the control."""
    device, host = _template(scene)
    a, b = copy.deepcopy((device, host)), copy.deepcopy((device, host))
    return a[1], b[1]


def check_device(scene: str, chunks: list[bytes]) -> list[Frame]:
    """Feed ``chunks`` to a device in HOLD; assert its properties against an untouched twin.

    Returns the reply frames the device sent (for statistics).
    """
    fuzzed, control = twins(scene)
    device = fuzzed.device
    for chunk in chunks:
        device.receive(chunk)  # must never raise on wire data
        assert device.output_pending <= MAX_TX_BYTES
        assert device._decoder.pending_bytes <= MAX_FRAME_BYTES - 1
    device.receive(b"\x00")  # end the input as a host would: drop any partial frame
    replies = [f for f in fuzzed.pump() if f.message.TYPE.kind is MessageKind.REPLY]
    changed_nothing = all(isinstance(f.message, UNCHANGING_REPLIES) for f in replies)
    if changed_nothing:
        fuzzed.run(CHECK_AFTER_S, step_s=0.25)
        control.run(CHECK_AFTER_S, step_s=0.25)
        got, want = snapshot(device), snapshot(control.device)
        assert got == want, f"a refused or read-only input changed the device: {got} != {want}"
    return replies
