"""One lab script, two current sources: only the resource string changes.

The same function delivers the same prescription first on the firmware simulator (an iontophoresis
stimulator speaking the framed protocol, in this process through ``sim://``) and then on a simulated
Keithley 2450 source-meter (pyvisa-sim with ``tests/visa_sim/bench.yaml``, ramped by the host). Prescription
checks, progress, the record, and every exit path (Ctrl-C ramps down) work the same on both.

Which VISA library to use and how fast a *simulated* instrument's clock runs is lab configuration, read from
the environment (set below only if you have not set it): ``IONTODRIVE_VISA_LIBRARY`` and
``IONTODRIVE_VISA_SIM_SPEED``. With real hardware, set the library (or leave it to pyvisa's default) and pass
a real resource string; the speed option is refused for real backends.

Run (takes a few seconds)::

    .venv/bin/python examples/same_script_two_sources.py
    .venv/bin/python examples/same_script_two_sources.py "USB0::0x05E6::0x2450::04096331::INSTR"
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent / "tests" / "visa_sim" / "bench.yaml"
os.environ.setdefault("IONTODRIVE_VISA_LIBRARY", f"{BENCH}@sim")
os.environ.setdefault("IONTODRIVE_VISA_SIM_SPEED", "10")

import firmware_sim  # noqa: E402  (after the environment is set)
from iontodrive import Prescription, Progress, SessionRecord  # noqa: E402
from iontodrive.source import open_source  # noqa: E402

PRESCRIPTION = Prescription(
    current_ma=2.0, dose_ma_min=1.0, ramp_up_s=5, ramp_down_s=5, polarity="cathode", electrode_area_cm2=10.0
)
RESOURCES = (
    "sim://clinic-4?speed=10&seed=1",  # the firmware simulator, in this process
    "USB0::0x05E6::0x2450::04096331::INSTR",  # a (simulated) Keithley 2450 over VISA
)


def lab_session(resource: str, record_dir: Path) -> SessionRecord:
    """The lab script. Nothing in it depends on what kind of source ``resource`` names."""
    with open_source(resource) as source:
        identity = source.identity
        print(
            f"\n{resource}\n  {identity.model}: up to {identity.max_current_ua / 1000:g} mA, "
            f"{identity.compliance_mv / 1000:g} V compliance"
        )
        for warning in PRESCRIPTION.check_against(identity):
            print(f"  note: {warning}")
        last_state = None

        def show(progress: Progress) -> None:
            nonlocal last_state
            if progress.state is not last_state:
                last_state = progress.state
                print(
                    f"  {progress.device_time_s:6.1f} s  {progress.state.name:<9} "
                    f"{progress.current_ma:5.2f} mA  {progress.voltage_v:5.2f} V  "
                    f"{progress.delivered_ma_min:5.3f} / {PRESCRIPTION.dose_ma_min:g} mA·min"
                )

        name = identity.model.replace(" ", "-")
        return source.deliver(
            PRESCRIPTION,
            show,
            record_path=record_dir / f"{name}.jsonl",
            labels={"sample": "Franz cell 3", "drug": "dexamethasone sodium phosphate"},
        )


def main(argv: list[str]) -> int:
    firmware_sim.register_url_handler()
    resources = argv or list(RESOURCES)
    record_dir = Path(tempfile.mkdtemp(prefix="same-script-"))
    for resource in resources:
        record = lab_session(resource, record_dir)
        assert record.summary is not None
        delivered = record.summary["delivered_uas"] / 60_000
        print(
            f"  -> {record.summary['end_reason']}: {delivered:.3f} mA·min delivered "
            f"({100 * (delivered / PRESCRIPTION.dose_ma_min - 1):+.2f} %), {len(record.events)} events, "
            f"record {record.path}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
