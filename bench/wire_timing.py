"""Serial timing: the simulator's frame timing at 115,200 baud against the wire model (issue 19).

Two measurements, each printed as a ratio to the model (``iontodrive.protocol.budget``: 8N1, 40-byte
telemetry frames, so 288 frames a second fill the line and one frame takes 3.47 ms):

1. **Virtual clock**: ``Device`` + ``WireModel`` stepped in-process, telemetry asked at 2 kHz: the delivered
   rate and the median gap between frames (exact by construction; the baseline of the real-time run).
2. **Real time**: ``python -m firmware_sim --pty --baud 115200`` (``--serial`` over a socat pair measures
   the same, with socat in between), a raw-fd host reading the pty, telemetry asked at 2 kHz: the
   delivered rate, the median gap, and the byte rate on the wire, over ``--seconds``.

Target: real-time figures within 5 % of the model. Exit 1 if not (unless ``--no-check``).

    .venv/bin/python bench/wire_timing.py --seconds 10
"""

from __future__ import annotations

import argparse
import itertools
import os
import select
import statistics
import subprocess
import sys
import time

from firmware_sim import Device
from firmware_sim.wire import WireModel, WireSettings
from iontodrive.protocol import ConfigureTelemetry, Decoder, Frame, Telemetry, encode
from iontodrive.protocol.budget import link_budget, wire_time_s

BAUD = 115_200
ASKED_HZ = 2000
TOLERANCE = 0.05


def summarise(times: list[float], nbytes: int) -> tuple[float, float, float]:
    span = times[-1] - times[0]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return (len(times) - 1) / span, statistics.median(gaps), nbytes / span


def virtual(seconds: float) -> tuple[float, float, float]:
    device = Device("clinic-4", seed=1)
    wire = WireModel(WireSettings(baud=BAUD))
    device.receive(encode(ConfigureTelemetry(ASKED_HZ), seq=1))
    decoder = Decoder()
    times: list[float] = []
    nbytes = 0
    while device.link_time_s < seconds + 0.5:
        device.advance(0.0005)
        now = device.link_time_s
        wire.device_send(device.read_output(), now)
        for t, data in wire.host_receive(now):
            for f in decoder.feed(data):
                if isinstance(f, Frame) and isinstance(f.message, Telemetry) and t > 0.5:
                    times.append(t)
                    nbytes += 40
    return summarise(times, nbytes)


def real_time(seconds: float) -> tuple[float, float, float, int]:
    sim = subprocess.Popen(
        [sys.executable, "-m", "firmware_sim", "--pty", "--baud", str(BAUD), "--speed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sim.stdout is not None
        path = sim.stdout.readline().split()[1]
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        import tty

        tty.setraw(fd)
        os.write(fd, encode(ConfigureTelemetry(ASKED_HZ), seq=1))
        decoder = Decoder()
        times: list[float] = []
        nbytes = 0
        start = time.monotonic()
        while time.monotonic() - start < seconds + 0.5:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(fd, 65536)
            now = time.monotonic()
            if now - start < 0.5:
                decoder.feed(data)
                continue
            nbytes += len(data)
            for f in decoder.feed(data):
                if isinstance(f, Frame) and isinstance(f.message, Telemetry):
                    times.append(now)
        os.close(fd)
        rate, gap, byte_rate = summarise(times, nbytes)
        return rate, gap, byte_rate, len(times)
    finally:
        sim.terminate()
        sim.wait(20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-check", action="store_true")
    args = parser.parse_args()
    budget = link_budget(BAUD)
    model_rate = budget.bytes_per_s / budget.telemetry_frame_bytes
    model_gap = wire_time_s(budget.telemetry_frame_bytes, BAUD)
    print(
        f"model: {BAUD} baud 8N1 = {budget.bytes_per_s:.0f} B/s, {budget.telemetry_frame_bytes}-byte "
        f"frames: {model_rate:.1f} frames/s, {model_gap * 1e3:.3f} ms a frame; asked {ASKED_HZ} Hz"
    )
    v_rate, v_gap, v_bytes = virtual(args.seconds)
    print(
        f"virtual clock : {v_rate:8.1f} frames/s ({v_rate / model_rate:.4f}x model), median gap "
        f"{v_gap * 1e3:.3f} ms ({v_gap / model_gap:.4f}x), "
        f"{v_bytes:.0f} B/s ({v_bytes / budget.bytes_per_s:.4f}x)"
    )
    r_rate, r_gap, r_bytes, n = real_time(args.seconds)
    print(
        f"real time pty : {r_rate:8.1f} frames/s ({r_rate / model_rate:.4f}x model, "
        f"{r_rate / v_rate:.4f}x virtual), median gap {r_gap * 1e3:.3f} ms ({r_gap / model_gap:.4f}x), "
        f"{r_bytes:.0f} B/s ({r_bytes / budget.bytes_per_s:.4f}x); {n} frames in {args.seconds:g} s"
    )
    worst = max(abs(r_rate / model_rate - 1), abs(r_bytes / budget.bytes_per_s - 1))
    ok = worst <= TOLERANCE
    verdict = "PASS" if ok else "FAIL"
    print(
        f"{verdict}: real-time rate and byte rate within {worst:.1%} of the model (target "
        f"{TOLERANCE:.0%}); the median gap also reflects how the host's reads batch frames"
    )
    return 0 if ok or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
