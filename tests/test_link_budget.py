"""The link budget (iontodrive.protocol.budget): frame sizes from the declared layouts, rates per baud."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iontodrive.protocol import MESSAGE_CLASSES, Telemetry, encode
from iontodrive.protocol.budget import (
    Framing,
    budget_table,
    bytes_per_second,
    cobs_encoded_bytes,
    frame_bytes,
    link_budget,
)
from tests.protocol_strategies import messages_of, seqs_for


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_frame_bytes_is_the_encoded_size_of_every_message(cls: type, data: st.DataObject) -> None:
    message = data.draw(messages_of(cls))
    seq = data.draw(seqs_for(cls))
    assert len(encode(message, seq)) == frame_bytes(cls)


@given(n=st.integers(0, 2000), body=st.data())
def test_cobs_size_is_exact(n: int, body: st.DataObject) -> None:
    from cobs import cobs  # type: ignore[import-untyped]

    raw = body.draw(st.binary(min_size=n, max_size=n))
    assert len(cobs.encode(raw)) <= cobs_encoded_bytes(n)
    if n < 254:
        assert len(cobs.encode(raw)) == cobs_encoded_bytes(n)


def test_115200_baud_8n1_carries_288_telemetry_frames_a_second() -> None:
    b = link_budget(115_200)
    assert b.bytes_per_s == 11_520
    assert b.telemetry_frame_bytes == frame_bytes(Telemetry) == 40
    assert b.full_telemetry_hz == 288
    assert b.max_telemetry_hz == 230
    assert (b.verdict(200), b.verdict(250), b.verdict(1000)) == ("fits", "tight", "too_fast")


def test_framing_counts_parity_and_stop_bits() -> None:
    assert Framing.parse("8N1").bits_per_char == 10
    assert Framing.parse("7e2").bits_per_char == 11
    assert Framing.parse("8N1.5").bits_per_char == 10.5
    assert bytes_per_second(9600, Framing.parse("8E1")) == pytest.approx(9600 / 11)
    assert str(Framing.parse("8N1")) == "8N1"


@pytest.mark.parametrize("bad", ["", "9N1", "8X1", "8N3", "N81"])
def test_bad_framing_is_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="framing"):
        Framing.parse(bad)


@pytest.mark.parametrize("baud", [0, -1, float("nan"), float("inf")])
def test_bad_baud_is_refused(baud: float) -> None:
    with pytest.raises(ValueError, match="baud"):
        link_budget(baud)


def test_the_table_in_the_docs_is_the_generated_one() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "simulator.md").read_text()
    assert budget_table() in doc
