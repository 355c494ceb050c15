"""Soak: back-to-back accelerated sessions against the simulator over a pty with link faults, for N minutes.

The simulator runs as a child process (``python -m firmware_sim --pty`` via
:class:`~iontodrive.cli.simproc.SimulatorProcess`, which dies with this process) with per-byte drop and
corruption and per-frame junk. This process opens a :class:`~iontodrive.Stimulator` on the pty, delivers
``--sessions-per-client`` sessions (alternately dose-based and time-based), closes it and opens a new one,
until ``--minutes`` of wall time have passed. Every ``deliver`` runs under a watchdog; a call still
running past its deadline is counted as hung (stacks dumped to stderr, then interrupted so the soak goes
on).

Reported: sessions run, failed sessions (an exception, an incomplete record, an end reason other than
``completed``, a dose off target by more than 1 %, or a record disagreeing with the device's dose),
requests sent, retries, timeouts, decode errors, hung calls, host RSS (mean of the first 2 minutes
against the mean of the last 2 minutes) and open file descriptors at start and end (``/proc/self/fd``).

Targets (issue 7): zero failed sessions, zero hung calls, memory and descriptors flat (RSS growth under
10 % first-to-last 2 min, judgement; descriptors at the end equal to those at the start).

    .venv/bin/python bench/soak.py                      # 30 minutes
    .venv/bin/python bench/soak.py --minutes 1 --report /tmp/soak.md --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from _reliability import CallWatchdog, open_fds, rss_kib

from iontodrive import Prescription, Stimulator
from iontodrive.cli.simproc import SimulatorProcess
from iontodrive.errors import IontodriveError, SessionInterrupted
from iontodrive.record import RecordFormatError, SessionRecord

RSS_WINDOW_S = 120.0
RSS_GROWTH_LIMIT = 0.10  # judgement: 10 % first-to-last window
DOSE_TOLERANCE = 0.01  # S11

DOSE = Prescription(
    current_ma=2.0, dose_ma_min=0.5, ramp_up_s=5, ramp_down_s=5, polarity="cathode", electrode_area_cm2=10
)
TIMED = Prescription(
    current_ma=1.5, duration_s=20, ramp_up_s=5, ramp_down_s=5, polarity="anode", electrode_area_cm2=10
)


@dataclass
class SoakResult:
    """Counters of one soak run (units in names; ``*_kib`` = KiB of resident memory)."""

    started_utc: str = ""
    minutes_planned: float = 0.0
    wall_s: float = 0.0
    sim_args: list[str] = field(default_factory=list)
    retries_setting: int = 0
    sessions: int = 0
    failed: int = 0
    hung: int = 0
    clients_opened: int = 0
    requests: int = 0
    retries: int = 0
    timeouts: int = 0
    decode_errors: int = 0
    telemetry_received: int = 0
    telemetry_lost: int = 0
    simulator_restarts: int = 0
    max_dose_error: float = 0.0
    rss_first_kib: float = 0.0
    rss_last_kib: float = 0.0
    rss_growth: float = 0.0
    rss_second_half_kib: int = 0  # RSS change over the second half of the run (a leak keeps growing)
    fds_start: int = 0
    fds_end: int = 0
    threads_start: int = 0
    threads_end: int = 0
    failures: list[str] = field(default_factory=list)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.failed == 0
            and self.hung == 0
            and self.rss_growth <= RSS_GROWTH_LIMIT
            and self.fds_end <= self.fds_start
            and self.threads_end <= self.threads_start
        )


def expected_uas(prescription: Prescription) -> float:
    """Charge the prescription should deliver (µA·s): the dose, or I·(T − ramps/2) for a timed session."""
    if prescription.dose_ma_min is not None:
        return prescription.dose_ma_min * 60_000
    assert prescription.duration_s is not None
    plateau = prescription.duration_s - (prescription.ramp_up_s + prescription.ramp_down_s) / 2
    return prescription.current_ma * 1000 * plateau


def check_record(path: Path, device_uas: int, prescription: Prescription) -> tuple[str | None, float]:
    """Problem with a finished session's record (None if fine) and its relative dose error."""
    try:
        record = SessionRecord.load(path)
    except (RecordFormatError, OSError) as exc:
        return f"record unreadable: {exc}", 0.0
    if not record.complete or record.summary is None:
        return "record incomplete", 0.0
    if record.summary.get("end_reason") != "completed":
        return f"end_reason {record.summary.get('end_reason')!r}", 0.0
    if record.delivered_uas != device_uas:
        return f"record says {record.delivered_uas} uAs, device {device_uas} uAs", 0.0
    want = expected_uas(prescription)
    error = abs(device_uas - want) / want
    if error > DOSE_TOLERANCE:
        return f"dose {device_uas} uAs, expected {want:.0f} uAs ({error:.2%})", error
    return None, error


