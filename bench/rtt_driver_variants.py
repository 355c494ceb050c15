"""A proposed driver change, measured: the requesting thread reads its own reply (leader/follower).

Today a request's caller sends the frame and sleeps until the client's reader thread has read, decoded
and matched the reply, then woken it: one more thread switch (and GIL hand-over) per request than a
single-threaded client. The variant here lets the caller do the reading while it waits ("leader"):

* a ``lead`` lock is held by whichever thread reads the link; the reader thread takes it only outside a
  short lease that every request renews, and can be kicked out of its ``select`` through a pipe;
* a caller that gets the lead reads, decodes and dispatches every frame (telemetry and events go to the
  dispatcher queue as before) until its own reply is there; other callers wait as today and are woken
  by whoever reads their reply.

It is a prototype for measurement only (no error handling beyond the happy path), implemented as a
subclass here so that nothing in ``iontodrive`` changes. Both clients talk to their own simulator
process over a pty; they are measured in interleaved rounds with the pyserial echo floor of
``bench/rtt.py`` in the same run.

    .venv/bin/python bench/rtt_driver_variants.py [-n 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import select
import sys
import threading
import time
from typing import Any

from _pty_baselines import LatencyStats, PyserialEchoCase, RoundTripCase, SimulatorProcess

from iontodrive import Stimulator
from iontodrive.protocol import DecodeError, Message

LEASE_S = 0.05  # the reader thread stays out this long after the last request


class LeaderStimulator(Stimulator):
    """:class:`Stimulator` whose request callers read their own replies (see module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lead = threading.Lock()
        self._lease_until = 0.0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        super().__init__(*args, **kwargs)

    def _process(self, data: bytes) -> None:
        for item in self._decoder.feed(data):
            if isinstance(item, DecodeError):
                self.stats.decode_errors += 1
                continue
            self._on_frame(item)

    def _read_loop(self) -> None:
        fd = self._link.port.fd
        wake = self._wake_r
        while not self._closed.is_set():
            parked = self._lease_until - time.monotonic()
            if parked > 0:  # callers are reading: stay out of their way
                self._closed.wait(min(parked, LEASE_S))
                continue
            if not self._lead.acquire(timeout=LEASE_S):
                continue
            try:
                ready, _, _ = select.select([fd, wake], [], [], 0.02)
                if wake in ready:
                    os.read(wake, 64)
                    continue
                if fd in ready:
                    self._process(os.read(fd, 4096))
            except OSError as exc:
                if not self._closed.is_set():
                    self._fail(exc)
                return
            finally:
                self._lead.release()

    def _send(self, seq: int, message: Message, frame: bytes) -> None:
        super()._send(seq, message, frame)
        pending = self._pending.get(seq)
        if pending is None:
            return
        now = time.monotonic()
        deadline = now + self.timeout_s
        self._lease_until = now + LEASE_S
        if not self._lead.acquire(blocking=False):
            os.write(self._wake_w, b"\0")  # kick the reader thread out of its select
            if not self._lead.acquire(timeout=self.timeout_s):
                return  # request() waits for the reply as usual
        try:
            fd = self._link.port.fd
            while not pending.done.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                ready, _, _ = select.select([fd], [], [], left)
                if ready:
                    self._process(os.read(fd, 4096))
        finally:
            self._lead.release()

    def _shutdown(self) -> None:
        super()._shutdown()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)


class ClientCase(RoundTripCase):
    def __init__(self, label: str, cls: type[Stimulator]) -> None:
        self.label = label
        self.sim = SimulatorProcess(model="clinic-4")
        self.stim = cls.open(self.sim.port, telemetry_hz=0)

    def measure(self, n: int) -> list[int]:
        clock, status = time.perf_counter_ns, self.stim.status
        out = []
        for _ in range(n):
            t0 = clock()
            status()
            out.append(clock() - t0)
        return out

    def close(self) -> None:
        try:
            self.stim.close()
        finally:
            self.sim.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(
        f"rtt_driver_variants: python {platform.python_version()}, {os.cpu_count()} cpus, "
        f"load {os.getloadavg()[0]:.2f}; N={args.requests} per case, {args.rounds} rounds"
    )
    cases: list[RoundTripCase] = []
    try:
        cases.append(pyser := PyserialEchoCase("thread"))
        cases.append(today := ClientCase("iontodrive status() today", Stimulator))
        cases.append(leader := ClientCase("iontodrive status() caller reads", LeaderStimulator))
        for case in cases:
            case.measure(args.warmup)
        samples: dict[str, list[int]] = {case.label: [] for case in cases}
        for _ in range(args.rounds):
            for case in cases:
                samples[case.label] += case.measure(args.requests // args.rounds)
        stats = {label: LatencyStats.from_ns(ns) for label, ns in samples.items()}
        for case in cases:
            print(stats[case.label].line(case.label))
        for case in (today, leader):
            link = case.stim.stats
            print(f"{case.label}: requests {link.requests}, retries {link.retries}, timeouts {link.timeouts}")
    finally:
        for case in reversed(cases):
            case.close()
    floor = stats[pyser.label].median_us
    print(f"ratio today/pyserial-echo = {stats[today.label].median_us / floor:.2f}")
    print(f"ratio caller-reads/pyserial-echo = {stats[leader.label].median_us / floor:.2f}")
    print(f"caller-reads/today = {stats[leader.label].median_us / stats[today.label].median_us:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
