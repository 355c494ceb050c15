"""Issue 13, finding 6: one torn line in the middle of a real session's record made the whole record
unreadable to ``report`` and to ``recover()``. Now both work on what the record has, and say what is wrong.

A real session against the in-process simulator writes the record; the test then tears a telemetry line in
the middle and cuts the summary off (as a host that died would leave it), and calls ``recover()`` on the
same connection (the device still holds the session) and ``iontodrive report``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import firmware_sim
from iontodrive import Prescription, Stimulator
from iontodrive.cli import main
from iontodrive.record import SessionRecord

QUICK = Prescription(current_ma=1.0, dose_ma_min=1.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode")


@pytest.fixture(scope="module", autouse=True)
def _register() -> None:
    firmware_sim.register_url_handler()


def tear_a_middle_line_and_cut_the_summary(path: Path) -> int:
    """Tear the middle telemetry line of ``path`` and drop its summary; returns the torn line's number."""
    lines = path.read_bytes().split(b"\n")[:-1]
    assert lines[-1].startswith(b'{"kind":"summary"')
    lines = lines[:-1]
    telemetry = [i for i, line in enumerate(lines) if line.startswith(b'{"kind":"telemetry"')]
    middle = telemetry[len(telemetry) // 2]
    lines[middle] = lines[middle][: len(lines[middle]) // 2]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return middle + 1


def test_recover_and_report_read_through_a_torn_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r.jsonl"
    with Stimulator.open("sim://clinic-4?speed=100&seed=7") as stim:
        stim.deliver(QUICK, record_path=path)
        before = SessionRecord.load(path)
        torn_line = tear_a_middle_line_and_cut_the_summary(path)
        torn = SessionRecord.load(path)
        assert [p.line_no for p in torn.problems] == [torn_line]
        assert torn.truncated is not None and not torn.complete
        assert len(torn.telemetry) == len(before.telemetry) - 1 and torn.events == before.events

        recovered = stim.recover(path)
        device_charge = stim.status().charge_uas
    assert recovered.complete and recovered.delivered_uas == device_charge
    assert [p.line_no for p in recovered.problems] == [torn_line]  # still said, never hidden
    assert recovered.recoveries and recovered.truncated is None

    code = main(["report", str(path)])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err
    assert f"{device_charge / 60_000:.3f} mA·min" in out
