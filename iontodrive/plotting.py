"""The session figure: current, voltage, impedance and dose against time since the session started.

What it shows (``docs/cli.md`` has a picture):

* **phases** shaded across every panel, from the device's state in the telemetry: ramp up, plateau (HOLD),
  adjusting (a set-point change), ramp down, paused (PAUSING/PAUSED);
* **current**: the set-point drawn on top of the measured current (dashed, so both stay visible), and the
  device's over-current trip level;
* **voltage** scaled to the data, with the compliance limit drawn when it is near the data and named at the
  panel's edge when it is far above it;
* **impedance** (gaps where the circuit was open; log scale when it spans more than a factor of 20);
* **dose**: the delivered charge, the delivered figure as a number, and the target - the prescribed dose
  (dose-based), or for a time-based session the prescribed duration and the charge the driver expects for it;
* **events** as vertical lines through every panel, labelled horizontally in a strip of their own above the
  panels, on as many rows as they need so that labels never overlap; alarms in red.

Legends sit outside the panels, so they never cover data. PNGs are written at :data:`PRINT_DPI` (print
resolution); a ``.pdf`` or ``.svg`` suffix gives vector output.

matplotlib is optional (``pip install iontodrive[plot]``) and imported only inside the drawing functions, with
the non-interactive Agg backend, so importing this module (and the library) never needs it.
:func:`figure_data` is the pure part: the arrays and marks the figure draws, in user units, from the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from iontodrive.protocol import DeviceState
from iontodrive.record import SessionRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

OPEN_CIRCUIT_OHM = 0xFFFF_FFFF
UAS_PER_MA_MIN = 60_000
PRINT_DPI = 200
FIGURE_SIZE_IN = (10.0, 9.0)

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

#: Phase name by device state name, and its shading colour.
PHASE_OF_STATE = {
    "RAMP_UP": "ramp up",
    "HOLD": "plateau",
    "ADJUST": "adjusting",
    "RAMP_DOWN": "ramp down",
    "PAUSING": "paused",
    "PAUSED": "paused",
}
PHASE_COLOURS = {
    "ramp up": "#fdd49e",
    "plateau": "#d9f0d3",
    "adjusting": "#e7d4e8",
    "ramp down": "#c6dbef",
    "paused": "#d9d9d9",
}
_STATE_NAMES = tuple(state.name for state in DeviceState)  # by value: DeviceState numbers from 0


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
    target_ma_min: float | None = None  # dose-based: the prescribed dose
    compliance_v: float | None = None
    title: str = ""
    phases: list[tuple[float, float, str]] = field(default_factory=list)  # (start s, end s, phase name)
    trip_ma: float | None = None
    target_s: float | None = None  # time-based: the prescribed duration
    expected_ma_min: float | None = None  # time-based: the charge the driver expects for that duration
    delivered_ma_min: float | None = None  # the record's figure (the device's, from the summary)
    pulsed: bool = False  # pulsed DC: the measured current is the average over the pulses


def session_start_s(record: SessionRecord) -> float:
    """Device time (s) the session started: its SESSION_STARTED event, else the first sample or event."""
    for event in record.events:
        if event["code"] == "SESSION_STARTED":
            return float(event["device_time_ms"]) / 1000.0
    if record.telemetry:
        return float(record.telemetry[0]["device_time_ms"]) / 1000.0
    if record.events:
        return float(record.events[0]["device_time_ms"]) / 1000.0
    return 0.0


def _prescription_text(record: SessionRecord) -> str:
    from iontodrive.prescription import Prescription

    try:
        return Prescription.from_dict(record.prescription).describe()
    except Exception:  # a record from another version: show what is there
        return ", ".join(f"{k}={v}" for k, v in record.prescription.items() if v is not None)


def _title(record: SessionRecord) -> str:
    identity = record.identity
    device = f"{identity.get('model', '?')} #{identity.get('serial_number', '?')}"
    outcome = record.summary["end_reason"] if record.summary else "incomplete"
    labels = ", ".join(f"{k}={v}" for k, v in record.labels.items())
    when = record.started_at
    started = "start not recorded" if when is None else when.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    second = f"{device} · {started} · {outcome}" + (f" · {labels}" if labels else "")
    return f"{_prescription_text(record)}\n{second}"


def phase_spans(t_s: np.ndarray, states: np.ndarray) -> list[tuple[float, float, str]]:
    """Contiguous runs of a phase (see :data:`PHASE_OF_STATE`) as ``(start, end, name)``; a run ends at the
    next sample's time. States outside a phase (idle, contact check, done, fault) are not shaded."""
    spans: list[tuple[float, float, str]] = []
    names = [
        PHASE_OF_STATE.get(_STATE_NAMES[s] if 0 <= s < len(_STATE_NAMES) else "", "") for s in states.tolist()
    ]
    start = 0
    for index in range(1, len(names) + 1):
        if index == len(names) or names[index] != names[start]:
            if names[start]:
                end = float(t_s[index]) if index < len(names) else float(t_s[index - 1])
                spans.append((float(t_s[start]), end, names[start]))
            start = index
    return spans


