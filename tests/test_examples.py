"""Every script in examples/ runs unchanged against the simulator it starts itself, and says what it did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Script -> lines (substrings) its output must contain.
EXPECTED: dict[str, list[str]] = {
    "dexamethasone.py": ["clinic-4", "mA·min of 40", "outcome completed", "record: "],
    "hyperhidrosis_pulsed.py": ["hydro-30", "pulsed DC 100 Hz 50 %", "outcome completed", "record: "],
    "bench_electrode_lift.py": ["ELECTRODE_LIFT", "PASS"],
    "bench_resume.py": ["part 1: ELECTRODE_LIFT", "part 2: link lost, reconnected", "3 parts", "PASS"],
    "embedded_app.py": ["operator: pausing", "operator: resuming", "outcome completed", "callbacks ran on"],
    "many_devices_live.py": ["RAMP_UP", "#4: completed", "by the device's count", "all 4 sessions over"],
}


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )


SCRIPTS = sorted({p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")} | set(EXPECTED))


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs(name: str) -> None:
    """Each example exits 0 with no argument (it starts its own simulator); ours also print key lines."""
    if not (EXAMPLES / name).exists():
        pytest.fail(f"examples/{name} is missing")
    result = run_example(name)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    for text in EXPECTED.get(name, []):
        assert text in result.stdout, f"{name}: {text!r} not in output:\n{result.stdout}"
