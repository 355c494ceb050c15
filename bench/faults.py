"""Fault campaign: session scenarios × faults, each run checked against the simulator's ground truth.

Scenarios (``SCENARIOS``): dose-based and time-based sessions on ``clinic-4`` and ``hydro-30``, DC and
pulsed DC (hydro-30). Faults (``FAULTS``):

==================  ==================================================================================
``none``            control run, no fault
``lift``            electrode lift at a random time (ramp up, hold or ramp down; chosen per run)
``lift_return``     lift, then contact returns 0.5-4 s later (current must not come back by itself)
``impedance_rise``  impedance × 8 over 20 s: climbs to compliance (S5: hold, extend, still dose)
``short``           20 Ω short across the electrodes
``overcurrent``     regulator fault, output 1.3 × the command (S9 trip)
``power_cycle``     the device loses power mid-session (``Device.power_cycle()``, in-process)
``host_sigkill``    a host process killed with SIGKILL mid-session; a new host recovers the record
``host_sigstop``    a host process stopped with SIGSTOP (hangs, port still open), continued later
``port_reopen``     the host's port closed under the client mid-session, then reopened and recovered
``drop_P``          each byte lost with probability P (both directions)
``corrupt_P``       each byte corrupted with probability P
``junk_P``          junk bytes between frames with probability P per frame
``latency_MS``      MS ms of added delivery delay
``mixed``           drop 1e-3 + corrupt 1e-3 + junk 0.1 + 10 ms latency + split reads
==================  ==================================================================================

Hostile-device cases (issue 13; ``HOSTILE``): the in-process simulator wrapped so that it lies or
misbehaves on the wire while its firmware and plant stay the ground truth:

====================  ================================================================================
``hostile_liar``      Identify answered "clinic-4, 1 A, unbounded slew, no minimum ramp": must be
                      refused before any Start (S18), no output at all
``hostile_mute``      no replies for 2.6 s during the hold while telemetry keeps flowing
``hostile_mute_start``no replies for 2.6 s from the Start's ack on (finding 1; session engine)
``hostile_self_raise``telemetry reports set-point = measured = 3 x the prescription (the true output is
                      normal): the driver must abort (finding 2; session engine)
``hostile_deaf``      Abort and Stop acked but ignored, with a 1.3 x regulator over-current (the
                      firmware's own trip, S9, must still make it safe)
``hostile_flood``     20,000 telemetry samples and 20,000 duplicate events in one burst
``hostile_jump``      an event numbered 4,000,000,000 mid-session (the ring has none of the gap)
``hostile_wrong_ack`` every Ack names Heartbeat instead of the request it answers (finding 6)
====================  ================================================================================

In-process runs use ``sim://`` on the wall clock at ``--speed`` (default 100; latency faults and ``mixed``
at ``--link-speed``, default 20, because at speed 100 the simulator cannot release delayed bytes fast
enough on a 2-core machine); the host-process faults use ``python -m firmware_sim --pty`` through
:class:`~iontodrive.cli.simproc.SimulatorProcess` at ``--process-speed`` (default 10), because the device
watchdog (S10) runs on link (wall) time; ``hostile_self_raise`` runs in-process at ``--process-speed`` too,
because there the host's own reaction is timed in device seconds and the speed multiplies the host's
wall-clock delays.

Every run is checked (pass criteria, also printed with the table):

1. **slew** -- the largest |dI/dt| of the true output, outside physical breaks (open circuit, compliance,
   the instant of a power cut) is at most 1.05 × the model's slew limit (S2). For pulsed DC the check is
   on the set-point envelope (the pulse edges are the waveform, not a step).
2. **fault → safe** -- for faults that must stop the output (lift, short, over-current, power loss, host
   loss), the time from the fault to the moment from which output *and* set-point stay below 5 % of the
   prescribed current: ≤ 1 s of device time for plant faults (S6), ≤ 0.05 s for a power cut, and ≤ the
   watchdog + the ramp-down time + 1 s of wall time for host and link loss (S10).
3. **ends at zero** -- the true output is below 1 µA at the end of the trace.
4. **no return** -- once safe after a stopping fault, output never again exceeds 5 % of the set-point.
5. **dose** -- a run whose session completed delivered its planned charge within 1 % (S11); a
   dose-based session also under a resistance limit (S5).
6. **record** -- the record is readable and complete (has a summary), its end reason is one expected for
   the fault (``completed`` is also right when the fault came after the output was off for good, or, for
   a host fault, when the session ended before the device's watchdog fired), and its delivered charge
   agrees with the device's (trace) within max(2 µA·s, 0.1 %), or, where the host could not learn the
   final figure (power cut), within the charge of 0.5 s at the set-point. Under link faults a session
   that never started (a typed error before ``Start`` took effect, no output in the trace) leaves no
   record and passes.
7. **no hang** -- every blocking call (open, start, wait, recover, close, the host process) returns
   before its deadline (:class:`CallWatchdog`).

Each run has a seed ``SEED = rep * 10000 + scenario_index * 100 + fault_index``: the seed alone replays the
run (``--replay SEED``). Results: a markdown table (per scenario × fault: runs, passed, worst slew ratio,
worst fault → safe time, worst dose error, records OK, hangs) and a JSON file with every run.

    .venv/bin/python bench/faults.py                        # full campaign, 5 reps (>= 500 runs)
    .venv/bin/python bench/faults.py --reps 1 --faults lift,short --scenarios clinic-dose
    .venv/bin/python bench/faults.py --replay 30412         # one run, verbose
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import logging
import multiprocessing
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faults_runtime  # issue 19 (h19): run-time and replug cases
import numpy as np
from _reliability import CallWatchdog, trace_tools

import firmware_sim
from firmware_sim import MODELS, ContactReturn, ElectrodeLift, ImpedanceRise, OverCurrent, ShortCircuit
from iontodrive import Prescription, Stimulator
from iontodrive.cli.simproc import SimulatorProcess
from iontodrive.errors import IontodriveError
from iontodrive.record import RecordFormatError, SessionRecord

log = logging.getLogger("bench.faults")

SLEW_TOLERANCE = 1.05
SAFE_FRACTION = 0.05
PLANT_SAFE_S = 1.0  # device s (S6)
POWER_SAFE_S = 0.05  # device s
WATCHDOG_MARGIN_S = 1.0  # wall s
DOSE_TOLERANCE = 0.01
RECORD_TOLERANCE = 0.001
ZERO_UA = 1.0
TRACE_RATE_HZ = 250.0
WATCHDOG_MS = 2000

# ---------------------------------------------------------------------------------------------- matrix


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    prescription: Prescription


def _p(current_ma: float, area_cm2: float, **kw: Any) -> Prescription:
    return Prescription(current_ma, ramp_up_s=5, ramp_down_s=5, electrode_area_cm2=area_cm2, **kw)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("clinic-dose", "clinic-4", _p(2.0, 10, dose_ma_min=1.0, polarity="cathode")),
    Scenario("clinic-time", "clinic-4", _p(2.0, 10, duration_s=40, polarity="anode")),
    Scenario("hydro-dose", "hydro-30", _p(15.0, 100, dose_ma_min=10.0, polarity="anode")),
    Scenario("hydro-time", "hydro-30", _p(15.0, 100, duration_s=40, polarity="anode")),
    Scenario(
        "hydro-pulsed",
        "hydro-30",
        _p(15.0, 100, dose_ma_min=5.0, polarity="anode", waveform="pulsed_dc", pulse_frequency_hz=100),
    ),
)


@dataclass(frozen=True)
class Fault:
    """One fault kind. ``link``: sim:// link options; ``process``: needs a host or simulator process."""

    name: str
    stops_output: bool = False
    process: bool = False
    link: tuple[tuple[str, float], ...] = ()
    expected: tuple[str, ...] = ("completed",)
    latency: bool = False  # run at --link-speed: a simulator at speed 100 cannot keep up with delayed bytes
    # the *host's* reaction is what the fault-to-safe time measures (a driver-side check): run at
    # --process-speed like the host-process faults, since the speed multiplies every wall-clock delay of
    # the host (a 5 ms GIL hand-off or a descheduled thread on a loaded machine) into device time: 0.5
    # device s at speed 100, 0.1 at 20, 0.05 at 10 (at 20, one run in about 100 saw 30 ms: 1.009 device s)
    host_timed: bool = False
    hostile: str = ""  # a hostile-device behaviour from HOSTILE, wrapped around the in-process simulator
    refuse_with: str = ""  # the right outcome is this typed error before any Start (no output, no record)


