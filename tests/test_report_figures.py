"""The session figure, the PDF report and the CSV export, for every kind of session (records made by the
driver against the simulators, kept in ``tests/data/sessions``; ``tests/session_kinds.py`` remakes them).

Each figure is checked on what it drew: the lines and their order, the axis limits, the phase shading, the
trip and compliance marks, the target of either kind of session, the event labels (legible: horizontal, no two
overlapping) and the delivered figure - not just that a file appeared.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the figure needs matplotlib (pip install iontodrive[plot])")

import matplotlib

matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt
from matplotlib.patches import Polygon, Rectangle

from iontodrive.cli.report import summarize
from iontodrive.cli.report_csv import COLUMNS, write_csv
from iontodrive.cli.report_pdf import header_lines, record_caveats, write_pdf
from iontodrive.plotting import (
    PHASE_COLOURS,
    PRINT_DPI,
    SessionAxes,
    figure_data,
    label_rows,
    phase_spans,
    plot_record,
    session_figure,
)
from iontodrive.record import SessionRecord

DATA = Path(__file__).parent / "data" / "sessions"
KINDS = ("completed", "interrupted", "lift", "resistance", "pulsed", "visa")


def load(kind: str) -> SessionRecord:
    return SessionRecord.load(DATA / f"{kind}.jsonl")


def line(ax: Any, label: str) -> Any:
    found = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert found, f"no line {label!r} in {[ln.get_label() for ln in ax.get_lines()]}"
    return found[0]


def labels_of(ax: Any) -> list[str]:
    return [ln.get_label() for ln in ax.get_lines()]


def event_texts(axes: SessionAxes) -> list[Any]:
    return [t for t in axes.events.texts if t.get_text().strip()]


def shaded(axes: SessionAxes) -> set[str]:
    """The phases shaded in the current panel (by their colour)."""
    by_colour = {matplotlib.colors.to_hex(c): name for name, c in PHASE_COLOURS.items()}
    names = set()
    for patch in axes.current.patches:
        if isinstance(patch, Polygon | Rectangle):
            names.add(by_colour.get(matplotlib.colors.to_hex(patch.get_facecolor()[:3]), "?"))
    return names


@pytest.fixture(scope="module")
def figures() -> Any:
    drawn = {}
    for kind in KINDS:
        record = load(kind)
        fig, axes = session_figure(record)
        fig.canvas.draw()
        drawn[kind] = (record, fig, axes)
    yield drawn
    for _record, fig, _axes in drawn.values():
        plt.close(fig)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_draws_its_panels_with_setpoint_on_top(figures: Any, kind: str) -> None:
    record, _fig, axes = figures[kind]
    data = figure_data(record)
    pulsed = kind == "pulsed"
    measured = line(axes.current, "measured (average)" if pulsed else "measured")
    setpoint = line(axes.current, "set-point (pulse amplitude)" if pulsed else "set-point")
    assert setpoint.get_zorder() > measured.get_zorder()  # the set-point is drawn over the measured line
    assert setpoint.get_linestyle() != "-"  # dashed: the measured line shows through where they agree
    np.testing.assert_allclose(setpoint.get_ydata(), data.setpoint_ma)
    # The voltage axis is scaled to the data, not to the compliance limit.
    v_top = axes.voltage.get_ylim()[1]
    v_max = float(np.max(data.voltage_v))
    assert v_max < v_top
    if data.compliance_v is not None and data.compliance_v > 1.6 * v_max:
        assert v_top <= 1.3 * v_max
        assert any("compliance" in t.get_text() for t in axes.voltage.texts)
    elif data.compliance_v is not None:
        assert any(lbl.startswith("compliance") for lbl in labels_of(axes.voltage))
        assert data.compliance_v < v_top
    # The delivered figure as a number, the record's own.
    delivered = record.delivered_uas / 60_000
    assert any(t.get_text() == f"delivered {delivered:.2f} mA·min" for t in axes.dose.texts)
    # Phase shading through every panel, and named in the legend.
    assert shaded(axes) >= {"ramp up"}
    legend = axes.events.get_legend()
    assert legend is not None and {t.get_text() for t in legend.get_texts()} >= {"ramp up"}
    # Legends sit outside the panels (to the right), so they cover no data.
    for ax in axes.panels:
        box = ax.get_legend().get_window_extent()
        assert box.x0 >= ax.get_window_extent().x1


@pytest.mark.parametrize("kind", KINDS)
def test_event_labels_are_horizontal_legible_and_never_overlap(figures: Any, kind: str) -> None:
    _record, fig, axes = figures[kind]
    texts = event_texts(axes)
    assert texts and any("session started" in t.get_text() for t in texts)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    for t in texts:
        assert t.get_rotation() == 0 and t.get_fontsize() >= 8
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), "two event labels overlap"
    figure_box = fig.bbox
    for box in boxes:  # inside the page
        assert box.x0 >= figure_box.x0 - 1 and box.x1 <= figure_box.x1 + 1


def test_completed_dose_session_has_its_target_trip_and_phases(figures: Any) -> None:
    record, _fig, axes = figures["completed"]
    assert "target 2 mA·min" in labels_of(axes.dose)
    assert "trip 4.4 mA" in labels_of(axes.current)
    assert axes.current.get_ylim()[1] > 4.4  # the trip level is on the scale
    assert shaded(axes) == {"ramp up", "plateau", "ramp down"}
    assert record.summary["end_reason"] == "completed"


def test_interrupted_session_shows_the_early_ramp_down(figures: Any) -> None:
    record, _fig, axes = figures["interrupted"]
    data = figure_data(record)
    assert record.summary["end_reason"] == "interrupted"
    assert "ramp down" in shaded(axes)
    ramp = [s for s in data.phases if s[2] == "ramp down"]
    assert ramp and data.dose_ma_min[-1] < 0.9 * 4.0  # stopped well before the 4 mA·min target
    assert any("stopped" in t.get_text() for t in event_texts(axes))


def test_lift_is_an_alarm_label_and_a_paused_phase(figures: Any) -> None:
    _record, _fig, axes = figures["lift"]
    alarm = [t for t in event_texts(axes) if "electrode lift" in t.get_text()]
    assert alarm and matplotlib.colors.to_hex(alarm[0].get_color()) == matplotlib.colors.to_hex("C3")
    assert "paused" in shaded(axes)
    assert (
        "gaps: open circuit" in labels_of(axes.impedance)
        or np.isfinite(figure_data(_record).impedance_kohm).all()
    )


def test_resistance_limit_reaches_the_marked_compliance(figures: Any) -> None:
    record, _fig, axes = figures["resistance"]
    data = figure_data(record)
    assert any("resistance limit" in t.get_text() for t in event_texts(axes))
    compliance = line(axes.voltage, "compliance 60 V")
    assert compliance.get_ydata()[0] == 60.0
    assert float(np.max(data.voltage_v)) >= 0.95 * 60.0
    # The device held the highest current it could reach: the set-point fell while the voltage held.
    held = data.voltage_v >= 0.95 * 60.0
    assert float(np.min(data.setpoint_ma[held])) < 0.5 * 20.0


def test_time_based_pulsed_session_has_a_duration_target_and_expected_charge(figures: Any) -> None:
    record, _fig, axes = figures["pulsed"]
    data = figure_data(record)
    assert data.target_ma_min is None and data.target_s == 120.0
    prescribed = line(axes.dose, "prescribed 2:00")
    assert prescribed.get_xdata()[0] * axes.time_scale_s == 120.0
    expected = [lbl for lbl in labels_of(axes.dose) if lbl.startswith("expected ")]
    assert expected and data.expected_ma_min is not None
    assert abs(data.expected_ma_min - record.delivered_uas / 60_000) / data.expected_ma_min < 0.05
    assert "pulsed" in data.title.lower()
    assert axes.dose.get_xlim()[1] * axes.time_scale_s >= 120.0  # the prescribed end is on the axis


def test_visa_session_draws_without_a_trip_level(figures: Any) -> None:
    record, _fig, axes = figures["visa"]
    data = figure_data(record)
    assert data.trip_ma is None or f"trip {data.trip_ma:g} mA" in labels_of(axes.current)
    assert "Keithley" in data.title or "2450" in data.title
    assert shaded(axes) >= {"ramp up", "plateau", "ramp down"}


def test_a_protocol_version_1_record_still_draws_with_its_expected_charge() -> None:
    record = SessionRecord.load(DATA / "pulsed-v1.jsonl")  # written before protocol v2's identity fields
    assert "min_duty_percent" not in record.identity
    data = figure_data(record)
    assert data.expected_ma_min is not None and data.target_s == 120.0
    fig, axes = session_figure(record)
    plt.close(fig)
    assert any(lbl.startswith("expected ") for lbl in labels_of(axes.dose))


def test_png_is_print_resolution(tmp_path: Path) -> None:
    out = plot_record(DATA / "completed.jsonl", tmp_path / "f.png")
    data = out.read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    assert PRINT_DPI >= 200 and width >= 2000 and height >= 1600


def test_label_rows_and_phase_spans() -> None:
    assert label_rows([0.0, 1.0, 2.5, 2.6], [2.0, 2.0, 1.0, 1.0]) == [0, 1, 0, 2]
    t = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    states = np.array([1, 2, 2, 3, 5, 8])  # contact check, ramp up x2, hold, ramp down, done
    assert phase_spans(t, states) == [(1.0, 3.0, "ramp up"), (3.0, 4.0, "plateau"), (4.0, 5.0, "ramp down")]


# ------------------------------------------------------------------------------------------- PDF and CSV


def test_pdf_report_has_the_header_the_figure_and_the_events(tmp_path: Path) -> None:
    record = load("lift")
    summary = summarize(record)
    out = write_pdf(record, summary, tmp_path / "r.pdf")
    raw = out.read_bytes()
    assert raw.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", raw)) == 2
    rows = dict(header_lines(record, summary))
    assert rows["patient"] == "P-017" and rows["operator"] == "op-3"  # labels as the user gave them
    assert rows["outcome"] == "electrode lift"
    assert record.delivered_uas is not None
    assert rows["delivered"].startswith(f"{record.delivered_uas / 60_000:.3f} mA·min")
    assert "[device's figure]" in rows["delivered"]
    assert rows["device"].startswith("clinic-4, serial number 40001")
    assert record_caveats(record, summary) == []


def test_pdf_says_plainly_when_the_record_is_incomplete(tmp_path: Path) -> None:
    lines = (DATA / "completed.jsonl").read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[: len(lines) // 2]))
    record = SessionRecord.load(cut)
    summary = summarize(record)
    caveats = record_caveats(record, summary)
    assert caveats and "incomplete" in caveats[0] and "last telemetry sample" in caveats[0]
    assert "[last telemetry sample]" in dict(header_lines(record, summary))["delivered"]
    write_pdf(record, summary, tmp_path / "cut.pdf")  # draws an incomplete session too


def test_csv_export_is_the_telemetry_in_user_units() -> None:
    record = load("pulsed")
    out = io.StringIO()
    assert write_csv(record, out) == len(record.telemetry)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == COLUMNS and len(rows) == len(record.telemetry)
    data = figure_data(record)
    np.testing.assert_allclose([float(r["t_s"]) for r in rows], data.t_s, atol=1e-3)
    for row, sample in zip(rows, record.telemetry, strict=True):
        assert round(float(row["current_ma"]) * 1000) == sample["measured_ua"]
        assert round(float(row["dose_ma_min"]) * 60_000) == sample["charge_uas"]
        assert row["state"] == sample["state"]
