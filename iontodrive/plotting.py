"""The session figure: current, voltage, impedance and dose against time, events marked, prescription shown.

matplotlib is optional (``pip install iontodrive[plot]``) and imported only inside :func:`plot_record`, with
the non-interactive Agg backend, so importing this module (and the library) never needs it.

:func:`figure_data` is the pure part: the arrays the figure draws, in user units, computed from the record.
Tests compare them with the record's own telemetry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iontodrive.record import SessionRecord

OPEN_CIRCUIT_OHM = 0xFFFF_FFFF
UAS_PER_MA_MIN = 60_000

# Events drawn as vertical lines (others only in the report's list).
MARKED_EVENTS = frozenset(
    {
        "SESSION_STARTED",
        "SETPOINT_CHANGED",
        "PAUSED",
        "RESUMED",
        "RESISTANCE_LIMIT",
        "RESISTANCE_LIMIT_CLEARED",
        "TIME_EXTENDED",
        "ELECTRODE_LIFT",
        "SHORT_CIRCUIT",
        "OVERCURRENT_TRIP",
        "HARDWARE_TRIP",
        "LINK_LOST",
        "DOSE_COMPLETE",
        "STOPPED",
        "ABORTED",
        "SESSION_ENDED",
    }
)
ALARM_EVENTS = frozenset(
    {"ELECTRODE_LIFT", "SHORT_CIRCUIT", "OVERCURRENT_TRIP", "HARDWARE_TRIP", "LINK_LOST", "RESISTANCE_LIMIT"}
)


@dataclass(frozen=True)
class FigureData:
    """What the figure draws. Times in s of device time since the session started (``t0_s``)."""

    t0_s: float
    t_s: np.ndarray
    setpoint_ma: np.ndarray
    current_ma: np.ndarray
    voltage_v: np.ndarray
    impedance_kohm: np.ndarray  # NaN where the circuit was open
    dose_ma_min: np.ndarray
    events: list[tuple[float, str]] = field(default_factory=list)  # (t_s, code), marked events only
    target_ma_min: float | None = None
    compliance_v: float | None = None
    title: str = ""


def session_start_s(record: SessionRecord) -> float:
    """Device time (s) the session started: its SESSION_STARTED event, else the first sample or event."""
    for event in record.events:
        if event["code"] == "SESSION_STARTED":
            return event["device_time_ms"] / 1000.0
    if record.telemetry:
        return record.telemetry[0]["device_time_ms"] / 1000.0
    if record.events:
        return record.events[0]["device_time_ms"] / 1000.0
    return 0.0


def _title(record: SessionRecord) -> str:
    from iontodrive.prescription import Prescription

    try:
        text = Prescription.from_dict(record.prescription).describe()
    except Exception:
        text = ", ".join(f"{k}={v}" for k, v in record.prescription.items() if v is not None)
    identity = record.identity
    device = f"{identity.get('model', '?')} #{identity.get('serial_number', '?')}"
    outcome = record.summary["end_reason"] if record.summary else "incomplete"
    labels = ", ".join(f"{k}={v}" for k, v in record.labels.items())
    started = record.started_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    second = f"{device} · {started} · {outcome}" + (f" · {labels}" if labels else "")
    return f"{text}\n{second}"


def figure_data(record: SessionRecord) -> FigureData:
    """The figure's arrays in user units, derived one-to-one from ``record.telemetry_arrays()``."""
    arrays = record.telemetry_arrays()
    t0 = session_start_s(record)
    impedance = arrays["impedance_ohm"].astype(np.float64)
    impedance_kohm = np.where(arrays["impedance_ohm"] == OPEN_CIRCUIT_OHM, np.nan, impedance / 1000.0)
    events = [
        (e["device_time_ms"] / 1000.0 - t0, str(e["code"]))
        for e in record.events
        if e["code"] in MARKED_EVENTS
    ]
    dose = record.prescription.get("dose_ma_min")
    compliance_mv = record.identity.get("compliance_mv")
    return FigureData(
        t0_s=t0,
        t_s=arrays["t_s"] - t0,
        setpoint_ma=arrays["setpoint_ua"] / 1000.0,
        current_ma=arrays["measured_ua"] / 1000.0,
        voltage_v=arrays["voltage_mv"] / 1000.0,
        impedance_kohm=impedance_kohm,
        dose_ma_min=arrays["charge_uas"] / UAS_PER_MA_MIN,
        events=events,
        target_ma_min=None if dose is None else float(dose),
        compliance_v=None if compliance_mv is None else compliance_mv / 1000.0,
        title=_title(record),
    )