_LINK_RATES = {
    "drop_rate": (1e-4, 1e-3, 3e-3),
    "corrupt_rate": (1e-4, 1e-3, 3e-3),
    "junk_rate": (0.05, 0.2, 0.5),
    "latency_ms": (5.0, 20.0, 50.0),
}


def _link_faults() -> list[Fault]:
    out = []
    for option, rates in _LINK_RATES.items():
        short = option.split("_")[0]
        for rate in rates:
            out.append(Fault(f"{short}_{rate:g}", link=((option, rate),), latency=option == "latency_ms"))
    out.append(
        Fault(
            "mixed",
            link=(
                ("drop_rate", 1e-3),
                ("corrupt_rate", 1e-3),
                ("junk_rate", 0.1),
                ("latency_ms", 10.0),
                ("split", 1),
            ),
            latency=True,
        )
    )
    return out


LIFT_END = ("electrode_lift", "completed")  # a lift in the last moments of ramp-down may come after DONE
FAULTS: tuple[Fault, ...] = (
    Fault("none"),
    Fault("lift", stops_output=True, expected=LIFT_END),
    Fault("lift_return", stops_output=True, expected=LIFT_END),
    Fault("impedance_rise", expected=("completed",)),
    Fault("short", stops_output=True, expected=("fault", "electrode_lift", "completed")),
    # the device's trip (S9), or the driver's own over-current check aborting first
    Fault("overcurrent", stops_output=True, expected=("fault", "aborted", "completed")),
    Fault("power_cycle", stops_output=True, expected=("fault",)),
    Fault("host_sigkill", stops_output=True, process=True, expected=("recovered_after_host_loss",)),
    Fault(
        "host_sigstop", stops_output=True, process=True, expected=("link_lost", "recovered_after_host_loss")
    ),
    Fault("port_reopen", stops_output=True, process=True, expected=("recovered_after_host_loss",)),
    *_link_faults(),
    # hostile devices (issue 13): see HOSTILE and the module docstring
    Fault("hostile_liar", hostile="liar", refuse_with="ContradictoryIdentityError"),
    Fault("hostile_mute", hostile="mute", expected=("completed", "link_lost", "aborted", "stopped")),
    Fault(
        "hostile_mute_start", hostile="mute_start", expected=("completed", "link_lost", "aborted", "stopped")
    ),
    Fault(
        "hostile_self_raise",
        hostile="self_raise",
        stops_output=True,
        expected=("aborted", "fault"),
        host_timed=True,
    ),
    Fault("hostile_deaf", hostile="deaf", stops_output=True, expected=("fault", "aborted")),
    Fault("hostile_flood", hostile="flood"),
    Fault("hostile_jump", hostile="jump"),
    Fault("hostile_wrong_ack", hostile="wrong_ack", refuse_with="RemoteProtocolError"),
)
# --- issue 19 (h19): faults injected at run time through the control API, and a USB replug -------------
FAULTS = (*FAULTS, *faults_runtime.runtime_faults(Fault, LIFT_END))
# --- end of issue 19's hunk ----------------------------------------------------------------------------


def run_seed(rep: int, scenario: int, fault: int) -> int:
    return rep * 10_000 + scenario * 100 + fault


def decode_seed(seed: int) -> tuple[int, Scenario, Fault]:
    rep, rest = divmod(seed, 10_000)
    s, f = divmod(rest, 100)
    if not (0 <= s < len(SCENARIOS) and 0 <= f < len(FAULTS)):
        raise ValueError(f"seed = {seed} does not name a run: scenario {s}, fault {f} out of range")
    return rep, SCENARIOS[s], FAULTS[f]


# --------------------------------------------------------------------------------------------- results


