"""``stim.status()`` round trip against two versions of the simulator, interleaved, in the same run.

For before/after comparisons of simulator changes: the same driver (this checkout's ``iontodrive``)
talks over a pty to ``python -m firmware_sim`` run from this checkout and from ``--other DIR`` (a
directory holding another ``firmware_sim`` package, e.g. an older commit exported with
``git archive <commit> firmware_sim | tar -x -C DIR``), with the pyserial echo floor of ``bench/rtt.py``
measured in the same rounds. Optionally also the simulator's idle CPU with a client connected.

    .venv/bin/python bench/rtt_sim_versions.py --other /tmp/orig_sim [-n 2000] [--idle-speeds 1 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _pty_baselines import REPO, LatencyStats, PyserialEchoCase, time_calls

from iontodrive import Stimulator


class SimVersion:
    """``python -m firmware_sim --pty`` run with ``cwd`` first on its path, and a client on its pty."""

    def __init__(self, label: str, cwd: Path, *args: str) -> None:
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "firmware_sim", "--pty", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"{label}: simulator did not print 'PORT <path>' (got {line!r})")
        self.port = line.split(None, 1)[1]

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def idle_cpu_percent(label: str, cwd: Path, speed: float, seconds: float) -> float:
    sim = SimVersion(label, cwd, "--speed", f"{speed:g}")
    try:
        with Stimulator.open(sim.port):  # power-up telemetry (2 Hz), heartbeats: an idle host
            time.sleep(1.0)
            c0, w0 = sim.cpu_seconds(), time.monotonic()
            time.sleep(seconds)
            c1, w1 = sim.cpu_seconds(), time.monotonic()
    finally:
        sim.stop()
    return 100.0 * (c1 - c0) / (w1 - w0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", type=Path, required=True, help="directory holding the other firmware_sim")
    parser.add_argument("-n", "--requests", type=int, default=2000, help="per case (default 2000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle-speeds", type=float, nargs="*", default=[], help="also measure idle CPU")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if not (args.other / "firmware_sim" / "__main__.py").is_file():
        parser.error(f"--other {args.other}: no firmware_sim package there")
    print(
        f"rtt_sim_versions: python {platform.python_version()}, {os.cpu_count()} cpus, "
        f"load {os.getloadavg()[0]:.2f}; N={args.requests} per case, {args.rounds} rounds"
    )
    trees = {f"this checkout ({REPO})": REPO, f"other ({args.other})": args.other}
    sims = [SimVersion(label, cwd) for label, cwd in trees.items()]
    echo = PyserialEchoCase("thread")
    clients = [Stimulator.open(sim.port, telemetry_hz=0) for sim in sims]
    try:
        samples: dict[str, list[int]] = {echo.label: []} | {sim.label: [] for sim in sims}
        echo.measure(200)
        for stim in clients:
            time_calls(stim.status, 200)
        for _ in range(args.rounds):
            samples[echo.label] += echo.measure(args.requests // args.rounds)
            for sim, stim in zip(sims, clients, strict=True):
                samples[sim.label] += time_calls(stim.status, args.requests // args.rounds)
    finally:
        for stim in clients:
            stim.close()
        for sim in sims:
            sim.stop()
        echo.close()
    stats = {label: LatencyStats.from_ns(ns) for label, ns in samples.items()}
    for label, stat in stats.items():
        print(stat.line(label[:34]))
    floor = stats[echo.label].median_us
    for sim in sims:
        print(f"ratio {sim.label}/pyserial-echo = {stats[sim.label].median_us / floor:.2f}")
    for speed in args.idle_speeds:
        for label, cwd in trees.items():
            cpu = idle_cpu_percent(label, cwd, speed, args.idle_seconds)
            print(f"idle simulator CPU at speed {speed:g}, {label}: {cpu:.1f} % of one core")
    print(f"load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
