"""The driver's two ways of reading replies, measured in the same run: who reads the link matters.

* ``caller reads`` (the default): the thread that sent a request reads the link itself until its reply
  is in (see "Who reads the link" in ``iontodrive/client.py``);
* ``reader thread``: ``Stimulator.open(..., caller_reads=False)``: the client's reader thread reads every
  frame and wakes the waiting caller: one more thread switch (and GIL hand-over) per round trip.

Each client talks to its own simulator process over a pty; both are measured in interleaved rounds with
the pyserial echo floor of ``bench/rtt.py`` in the same run. Diagnostic only: no target, exit 0.

    .venv/bin/python bench/rtt_driver_variants.py [-n 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

from _pty_baselines import LatencyStats, PyserialEchoCase, RoundTripCase, StimulatorCase


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("-n >= 1, --warmup >= 0 and --rounds >= 1 are required")
    print(
        f"rtt_driver_variants: python {platform.python_version()}, {os.cpu_count()} cpus, "
        f"load {os.getloadavg()[0]:.2f}; N={args.requests} per case, {args.rounds} rounds"
    )
    cases: list[RoundTripCase] = []
    try:
        cases.append(pyser := PyserialEchoCase("thread"))
        cases.append(thread := StimulatorCase("iontodrive status() reader thread", caller_reads=False))
        cases.append(caller := StimulatorCase("iontodrive status() caller reads", caller_reads=True))
        for case in cases:
            case.measure(args.warmup)
        samples: dict[str, list[int]] = {case.label: [] for case in cases}
        per_round = [args.requests // args.rounds] * args.rounds
        per_round[-1] += args.requests - sum(per_round)
        for n in per_round:
            for case in cases:
                samples[case.label] += case.measure(n)
        stats = {label: LatencyStats.from_ns(ns) for label, ns in samples.items()}
        for case in cases:
            print(stats[case.label].line(case.label))
        for case in (thread, caller):
            link = case.stim.stats
            print(
                f"{case.label}: requests {link.requests}, retries {link.retries}, "
                f"timeouts {link.timeouts}, replies read by the caller {link.caller_reads}"
            )
    finally:
        for case in reversed(cases):
            case.close()
    floor = stats[pyser.label].median_us
    print(f"ratio reader-thread/pyserial-echo = {stats[thread.label].median_us / floor:.2f}")
    print(f"ratio caller-reads/pyserial-echo = {stats[caller.label].median_us / floor:.2f}")
    print(f"caller-reads/reader-thread = {stats[caller.label].median_us / stats[thread.label].median_us:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