@dataclass
class RunResult:
    seed: int
    scenario: str
    fault: str
    passed: bool = False
    problems: list[str] = field(default_factory=list)
    outcome: str = ""  # record end_reason, or "incomplete"/"unreadable"
    error: str = ""  # exception raised to the host, if any
    fault_at_s: float | None = None  # device time of the fault
    fault_state: str = ""  # device state when the fault began
    slew_ratio: float = 0.0
    safe_s: float | None = None  # fault -> safe, device s (plant) or wall s (host/link loss)
    safe_unit: str = ""
    safe_limit_s: float | None = None
    ended_at_zero: bool = False
    dose_error: float | None = None
    record_ok: bool = False
    record_uas: int | None = None
    device_uas: float | None = None
    hung: bool = False
    wall_s: float = 0.0
    trace_rows: int = 0
    kept: str = ""  # directory kept for a failed run


# ------------------------------------------------------------------------------------------ the runs


class RunContext:
    """Per-run state: seed, RNG, scenario, fault, work directory, deadlines and hang bookkeeping."""

    def __init__(
        self, seed: int, workdir: Path, speed: float, process_speed: float, link_speed: float = 20.0
    ) -> None:
        self.seed = seed
        self.rep, self.scenario, self.fault = decode_seed(seed)
        self.rng = random.Random(seed)
        self.workdir = workdir
        self.trace_path = workdir / "trace.csv"
        self.record_path = workdir / "record.jsonl"
        host_bound = self.fault.process or self.fault.host_timed
        self.speed = process_speed if host_bound else link_speed if self.fault.latency else speed
        self.identity = MODELS[self.scenario.model].identity()
        self.plan = self.scenario.prescription.expected_plan(self.identity)
        self.result = RunResult(seed, self.scenario.name, self.fault.name)
        self.hung = False
        self.session_deadline_s = (self.plan.total_s + 30.0) / self.speed * 3.0 + 15.0

    def guard(self, what: str, deadline_s: float | None = None) -> CallWatchdog:
        return CallWatchdog(deadline_s or self.session_deadline_s, f"run {self.seed}: {what}", interrupt=True)

    def note_hang(self, dog: CallWatchdog) -> None:
        if dog.hung:
            self.hung = True
            self.result.problems.append(f"hung: {dog.what}")

    def fault_offset_s(self) -> tuple[float, str]:
        """A fault time relative to the start request (device s) in a phase chosen by the seed."""
        p = self.plan
        phase = ("ramp_up", "hold", "ramp_down")[self.rep % 3] if self.rep >= 0 else "hold"
        lead = 0.3  # the device's contact check before the ramp starts (device s, about)
        if phase == "ramp_up":
            return lead + self.rng.uniform(0.2, p.ramp_up_s - 0.2), phase
        if phase == "hold":
            return lead + p.ramp_up_s + self.rng.uniform(0.5, max(0.6, p.hold_s - 0.5)), phase
        return lead + p.ramp_down_start_s + self.rng.uniform(0.2, p.ramp_down_s - 0.5), phase


def _session_start_s(device: Any) -> float:
    """The session's start (its SESSION_STARTED) in simulator time: fault times count from the device's
    own start, not from when ``start()`` returned (a loaded host returned late, and a ramp-down fault
    then landed after the session's end: seed 20335 once). Call with the runner's lock held."""
    from iontodrive.protocol import EventCode

    now_s = device.session_time_s
    clock_ms = device.status().device_time_ms
    started = [e.device_time_ms for e in device.events if e.code is EventCode.SESSION_STARTED]
    return float(now_s - (clock_ms - started[-1]) / 1000.0 if started else now_s)


def _sim_url(ctx: RunContext) -> str:
    opts = [
        f"speed={ctx.speed:g}",
        f"seed={ctx.seed}",
        f"trace={ctx.trace_path}",
        f"trace_rate={TRACE_RATE_HZ:g}",
    ]
    opts += [f"{k}={v:g}" for k, v in ctx.fault.link]
    return f"sim://{ctx.scenario.model}?{'&'.join(opts)}"


HOSTILE_LIE = {"max_current_ua": 1_000_000, "slew_limit_ua_per_s": 0xFFFF_FFFF, "min_ramp_ms": 0}
HOSTILE_MUTE_S = 2.6  # wall s: the window
HOSTILE_FLOOD = 20_000


