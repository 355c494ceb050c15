"""Make the pictures in ``docs/cli.md``: the live display as a terminal shows it, and the report's first page.

    python tools/cli_screenshots.py docs/images

1. ``deliver-80.png`` and ``deliver-60.png``: the real ``iontodrive deliver`` in a pseudo-terminal of 80 and
   60 columns against the in-process simulator (an electrode lift planted so that the alarm line shows), the
   screen read back with pyte at the moment the alarm is on it, drawn with a monospace font and the
   terminal's colours (Pillow, which matplotlib brings).
2. ``report-page.png``: page 1 of ``report --pdf`` for the same session, through ``pdftoppm`` (poppler-utils;
   installed with apt-get when missing).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from terminal import TerminalRun, run_in_terminal  # noqa: E402

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
FONT_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
NAMED = {
    "black": "#1e1e1e",
    "red": "#cd3131",
    "green": "#0dbc79",
    "brown": "#e5e510",
    "yellow": "#e5e510",
    "blue": "#2472c8",
    "magenta": "#bc3fbc",
    "cyan": "#11a8cd",
    "white": "#e5e5e5",
}
FG, BG = "#d4d4d4", "#1e1e1e"


def _colour(value: str, default: str) -> str:
    if value == "default":
        return default
    if value in NAMED:
        return NAMED[value]
    if len(value) == 6:
        return "#" + value
    return default


def screen_png(lines: list[list[Any]], path: Path, size: int = 15) -> None:
    """Draw pyte screen rows (lists of pyte Char) to a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, size)
    bold = ImageFont.truetype(FONT_BOLD, size)
    cell_w = round(font.getlength("M"))
    cell_h = round(size * 1.35)
    columns = max(len(row) for row in lines)
    image = Image.new("RGB", (columns * cell_w + 20, len(lines) * cell_h + 20), BG)
    draw = ImageDraw.Draw(image)
    for y, row in enumerate(lines):
        for x, char in enumerate(row):
            fg, bg = _colour(char.fg, FG), _colour(char.bg, BG)
            if char.reverse:
                fg, bg = bg, fg
            left, top = 10 + x * cell_w, 10 + y * cell_h
            if bg != BG:
                draw.rectangle([left, top, left + cell_w, top + cell_h], fill=bg)
            if char.data.strip():
                draw.text((left, top + 2), char.data, font=bold if char.bold else font, fill=fg)
    image.save(path)


def capture(columns: int, record: Path) -> list[list[Any]]:
    """Run deliver in a terminal; return the screen rows when the alarm line is showing."""
    snapshot: list[list[Any]] = []

    def watch(run: TerminalRun, _type: Any) -> None:
        if not snapshot and any("ALARM: ELECTRODE LIFT" in line for line in run.display):
            rows = run.screen.buffer
            used = max(i for i, line in enumerate(run.display) if line.strip()) + 1
            snapshot.extend([[rows[y][x] for x in range(columns)] for y in range(used)])

    argv = [
        sys.executable, "-m", "iontodrive.cli", "deliver", "sim://clinic-4?speed=20&seed=7&lift_at_s=40",
        "--current-ma", "2", "--dose-ma-min", "4", "--ramp-up-s", "10", "--ramp-down-s", "10",
        "--polarity", "cathode", "--area-cm2", "10", "--record", str(record),
        "--label", "patient=P-017", "--label", "operator=op-3",
    ]  # fmt: skip
    run_in_terminal(argv, columns=columns, rows=30, on_output=watch, env={"IONTODRIVE_TIMEOUT_S": "1.0"})
    if not snapshot:
        raise SystemExit(f"the alarm never showed at {columns} columns")
    return snapshot


def main(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cli-shots-"))
    for columns in (80, 60):
        record = work / f"session-{columns}.jsonl"
        screen_png(capture(columns, record), outdir / f"deliver-{columns}.png")
    if shutil.which("pdftoppm") is None:
        subprocess.run(["apt-get", "install", "-y", "poppler-utils"], check=True)
    pdf = work / "report.pdf"
    subprocess.run(
        [sys.executable, "-m", "iontodrive.cli", "report", str(work / "session-80.jsonl"), "--pdf", str(pdf)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(["pdftoppm", "-png", "-r", "70", "-f", "1", "-l", "1", "-singlefile", str(pdf),
                    str(outdir / "report-page")], check=True)  # fmt: skip
    print("\n".join(str(p) for p in sorted(outdir.glob("*.png"))))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images")
