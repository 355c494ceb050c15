"""A sample of the fault campaign's run-time and replug cases (issue 19; bench/faults_runtime.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import firmware_sim

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import faults  # type: ignore[import-not-found, unused-ignore]  # noqa: E402  (bench/faults.py)


def _seed(rep: int, scenario: str, fault: str) -> int:
    s = [x.name for x in faults.SCENARIOS].index(scenario)
    f = [x.name for x in faults.FAULTS].index(fault)
    seed: int = faults.run_seed(rep, s, f)
    return seed


@pytest.mark.parametrize(
    ("scenario", "fault"),
    [("clinic-dose", "rt_lift"), ("hydro-time", "rt_power_cut"), ("clinic-time", "rt_drop")],
)
def test_run_time_faults_through_the_control_api(scenario: str, fault: str, tmp_path: Path) -> None:
    firmware_sim.register_url_handler()
    result = faults.execute(_seed(1, scenario, fault), 100, 10.0, str(tmp_path))
    assert result["passed"], result["problems"]
    assert result["fault"] == fault


def test_replug_pauses_the_session_and_the_record_is_recovered_through_the_stable_link(
    tmp_path: Path,
) -> None:
    pytest.importorskip("aiohttp", reason="the replug case drives the simulator's HTTP control API")
    result = faults.execute(_seed(0, "clinic-dose", "replug"), 100, 10.0, str(tmp_path))
    assert result["passed"], result["problems"]
    assert result["outcome"] == "recovered_after_host_loss"
    assert result["safe_s"] is not None and result["safe_s"] <= result["safe_limit_s"]