class Hostile:
    """Wraps an in-process simulator so that it misbehaves on the wire (``Fault.hostile``); the firmware
    and plant behind it, and so the trace, stay the truth. Hooks the device's request handler
    (``_on_frame``), its output (``_send``) and its outbox flush (telemetry and events)."""

    def __init__(self, ctx: RunContext, device: Any, lock: Any, facts: dict[str, Any]) -> None:
        self.kind = ctx.fault.hostile
        self.ctx, self.device, self.lock, self.facts = ctx, device, lock, facts
        self.muted_until = 0.0
        self.raise_from: float | None = None
        self._in_request = False
        self._on_frame = device._on_frame
        self._send = device._send
        self._flush = device._flush_outbox

    def install(self, stim: Stimulator) -> None:
        from iontodrive.protocol import Abort, Ack, Identify, Start, Stop, encode

        device, kind = self.device, self.kind

        def on_frame(frame: Any) -> None:
            message = frame.message
            if kind == "liar" and isinstance(message, Identify):
                lie = dataclasses.replace(device.model.identity(), **HOSTILE_LIE)
                self._send(encode(lie, frame.seq))
                return
            if kind == "deaf" and isinstance(message, (Abort, Stop)):
                device.firmware.feed_watchdog()
                self._send(encode(Ack(int(message.TYPE)), frame.seq))
                return
            self._in_request = True
            try:
                self._on_frame(frame)
            finally:
                self._in_request = False
            if kind == "mute_start" and isinstance(message, Start):
                self.muted_until = time.monotonic() + HOSTILE_MUTE_S
                self.facts.setdefault("fault_at_s", device.session_time_s)

        def send(data: bytes) -> None:
            if self._in_request and time.monotonic() < self.muted_until:
                return  # the reply (and what it flushed) never leaves
            if kind == "wrong_ack" and self._in_request:
                data = self._wrong_acks(data)
            self._send(data)

        def flush() -> None:
            if self.raise_from is not None:
                self._raise_telemetry()
            self._flush()

        device._on_frame, device._send, device._flush_outbox = on_frame, send, flush
        if kind == "liar":
            stim.identity = stim.identify()  # (the wrapper exists once the in-process sim is open)

    def _wrong_acks(self, data: bytes) -> bytes:
        from iontodrive.protocol import Ack, Decoder, Frame, Heartbeat, encode

        out = []
        for item in Decoder().feed(data):
            if isinstance(item, Frame):
                msg = item.message
                if isinstance(msg, Ack) and msg.request_type != int(Heartbeat.TYPE):
                    msg = Ack(int(Heartbeat.TYPE))
                out.append(encode(msg, item.seq or None))
        return b"".join(out)

    def _raise_telemetry(self) -> None:
        from iontodrive.protocol import Telemetry

        fw = self.device.firmware
        claim = round(3 * self.ctx.scenario.prescription.current_ma * 1000)
        fw.outbox = [
            dataclasses.replace(m, setpoint_ua=claim, measured_ua=claim) if isinstance(m, Telemetry) else m
            for m in fw.outbox
        ]

    def schedule(self, at_s: float, offset_s: float) -> threading.Timer | None:
        """Start the misbehaviour at device time ``at_s`` (``offset_s`` after the start request)."""
        from iontodrive.protocol import DeviceState, Event, EventCode, Telemetry, encode

        device, kind = self.device, self.kind
        if kind == "deaf":
            with self.lock:
                self.facts["fault_at_s"] = device.inject(OverCurrent(at_s=at_s)).at_s
            return None
        if kind not in ("mute", "self_raise", "flood", "jump"):
            return None

        def begin() -> None:
            with self.lock:
                self.facts["fault_at_s"] = device.session_time_s
                if kind == "mute":
                    self.muted_until = time.monotonic() + HOSTILE_MUTE_S
                elif kind == "self_raise":
                    self.raise_from = device.session_time_s
                elif kind == "flood":
                    ring = device.firmware.ring.ring  # (firmware_sim.event_ring.EventRing)
                    last = ring[-1] if ring else None
                    sample = Telemetry(0, 0, DeviceState.HOLD, 0, 0, 0, 0, 0, 0, 0)  # type: ignore[arg-type]
                    burst = [encode(sample)] * HOSTILE_FLOOD
                    if last is not None:
                        burst += [encode(last)] * HOSTILE_FLOOD
                    self._send(b"".join(burst))
                elif kind == "jump":
                    jump = Event(4_000_000_000, 0, EventCode.TELEMETRY_CHANGED, DeviceState.HOLD, 0, False)
                    self._send(encode(jump))

        timer = threading.Timer(offset_s / self.ctx.speed, begin)
        timer.start()
        return timer


def run_in_process(ctx: RunContext) -> dict[str, Any]:
    """Plant faults, power cycle, link faults and the control run, against an in-process ``sim://``."""
    firmware_sim.register_url_handler()
    facts: dict[str, Any] = {}
    fault = ctx.fault.name
    with ctx.guard("open") as dog:
        try:
            stim = Stimulator.open(_sim_url(ctx))
        except IontodriveError as exc:
            # e.g. Identify (81 bytes) lost four times running on a link dropping 0.3 % of its bytes: a
            # typed error before anything was sent that could start a session (judged as not started)
            facts["error"] = f"{type(exc).__name__}: {exc}"
            return facts
    ctx.note_hang(dog)
    port = stim.link.port
    device, lock = port.device, port.runner.lock
    timer: threading.Timer | None = None
    hostile = Hostile(ctx, device, lock, facts) if ctx.fault.hostile else None
    try:
        with ctx.guard("session") as dog:
            try:
                if hostile is not None:
                    hostile.install(stim)
                session = stim.start(ctx.scenario.prescription, record_path=ctx.record_path)
                with lock:
                    t0 = _session_start_s(device)
                offset, phase = ctx.fault_offset_s()
                facts["phase"] = phase
                if hostile is not None:
                    timer = hostile.schedule(t0 + offset, offset)
                if fault in ("lift", "lift_return", "impedance_rise", "short", "overcurrent"):
                    at = t0 + offset
                    make = {
                        "lift": ElectrodeLift,
                        "lift_return": ElectrodeLift,
                        "impedance_rise": ImpedanceRise,
                        "short": ShortCircuit,
                        "overcurrent": OverCurrent,
                    }[fault]
                    with lock:  # a time already past (a loaded host got here late) resolves to now
                        at = device.inject(make(at_s=at)).at_s
                        if fault == "lift_return":
                            device.inject(ContactReturn(at_s=at + ctx.rng.uniform(0.5, 4.0)))
                    facts["fault_at_s"] = at
                elif fault == "power_cycle":

                    def cut() -> None:
                        with lock:
                            facts["fault_at_s"] = device.session_time_s
                            facts["charge_before_uas"] = device.charge_uas
                            device.power_cycle()

                    timer = threading.Timer(offset / ctx.speed, cut)
                    timer.start()
                elif faults_runtime.is_runtime(fault):  # issue 19 (h19): through port.control
                    faults_runtime.inject_in_process(fault, port.control, t0 + offset, facts)
                session.wait()
            except IontodriveError as exc:
                facts["error"] = f"{type(exc).__name__}: {exc}"
            except KeyboardInterrupt:
                facts["error"] = "KeyboardInterrupt (watchdog)"
        ctx.note_hang(dog)
        if timer is not None:
            timer.join()
        with ctx.guard("status", 30.0) as dog:
            try:
                facts["device_status_uas"] = stim.status().charge_uas
            except IontodriveError as exc:
                facts["status_error"] = str(exc)
        ctx.note_hang(dog)
    finally:
        if timer is not None:
            timer.cancel()
        with ctx.guard("close", 60.0) as dog:
            stim.close()  # stops the in-process simulator: its trace is complete from here on
        ctx.note_hang(dog)
    return facts