def _group_events(events: list[tuple[float, str]], span_s: float) -> list[tuple[float, list[str]]]:
    """Merge events closer than 1 % of the time span into one mark (one label, codes in order)."""
    groups: list[tuple[float, list[str]]] = []
    gap = max(span_s * 0.01, 1e-9)
    for t_event, code in sorted(events, key=lambda e: e[0]):
        if groups and t_event - groups[-1][0] <= gap:
            if code not in groups[-1][1]:
                groups[-1][1].append(code)
        else:
            groups.append((t_event, [code]))
    return groups


def plot_record(record: SessionRecord | str | Path, out_path: str | Path, *, dpi: int = 110) -> Path:
    """Draw the session figure to ``out_path`` (PNG, or any format matplotlib infers from the suffix).

    Raises:
        ImportError: matplotlib is not installed (``pip install iontodrive[plot]``).
        RecordFormatError / OSError: the record cannot be read.
    """
    if not isinstance(record, SessionRecord):
        record = SessionRecord.load(record)
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("report --plot needs matplotlib: pip install 'iontodrive[plot]'") from exc

    data = figure_data(record)
    span_s = float(data.t_s[-1] - min(0.0, float(data.t_s[0]))) if data.t_s.size else 0.0
    scale, unit = (60.0, "min") if span_s >= 120.0 else (1.0, "s")
    x = data.t_s / scale
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True, constrained_layout=True)
    ax_i, ax_u, ax_z, ax_q = axes
    try:
        ax_i.plot(x, data.setpoint_ma, color="0.6", lw=1.0, ls="--", label="set-point")
        ax_i.plot(x, data.current_ma, color="C0", lw=1.2, label="measured")
        ax_i.set_ylabel("current (mA)")
        ax_i.legend(loc="lower center", fontsize="small")

        ax_u.plot(x, data.voltage_v, color="C1", lw=1.2)
        if data.compliance_v is not None:
            ax_u.axhline(data.compliance_v, color="C3", lw=0.8, ls=":", label="compliance")
            ax_u.legend(loc="center right", fontsize="small")
        ax_u.set_ylabel("voltage (V)")

        ax_z.plot(x, data.impedance_kohm, color="C2", lw=1.2)
        ax_z.set_ylabel("impedance (kΩ)")
        finite = data.impedance_kohm[np.isfinite(data.impedance_kohm)]
        if finite.size and float(finite.min()) > 0 and float(finite.max()) / float(finite.min()) > 20:
            ax_z.set_yscale("log")

        ax_q.plot(x, data.dose_ma_min, color="C4", lw=1.4, label="delivered")
        if data.target_ma_min is not None:
            ax_q.axhline(data.target_ma_min, color="k", lw=0.8, ls="--", label="target")
        ax_q.set_ylabel("dose (mA·min)")
        ax_q.set_xlabel(f"time since start ({unit}, device time)")
        ax_q.legend(loc="lower right", fontsize="small")

        for t_event, codes in _group_events(data.events, span_s):
            alarm = any(code in ALARM_EVENTS for code in codes)
            colour = "C3" if alarm else "0.35"
            for ax in axes:
                ax.axvline(t_event / scale, color=colour, lw=0.7, alpha=0.7)
            ax_i.annotate(
                ", ".join(code.lower().replace("_", " ") for code in codes),
                xy=(t_event / scale, 0.97),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                ha="right",
                fontsize=7,
                color=colour,
            )
        for ax in axes:
            ax.grid(True, lw=0.3, alpha=0.5)
        if x.size and math.isfinite(float(x[-1])):
            ax_q.set_xlim(min(0.0, float(x[0])), max(float(x[-1]), 0.01))
        fig.suptitle(data.title, fontsize=9)
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out
