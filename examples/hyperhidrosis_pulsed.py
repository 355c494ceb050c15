"""Tap-water iontophoresis for hyperhidrosis on a hydro-30: pulsed DC, 15 mA, 20 minutes (time-based).

Usage::

    python examples/hyperhidrosis_pulsed.py                    # in-process hydro-30 simulator, 300x
    python examples/hyperhidrosis_pulsed.py /dev/ttyUSB0       # a real device (20 minutes)

The prescription comes from the shipped preset ``tap-water-pulsed-15`` (pulsed DC at 50 % duty, 100 Hz),
so the delivered charge is about half of what 15 mA DC would give: the device integrates the measured
current (S11). Polarity stays fixed for the whole session (S8).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from iontodrive import Progress, Stimulator
from iontodrive.presets import build_prescription

SIM_URL = "sim://hydro-30?speed=300&seed=2"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        url = argv[1]
    else:
        import firmware_sim

        firmware_sim.register_url_handler()
        url = SIM_URL
    prescription = build_prescription("tap-water-pulsed-15", {"electrode_area_cm2": 120.0})  # hand tray
    record_path = Path(tempfile.mkdtemp(prefix="hyperhidrosis-")) / "session.jsonl"
    minutes_shown: set[int] = set()

    def show(p: Progress) -> None:
        minute = int(p.device_time_s // 120)
        if minute not in minutes_shown:  # a line every 2 minutes of device time
            minutes_shown.add(minute)
            left = "--" if p.time_left_s is None else f"{p.time_left_s / 60:4.1f} min"
            print(
                f"left {left}  set-point {p.setpoint_ma:5.2f} mA  measured {p.current_ma:5.2f} mA  "
                f"{p.voltage_v:5.1f} V  {p.state.name}",
                flush=True,
            )

    with Stimulator.open(url) as stim:
        if stim.identity.model != "hydro-30":
            print(f"warning: this protocol is meant for a hydro-30, not a {stim.identity.model}")
        print(f"{stim.identity.model}: {prescription.describe()}")
        expected = prescription.expected_plan(stim.identity)
        record = stim.deliver(
            prescription, on_progress=show, record_path=record_path, labels={"site": "palms"}
        )
    delivered_uas = record.delivered_uas or 0
    ratio = delivered_uas / expected.charge_uas
    print(
        f"delivered {delivered_uas / 60_000:.1f} mA·min, {ratio:.3f} x the predicted "
        f"{expected.charge_uas / 60_000:.1f} mA·min for {prescription.duration_s / 60:g} min at "
        f"{prescription.duty_percent} % duty; outcome {record.summary['end_reason']}"
    )
    print(f"record: {record_path}")
    return 0 if record.summary["end_reason"] == "completed" and 0.95 <= ratio <= 1.05 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
