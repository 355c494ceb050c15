"""Many devices in one process: 16 simulated stimulators on 16 ptys, each running a dose session with
100 Hz telemetry, driven by one asyncio process -- and the same with 16 threaded sessions, side by side.

The devices run in a child process (``--serve N``: N :class:`~firmware_sim.DeviceRunner` threads, one pty
each, speed 1), so the host CPU measured here is the driver's alone. Four runs, each on a fresh set of
devices:

* **asyncio sessions**: one loop, N ``AsyncStimulator.deliver()`` -- the session engine on
  :class:`~iontodrive.aio.LoopClient` (checks, records, progress, safety tier, the heartbeat gate);
* **threaded sessions**: N ``Stimulator.deliver()``, one thread each -- the same engine on the threaded
  ``DeviceClient``;
* **asyncio clients** / **threaded clients**: the bare clients, each sending one protocol ``Start`` and
  following its telemetry to DONE (what the clients themselves cost).

Every session: 1 mA, ramps of the model's 5 s minimum, a dose of ``--dose-uas``. Samples lost are the
client's own count of gaps in ``sample_no`` (sessions: plus any the record dropped); the dose is the
device's own count (a final ``GetStatus``, or the record's device-read dose). CPU is
``time.process_time()`` over wall time from the first start to the last end, in % of one core; threads
are ``threading.active_count()`` at the busiest moment.

Then the ``status()`` round trip, async against threaded, over one pty in the same run (``--rtt N``
requests each, alternating in rounds).

Targets (issue 16): zero samples lost, every session within 1 % of its dose, both asyncio runs under
25 % of one core, the async round trip within 1.3 x the threaded one. PASS/FAIL; exit 1 on FAIL unless
``--no-check``.

    .venv/bin/python bench/many_devices.py                # 16 devices, about 80 s
    .venv/bin/python bench/many_devices.py --devices 4 --rtt 300 --no-check
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGET_ASYNC_CPU_PERCENT = 25.0
TARGET_DOSE_ERROR = 0.01
TARGET_RTT_RATIO = 1.3
CURRENT_UA = 1000
RAMP_MS = 5000  # the simulator's minimum ramp (clinic-4)


# ------------------------------------------------------------------------------------ the devices


def serve(count: int, telemetry_hz: int) -> None:
    """Child mode: ``count`` simulated devices on ptys; prints ``PORT <path>`` for each, then ``READY``,
    and runs until stdin closes."""
    from firmware_sim import Device
    from firmware_sim.bridge_pty import PtyTransport
    from firmware_sim.runner import DeviceRunner

    runners = []
    for index in range(count):
        transport = PtyTransport()
        runners.append(
            (
                DeviceRunner(Device("clinic-4", seed=index, telemetry_hz=telemetry_hz), transport).start(),
                transport,
            )
        )
        sys.stdout.write(f"PORT {transport.path}\n")
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    sys.stdin.read()
    for runner, transport in runners:
        runner.stop()
        transport.close()


class Farm:
    def __init__(self, count: int, telemetry_hz: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(count), "--telemetry-hz", str(telemetry_hz)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.ports: list[str] = []
        for line in self.proc.stdout:
            if line.startswith("PORT "):
                self.ports.append(line.split(" ", 1)[1].strip())
            elif line.strip() == "READY":
                break
        if len(self.ports) != count:
            raise RuntimeError(f"the device farm started {len(self.ports)} of {count} devices")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -------------------------------------------------------------------------------------- sessions


@dataclass
class Result:
    """One device's session as the host saw it."""

    samples: int = 0
    lost: int = 0
    last_no: int | None = None
    charge_uas: int = 0
    target_uas: int = 0
    done: bool = False

    def sample(self, sample_no: int) -> None:
        if self.last_no is not None and sample_no > self.last_no + 1:
            self.lost += sample_no - self.last_no - 1
        self.last_no = sample_no
        self.samples += 1

    @property
    def dose_error(self) -> float:
        return abs(self.charge_uas - self.target_uas) / self.target_uas if self.target_uas else 1.0


@dataclass
class Run:
    name: str
    results: list[Result] = field(default_factory=list)
    cpu_percent: float = 0.0
    wall_s: float = 0.0
    threads: int = 0

    @property
    def lost(self) -> int:
        return sum(r.lost for r in self.results)

    @property
    def worst_dose_error(self) -> float:
        return max(r.dose_error for r in self.results)


