"""Live progress of several devices from one asyncio process (issue 16).

Four in-process simulated stimulators (``sim://``, session time 20 x real time), each delivering a dose
session through :class:`iontodrive.aio.AsyncStimulator` (the one session engine: the same checks, records
and outcome as the threaded API). The engine's progress callbacks (called on the loop) keep each device's
latest update; one task prints a line of live progress for all devices a few times a second until every
session is over. The dose
printed at the end is the record's, which is the device's own count (the device is the authority).

Against hardware, pass the ports instead: ``python examples/many_devices_live.py /dev/ttyUSB0 /dev/ttyUSB1``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import firmware_sim
from iontodrive import Prescription
from iontodrive.aio import AsyncStimulator

PRESCRIPTION = Prescription(
    current_ma=1.0, dose_ma_min=0.1, ramp_up_s=5, ramp_down_s=5, polarity="cathode", electrode_area_cm2=10.0
)


class Row:
    """What the display shows for one device."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.progress: Any = None
        self.done = False


async def run_session(url: str, row: Row, record_dir: Path) -> str:
    def on_progress(progress: Any) -> None:  # called on the loop, as each sample arrives: keep it short
        row.progress = progress

    async with AsyncStimulator.open(url) as stim:
        record = await stim.deliver(
            PRESCRIPTION, on_progress=on_progress, record_path=record_dir / f"{row.name[1:]}.jsonl"
        )
    row.done = True
    summary = record.summary or {}
    return f"{row.name}: {summary.get('end_reason')}, {record.delivered_uas} µA·s by the device's count"


async def display(rows: list[Row]) -> None:
    while not all(r.done for r in rows):
        cells = []
        for r in rows:
            p = r.progress
            state = "-" if p is None else p.state.name
            cells.append(f"{r.name} {state:9s} {0.0 if p is None else p.fraction:4.0%}")
        print(" | ".join(cells), flush=True)
        await asyncio.sleep(0.25)


async def main(urls: list[str]) -> None:
    rows = [Row(f"#{n + 1}") for n in range(len(urls))]
    with tempfile.TemporaryDirectory() as tmp:
        painter = asyncio.create_task(display(rows))
        lines = await asyncio.gather(*(run_session(u, r, Path(tmp)) for u, r in zip(urls, rows, strict=True)))
        await painter
    for line in lines:
        print(line)
    print(f"all {len(rows)} sessions over")


if __name__ == "__main__":
    firmware_sim.register_url_handler()
    ports = sys.argv[1:] or [f"sim://clinic-4?speed=20&seed={n}" for n in range(4)]
    asyncio.run(main(ports))