HOST_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from iontodrive import Prescription, Stimulator
    port, record, rx = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    with Stimulator.open(port) as stim:
        print("OPEN", flush=True)
        stim.deliver(
            Prescription.from_dict(rx),
            on_progress=lambda p: print("STATE", p.state.name, p.device_time_s, flush=True),
            record_path=record,
        )
    print("DONE", flush=True)
    """
)


def _start_host(ctx: RunContext, port: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOST_SCRIPT,
            port,
            str(ctx.record_path),
            json.dumps(ctx.scenario.prescription.to_dict()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_line(proc: subprocess.Popen[str], prefix: str, timeout_s: float) -> bool:
    assert proc.stdout is not None
    found: list[bool] = []

    def scan() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(prefix):
                found.append(True)
                return

    reader = threading.Thread(target=scan, daemon=True)
    reader.start()
    reader.join(timeout_s)
    return bool(found)


def _recover(ctx: RunContext, port: str, facts: dict[str, Any]) -> None:
    with ctx.guard("reopen + recover", 120.0) as dog:
        try:
            with Stimulator.open(port) as stim:
                before = stim.status()
                facts["status_wall"] = time.monotonic()
                facts["status_device_s"] = before.device_time_ms / 1000.0
                facts["state_on_reopen"] = before.state.name
                facts["setpoint_on_reopen"] = before.setpoint_ua
                stim.recover(ctx.record_path)
                facts["device_status_uas"] = stim.status().charge_uas
        except (IontodriveError, RecordFormatError, OSError) as exc:
            facts["error"] = f"recover: {type(exc).__name__}: {exc}"
        except KeyboardInterrupt:
            facts["error"] = "KeyboardInterrupt (watchdog)"
    ctx.note_hang(dog)


def run_with_process(ctx: RunContext) -> dict[str, Any]:
    """Host killed, host hung, port closed and reopened: a simulator process on a pty."""
    facts: dict[str, Any] = {}
    sim = SimulatorProcess(
        "--pty",
        "--model",
        ctx.scenario.model,
        "--speed",
        f"{ctx.speed:g}",
        "--seed",
        str(ctx.seed),
        "--trace",
        str(ctx.trace_path),
        "--trace-rate",
        f"{TRACE_RATE_HZ:g}",
        # issue 19 (h19): the replug case needs a stable link and the control API
        *(
            [a.format(link=ctx.workdir / "by-id-sim") for a in faults_runtime.simulator_args()]
            if ctx.fault.name == "replug"
            else []
        ),
        log_path=ctx.workdir / "sim.log",
    )
    port = sim.start()
    offset, phase = ctx.fault_offset_s()
    facts["phase"] = phase
    wait_s = WATCHDOG_MS / 1000.0 + ctx.plan.ramp_down_s / ctx.speed + 1.0
    try:
        if ctx.fault.name == "port_reopen":
            _port_reopen(ctx, port, offset, wait_s, facts)
            return facts
        if ctx.fault.name == "replug":  # issue 19 (h19)
            assert sim.control_url is not None
            faults_runtime.run_replug(ctx, port, sim.control_url, offset, wait_s, facts, _recover)
            return facts
        host = _start_host(ctx, port)
        try:
            if not _wait_line(host, "STATE", 30.0):
                facts["error"] = "host never started its session"
                return facts
            time.sleep(offset / ctx.speed)
            if ctx.fault.name == "host_sigkill":
                host.send_signal(signal.SIGKILL)
                facts["fault_wall"] = time.monotonic()
                host.wait(10)
                time.sleep(wait_s)
                _recover(ctx, port, facts)
            else:
                host.send_signal(signal.SIGSTOP)
                facts["fault_wall"] = time.monotonic()
                time.sleep(wait_s)
                host.send_signal(signal.SIGCONT)
                deadline = ctx.session_deadline_s
                try:
                    host.wait(deadline)
                except subprocess.TimeoutExpired:
                    ctx.hung = True
                    ctx.result.problems.append(f"hung: host still running {deadline:.0f} s after SIGCONT")
                facts["host_exit"] = host.returncode
                _recover(ctx, port, facts)  # completes the record if the host could not
        finally:
            if host.poll() is None:
                host.kill()
                host.wait(10)
            for pipe in (host.stdout, host.stderr):
                if pipe is not None:
                    pipe.close()
    finally:
        sim.stop()
    return facts


def _port_reopen(ctx: RunContext, port: str, offset: float, wait_s: float, facts: dict[str, Any]) -> None:
    def close_port(stim: Stimulator) -> None:
        facts["fault_wall"] = time.monotonic()
        stim.link.port.close()

    faults_runtime.session_with_fault(
        ctx, port, offset / ctx.speed, close_port, "close after port loss", facts
    )
    time.sleep(wait_s)
    _recover(ctx, port, facts)


# -------------------------------------------------------------------------------------------- checking


def _slice(trace: Any, mask: np.ndarray) -> Any:
    tt = trace_tools()
    return tt.Trace(*(getattr(trace, f.name)[mask] for f in dataclasses.fields(trace)))


def _slew_ratio(ctx: RunContext, trace: Any, fault_at_s: float | None) -> float:
    """Largest |dI/dt| outside physical breaks over the model's slew limit (``trace_tools``).

    Excluded as physical, besides what ``max_slew_ua_per_s`` excludes (open circuit, compliance): the
    10 ms after a power cut, and everything after a regulator fault's onset, where the broken regulator,
    not the firmware, shapes the output; there the firmware's set-point envelope is checked instead. For
    pulsed DC the envelope is checked throughout (the pulse edges are the waveform, not a step).
    """
    tt = trace_tools()
    spec = MODELS[ctx.scenario.model]
    waveform = ctx.scenario.prescription.waveform  # (a Waveform once the prescription is checked)
    pulsed = getattr(waveform, "name", str(waveform).upper()) == "PULSED_DC"
    pieces: list[tuple[Any, bool]]  # (piece, check the envelope rather than the output)
    if fault_at_s is not None and ctx.fault.name == "power_cycle":
        pieces = [
            (_slice(trace, trace.t_s < fault_at_s), pulsed),
            (_slice(trace, trace.t_s > fault_at_s + 0.01), pulsed),
        ]
    elif fault_at_s is not None and ctx.fault.name in ("overcurrent", "hostile_deaf"):
        pieces = [
            (_slice(trace, trace.t_s < fault_at_s), pulsed),
            (_slice(trace, trace.t_s >= fault_at_s), True),
        ]
    else:
        pieces = [(trace, pulsed)]
    worst = 0.0
    for piece, envelope in pieces:
        if len(piece) < 2:
            continue
        if envelope:
            piece = dataclasses.replace(piece, output_ua=piece.setpoint_ua)
        worst = max(worst, tt.max_slew_ua_per_s(piece, spec.compliance_mv))
    return worst / spec.slew_limit_ua_per_s


def _safe_time(trace: Any, at_s: float, threshold_ua: float) -> float | None:
    """Device seconds from ``at_s`` until output and set-point stay below ``threshold_ua``; None if never."""
    level = np.maximum(np.abs(trace.output_ua), np.abs(trace.setpoint_ua))
    after = trace.t_s >= at_s
    if not after.any():
        return None
    high = np.nonzero(after & (level >= threshold_ua))[0]
    if high.size == 0:
        return 0.0
    last_high = high[-1]
    if last_high + 1 >= len(trace):
        return None
    return float(trace.t_s[last_high + 1] - at_s)


def _fault_time_from_record(ctx: RunContext, facts: dict[str, Any]) -> float | None:
    """Device time at which the host went silent: the LINK_LOST event's time minus its silence (wall ms)."""
    try:
        record = SessionRecord.load(ctx.record_path)
    except (RecordFormatError, OSError):
        return None
    lost = [e for e in record.events if e["code"] == "LINK_LOST"]
    if not lost:
        return None
    event = lost[0]
    return float(event["device_time_ms"]) / 1000.0 - float(event["value"]) / 1000.0 * ctx.speed