def start_message(dose_uas: int) -> object:
    from iontodrive.protocol import Polarity, Start

    return Start(
        target_current_ua=CURRENT_UA,
        dose_uas=dose_uas,
        duration_ms=0,  # dose-based: the device ends the session at the dose
        ramp_up_ms=RAMP_MS,
        ramp_down_ms=RAMP_MS,
        polarity=Polarity.ANODE,
    )


class ThreadCounter:
    def __init__(self) -> None:
        self.peak = threading.active_count()

    def note(self) -> None:
        self.peak = max(self.peak, threading.active_count())


async def run_async(ports: list[str], dose_uas: int, telemetry_hz: int) -> Run:
    from iontodrive.aio import AsyncDeviceClient
    from iontodrive.protocol import DeviceState, Telemetry

    run = Run("asyncio clients")
    threads = ThreadCounter()
    clients = await asyncio.gather(*(AsyncDeviceClient.open(p, telemetry_hz=telemetry_hz) for p in ports))
    try:

        async def session(client: AsyncDeviceClient, result: Result) -> None:
            done = asyncio.Event()
            started = False

            def on_sample(sample: Telemetry) -> None:
                result.sample(sample.sample_no)
                if started and sample.state is DeviceState.DONE:
                    done.set()

            client.add_telemetry_listener(on_sample)
            await client.request(start_message(dose_uas))  # type: ignore[arg-type]
            started = True
            await done.wait()
            status = await client.status()
            result.charge_uas, result.target_uas, result.done = status.charge_uas, dose_uas, True
            threads.note()

        run.results = [Result() for _ in clients]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        sampler = asyncio.create_task(_note_threads(threads))
        await asyncio.gather(*(session(c, r) for c, r in zip(clients, run.results, strict=True)))
        sampler.cancel()
        run.wall_s = time.perf_counter() - wall0
        run.cpu_percent = 100.0 * (time.process_time() - cpu0) / run.wall_s
        run.threads = threads.peak
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return run


def session_prescription(dose_uas: int) -> Any:
    from iontodrive import Prescription

    return Prescription(
        current_ma=CURRENT_UA / 1000,
        dose_ma_min=dose_uas / 60_000,
        ramp_up_s=RAMP_MS / 1000,
        ramp_down_s=RAMP_MS / 1000,
        polarity="cathode",
        electrode_area_cm2=10.0,
    )


def note_session(result: Result, record: Any, lost: int, dose_uas: int) -> None:
    """Fill ``result`` from a session's record (the device's own figures) and the client's loss count."""
    result.lost = lost + record.telemetry_dropped
    result.samples = len(record.telemetry)
    result.charge_uas, result.target_uas = int(record.delivered_uas or 0), dose_uas
    result.done = bool(record.summary and record.summary["end_reason"] == "completed")


async def run_engine(ports: list[str], dose_uas: int, telemetry_hz: int, record_dir: Path) -> Run:
    """N sessions through ``AsyncStimulator`` on one loop (the session engine on ``LoopClient``): the dose
    is the record's (the device's count), samples lost the client's own count plus the record's drops."""
    from iontodrive.aio import AsyncStimulator

    run = Run("asyncio sessions")
    threads = ThreadCounter()
    prescription = session_prescription(dose_uas)
    stims = await asyncio.gather(*(AsyncStimulator.open(p) for p in ports))
    try:
        run.results = [Result() for _ in stims]

        async def session(index: int, stim: AsyncStimulator, result: Result) -> None:
            before = stim.stimulator.stats.telemetry_lost
            record = await stim.deliver(
                prescription, record_path=record_dir / f"{index}.jsonl", telemetry_hz=telemetry_hz
            )
            note_session(result, record, stim.stimulator.stats.telemetry_lost - before, dose_uas)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        sampler = asyncio.create_task(_note_threads(threads))
        await asyncio.gather(
            *(session(i, s, r) for i, (s, r) in enumerate(zip(stims, run.results, strict=True)))
        )
        sampler.cancel()
        run.wall_s = time.perf_counter() - wall0
        run.cpu_percent = 100.0 * (time.process_time() - cpu0) / run.wall_s
        run.threads = threads.peak
    finally:
        await asyncio.gather(*(s.aclose() for s in stims))
    return run


