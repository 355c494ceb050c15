"""Simulator speed: a 20-minute 4 mA clinic-4 session with a 1 ms physics step, in-process, virtual clock.

The host is a :class:`firmware_sim.host.SimHost` (encoded frames through ``Device.receive``) that sends a
Heartbeat every second of device time, as a live host would, and reads everything the device sends
(telemetry at the default 2 Hz, events, replies). Runs measured:

* ``time-based``: ``Start(4000 uA, duration 20 min, ramps 30 s)`` until DONE;
* ``dose-based``: ``Start(4000 uA, dose 4.68 C, ramps 30 s)`` (the same charge), until DONE;
* ``time-based + trace``: as the first, writing the CSV trace of every physics step to a temporary file;
* baseline ``step-by-step``: the same firmware forced to one physics step per block
  (``max_block_steps=1``), timed over the first 20 s of the session and extrapolated linearly.

Printed per run (best of ``--repeat``): wall time, process CPU time (a busy machine inflates the wall
time, much less the CPU time), simulated time, the speed ratio (simulated / wall; the target is >= 600,
i.e. <= 2 s for the 20-minute session) and, for the block runs, the speed-up over the step-by-step
baseline measured in the same run. Exit status 1 if the time-based run misses the target, unless
``--no-check``.

Usage::

    .venv/bin/python bench/sim_speed.py [--repeat N] [--no-check]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from firmware_sim import Device
from firmware_sim.host import SimHost
from iontodrive.protocol import Ack, DeviceState, Polarity, Start

SESSION_S = 20 * 60
TARGET_UA = 4000
RAMP_MS = 30_000
DOSE_UAS = TARGET_UA * (SESSION_S - RAMP_MS // 1000)  # the charge the time-based session delivers
TARGET_RATIO = 600.0


def run_session(
    dose_based: bool, trace: Path | None = None, max_block_steps: int = 65_536, limit_s: float | None = None
) -> tuple[float, float, float, float]:
    """Run one session; return (wall s, process CPU s, simulated s, delivered charge uA*s)."""
    device = Device("clinic-4", trace=trace, max_block_steps=max_block_steps)
    host = SimHost(device)
    start = Start(
        TARGET_UA,
        DOSE_UAS if dose_based else 0,
        0 if dose_based else SESSION_S * 1000,
        RAMP_MS,
        RAMP_MS,
        Polarity.CATHODE,
    )
    t0 = time.perf_counter()
    c0 = time.process_time()
    assert isinstance(host.request(start), Ack)
    horizon = limit_s if limit_s is not None else SESSION_S + 60.0
    host.run(horizon, step_s=1.0, until=lambda d: d.state == DeviceState.DONE)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    device.close()
    if limit_s is None and device.state != DeviceState.DONE:
        raise RuntimeError(f"session did not finish: {device.state.name}")
    return wall, cpu, device.session_time_s, device.charge_uas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs each (default 3)")
    parser.add_argument("--no-check", action="store_true", help="do not fail when the target is missed")
    args = parser.parse_args(argv)

    baseline_window = 20.0
    base_wall, base_cpu, base_sim, _ = min(
        (run_session(False, max_block_steps=1, limit_s=baseline_window) for _ in range(args.repeat)),
        key=lambda r: r[0],
    )
    base_ratio = base_sim / base_wall
    print(
        f"baseline step-by-step   : {base_wall:8.3f} s wall ({base_cpu:6.3f} s CPU) for {base_sim:7.1f} s "
        f"simulated = {base_ratio:8.1f}x real time (extrapolated 20 min: {SESSION_S / base_ratio:7.1f} s)"
    )

    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        runs = [
            ("time-based", False, None),
            ("dose-based", True, None),
            ("time-based + trace", False, Path(tmp) / "trace.csv"),
        ]
        for name, dose_based, trace in runs:
            wall, cpu, sim, charge = min(
                (run_session(dose_based, trace) for _ in range(args.repeat)), key=lambda r: r[0]
            )
            ratio = sim / wall
            extra = ""
            if trace is not None:
                rows = sum(1 for _ in trace.open()) - 1
                extra = f", {rows} trace rows ({trace.stat().st_size / 1e6:.0f} MB)"
            print(
                f"{name:24s}: {wall:8.3f} s wall ({cpu:6.3f} s CPU) for {sim:7.1f} s simulated = "
                f"{ratio:8.1f}x real time, {ratio / base_ratio:6.1f}x the step-by-step baseline; "
                f"charge {charge / 60e3:.2f} mA·min{extra}"
            )
            if name == "time-based" and ratio < TARGET_RATIO:
                print(
                    f"  MISSED: target is >= {TARGET_RATIO:.0f}x real time "
                    f"(<= {SESSION_S / TARGET_RATIO:.1f} s)"
                )
                status = 1
    return 0 if args.no_check else status


if __name__ == "__main__":
    sys.exit(main())