def run(args: argparse.Namespace) -> SoakResult:
    result = SoakResult(
        started_utc=datetime.now(UTC).isoformat(timespec="seconds"), minutes_planned=args.minutes
    )
    sim_args = [
        "--pty",
        "--model",
        "clinic-4",
        "--speed",
        str(args.speed),
        "--seed",
        str(args.seed),
        "--drop-rate",
        str(args.drop_rate),
        "--corrupt-rate",
        str(args.corrupt_rate),
        "--junk-rate",
        str(args.junk_rate),
    ]
    result.sim_args = sim_args
    result.retries_setting = args.retries
    workdir = Path(tempfile.mkdtemp(prefix="iontodrive-soak-"))
    sim = SimulatorProcess(*sim_args, log_path=workdir / "sim.log")
    port = sim.start()
    started = time.monotonic()
    end_at = started + args.minutes * 60.0
    result.fds_start = open_fds()
    result.threads_start = threading.active_count()
    next_sample = started
    n = 0
    try:
        while time.monotonic() < end_at:
            if sim.proc is not None and sim.proc.poll() is not None:
                result.failures.append(f"simulator exited with {sim.proc.returncode}; restarted")
                result.simulator_restarts += 1
                sim.stop()
                sim = SimulatorProcess(*sim_args, log_path=workdir / "sim.log")
                port = sim.start()
            try:
                with Stimulator.open(port, retries=args.retries) as stim:
                    result.clients_opened += 1
                    try:
                        for _ in range(args.sessions_per_client):
                            if time.monotonic() >= end_at:
                                break
                            prescription = DOSE if n % 2 == 0 else TIMED
                            n += 1
                            record_path = workdir / f"s{n}.jsonl"
                            result.sessions += 1
                            problem: str | None
                            error = 0.0
                            deadline = args.session_deadline_s
                            with CallWatchdog(deadline, f"session {n}", interrupt=True) as dog:
                                try:
                                    stim.deliver(prescription, record_path=record_path)
                                    device_uas = stim.status().charge_uas
                                    problem, error = check_record(record_path, device_uas, prescription)
                                except SessionInterrupted as exc:
                                    if not dog.hung:  # Ctrl-C or SIGTERM: end the soak, ramped down
                                        result.failures.append(f"soak interrupted: {exc}")
                                        result.sessions -= 1
                                        record_path.unlink(missing_ok=True)
                                        end_at = 0.0
                                        break
                                    problem = f"{type(exc).__name__}: {exc}"
                                except (IontodriveError, KeyboardInterrupt) as exc:
                                    problem = f"{type(exc).__name__}: {exc}"
                            if dog.hung:
                                result.hung += 1
                                problem = problem or "hung"
                            result.max_dose_error = max(result.max_dose_error, error)
                            if problem is not None:
                                result.failed += 1
                                result.failures.append(f"session {n}: {problem}")
                                logging.error("session %d failed: %s", n, problem)
                            else:
                                record_path.unlink(missing_ok=True)
                            now = time.monotonic()
                            if now >= next_sample:
                                result.rss_samples.append((round(now - started, 1), rss_kib()))
                                next_sample = now + args.sample_s
                    finally:
                        s = stim.stats
                        result.requests += s.requests
                        result.retries += s.retries
                        result.timeouts += s.timeouts
                        result.decode_errors += s.decode_errors
                        result.telemetry_received += s.telemetry_received
                        result.telemetry_lost += s.telemetry_lost
            except IontodriveError as exc:
                result.failures.append(f"client open/close failed: {type(exc).__name__}: {exc}")
                result.failed += 1
                logging.error("client failed: %s", exc)
    finally:
        result.wall_s = round(time.monotonic() - started, 1)
        result.fds_end = open_fds()  # the simulator's pipes are still open, as they were at the start
        result.threads_end = threading.active_count()
        sim.stop()
    first = [kib for t, kib in result.rss_samples if t <= RSS_WINDOW_S]
    last = [kib for t, kib in result.rss_samples if t >= result.wall_s - RSS_WINDOW_S]
    if first and last:
        result.rss_first_kib = round(sum(first) / len(first), 1)
        result.rss_last_kib = round(sum(last) / len(last), 1)
        result.rss_growth = round(result.rss_last_kib / result.rss_first_kib - 1.0, 4)
    half = [(t, kib) for t, kib in result.rss_samples if t >= result.wall_s / 2]
    if len(half) >= 2:
        result.rss_second_half_kib = half[-1][1] - half[0][1]
    if result.failed == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        result.failures.append(f"records of failed sessions kept in {workdir}")
    return result