async def _note_threads(threads: ThreadCounter) -> None:
    while True:
        threads.note()
        await asyncio.sleep(0.5)


def run_in_threads(run: Run, jobs: list[Callable[[], None]]) -> None:
    """Run each job in a thread of its own; fill ``run``'s wall time, CPU and peak thread count."""
    threads = ThreadCounter()
    workers = [threading.Thread(target=job, name=f"session-{i}") for i, job in enumerate(jobs)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for worker in workers:
        worker.start()
    while any(w.is_alive() for w in workers):
        threads.note()
        time.sleep(0.5)
    run.wall_s = time.perf_counter() - wall0
    run.cpu_percent = 100.0 * (time.process_time() - cpu0) / run.wall_s
    run.threads = threads.peak


def run_threaded(ports: list[str], dose_uas: int, telemetry_hz: int) -> Run:
    from iontodrive.client import DeviceClient
    from iontodrive.protocol import DeviceState, Telemetry

    run = Run("threaded clients")
    clients = [DeviceClient.open(p, telemetry_hz=telemetry_hz) for p in ports]
    try:
        run.results = [Result() for _ in clients]

        def session(client: DeviceClient, result: Result) -> None:
            done = threading.Event()
            started = threading.Event()

            def on_sample(sample: Telemetry) -> None:
                result.sample(sample.sample_no)
                if started.is_set() and sample.state is DeviceState.DONE:
                    done.set()

            client.add_telemetry_listener(on_sample)
            client.request(start_message(dose_uas))  # type: ignore[arg-type]
            started.set()
            done.wait(120)
            status = client.status()
            result.charge_uas, result.target_uas, result.done = status.charge_uas, dose_uas, True

        run_in_threads(run, [partial(session, c, r) for c, r in zip(clients, run.results, strict=True)])
    finally:
        for client in clients:
            client.close()
    return run


def run_threaded_engine(ports: list[str], dose_uas: int, telemetry_hz: int, record_dir: Path) -> Run:
    """N sessions through ``Stimulator.deliver()``, one thread each (the engine on ``DeviceClient``)."""
    from iontodrive import Stimulator

    run = Run("threaded sessions")
    prescription = session_prescription(dose_uas)
    stims = [Stimulator.open(p) for p in ports]
    try:
        run.results = [Result() for _ in stims]

        def session(index: int, stim: Stimulator, result: Result) -> None:
            before = stim.stats.telemetry_lost
            record = stim.deliver(
                prescription, record_path=record_dir / f"t{index}.jsonl", telemetry_hz=telemetry_hz
            )
            note_session(result, record, stim.stats.telemetry_lost - before, dose_uas)

        pairs = enumerate(zip(stims, run.results, strict=True))
        run_in_threads(run, [partial(session, i, s, r) for i, (s, r) in pairs])
    finally:
        for stim in stims:
            stim.close()
    return run


# ------------------------------------------------------------------------------------ round trip


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """An event loop of ``kind`` (uvloop when asked for and installed)."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            print("uvloop is not installed: asyncio's own loop is used")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def round_trip(
    port_async: str, port_threaded: str, requests: int, rounds: int, loop_kind: str
) -> tuple[float, float]:
    """Median ``status()`` round trip (µs), asyncio and threaded, alternating in ``rounds``."""
    from iontodrive.aio import AsyncDeviceClient
    from iontodrive.client import DeviceClient

    async_times: list[float] = []
    threaded_times: list[float] = []
    per_round = max(1, requests // rounds)

    async def async_round(client: AsyncDeviceClient) -> None:
        for _ in range(per_round):
            t0 = time.perf_counter()
            await client.status()
            async_times.append(time.perf_counter() - t0)

    loop = new_loop(loop_kind)
    try:
        aclient = loop.run_until_complete(AsyncDeviceClient.open(port_async, telemetry_hz=0))
        with DeviceClient.open(port_threaded, telemetry_hz=0) as tclient:
            for _ in range(20):
                tclient.status()
            loop.run_until_complete(async_round(aclient))
            async_times.clear()
            for _ in range(rounds):
                loop.run_until_complete(async_round(aclient))
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    tclient.status()
                    threaded_times.append(time.perf_counter() - t0)
        loop.run_until_complete(aclient.aclose())
    finally:
        loop.close()
    return statistics.median(async_times) * 1e6, statistics.median(threaded_times) * 1e6


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--telemetry-hz", type=int, default=100)
    parser.add_argument(
        "--dose-uas", type=int, default=7000, help="dose per session, µA·s (7000: 5 s up, 2 s hold, 5 s down)"
    )
    parser.add_argument(
        "--rtt", type=int, default=2000, help="status() requests per client for the round trip"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop for the asyncio client (default uvloop, falling back to asyncio's own if missing)",
    )
    parser.add_argument("--no-check", action="store_true", help="always exit 0 (report only)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def describe(run: Run) -> str:
    return (
        f"{run.name:17s} {sum(r.done for r in run.results):2d}/{len(run.results)} done  "
        f"samples {sum(r.samples for r in run.results):6d}  lost {run.lost:3d}  "
        f"worst dose error {100 * run.worst_dose_error:5.2f} %  CPU {run.cpu_percent:5.1f} % of one core  "
        f"threads {run.threads:3d}  wall {run.wall_s:5.1f} s"
    )


def on_farm(args: argparse.Namespace, run: Callable[[list[str]], Run]) -> Run:
    """``run`` on a fresh set of devices."""
    farm = Farm(args.devices, args.telemetry_hz)
    try:
        return run(farm.ports)
    finally:
        farm.close()


def on_loop(args: argparse.Namespace, make: Callable[[], Awaitable[Run]]) -> Run:
    loop = new_loop(args.loop)
    try:
        return loop.run_until_complete(make())
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args.serve, args.telemetry_hz)
        return 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"many_devices: python {platform.python_version()}, {os.cpu_count()} cpus, load {load:.2f}; "
        f"{args.devices} devices at {args.telemetry_hz} Hz, dose {args.dose_uas} µA·s each; loop {args.loop}"
    )
    dose, hz = args.dose_uas, args.telemetry_hz
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp)
        async_sessions = on_farm(
            args, lambda ports: on_loop(args, lambda: run_engine(ports, dose, hz, records))
        )
        threaded_sessions = on_farm(args, lambda ports: run_threaded_engine(ports, dose, hz, records))
    async_clients = on_farm(args, lambda ports: on_loop(args, lambda: run_async(ports, dose, hz)))
    threaded_clients = on_farm(args, lambda ports: run_threaded(ports, dose, hz))
    runs = (async_sessions, threaded_sessions, async_clients, threaded_clients)
    for run in runs:
        print(describe(run))
    print("(sessions: the engine, records on; samples: the records' lines. clients: bare Start)")
    for a, t in ((async_sessions, threaded_sessions), (async_clients, threaded_clients)):
        print(
            f"ratio CPU {a.name}/{t.name} = {a.cpu_percent / max(t.cpu_percent, 1e-9):.2f}; "
            f"threads {a.threads} against {t.threads}"
        )
    farm = Farm(2, 0)
    try:
        async_us, threaded_us = round_trip(farm.ports[0], farm.ports[1], args.rtt, args.rounds, args.loop)
    finally:
        farm.close()
    rtt_ratio = async_us / threaded_us
    print(
        f"status() round trip: asyncio median {async_us:.1f} µs, threaded {threaded_us:.1f} µs, "
        f"ratio {rtt_ratio:.2f}"
    )
    checks = []
    for run in runs:
        checks.append((f"zero samples lost ({run.name})", run.lost == 0 and all(r.done for r in run.results)))
        checks.append((f"every dose within 1 % ({run.name})", run.worst_dose_error <= TARGET_DOSE_ERROR))
    for run in (async_sessions, async_clients):
        target = f"{run.name} CPU < {TARGET_ASYNC_CPU_PERCENT:g} % of one core"
        checks.append((target, run.cpu_percent < TARGET_ASYNC_CPU_PERCENT))
    checks.append((f"async round trip <= {TARGET_RTT_RATIO} x threaded", rtt_ratio <= TARGET_RTT_RATIO))
    failed = False
    for name, ok in checks:
        print(f"{name}: {'PASS' if ok else 'FAIL'}")
        failed |= not ok
    print(f"many_devices: {'FAIL' if failed else 'PASS'}")
    return 1 if failed and not args.no_check else 0


if __name__ == "__main__":
    sys.exit(main())