def identity_report(identity: dict[str, Any]) -> Any:
    """Rebuild the device's :class:`~iontodrive.protocol.IdentityReport` from a record's identity dict
    (None if it does not fit, e.g. a VISA source's identity or a record from another version)."""
    import dataclasses

    from iontodrive.protocol import IdentityReport, WaveformSet

    fields = dataclasses.fields(IdentityReport)
    required = {f.name for f in fields if f.default is dataclasses.MISSING}
    if not required <= set(identity):  # a field added later has a default (e.g. protocol v2's)
        return None
    values = {f.name: identity[f.name] for f in fields if f.name in identity}
    waveforms = values["waveforms"]
    if isinstance(waveforms, str):
        values["waveforms"] = WaveformSet[waveforms] if waveforms in WaveformSet.__members__ else 0
    try:
        return IdentityReport(**values)
    except (TypeError, ValueError):
        return None


def _expected_charge_uas(record: SessionRecord) -> float | None:
    """The driver's expected charge for the prescription on the recorded device (None if not rebuildable)."""
    from iontodrive.prescription import Prescription

    try:
        identity = identity_report(record.identity)
        if identity is None:
            return None
        return float(Prescription.from_dict(record.prescription).expected_plan(identity).charge_uas)
    except Exception:  # a record from another version
        return None


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
    duration = record.prescription.get("duration_s")
    compliance_mv = record.identity.get("compliance_mv")
    trip_ua = record.identity.get("trip_current_ua")
    t_s = arrays["t_s"] - t0
    expected = None
    if dose is None and duration is not None:
        charge = _expected_charge_uas(record)
        expected = None if charge is None else charge / UAS_PER_MA_MIN
    delivered = record.delivered_uas
    return FigureData(
        t0_s=t0,
        t_s=t_s,
        setpoint_ma=arrays["setpoint_ua"] / 1000.0,
        current_ma=arrays["measured_ua"] / 1000.0,
        voltage_v=arrays["voltage_mv"] / 1000.0,
        impedance_kohm=impedance_kohm,
        dose_ma_min=arrays["charge_uas"] / UAS_PER_MA_MIN,
        events=events,
        target_ma_min=None if dose is None else float(dose),
        compliance_v=None if not compliance_mv else compliance_mv / 1000.0,
        title=_title(record),
        phases=phase_spans(t_s, arrays["state"]),
        trip_ma=None if not trip_ua else trip_ua / 1000.0,
        target_s=None if dose is not None or duration is None else float(duration),
        expected_ma_min=expected,
        delivered_ma_min=None if delivered is None else delivered / UAS_PER_MA_MIN,
        pulsed=str(record.prescription.get("waveform", "dc")).lower() in ("pulsed_dc", "pulsed-dc"),
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


def event_label(codes: list[str]) -> str:
    """``electrode lift`` (codes in words, joined by ``+``)."""
    return " + ".join(code.lower().replace("_", " ") for code in codes)


def label_rows(positions: list[float], widths: list[float]) -> list[int]:
    """A row for each label (left edge ``positions[i]``, width ``widths[i]``, same units) so that labels on
    the same row never overlap: the lowest row whose last label ends before this one starts."""
    ends: list[float] = []
    rows: list[int] = []
    for left, width in zip(positions, widths, strict=True):
        for row, end in enumerate(ends):
            if left > end:
                ends[row] = left + width
                rows.append(row)
                break
        else:
            ends.append(left + width)
            rows.append(len(ends) - 1)
    return rows


def _matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("the session figure needs matplotlib: pip install 'iontodrive[plot]'") from exc
    return plt


@dataclass
class SessionAxes:
    """The axes of a drawn session figure (for callers that add to it, and for tests)."""

    events: Axes
    current: Axes
    voltage: Axes
    impedance: Axes
    dose: Axes
    time_scale_s: float  # seconds per x unit (1 or 60)

    @property
    def panels(self) -> list[Axes]:
        return [self.current, self.voltage, self.impedance, self.dose]


def draw_session(
    fig: Figure, data: FigureData, *, rect: tuple[float, float, float, float] | None = None
) -> SessionAxes:
    """Draw the session into ``fig`` (in ``rect`` = left, bottom, right, top in figure fractions, or the
    whole figure). Returns the axes."""
    from matplotlib.patches import Patch

    first = float(data.t_s[0]) if data.t_s.size else 0.0
    last = float(data.t_s[-1]) if data.t_s.size else 0.0
    span_s = max(last, data.target_s or 0.0) - min(0.0, first)
    scale, unit = (60.0, "min") if span_s >= 120.0 else (1.0, "s")
    x = data.t_s / scale
    grid = fig.add_gridspec(5, 1, height_ratios=[0.9, 2.2, 1.5, 1.5, 1.8], hspace=0.08)
    if rect is not None:
        grid.update(left=rect[0], bottom=rect[1], right=rect[2], top=rect[3])
    ax_e = fig.add_subplot(grid[0])
    ax_i = fig.add_subplot(grid[1], sharex=ax_e)
    ax_u = fig.add_subplot(grid[2], sharex=ax_e)
    ax_z = fig.add_subplot(grid[3], sharex=ax_e)
    ax_q = fig.add_subplot(grid[4], sharex=ax_e)
    axes = SessionAxes(ax_e, ax_i, ax_u, ax_z, ax_q, scale)
    legend_kw: dict[str, Any] = {
        "loc": "upper left",
        "bbox_to_anchor": (1.01, 1.0),
        "fontsize": 8,
        "frameon": False,
        "borderaxespad": 0.0,
    }

    # Phases, shaded across every panel (and named once, in the events strip's legend).
    seen_phases: list[str] = []
    for start, end, name in data.phases:
        for ax in axes.panels:
            ax.axvspan(start / scale, end / scale, color=PHASE_COLOURS[name], alpha=0.55, lw=0, zorder=0)
        if name not in seen_phases:
            seen_phases.append(name)
    order = list(PHASE_COLOURS)
    seen_phases.sort(key=order.index)

    # Current: measured underneath, set-point on top (dashed: both visible where they agree), trip level.
    measured = "measured (average)" if data.pulsed else "measured"
    ax_i.plot(x, data.current_ma, color="#6baed6", lw=2.6, label=measured, zorder=2)
    setpoint = "set-point (pulse amplitude)" if data.pulsed else "set-point"
    ax_i.plot(x, data.setpoint_ma, color="black", lw=1.1, ls=(0, (4, 3)), label=setpoint, zorder=3)
    top_i = float(np.nanmax(data.setpoint_ma, initial=0.0))
    top_i = max(top_i, float(np.nanmax(data.current_ma, initial=0.0)))
    if data.trip_ma is not None:
        ax_i.axhline(data.trip_ma, color="C3", lw=1.0, ls=":", label=f"trip {data.trip_ma:g} mA", zorder=1)
        top_i = max(top_i, data.trip_ma)
    ax_i.set_ylim(0.0, max(top_i * 1.1, 0.01))
    ax_i.set_ylabel("current (mA)")
    ax_i.legend(**legend_kw)

    # Voltage scaled to the data; compliance drawn when near, named at the edge when far above.
    ax_u.plot(x, data.voltage_v, color="C1", lw=1.4, label="voltage")
    top_u = max(float(np.nanmax(data.voltage_v, initial=0.0)), 1.0)
    if data.compliance_v is not None and data.compliance_v <= top_u * 1.6:
        ax_u.axhline(
            data.compliance_v, color="C3", lw=1.0, ls="--", label=f"compliance {data.compliance_v:g} V"
        )
        top_u = max(top_u, data.compliance_v)
        ax_u.set_ylim(0.0, top_u * 1.1)
    else:
        ax_u.set_ylim(0.0, top_u * 1.25)
        if data.compliance_v is not None:
            ax_u.annotate(
                f"compliance {data.compliance_v:g} V (above the scale)",
                xy=(0.995, 0.96),
                xycoords="axes fraction",
                ha="right",
                va="top",
                fontsize=8,
                color="C3",
            )
    ax_u.set_ylabel("voltage (V)")
    ax_u.legend(**legend_kw)

    ax_z.plot(x, data.impedance_kohm, color="C2", lw=1.4, label="impedance")
    ax_z.set_ylabel("impedance (kΩ)")
    finite = data.impedance_kohm[np.isfinite(data.impedance_kohm)]
    if finite.size and float(finite.min()) > 0 and float(finite.max()) / float(finite.min()) > 20:
        ax_z.set_yscale("log")
    elif finite.size:
        ax_z.set_ylim(0.0, float(finite.max()) * 1.2)
    if finite.size < data.impedance_kohm.size:
        ax_z.plot([], [], " ", label="gaps: open circuit")
    ax_z.legend(**legend_kw)

    # Dose: delivered, its number, and the target of either kind of session.
    ax_q.plot(x, data.dose_ma_min, color="C4", lw=1.6, label="delivered")
    top_q = float(np.nanmax(data.dose_ma_min, initial=0.0))
    if data.target_ma_min is not None:
        ax_q.axhline(
            data.target_ma_min, color="black", lw=1.0, ls="--", label=f"target {data.target_ma_min:g} mA·min"
        )
        top_q = max(top_q, data.target_ma_min)
    if data.target_s is not None:
        ax_q.axvline(
            data.target_s / scale, color="black", lw=1.0, ls="--", label=f"prescribed {_clock(data.target_s)}"
        )
    if data.expected_ma_min is not None:
        ax_q.axhline(
            data.expected_ma_min,
            color="0.4",
            lw=1.0,
            ls=":",
            label=f"expected {data.expected_ma_min:.2f} mA·min",
        )
        top_q = max(top_q, data.expected_ma_min)
    if data.delivered_ma_min is not None:
        ax_q.annotate(
            f"delivered {data.delivered_ma_min:.2f} mA·min",
            xy=(0.99, 0.05),
            xycoords="axes fraction",
            ha="right",
            va="bottom",
            fontsize=10,
            fontweight="bold",
            color="C4",
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8},
        )
    ax_q.set_ylim(0.0, max(top_q * 1.15, 0.01))
    ax_q.set_ylabel("dose (mA·min)")
    ax_q.set_xlabel(f"time since the session started ({unit}, device time)")
    ax_q.legend(**legend_kw)

    # Events: lines through the panels, labels in the strip on non-overlapping rows.
    x_left = min(0.0, first) / scale
    x_right = max(last, data.target_s or 0.0, 1e-6) / scale
    x_span = max(x_right - x_left, 1e-9)
    groups = _group_events(data.events, span_s)
    texts = [event_label(codes) for _, codes in groups]
    # Width of a label in x units: about 0.6 em per character at 8 pt across the panel's width.
    panel_width_in = fig.get_figwidth() * 0.72
    char_x = x_span * (8 * 0.6 / 72) / panel_width_in
    widths = [len(text) * char_x + 0.01 * x_span for text in texts]
    # A label that would run past the right edge ends at its line instead of starting there.
    flip = [t / scale + w > x_right for (t, _), w in zip(groups, widths, strict=True)]
    lefts = [t / scale - (w if f else 0.0) for (t, _), w, f in zip(groups, widths, flip, strict=True)]
    rows = label_rows(lefts, widths)
    n_rows = max(rows, default=0) + 1
    for (t_event, codes), text, row, right in zip(groups, texts, rows, flip, strict=True):
        colour = "C3" if any(code in ALARM_EVENTS for code in codes) else "0.25"
        for ax in axes.panels:
            ax.axvline(t_event / scale, color=colour, lw=0.8, alpha=0.8, zorder=1)
        ax_e.axvline(t_event / scale, ymin=0, ymax=1 - (row + 0.2) / (n_rows + 0.5), color=colour, lw=0.8)
        ax_e.text(
            t_event / scale,
            1 - (row + 0.5) / (n_rows + 0.5),
            text + " " if right else " " + text,
            ha="right" if right else "left",
            va="center",
            fontsize=8,
            color=colour,
            fontweight="bold" if colour == "C3" else "normal",
            clip_on=False,
        )
    ax_e.set_ylim(0, 1)
    ax_e.set_yticks([])
    for side in ("left", "right", "top"):
        ax_e.spines[side].set_visible(False)
    ax_e.tick_params(labelbottom=False, bottom=False)
    ax_e.set_ylabel("events", rotation=0, ha="right", va="center")
    if seen_phases:
        ax_e.legend(
            handles=[Patch(color=PHASE_COLOURS[name], label=name) for name in seen_phases],
            title="phases",
            title_fontsize=8,
            **legend_kw,
        )
    for ax in axes.panels:
        ax.grid(True, lw=0.3, alpha=0.6)
        if ax is not ax_q:
            ax.tick_params(labelbottom=False)
    ax_q.set_xlim(x_left, x_right + 0.01 * x_span)
    return axes


