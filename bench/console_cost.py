"""What the web console's stream costs the simulator: its CPU with and without a 20 Hz console client.

Starts ``python -m firmware_sim --pty --control 127.0.0.1:0 --speed 1``, runs a 2 mA session on it (a raw-fd
host sending a heartbeat every 0.5 s, telemetry at 50 Hz), and reads the simulator process's own CPU
time (``/proc/PID/stat``: user + system) over ``--seconds`` twice: first with no console client (the
baseline), then with a client reading ``/api/stream?hz=20`` (what the console's page does), then once more
without, and prints each in % of one core and the stream's cost as the difference to the mean baseline.

Target (issue 19): the stream at 20 Hz costs the simulator under 5 % of a core. Exit 1 if not (unless
``--no-check``). Linux only (``/proc``).

    .venv/bin/python bench/console_cost.py --seconds 10
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import threading
import time
import tty
import urllib.request

from iontodrive.protocol import ConfigureTelemetry, Heartbeat, Polarity, SetWatchdog, Start, encode

TARGET_PERCENT = 5.0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(pid: int, seconds: float) -> float:
    c0, t0 = cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (cpu_s(pid) - c0) / (time.monotonic() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-check", action="store_true")
    args = parser.parse_args()
    sim = subprocess.Popen(
        [sys.executable, "-m", "firmware_sim", "--pty", "--control", "127.0.0.1:0", "--speed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    stop = threading.Event()
    try:
        assert sim.stdout is not None
        path = sim.stdout.readline().split()[1]
        url = sim.stdout.readline().split()[1]
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        os.write(fd, encode(SetWatchdog(5000), 1) + encode(ConfigureTelemetry(50), 2))
        os.write(fd, encode(Start(2000, 0, 3_000_000, 5000, 5000, Polarity.CATHODE), 3))

        def host() -> None:  # feeds the watchdog and drains the pty, as a live host does
            seq = 4
            while not stop.is_set():
                os.write(fd, encode(Heartbeat(), seq))
                seq = seq % 60000 + 4
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline:
                    with contextlib.suppress(BlockingIOError):
                        os.read(fd, 65536)
                    time.sleep(0.01)

        os.set_blocking(fd, False)
        threading.Thread(target=host, daemon=True).start()
        time.sleep(6.0)  # through the contact check and the ramp
        before = measure(sim.pid, args.seconds)
        frames = [0]
        streaming = threading.Event()

        def console() -> None:
            with urllib.request.urlopen(url + "api/stream?hz=20", timeout=30) as stream:
                streaming.set()
                for line in stream:
                    if line.startswith(b"data:"):
                        frames[0] += 1
                    if stop.is_set() or not streaming.is_set():
                        break

        client = threading.Thread(target=console, daemon=True)
        client.start()
        streaming.wait(10)
        time.sleep(0.5)
        n0 = frames[0]
        with_console = measure(sim.pid, args.seconds)
        rate = (frames[0] - n0) / args.seconds
        streaming.clear()
        client.join(5)
        time.sleep(0.5)
        after = measure(sim.pid, args.seconds)
    finally:
        stop.set()
        sim.terminate()
        sim.wait(20)
    baseline = (before + after) / 2
    cost = with_console - baseline
    print(f"simulator CPU, no console    : {before:5.2f} % of a core (before), {after:5.2f} % (after)")
    ratio = with_console / baseline if baseline else float("inf")
    print(
        f"simulator CPU, console 20 Hz : {with_console:5.2f} % of a core ({rate:.1f} snapshots/s "
        f"received); {ratio:.2f}x the baseline"
    )
    ok = cost < TARGET_PERCENT
    verdict = "PASS" if ok else "FAIL"
    print(f"{verdict}: the 20 Hz stream costs {cost:.2f} % of a core (target < {TARGET_PERCENT:g} %)")
    return 0 if ok or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