def check(ctx: RunContext, facts: dict[str, Any]) -> None:
    r = ctx.result
    tt = trace_tools()
    target_ua = ctx.scenario.prescription.current_ma * 1000.0
    r.error = facts.get("error", "")
    if not ctx.trace_path.exists():
        r.problems.append("no trace")
        return
    trace = tt.load_trace(ctx.trace_path)
    r.trace_rows = len(trace)
    if len(trace) < 10:
        r.problems.append(f"trace too short ({len(trace)} rows)")
        return
    r.slew_ratio = round(_slew_ratio(ctx, trace, facts.get("fault_at_s")), 4)
    if r.slew_ratio > SLEW_TOLERANCE:
        r.problems.append(f"slew {r.slew_ratio:.3f} × limit")
    r.ended_at_zero = bool(abs(trace.output_ua[-1]) < ZERO_UA)
    if not r.ended_at_zero:
        r.problems.append(f"output at end {trace.output_ua[-1]:.1f} uA")

    # the fault's time and the state it hit
    at = facts.get("fault_at_s")
    if ctx.fault.process:
        # wall time of the kill/stop/close mapped to device time through a status read afterwards
        if "status_device_s" in facts and "fault_wall" in facts:
            at = facts["status_device_s"] - (facts["status_wall"] - facts["fault_wall"]) * ctx.speed
        else:
            at = _fault_time_from_record(ctx, facts)
    r.fault_at_s = None if at is None else round(float(at), 4)
    if at is not None:
        idx = min(max(int(np.searchsorted(trace.t_s, at)) - 1, 0), len(trace) - 1)  # the state just before
        r.fault_state = str(trace.state[idx])
    else:
        r.fault_state = facts.get("phase", "")

    # fault -> safe, and no return
    session_on = trace.t_s[np.abs(trace.output_ua) >= SAFE_FRACTION * target_ua]
    after_end = at is not None and (session_on.size == 0 or at > session_on[-1] + 0.05)
    if ctx.fault.stops_output:
        threshold = SAFE_FRACTION * target_ua
        if ctx.fault.process:
            r.safe_unit, r.safe_limit_s = "wall s", WATCHDOG_MS / 1000.0 + ctx.plan.ramp_down_s / ctx.speed
            r.safe_limit_s += WATCHDOG_MARGIN_S
        elif ctx.fault.name == "power_cycle":
            r.safe_unit, r.safe_limit_s = "device s", POWER_SAFE_S
        else:
            r.safe_unit, r.safe_limit_s = "device s", PLANT_SAFE_S
        if at is None:
            r.problems.append("fault time unknown")
        elif after_end:
            r.safe_s = None  # the fault came when the output was already off: nothing to make safe
        else:
            safe = _safe_time(trace, at, threshold)
            if safe is None:
                r.problems.append("output never went safe after the fault")
            else:
                r.safe_s = round(safe / ctx.speed if ctx.fault.process else safe, 4)
                if r.safe_s > r.safe_limit_s:
                    r.problems.append(f"fault→safe {r.safe_s:.3f} {r.safe_unit} > {r.safe_limit_s:.3f}")

    # the record, against the device
    device_uas = float(np.max(trace.charge_uas)) if ctx.fault.name == "power_cycle" else trace.charge_uas[-1]
    if ctx.fault.name == "power_cycle" and "charge_before_uas" in facts:
        device_uas = float(facts["charge_before_uas"])
    r.device_uas = round(float(device_uas), 1)
    if ctx.fault.refuse_with and session_on.size:
        r.problems.append(
            f"output started although the device should have been refused ({r.error or 'no error'})"
        )
    if not ctx.record_path.exists() and r.error and session_on.size == 0:
        # the session never started (a typed error before Start took effect): nothing to record
        r.outcome = "not_started"
        if ctx.fault.link or (ctx.fault.refuse_with and r.error.startswith(ctx.fault.refuse_with)):
            r.record_ok = True
        else:
            r.problems.append(f"session never started: {r.error}")
        return
    if ctx.fault.refuse_with and session_on.size == 0 and r.error.startswith(ctx.fault.refuse_with):
        r.outcome = "not_started"  # refused before any output; a record of the refusal is fine too
        r.record_ok = True
        return
    try:
        record = SessionRecord.load(ctx.record_path)
    except (RecordFormatError, OSError) as exc:
        r.outcome = "unreadable"
        r.problems.append(f"record unreadable: {exc}")
        return
    if record.summary is None:
        r.outcome = "incomplete"
        r.problems.append("record has no summary")
        return
    r.outcome = str(record.summary.get("end_reason"))
    r.record_uas = record.delivered_uas
    expected = ctx.fault.expected
    if after_end:  # the fault came once the output was off for good: a normal end is right
        expected = (*expected, "completed")
    if ctx.fault.process and not any(e["code"] == "LINK_LOST" for e in record.events):
        expected = (*expected, "completed")  # the session ended before the device's watchdog fired
    if ctx.fault.name == "hostile_deaf" and r.fault_state == "RAMP_DOWN":
        # a 1.3 x regulator fault late in the final ramp-down: the excess (0.3 x a falling set-point) is
        # within the firmware's trip margin and the driver's 50 uA floor, neither trips, and the ramp ends
        # at zero with the dose delivered; the device reports DONE / DOSE_COMPLETE and no trip, and the
        # host's account must say what the device says (the fault-to-safe time and the dose are still
        # checked against the trace). docs/reliability.md, "hostile_deaf in the ramp-down".
        expected = (*expected, "completed")
    if r.outcome not in expected:
        r.problems.append(f"end reason {r.outcome!r}, expected one of {expected}")
    tolerance = max(2.0, RECORD_TOLERANCE * device_uas)
    if ctx.fault.name == "power_cycle":
        tolerance = max(tolerance, target_ua * 0.5 * ctx.scenario.prescription.duty_fraction)
    if r.record_uas is None or abs(r.record_uas - device_uas) > tolerance:
        r.problems.append(f"record {r.record_uas} uAs, device {device_uas:.0f} uAs")
    else:
        r.record_ok = True
    if "device_status_uas" in facts and ctx.fault.name != "power_cycle":
        status_uas = facts["device_status_uas"]
        if abs(status_uas - device_uas) > tolerance:
            r.problems.append(f"device status {status_uas} uAs, trace {device_uas:.0f} uAs")

    # dose accuracy of completed sessions
    if r.outcome == "completed":
        planned = ctx.plan.charge_uas
        if ctx.fault.name == "impedance_rise" and not ctx.plan.dose_based:
            r.dose_error = None  # a time-based session under a resistance limit delivers less, by design
        else:
            r.dose_error = round(abs(device_uas - planned) / planned, 5)
            if r.dose_error > DOSE_TOLERANCE:
                r.problems.append(f"dose {device_uas:.0f} uAs, planned {planned:.0f} ({r.dose_error:.2%})")