def markdown(result: SoakResult) -> str:
    rows = [
        ("wall time", f"{result.wall_s / 60:.1f} min (planned {result.minutes_planned:g})"),
        ("sessions run", f"{result.sessions}"),
        ("failed sessions", f"{result.failed}"),
        ("hung calls", f"{result.hung}"),
        ("clients opened and closed", f"{result.clients_opened}"),
        ("requests sent (incl. retries)", f"{result.requests}"),
        ("retries", f"{result.retries}"),
        ("request timeouts (all retries used)", f"{result.timeouts}"),
        ("frames dropped by the decoder", f"{result.decode_errors}"),
        ("telemetry received / lost", f"{result.telemetry_received} / {result.telemetry_lost}"),
        ("largest dose error", f"{result.max_dose_error:.3%}"),
        (
            "host RSS, mean first 2 min → last 2 min",
            f"{result.rss_first_kib / 1024:.1f} → {result.rss_last_kib / 1024:.1f} MiB "
            f"({result.rss_growth:+.1%})",
        ),
        ("host RSS change over the second half", f"{result.rss_second_half_kib:+d} KiB"),
        ("open fds at start → end", f"{result.fds_start} → {result.fds_end}"),
        ("threads at start → end", f"{result.threads_start} → {result.threads_end}"),
        ("simulator restarts", f"{result.simulator_restarts}"),
    ]
    lines = [
        f"Soak {result.started_utc}: `python -m firmware_sim {' '.join(result.sim_args)}`; "
        f"host `Stimulator.open(port, retries={result.retries_setting})`",
        "",
        "| measure | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        "Pass criteria: zero failed sessions, zero hung calls, RSS growth ≤ "
        f"{RSS_GROWTH_LIMIT:.0%}, fds and threads at end ≤ at start.",
        f"Verdict: {'PASS' if result.passed else 'FAIL'}",
    ]
    if result.failures:
        lines += ["", "Failures:", *(f"- {f}" for f in result.failures[:50])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="wall minutes to run (default 30)")
    p.add_argument("--speed", type=float, default=50.0, help="simulator speed factor (default 50)")
    p.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    p.add_argument("--drop-rate", type=float, default=0.0005, help="per-byte drop probability")
    p.add_argument("--corrupt-rate", type=float, default=0.0005, help="per-byte corruption probability")
    p.add_argument("--junk-rate", type=float, default=0.01, help="junk probability per frame")
    p.add_argument(
        "--retries", type=int, default=5, help="request re-sends before a timeout (default 5; driver: 3)"
    )
    p.add_argument("--sessions-per-client", type=int, default=10, help="sessions before reconnecting")
    p.add_argument("--session-deadline-s", type=float, default=60.0, help="hung-call deadline (wall s)")
    p.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling period (wall s)")
    p.add_argument("--report", type=Path, help="also write the markdown report here")
    p.add_argument("--json", type=Path, help="write the JSON result here")
    args = p.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60:
        p.error(f"--minutes = {args.minutes!r} is out of range: must be in (0, 1440]")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"soak: {args.minutes:g} min on {platform.node()} (python {platform.python_version()})", flush=True)
    result = run(args)
    text = markdown(result)
    print(text)
    if args.report is not None:
        args.report.write_text(text, encoding="utf-8")
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=1) + "\n", encoding="utf-8")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
