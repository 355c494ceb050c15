"""Reading the simulator's ground-truth trace and checking it against the safety requirements."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COMPLIANCE_FRACTION = 0.95
OPEN_OHM = 0xFFFF_FFFF


@dataclass(frozen=True)
class Trace:
    t_s: np.ndarray
    state: np.ndarray
    setpoint_ua: np.ndarray
    output_ua: np.ndarray
    voltage_mv: np.ndarray
    impedance_ohm: np.ndarray
    charge_uas: np.ndarray

    def __len__(self) -> int:
        return len(self.t_s)


def load_trace(path: str | Path) -> Trace:
    """Load a trace CSV (header ``t_s,state,setpoint_ua,output_ua,voltage_mv,impedance_ohm,charge_uas``)."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        assert header == [
            "t_s",
            "state",
            "setpoint_ua",
            "output_ua",
            "voltage_mv",
            "impedance_ohm",
            "charge_uas",
        ]
        rows = [row for row in reader if len(row) == 7]
    columns = list(zip(*rows, strict=True)) if rows else [()] * 7
    return Trace(
        t_s=np.array(columns[0], dtype=float),
        state=np.array(columns[1], dtype=object),
        setpoint_ua=np.array(columns[2], dtype=float),
        output_ua=np.array(columns[3], dtype=float),
        voltage_mv=np.array(columns[4], dtype=float),
        impedance_ohm=np.array(columns[5], dtype=float),
        charge_uas=np.array(columns[6], dtype=float),
    )


def wait_for_trace(path: Path, predicate: object, timeout_s: float = 20.0) -> Trace:
    """Poll a trace file written by a running simulator until ``predicate(trace)`` is true."""
    deadline = time.monotonic() + timeout_s
    trace = None
    while time.monotonic() < deadline:
        if path.exists():
            trace = load_trace(path)
            if len(trace) and predicate(trace):  # type: ignore[operator]
                return trace
        time.sleep(0.05)
    raise AssertionError(
        f"trace condition not met within {timeout_s} s (rows: {0 if trace is None else len(trace)})"
    )


def max_slew_ua_per_s(
    trace: Trace,
    compliance_mv: float,
    *,
    skip_states: tuple[str, ...] = (),
    only_states: tuple[str, ...] | None = None,
) -> float:
    """Largest |d output / dt| between consecutive rows, outside physical breaks and ``skip_states``
    (and, if given, only between rows that are both in ``only_states``).

    A physical break is an open circuit or a voltage at compliance (the load, not the source, sets the
    current there), on either side of the step.
    """
    if len(trace) < 2:
        return 0.0
    dt = np.diff(trace.t_s)
    di = np.abs(np.diff(trace.output_ua))
    physical = (trace.impedance_ohm >= OPEN_OHM) | (trace.voltage_mv >= COMPLIANCE_FRACTION * compliance_mv)
    skipped = np.isin(trace.state, skip_states) if skip_states else np.zeros(len(trace), dtype=bool)
    if only_states is not None:
        skipped |= ~np.isin(trace.state, only_states)
    excluded = physical[1:] | physical[:-1] | skipped[1:] | skipped[:-1] | (dt <= 0)
    rates = np.where(excluded, 0.0, di / np.where(dt > 0, dt, 1.0))
    return float(rates.max())