def execute(
    seed: int, speed: float, process_speed: float, keep_dir: str | None, link_speed: float = 20.0
) -> dict[str, Any]:
    """One run in this process; returns the RunResult as a dict. Never raises for a failed run."""
    workdir = Path(tempfile.mkdtemp(prefix=f"faults-{seed}-"))
    ctx = RunContext(seed, workdir, speed, process_speed, link_speed)
    started = time.monotonic()
    facts: dict[str, Any] = {}
    try:
        facts = run_with_process(ctx) if ctx.fault.process else run_in_process(ctx)
        with faults_runtime.judged_as_base(ctx):  # issue 19 (h19): rt_X is judged as X
            check(ctx, facts)
    except Exception as exc:  # a harness or driver bug must not end the campaign: record it
        log.exception("run %d failed", seed)
        ctx.result.problems.append(f"exception: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        ctx.result.problems.append("interrupted by the hang watchdog")
        ctx.hung = True
    r = ctx.result
    r.hung = ctx.hung
    r.wall_s = round(time.monotonic() - started, 2)
    r.passed = not r.problems
    if r.passed:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        if keep_dir:
            dest = Path(keep_dir) / f"run-{seed}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.move(str(workdir), dest)
            r.kept = str(dest)
        else:
            r.kept = str(workdir)
    return dataclasses.asdict(r)


# ---------------------------------------------------------------------------------------------- report


PASS_CRITERIA = textwrap.dedent(
    f"""\
    Pass criteria per run: (1) max |dI/dt| outside physical breaks ≤ {SLEW_TOLERANCE} × the model's slew
    limit (pulsed DC: the envelope); (2) fault → output and set-point below {SAFE_FRACTION:.0%} of the
    set-point within {PLANT_SAFE_S:g} device s (plant faults), {POWER_SAFE_S:g} device s (power cut), or
    watchdog + ramp-down + {WATCHDOG_MARGIN_S:g} wall s (host/port loss), and never back above it;
    (3) output < {ZERO_UA:g} µA at the end; (4) completed sessions within {DOSE_TOLERANCE:.0%} of the
    planned charge; (5) record readable, complete, with an expected end reason, and its dose equal to the
    device's within max(2 µA·s, {RECORD_TOLERANCE:.1%}) (power cut: within 0.5 s of charge); (6) no call
    past its deadline."""
)


def table(results: Sequence[dict[str, Any]]) -> str:
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["scenario"], r["fault"]), []).append(r)
    order_s = [s.name for s in SCENARIOS]
    order_f = [f.name for f in FAULTS]
    lines = [
        "| scenario | fault | runs | pass | max slew ratio | worst fault→safe | worst dose error "
        "| records OK | hangs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (s, f), rs in sorted(
        cells.items(), key=lambda kv: (order_s.index(kv[0][0]), order_f.index(kv[0][1]))
    ):
        safe = [r["safe_s"] for r in rs if r["safe_s"] is not None]
        unit = next((r["safe_unit"] for r in rs if r["safe_unit"]), "")
        doses = [r["dose_error"] for r in rs if r["dose_error"] is not None]
        lines.append(
            f"| {s} | {f} | {len(rs)} | {sum(r['passed'] for r in rs)} | "
            f"{max(r['slew_ratio'] for r in rs):.3f} | "
            f"{f'{max(safe):.3f} {unit}' if safe else '–'} | "
            f"{f'{max(doses):.3%}' if doses else '–'} | "
            f"{sum(r['record_ok'] for r in rs)}/{len(rs)} | {sum(r['hung'] for r in rs)} |"
        )
    return "\n".join(lines) + "\n"


