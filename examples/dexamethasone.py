"""Dexamethasone iontophoresis: 40 mA·min at 4 mA from the cathode, with live progress and a record.

Usage::

    python examples/dexamethasone.py                     # in-process simulator, 200x real time
    python examples/dexamethasone.py /dev/ttyUSB0        # a real device (about 11 minutes)
    python examples/dexamethasone.py socket://127.0.0.1:7000

Dexamethasone sodium phosphate is negatively charged, so it is delivered from the cathode (GUIDE.md §1).
The session ramps up over 30 s, holds 4 mA, and begins its ramp-down early enough that the ramp's own
charge lands the total on 40 mA·min (S11). Ctrl-C ramps the output down before the script exits.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from iontodrive import Prescription, Progress, Stimulator

SIM_URL = "sim://clinic-4?speed=200&seed=1"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        url = argv[1]
    else:
        import firmware_sim

        firmware_sim.register_url_handler()  # makes sim:// URLs open an in-process simulator
        url = SIM_URL
    prescription = Prescription(
        current_ma=4.0,
        dose_ma_min=40.0,
        ramp_up_s=30,
        ramp_down_s=30,
        polarity="cathode",
        electrode_area_cm2=10.0,  # 0.4 mA/cm²: within the usual 0.2-0.5 mA/cm² for DC
    )
    record_path = Path(tempfile.mkdtemp(prefix="dexamethasone-")) / "session.jsonl"
    last_shown = [-1]

    def show(p: Progress) -> None:
        percent = int(100 * p.fraction)
        if percent // 10 != last_shown[0]:  # one line per 10 % of the dose
            last_shown[0] = percent // 10
            print(
                f"{percent:3d} %  {p.delivered_ma_min:6.2f} mA·min  {p.current_ma:5.2f} mA  "
                f"{p.voltage_v:5.1f} V  {p.state.name}",
                flush=True,
            )

    with Stimulator.open(url) as stim:
        print(f"{stim.identity.model} #{stim.identity.serial_number}: {prescription.describe()}")
        record = stim.deliver(
            prescription,
            on_progress=show,
            record_path=record_path,
            labels={"drug": "dexamethasone sodium phosphate 0.4 %", "site": "left lateral epicondyle"},
        )
    delivered = (record.delivered_uas or 0) / 60_000
    error = 100 * (delivered - 40.0) / 40.0
    print(f"delivered {delivered:.3f} mA·min of 40 ({error:+.2f} %), outcome {record.summary['end_reason']}")
    print(f"record: {record_path}")
    return 0 if abs(error) <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
