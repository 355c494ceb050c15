"""The record chain of a session delivered in parts, and the remainder planned from it (no device).

A resumed remainder's header labels name the part it continues; ``SessionRecord.chain()`` follows them back
and sums each part's own delivered charge; :func:`plan_remainder` refuses whatever would make the remainder
a guess (an incomplete part, a figure that is not the device's, a time-based session) and stops when the
dose is delivered.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from iontodrive import Prescription
from iontodrive.record import RecordWriter, SessionRecord
from iontodrive.records.chain import CONTINUES_RECORD, CONTINUES_SESSION, PART, RecordChain
from iontodrive.sessions.resume import NothingToResumeError, ResumeRefusedError, plan_remainder
from iontodrive.units import UAS_PER_MA_MIN

IDENTITY = {"model": "clinic-4", "serial_number": 4242}
RX = Prescription(current_ma=2.0, dose_ma_min=4.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode")
PRESCRIBED = round(4.0 * UAS_PER_MA_MIN)


def _part(
    path: Path,
    delivered: int | None,
    *,
    continues: Path | None = None,
    session_id: int,
    confirmed: bool = True,
    rx: Prescription = RX,
    part: int = 1,
) -> Path:
    labels = {"patient": "p-17"}
    if continues is not None:
        labels |= {CONTINUES_RECORD: str(continues.resolve()), CONTINUES_SESSION: str(session_id - 1)}
        labels[PART] = str(part)
    writer = RecordWriter(path, prescription=rx.to_dict(), identity=IDENTITY, labels=labels, durable=False)
    dose = round((rx.dose_ma_min or 0) * UAS_PER_MA_MIN)
    start: dict[str, Any] = {"dose_uas": dose, "target_current_ua": 2000}
    writer.note("started", session_id=session_id, first_event_no=0, start=start)
    if delivered is not None:
        writer.summary(
            delivered_uas=delivered,
            end_reason="stopped",
            session_id=str(session_id),
            device_confirmed=confirmed,
        )
    writer.close()
    return path


def test_the_chain_sums_each_parts_own_figure_oldest_first(tmp_path: Path) -> None:
    one = _part(tmp_path / "1.jsonl", 40_000, session_id=1)
    two = _part(tmp_path / "2.jsonl", 90_000, continues=one, session_id=2, part=2)
    three = _part(tmp_path / "3.jsonl", 110_000, continues=two, session_id=3, part=3)
    chain = SessionRecord.load(three).chain()
    assert [p.path for p in chain.parts] == [one, two, three]
    assert chain.delivered_uas == 240_000 and chain.prescribed_uas == PRESCRIBED
    assert chain.complete and chain.device_confirmed and not chain.problems
    assert chain.remaining_uas == 0
    assert "3 parts" in chain.describe()
    with pytest.raises(NothingToResumeError):
        plan_remainder(chain)


def test_the_remainder_is_the_first_parts_prescription_with_the_dose_left(tmp_path: Path) -> None:
    one = _part(tmp_path / "1.jsonl", 40_000, session_id=1)
    two = _part(tmp_path / "2.jsonl", 90_000, continues=one, session_id=2, part=2)
    remainder = plan_remainder(RecordChain.load(two))
    assert remainder.remaining_uas == PRESCRIBED - 130_000
    assert remainder.prescription.dose_ma_min == pytest.approx((PRESCRIBED - 130_000) / UAS_PER_MA_MIN)
    assert (
        remainder.prescription.current_ma == RX.current_ma and remainder.prescription.polarity == RX.polarity
    )
    assert remainder.labels == {
        "patient": "p-17",
        CONTINUES_RECORD: str(two.resolve()),
        CONTINUES_SESSION: "2",
        PART: "3",
    }


def test_records_moved_together_are_found_beside_each_other(tmp_path: Path) -> None:
    one = _part(tmp_path / "1.jsonl", 40_000, session_id=1)
    two = _part(tmp_path / "2.jsonl", 90_000, continues=one, session_id=2, part=2)
    moved = tmp_path / "archive"
    moved.mkdir()
    for path in (one, two):
        shutil.move(path, moved / path.name)
    chain = RecordChain.load(moved / "2.jsonl")
    assert chain.delivered_uas == 130_000 and not chain.problems


def test_a_missing_part_is_a_problem_and_no_remainder_is_planned(tmp_path: Path) -> None:
    one = _part(tmp_path / "1.jsonl", 40_000, session_id=1)
    two = _part(tmp_path / "2.jsonl", 90_000, continues=one, session_id=2, part=2)
    one.unlink()
    chain = RecordChain.load(two)
    assert chain.problems and not chain.complete
    with pytest.raises(ResumeRefusedError, match="missing"):
        plan_remainder(chain)


def test_an_incomplete_or_unconfirmed_part_is_refused(tmp_path: Path) -> None:
    open_part = _part(tmp_path / "open.jsonl", None, session_id=1)
    with pytest.raises(ResumeRefusedError, match="recover"):
        plan_remainder(RecordChain.load(open_part))
    guessed = _part(tmp_path / "guessed.jsonl", 40_000, session_id=1, confirmed=False)
    with pytest.raises(ResumeRefusedError, match="confirmed"):
        plan_remainder(RecordChain.load(guessed))


def test_a_time_based_session_is_refused(tmp_path: Path) -> None:
    timed = Prescription(current_ma=2.0, duration_s=600, polarity="cathode")
    path = _part(tmp_path / "timed.jsonl", 40_000, session_id=1, rx=timed)
    chain = RecordChain.load(path)
    assert chain.prescribed_uas is None and chain.remaining_uas is None
    with pytest.raises(ResumeRefusedError, match="dose-based"):
        plan_remainder(chain)


def test_a_chain_that_links_back_to_itself_stops(tmp_path: Path) -> None:
    path = tmp_path / "loop.jsonl"
    _part(path, 40_000, continues=path, session_id=2, part=2)
    chain = RecordChain.load(path)
    assert len(chain.parts) == 1 and chain.problems
