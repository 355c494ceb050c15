"""Safety-check lag behind telemetry under a slow ordinary callback (issue 13: "measure and bound it").

Starts ``python -m firmware_sim --pty --speed 1`` (device time = wall time), opens a
:class:`~iontodrive.client.DeviceClient` on its pty at 1 kHz telemetry, registers a *safety* telemetry
listener (the stand-in for the session's over-current and lift checks) and, per scenario, an *ordinary*
listener that blocks for a while on every sample (a progress display, a record write). Scenarios, all in
the same run:

* ``baseline``: no ordinary callback;
* ``3 ms``: the issue's case (a 3 ms callback at 1 kHz: on 4013fbb the checks fell 20.5 s behind in 30 s);
* ``50 ms``: the issue's bound case (50 ms at 1 kHz);
* ``50 ms, check as ordinary listener``: the same check registered the old way (``safety=False``, after
  the slow callback): what the safety tier is for.

Lag of one sample = (host monotonic time when the check ran) - (device time of the sample), minus the
smallest such difference in the scenario (the fixed offset between the two clocks): how much later than
the promptest sample this one was checked. Reported: worst and 99th percentile, samples the check saw,
samples the ordinary tier dropped (oldest first), and the worst ``DeviceClient.safety_lag_s`` polled every
10 ms. Ratios are against the baseline of the same run.

    .venv/bin/python bench/safety_lag.py                 # 10 s per scenario
    .venv/bin/python bench/safety_lag.py --seconds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field

from _pty_baselines import SimulatorProcess

from iontodrive.client import SAFETY_LAG_MAX_S, DeviceClient
from iontodrive.protocol import Telemetry

RATE_HZ = 1000
WARMUP_S = 0.5


@dataclass
class LagCheck:
    """The stand-in safety check: records host time minus device time for every sample it sees."""

    offsets_s: list[float] = field(default_factory=list)

    def __call__(self, sample: Telemetry) -> None:
        self.offsets_s.append(time.monotonic() - sample.device_time_ms / 1000.0)

    def lags_ms(self) -> list[float]:
        if not self.offsets_s:
            return []
        base = min(self.offsets_s)
        return sorted((o - base) * 1000.0 for o in self.offsets_s)


@dataclass
class Result:
    name: str
    samples: int
    worst_ms: float
    p99_ms: float
    polled_worst_ms: float
    dropped: int


def block_for(seconds: float) -> None:
    threading.Event().wait(seconds)


def run(port: str, name: str, callback_s: float | None, check_is_safety: bool, seconds: float) -> Result:
    check = LagCheck()
    with DeviceClient.open(port, timeout_s=0.5, retries=2) as client:
        if callback_s is not None:
            client.add_telemetry_listener(lambda sample: block_for(callback_s))
        client.add_telemetry_listener(check, safety=check_is_safety)
        client.configure_telemetry(RATE_HZ)
        time.sleep(WARMUP_S)
        check.offsets_s.clear()
        polled = 0.0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            polled = max(polled, client.safety_lag_s)
            time.sleep(0.01)
        client.configure_telemetry(0)
        lags = check.lags_ms()
        dropped = client.delivery_stats["dispatch"]["dropped_telemetry"]
    worst = lags[-1] if lags else float("nan")
    p99 = lags[int(0.99 * (len(lags) - 1))] if lags else float("nan")
    return Result(name, len(lags), worst, p99, polled * 1000.0, dropped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per scenario")
    args = parser.parse_args(argv)
    print(
        f"safety_lag: python {platform.python_version()}, {os.cpu_count()} cpus, load "
        f"{os.getloadavg()[0]:.2f}; {RATE_HZ} Hz telemetry, {args.seconds:g} s per scenario; "
        f"heartbeat bound SAFETY_LAG_MAX_S = {SAFETY_LAG_MAX_S * 1000:g} ms"
    )
    sim = SimulatorProcess(speed=1.0)
    try:
        results = [
            run(sim.port, "baseline (no ordinary callback)", None, True, args.seconds),
            run(sim.port, "3 ms ordinary callback", 0.003, True, args.seconds),
            run(sim.port, "50 ms ordinary callback", 0.050, True, args.seconds),
            run(sim.port, "50 ms, check as an ordinary listener", 0.050, False, args.seconds),
        ]
    except BaseException:
        print(f"simulator stderr:\n{sim.stderr_tail()}", file=sys.stderr)
        raise
    finally:
        sim.stop()
    base = results[0]
    print(
        f"{'scenario':<40} {'checked':>8} {'worst ms':>9} {'p99 ms':>8} {'x base':>7} "
        f"{'safety_lag_s max ms':>20} {'dropped':>8}"
    )
    for r in results:
        ratio = r.worst_ms / base.worst_ms if base.worst_ms > 0 else float("nan")
        print(
            f"{r.name:<40} {r.samples:>8} {r.worst_ms:>9.1f} {r.p99_ms:>8.1f} {ratio:>7.1f} "
            f"{r.polled_worst_ms:>20.1f} {r.dropped:>8}"
        )
    within = all(r.worst_ms < SAFETY_LAG_MAX_S * 1000 for r in results[:3])
    print(f"safety tier within the {SAFETY_LAG_MAX_S * 1000:g} ms bound in every scenario: {within}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
