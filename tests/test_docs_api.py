"""Every Python example in docs/api.md runs as written, against the simulator."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", API_DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_every_section_has_an_example() -> None:
    sections = re.findall(r"^## \d+\. ", API_DOC.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert len(EXAMPLES) == len(sections) >= 12


@pytest.mark.parametrize("source", EXAMPLES, ids=[f"example-{i + 1}" for i in range(len(EXAMPLES))])
def test_api_example_runs(source: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "an example must show its result"
