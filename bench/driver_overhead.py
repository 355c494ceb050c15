"""The driver's own work per ``status()``, warm and in-process: what it adds to writing, reading and decoding.

A stand-in link answers each request at once from a table of the simulator's encoded replies (one per
sequence number, made by a real in-process ``Device`` the first time the number comes up), so no pty, no
thread switch and no wake-up is measured: only Python work. Two cases, timed in the same run
(``timeit``, best of ``--repeat``):

* ``floor``: what any client must do per request -- hand the request frame to the link, take the reply
  frame back, decode it (frames made beforehand, nothing else);
* ``status()``: ``DeviceClient.status()`` on the same stand-in link (the calling thread reads its reply).

Printed: both per call, their difference (the driver's own work: sequence numbers, encoding the request,
the pending-reply table, the lead, matching, checks) and the ratio. On a pty each microsecond of it costs
two to three after a wake-up (``bench/README.md``). Diagnostic only: no target, exit 0.

    .venv/bin/python bench/driver_overhead.py [--number 20000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import timeit

from firmware_sim import Device
from iontodrive.client import DeviceClient
from iontodrive.protocol import Decoder, GetStatus, encode

MAX_SEQ = 0xFFFF


class AnsweringLink:
    """A link that answers every request frame at once from a table of encoded replies."""

    url = "answering://"
    interruptible = True  # so that the calling thread reads its own reply, as on a pty

    def __init__(self, device: Device, answers: dict[tuple[int, type], bytes]) -> None:
        self._device = device
        self._decoder = Decoder()
        self._answers = answers  # (seq, request type) -> encoded reply; shared by the links of one run
        self._queue: list[bytes] = []

    def write(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            key = (frame.seq, type(frame.message))  # type: ignore[union-attr]
            answer = self._answers.get(key)
            if answer is None:
                self._device.receive(data)
                answer = self._answers[key] = self._device.read_output()
            self._queue.append(answer)

    def read(self, timeout_s: float | None = None) -> bytes:
        try:
            return self._queue.pop(0)
        except IndexError:
            # Nothing was asked. The client's reader thread reads here between requests (never while a
            # caller is timed: requesting back to back keeps it parked); like a real link, wait a little
            # for nothing rather than spin.
            time.sleep(min(timeout_s, 0.01) if timeout_s else 0.01)
            return b""

    def interrupt(self) -> None:
        pass

    def close(self) -> None:
        pass


def best_per_call(call: object, number: int, repeat: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls per timing (default 20000)")
    parser.add_argument("--repeat", type=int, default=7, help="timings per case; the best counts (default 7)")
    args = parser.parse_args(argv)
    if args.number < 1 or args.repeat < 1:
        parser.error("--number and --repeat must be >= 1")
    device = Device("clinic-4", telemetry_hz=0)
    answers: dict[tuple[int, type], bytes] = {}
    client = DeviceClient(AnsweringLink(device, answers), watchdog_ms=None)  # type: ignore[arg-type]
    link = AnsweringLink(device, answers)  # the floor's own: the client's reader thread never reads it
    try:
        for _ in range(MAX_SEQ + 10):  # every sequence number once: the table is full, the code warm
            client.status()
        frames = {seq: encode(GetStatus(), seq) for seq in range(1, MAX_SEQ + 1)}
        decoder = Decoder()
        seq = 1

        def floor() -> None:
            nonlocal seq
            link.write(frames[seq])
            decoder.feed(link.read())
            seq = seq % MAX_SEQ + 1

        floor_s = best_per_call(floor, args.number, args.repeat)
        status_s = best_per_call(client.status, args.number, args.repeat)
    finally:
        client.close()
    print(f"driver_overhead: python {platform.python_version()}, best of {args.repeat} x {args.number} calls")
    print(f"floor (write, read, decode)      {floor_s * 1e6:7.2f} us per call")
    print(f"DeviceClient.status()           {status_s * 1e6:7.2f} us per call")
    print(f"the driver's own work           {(status_s - floor_s) * 1e6:7.2f} us per call")
    print(f"ratio status()/floor = {status_s / floor_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