def _clock(seconds: float) -> str:
    total = max(0, round(seconds))
    minutes, secs = divmod(total, 60)
    return f"{minutes}:{secs:02d}"


def session_figure(record: SessionRecord) -> tuple[Figure, SessionAxes]:
    """A new figure of the session (title and panels); the caller saves and closes it."""
    plt = _matplotlib()
    data = figure_data(record)
    fig = plt.figure(figsize=FIGURE_SIZE_IN)
    axes = draw_session(fig, data, rect=(0.09, 0.07, 0.80, 0.90))
    fig.suptitle(data.title, fontsize=10)
    return fig, axes


def plot_record(record: SessionRecord | str | Path, out_path: str | Path, *, dpi: int = PRINT_DPI) -> Path:
    """Draw the session figure to ``out_path`` (PNG at ``dpi``, or any format matplotlib infers from the
    suffix, e.g. ``.pdf``, ``.svg``).

    Raises:
        ImportError: matplotlib is not installed (``pip install iontodrive[plot]``).
        RecordFormatError / OSError: the record cannot be read.
    """
    if not isinstance(record, SessionRecord):
        record = SessionRecord.load(record)
    plt = _matplotlib()
    fig, _axes = session_figure(record)
    try:
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out


__all__ = [
    "FigureData",
    "SessionAxes",
    "draw_session",
    "figure_data",
    "phase_spans",
    "plot_record",
    "session_figure",
    "session_start_s",
]
