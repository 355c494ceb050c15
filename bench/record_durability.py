"""The cost of durable records: fsync'd writers against the same writer without fsync, in the same run.

Measures, for ``RecordWriter(durable=True)`` (the default: header, events, notes and summary fsync'd,
the directory fsync'd on creation, telemetry fsync'd at most once a second) and ``durable=False`` (the
same lines, no fsync), on the file system of ``--dir`` (default: a temporary directory under the user's
records directory's file system, i.e. where records really go):

* **per session**: create the record (exclusive create, directory fsync, header fsync), a ``contact`` and a
  ``started`` note, 30 events, a summary, ``close()``; wall time per session;
* **per event**: the time from ``event()`` until the line is on disk (``flush()``), one event at a time,
  and the caller's own cost of an ``event()`` call (what the session's thread pays);
* **telemetry at 5,000 samples/s** for ``--seconds`` (paced in wall time, as the device sends them): the
  caller's cost per ``telemetry()`` call, samples dropped (must be 0), process CPU as % of one core, and the
  fsyncs made. The target (issue 4's bench/telemetry.py) is zero loss under half a core *for the whole
  client*; the writer's share is what this prints.

Prints a table and the durable/plain ratios. ``--quick`` runs a shorter version.

    .venv/bin/python bench/record_durability.py
    .venv/bin/python bench/record_durability.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from iontodrive.protocol import DeviceState, Event, EventCode, Polarity, StatusFlags, Telemetry
from iontodrive.record import RecordWriter, SessionRecord, default_record_dir

RATE_HZ = 5000
PRESCRIPTION = {"current_ma": 4.0, "dose_ma_min": 40.0, "polarity": "cathode"}
IDENTITY = {"model": "clinic-4", "serial_number": 17}


def sample(no: int) -> Telemetry:
    return Telemetry(
        no, no // 5, DeviceState.HOLD, StatusFlags.OUTPUT_ON, Polarity.CATHODE, 4000, 3998, 20_000, 5000, no
    )


def event(no: int) -> Event:
    return Event(no, no, EventCode.SETPOINT_CHANGED, DeviceState.ADJUST, 4000 - no)


class FsyncCounter:
    """Counts os.fsync calls (the writer calls os.fsync through the os module)."""

    def __init__(self) -> None:
        self.count = 0
        self._real = os.fsync

    def __enter__(self) -> FsyncCounter:
        def counting(fd: int) -> None:
            self.count += 1
            self._real(fd)

        os.fsync = counting
        return self

    def __exit__(self, *exc: object) -> None:
        os.fsync = self._real


def new_writer(path: Path, durable: bool) -> RecordWriter:
    return RecordWriter(
        path, prescription=PRESCRIPTION, identity=IDENTITY, labels={"patient": "P-1"}, durable=durable
    )


def per_session_ms(directory: Path, durable: bool, sessions: int) -> float:
    times = []
    for index in range(sessions):
        start = time.perf_counter()
        writer = new_writer(directory / f"s-{durable}-{index}.jsonl", durable)
        writer.note("contact", impedance_ohm=4200)
        writer.note("started", session_id=index, start={"polarity": "CATHODE"})
        for no in range(1, 31):
            writer.event(event(no))
        writer.summary(delivered_uas=2_400_000, end_reason="completed")
        writer.close()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@dataclass
class EventCost:
    to_disk_ms: float  # event() until flush() returns (on disk)
    call_us: float  # the caller's cost of event()


def per_event(directory: Path, durable: bool, events: int) -> EventCost:
    writer = new_writer(directory / f"e-{durable}.jsonl", durable)
    to_disk, calls = [], []
    for no in range(1, events + 1):
        start = time.perf_counter()
        writer.event(event(no))
        queued = time.perf_counter()
        writer.flush(10)
        to_disk.append(time.perf_counter() - start)
        calls.append(queued - start)
    writer.summary(delivered_uas=0, end_reason="stopped")
    writer.close()
    return EventCost(1000 * statistics.median(to_disk), 1e6 * statistics.median(calls))


@dataclass
class TelemetryCost:
    call_us: float
    dropped: int
    cpu_percent: float
    fsyncs: int
    lines: int


def telemetry_run(directory: Path, durable: bool, seconds: float) -> TelemetryCost:
    path = directory / f"t-{durable}.jsonl"
    with FsyncCounter() as fsyncs:
        writer = new_writer(path, durable)
        total = int(RATE_HZ * seconds)
        spent = 0.0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for no in range(total):
            due = wall0 + no / RATE_HZ
            while time.perf_counter() < due:  # pace as the device does; sleeping in 1 ms steps
                time.sleep(min(0.001, max(0.0, due - time.perf_counter())))
            start = time.perf_counter()
            writer.telemetry(sample(no))
            spent += time.perf_counter() - start
            if no % RATE_HZ == 0:
                writer.event(event(no + 1))  # an event a second, fsync'd at once
        writer.summary(delivered_uas=total, end_reason="completed")
        writer.close()
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
    record = SessionRecord.load(path)
    assert len(record.telemetry) + writer.telemetry_overflow == total
    return TelemetryCost(
        call_us=1e6 * spent / total,
        dropped=writer.telemetry_overflow,
        cpu_percent=100 * cpu / wall,
        fsyncs=fsyncs.count,
        lines=len(record.telemetry),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="where to write (default: beside the records directory)")
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="10 sessions, 100 events, 3 s of telemetry")
    parser.add_argument("--no-check", action="store_true", help="always exit 0 (report only)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.events = 10, 100
        args.seconds = min(args.seconds, 3.0)
    base = args.dir or default_record_dir().parent
    with tempfile.TemporaryDirectory(prefix="bench-records-", dir=base) as tmp:
        directory = Path(tmp)
        print(f"record durability on {directory} ({sys.platform}, {os.cpu_count()} cores)")
        session = {d: per_session_ms(directory, d, args.sessions) for d in (False, True)}
        events = {d: per_event(directory, d, args.events) for d in (False, True)}
        telemetry = {d: telemetry_run(directory, d, args.seconds) for d in (False, True)}

    def row(name: str, plain: float, durable: float, unit: str) -> str:
        ratio = durable / plain if plain else float("inf")
        return f"{name:<38} {plain:>10.3f} {durable:>10.3f} {unit:<6} {ratio:>7.1f}x"

    print(f"{'':<38} {'no fsync':>10} {'durable':>10} {'':<6} {'ratio':>8}")
    print(row("session (create..close), median", session[False], session[True], "ms"))
    print(row("event until on disk, median", events[False].to_disk_ms, events[True].to_disk_ms, "ms"))
    print(row("event() call in the caller, median", events[False].call_us, events[True].call_us, "us"))
    plain, durable = telemetry[False], telemetry[True]
    print(row("telemetry() call in the caller, mean", plain.call_us, durable.call_us, "us"))
    print(row("process CPU at 5,000 samples/s", plain.cpu_percent, durable.cpu_percent, "%"))
    for fsynced in (False, True):
        t = telemetry[fsynced]
        kind = "durable" if fsynced else "no fsync"
        print(
            f"telemetry {kind:<8}: {t.lines} lines in {args.seconds:g} s, dropped {t.dropped}, "
            f"{t.fsyncs} fsyncs ({t.fsyncs / args.seconds:.1f}/s)"
        )
    ok = all(t.dropped == 0 for t in telemetry.values())
    print("PASS: no telemetry dropped at 5,000 samples/s" if ok else "FAIL: telemetry dropped")
    return 0 if ok or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