def summary_text(results: Sequence[dict[str, Any]], wall_s: float, argv: Sequence[str]) -> str:
    passed = sum(r["passed"] for r in results)
    failed = [r for r in results if not r["passed"]]
    head = [
        f"Fault campaign {datetime.now(UTC).isoformat(timespec='seconds')}: "
        f"`python bench/faults.py {' '.join(argv)}`",
        f"{len(results)} runs, {passed} passed, {len(failed)} failed, "
        f"{sum(r['hung'] for r in results)} hung; {wall_s / 60:.1f} min wall on {os.cpu_count()} cores "
        f"({platform.python_version()}).",
        "",
        table(results),
        PASS_CRITERIA,
    ]
    if failed:
        head += ["", "Failed runs (replay with `--replay SEED`):"]
        head += [f"- {r['seed']} {r['scenario']} {r['fault']}: {'; '.join(r['problems'])}" for r in failed]
    return "\n".join(head) + "\n"


# ------------------------------------------------------------------------------------------------ main


def plan_runs(reps: int, scenarios: Sequence[str] | None, faults: Sequence[str] | None) -> list[int]:
    seeds = []
    for rep in range(reps):
        for si, s in enumerate(SCENARIOS):
            if scenarios and s.name not in scenarios:
                continue
            for fi, f in enumerate(FAULTS):
                if faults and f.name not in faults:
                    continue
                seeds.append(run_seed(rep, si, fi))
    return seeds


def run_campaign(
    seeds: Sequence[int],
    *,
    workers: int,
    speed: float,
    process_speed: float,
    keep_dir: str | None,
    link_speed: float = 20.0,
    progress: Callable[[dict[str, Any], int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``seeds`` on ``workers`` processes (1 = in this process); results in seed order."""
    results: list[dict[str, Any]] = []
    # process runs first: they are the slowest, so the pool stays busy to the end
    ordered = sorted(seeds, key=lambda s: (not decode_seed(s)[2].process, s))
    if workers <= 1:
        for seed in ordered:
            results.append(execute(seed, speed, process_speed, keep_dir, link_speed))
            if progress:
                progress(results[-1], len(results), len(seeds))
    else:
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_worker_init
        ) as pool:
            futures = [pool.submit(execute, s, speed, process_speed, keep_dir, link_speed) for s in ordered]
            for future in cf.as_completed(futures):
                results.append(future.result())
                if progress:
                    progress(results[-1], len(results), len(seeds))
    return sorted(results, key=lambda r: r["seed"])


def _worker_init() -> None:
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # SIGINT keeps Python's handler: the hang watchdog interrupts a stuck run with it (interrupt_main)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _print_progress(r: dict[str, Any], done: int, total: int) -> None:
    mark = "ok  " if r["passed"] else "FAIL"
    detail = "" if r["passed"] else "  " + "; ".join(r["problems"])[:200]
    print(
        f"[{done:4d}/{total}] {mark} seed {r['seed']:6d} {r['scenario']:12s} {r['fault']:15s} "
        f"{r['outcome']:26s} slew {r['slew_ratio']:.3f} {r['wall_s']:6.1f} s{detail}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5, help="repetitions of the matrix (default 5)")
    p.add_argument("--scenarios", help="comma-separated scenario names (default all)")
    p.add_argument("--faults", help="comma-separated fault names (default all)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--speed", type=float, default=100.0, help="in-process simulator speed (default 100)")
    p.add_argument(
        "--process-speed",
        type=float,
        default=10.0,
        help="speed of the host-process faults' simulator and of hostile_self_raise (default 10)",
    )
    p.add_argument(
        "--link-speed",
        type=float,
        default=20.0,
        help="in-process speed for latency faults and mixed (default 20)",
    )
    p.add_argument("--replay", type=int, action="append", metavar="SEED", help="run only this seed")
    p.add_argument("--json", type=Path, default=Path("faults-results.json"), help="JSON results file")
    p.add_argument("--report", type=Path, help="also write the markdown report here")
    p.add_argument("--keep", help="move the work directories of failed runs here")
    p.add_argument("--list", action="store_true", help="list scenarios and faults, then exit")
    args = p.parse_args(argv)
    if args.list:
        for i, s in enumerate(SCENARIOS):
            print(f"scenario {i:2d} {s.name:14s} {s.model} {s.prescription.describe()}")
        for i, f in enumerate(FAULTS):
            print(f"fault    {i:2d} {f.name}")
        return 0
    if not 1 <= args.workers <= 16:
        p.error(f"--workers = {args.workers} is out of range: must be in [1, 16]")
    if not 0 <= args.reps <= 1000:
        p.error(f"--reps = {args.reps} is out of range: must be in [0, 1000]")
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    known_s = {s.name for s in SCENARIOS}
    known_f = {f.name for f in FAULTS}
    scenarios = args.scenarios.split(",") if args.scenarios else None
    faults = args.faults.split(",") if args.faults else None
    for name in scenarios or ():
        if name not in known_s:
            p.error(f"--scenarios: {name!r} is not one of {sorted(known_s)}")
    for name in faults or ():
        if name not in known_f:
            p.error(f"--faults: {name!r} is not one of {sorted(known_f)}")
    if args.replay:
        for seed in args.replay:
            try:
                decode_seed(seed)
            except ValueError as exc:
                p.error(f"--replay: {exc}")
        seeds = list(args.replay)
        workers = 1
    else:
        seeds = plan_runs(args.reps, scenarios, faults)
        workers = args.workers
    print(f"fault campaign: {len(seeds)} runs on {workers} worker(s)", flush=True)
    started = time.monotonic()
    results = run_campaign(
        seeds,
        workers=workers,
        speed=args.speed,
        process_speed=args.process_speed,
        keep_dir=args.keep,
        link_speed=args.link_speed,
        progress=_print_progress,
    )
    wall = time.monotonic() - started
    text = summary_text(results, wall, argv)
    print()
    print(text)
    if args.report is not None:
        args.report.write_text(text, encoding="utf-8")
    payload = {
        "argv": argv,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(wall, 1),
        "pass_criteria": PASS_CRITERIA,
        "runs": results,
    }
    args.json.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
