"""Request round trip: ``stim.status()`` over a pty against baselines measured in the same run.

Cases (each over its own raw-mode pty pair from ``pty.openpty()``):

(a) raw-fd echo floor     16 bytes os.write to the slave fd, echoed by a peer on the master, os.read back
(b) pyserial echo floor   the same echo, client side a ``serial.Serial`` on the slave path
(c) pymodbus async RTU    ``AsyncModbusSerialClient.read_holding_registers`` against a minimal Modbus RTU
                          responder on the master (reply sized like our StatusReport frame)
(c') pymodbus sync RTU    ``ModbusSerialClient``, same responder (informational; ``--no-sync`` skips it;
                          measured after the interleaved rounds, see below)
(d) iontodrive            ``Stimulator.open(pty)`` against ``python -m firmware_sim --pty``; ``status()``
(e) simulator floor       ``GetStatus`` frames over raw fds by one thread, against a second simulator:
                          what no host client can beat (informational, with ``--sim-floor``)
(f) iontodrive asyncio    ``AsyncDeviceClient.status()`` on its own event loop (``--aio uvloop`` or
                          ``--aio asyncio``) against a simulator of its own; target (issue 16): within
                          1.3 x (d), measured in the same rounds

All cases are set up first, warmed up, then measured in interleaved rounds so that background load on
the machine falls on every case alike. The pymodbus sync client is the exception: at about 2.3 ms a
request its share of a round lasts about a second, during which every other peer idles, and on this
virtual machine the case measured after such a pause was 10-60 % slower (the simulator and driver cases
more than the echo; see bench/README.md). It sets no target, so it is measured on its own, after the
rounds. Targets (issue 4): median(d) <= 2.5 x median(b) and
median(d) <= 0.5 x median(c). Prints PASS/FAIL per target; exits 1 on FAIL unless ``--no-check``.

    .venv/bin/python bench/rtt.py              # N=2000 per case, 200 warm-up, 5 rounds
    .venv/bin/python bench/rtt.py --quick --no-check
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import serial
from _pty_baselines import (
    LatencyStats,
    ModbusAsyncCase,
    ModbusSyncCase,
    PyserialEchoCase,
    RawEchoCase,
    RoundTripCase,
    SimFloorCase,
    StimulatorCase,
    verdict,
)

TARGET_VS_PYSERIAL = 2.5
TARGET_VS_PYMODBUS = 0.5
TARGET_AIO_VS_THREADED = 1.3
STATUS_REPLY_REGISTERS = 26  # a 57-byte RTU reply, against the 58-byte StatusReport frame


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--requests", type=int, help="measured requests per case (default 2000)")
    parser.add_argument("--warmup", type=int, help="unmeasured requests per case first (default 200)")
    parser.add_argument("--rounds", type=int, help="interleaved measurement rounds (default 5)")
    parser.add_argument(
        "--peer",
        choices=("thread", "process"),
        default="thread",
        help="run the echo/Modbus peers in a thread (default) or a forked process",
    )
    parser.add_argument("--no-sync", action="store_true", help="skip the pymodbus sync client")
    parser.add_argument(
        "--sim-floor",
        action="store_true",
        help="also measure raw-fd GetStatus round trips against a second simulator process",
    )
    parser.add_argument("--model", default="clinic-4", help="simulator model")
    parser.add_argument("--speed", type=float, default=None, help="simulator --speed (default: its own)")
    parser.add_argument(
        "--sim-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra simulator argument, repeatable (e.g. --sim-arg=--physics-step-ms=0.2)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke-test run (defaults 50 requests, 10 warm-up, 1 round)",
    )
    parser.add_argument(
        "--aio",
        choices=("uvloop", "asyncio"),
        help="also measure the asyncio client on this event loop (target: within 1.3 x the threaded one)",
    )
    parser.add_argument("--no-check", action="store_true", help="always exit 0 (report only)")
    args = parser.parse_args(argv)
    defaults = (50, 10, 1) if args.quick else (2000, 200, 5)
    for name, default in zip(("requests", "warmup", "rounds"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.requests < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--requests >= 1, --warmup >= 0 and --rounds >= 1 are required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import pymodbus

    print(
        f"rtt: python {platform.python_version()}, pyserial {serial.__version__}, pymodbus "
        f"{pymodbus.__version__}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}; "
        f"N={args.requests} per case after {args.warmup} warm-up, {args.rounds} rounds, peers in {args.peer}"
    )
    cases: list[RoundTripCase] = []
    sync: RoundTripCase | None = None
    try:
        cases.append(raw := RawEchoCase(args.peer))
        cases.append(pyser := PyserialEchoCase(args.peer))
        cases.append(mb_async := ModbusAsyncCase(args.peer, STATUS_REPLY_REGISTERS))
        sync = None if args.no_sync else ModbusSyncCase(args.peer, STATUS_REPLY_REGISTERS)
        if args.sim_floor:
            cases.append(floor := SimFloorCase(args.model, args.speed, args.sim_arg))
        cases.append(
            ours := StimulatorCase(
                "iontodrive status() (sim, pty)", model=args.model, speed=args.speed, sim_args=args.sim_arg
            )
        )
        if args.aio:
            cases.append(aio := AsyncClientCase(args.aio, args.model, args.speed, args.sim_arg))

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
        if sync is not None:  # informational, on its own (module docstring)
            sync.measure(args.warmup)
            sync_stats = LatencyStats.from_ns(sync.measure(args.requests))
            print(sync_stats.line(sync.label) + "   (after the rounds)")
        link = ours.stim.stats
        print(
            f"iontodrive link: requests {link.requests}, retries {link.retries}, timeouts {link.timeouts},"
            f" replies read by the calling thread {link.caller_reads}"
        )
    finally:
        for case in reversed(cases):
            case.close()
        if sync is not None:
            sync.close()

    ours_median = stats[ours.label].median_us
    vs_pyserial = ours_median / stats[pyser.label].median_us
    vs_pymodbus = ours_median / stats[mb_async.label].median_us
    ok_pyserial = vs_pyserial <= TARGET_VS_PYSERIAL
    ok_pymodbus = vs_pymodbus <= TARGET_VS_PYMODBUS
    print(
        f"ratio raw-fd-echo/pyserial-echo = {stats[raw.label].median_us / stats[pyser.label].median_us:.2f}"
    )
    print(
        f"ratio ours/pyserial-echo = {vs_pyserial:.2f} (target <= {TARGET_VS_PYSERIAL}) "
        f"{verdict(ok_pyserial)}"
    )
    print(
        f"ratio ours/pymodbus-async = {vs_pymodbus:.2f} (target <= {TARGET_VS_PYMODBUS}) "
        f"{verdict(ok_pymodbus)}"
    )
    if args.sim_floor:
        sim_floor = stats[floor.label].median_us
        sim_share = sim_floor / stats[pyser.label].median_us
        print(
            f"ratio sim-floor/pyserial-echo = {sim_share:.2f} (the simulator's share); "
            f"ratio ours/sim-floor = {ours_median / sim_floor:.2f} (the driver's overhead)"
        )
    ok = ok_pyserial and ok_pymodbus
    if args.aio:
        vs_threaded = stats[aio.label].median_us / ours_median
        ok_aio = vs_threaded <= TARGET_AIO_VS_THREADED
        print(
            f"ratio asyncio/threaded = {vs_threaded:.2f} (target <= {TARGET_AIO_VS_THREADED}) "
            f"{verdict(ok_aio)}"
        )
        ok = ok and ok_aio
    print(f"rtt: {verdict(ok)}")
    return 0 if ok or args.no_check else 1


class AsyncClientCase(RoundTripCase):
    """(f) ``AsyncDeviceClient.status()`` on its own loop, against a simulator of its own."""

    def __init__(self, loop_kind: str, model: str, speed: float | None, sim_args: list[str]) -> None:
        import asyncio

        from _pty_baselines import SimulatorProcess

        from iontodrive.aio import AsyncDeviceClient

        self.label = f"iontodrive asyncio status() ({loop_kind})"
        self.loop: asyncio.AbstractEventLoop
        if loop_kind == "uvloop":
            import uvloop

            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.sim = SimulatorProcess(model=model, speed=speed, extra_args=sim_args)
        try:
            self.client = self.loop.run_until_complete(AsyncDeviceClient.open(self.sim.port, telemetry_hz=0))
        except BaseException:
            self.sim.stop()
            raise

    def measure(self, n: int) -> list[int]:
        import time

        async def run() -> list[int]:
            clock, status, out = time.perf_counter_ns, self.client.status, []
            for _ in range(n):
                t0 = clock()
                await status()
                out.append(clock() - t0)
            return out

        return self.loop.run_until_complete(run())

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.client.aclose())
            self.loop.close()
        finally:
            self.sim.stop()


if __name__ == "__main__":
    sys.exit(main())
