"""Hypothesis versions of the atheris harnesses in ``fuzz/`` (same checks, ``fuzz/harness.py``).

What is new here, beside ``test_protocol_decoder.py`` (decoder never raises, bounded, resyncs) and
``test_sim_statemachine.py`` (valid command sequences keep the safety invariants):

* the decoder's result does not depend on how the bytes are split, and every frame it returns re-encodes
  to itself, for arbitrary bytes *and* for frames with a valid CRC around arbitrary payloads;
* a device in the middle of a session, fed arbitrary bytes, CRC-valid frames with arbitrary payloads, or
  well-formed requests with arbitrary (mostly out-of-range) field values, never raises, keeps its buffers
  bounded, and whenever it refused everything (NACK) or only answered read-only requests, its output,
  set-point, state, dose, polarity and flags one second later are exactly those of an untouched twin.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_strategies import messages_of

from iontodrive.protocol import MESSAGE_CLASSES, MessageKind, MessageType, Nack, encode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
import harness

REQUESTS = [cls for cls in MESSAGE_CLASSES if cls.TYPE.kind is MessageKind.REQUEST]
REQUEST_IDS = sorted(int(t) for t in MessageType if 0x01 <= int(t) <= 0x0F)
CUTS = st.lists(st.integers(0, 600), max_size=12)
DEVICE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

crc_valid_frames = st.builds(
    harness.raw_frame,
    st.one_of(st.sampled_from(REQUEST_IDS), st.integers(0, 255)),
    st.integers(0, 0xFFFF),
    st.binary(max_size=130),
)
well_formed_requests = st.sampled_from(REQUESTS).flatmap(messages_of)


@given(st.lists(st.one_of(st.binary(max_size=200), crc_valid_frames), max_size=6), CUTS)
def test_decoder_is_split_invariant_and_frames_re_encode(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    items = harness.check_decoder(data, cuts)
    assert len(items) <= data.count(b"\x00") + 1


@DEVICE
@given(st.sampled_from(harness.SCENES), st.binary(max_size=300), CUTS)
def test_arbitrary_bytes_into_a_running_device_change_nothing(
    scene: str, data: bytes, cuts: list[int]
) -> None:
    harness.check_device(scene, harness.split(data, cuts))


@DEVICE
@given(st.sampled_from(harness.SCENES), st.lists(crc_valid_frames, min_size=1, max_size=4))
def test_crc_valid_frames_with_arbitrary_payloads_change_nothing_unless_accepted(
    scene: str, frames: list[bytes]
) -> None:
    harness.check_device(scene, frames)


@DEVICE
@given(st.sampled_from(harness.SCENES), well_formed_requests, st.integers(1, 0xFFFF))
def test_refused_requests_never_change_the_output(scene: str, message: object, seq: int) -> None:
    replies = harness.check_device(scene, [encode(message, seq)])  # type: ignore[arg-type]
    assert len(replies) == 1 and replies[0].seq == seq  # every request gets exactly one reply


def test_an_out_of_range_set_point_is_refused_and_the_twin_check_sees_a_change() -> None:
    """The twin comparison is not vacuous: a refused request passes it, an accepted one would not."""
    from iontodrive.protocol import SetCurrent

    refused = harness.check_device("clinic-dc", [encode(SetCurrent(9000, 5000), 7)])
    assert isinstance(refused[0].message, Nack)
    fuzzed, control = harness.twins("clinic-dc")
    fuzzed.device.receive(encode(SetCurrent(1000, 5000), 8))
    fuzzed.run(1.0, step_s=0.25)
    control.run(1.0, step_s=0.25)
    assert harness.snapshot(fuzzed.device) != harness.snapshot(control.device)
