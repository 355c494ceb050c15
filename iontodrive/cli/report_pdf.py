"""``report --pdf``: a session report a clinic can file (A4 pages, matplotlib's PDF backend).

Page 1: the header - prescription, device (model, serial number, firmware), the labels exactly as the user
gave them (``--label patient=... --label operator=...``), start and end (wall clock), how the session ended,
the delivered dose and the time as numbers (the device's figures: the record's summary, which the driver takes
from the device), the dose against its target, and a plain statement when the host's record is incomplete or
damaged - then the session figure (:mod:`iontodrive.plotting`). Following pages: every event with its time
since the session started, as ``report`` lists them. Each page has a footer with the record's path and the
page number.
"""

from __future__ import annotations

import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

from iontodrive.cli import fmt
from iontodrive.plotting import ALARM_EVENTS, draw_session, figure_data
from iontodrive.record import SessionRecord

A4_IN = (8.27, 11.69)
EVENTS_PER_PAGE = 48
WRAP = 95


MAX_PROBLEMS_SHOWN = 5


def record_caveats(record: SessionRecord, summary: dict[str, Any]) -> list[str]:
    """Plain sentences on what the host's record lacks (empty when it is whole): where it was cut
    (``record.truncated``), and the lines that had to be skipped (``record.problems``)."""
    notes: list[str] = []
    cut = getattr(record, "truncated", None)
    if cut is not None or not summary["complete"]:
        where = str(cut) if cut is not None else "no summary line"
        notes.append(
            f"The host's record is incomplete ({where}). The delivered dose shown is the last telemetry "
            "sample, not the device's final figure; `Stimulator.recover(path)` completes the record from "
            "the device."
        )
    problems = list(getattr(record, "problems", None) or [])
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        notes.append(f"Skipped in the record: {problem}.")
    if len(problems) > MAX_PROBLEMS_SHOWN:
        notes.append(
            f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more skipped lines (`iontodrive report`)."
        )
    if summary.get("recoveries"):
        notes.append(
            "Part of this record was completed after the host reconnected (events fetched from the device)."
        )
    return notes


def header_lines(record: SessionRecord, summary: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, text)`` rows of the page header."""
    d = summary["device"]
    rows = [
        ("prescription", summary["prescription_text"] or str(summary["prescription"])),
        ("device", f"{d['model']}, serial number {d['serial_number']}, firmware {d['firmware']}"),
    ]
    for key, value in summary["labels"].items():
        rows.append((key, str(value)))
    rows.append(("started", _when(summary["started_at"])))
    ended = summary["ended_at"]
    took = f" ({fmt.duration(summary['duration_s'])} wall clock)" if summary["duration_s"] is not None else ""
    rows.append(("ended", (_when(ended) if ended else "not recorded") + took))
    outcome = summary["outcome"] + (f" ({summary['detail']})" if summary.get("detail") else "")
    rows.append(("outcome", outcome.replace("_", " ")))
    delivered = summary["delivered_ma_min"]
    if delivered is None:
        rows.append(("delivered", "unknown (no summary and no telemetry)"))
    else:
        text = f"{delivered:.3f} mA·min ({delivered * 60:.1f} mC)"
        if summary["target_ma_min"]:
            text += (
                f" of {summary['target_ma_min']:.3f} mA·min {summary['target_kind']}, "
                f"{fmt.signed_percent(summary['dose_error_percent'])}"
            )
        source = "device's figure" if summary["complete"] else "last telemetry sample"
        rows.append(("delivered", f"{text}  [{source}]"))
    on_time = (record.summary or {}).get("on_time_s")
    if on_time is not None:
        rows.append(("output on", f"{fmt.duration(float(on_time))} (m:s, device time)"))
    if summary["device_time_s"] is not None:
        rows.append(
            (
                "telemetry",
                f"{fmt.duration(summary['device_time_s'])} of device time, "
                f"{summary['telemetry_samples']} samples",
            )
        )
    rows.append(("record", summary["record"]))
    return rows


def _when(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return iso


def _footer(fig: Any, record_path: str, page: int, pages: int) -> None:
    from iontodrive import __version__

    fig.text(0.06, 0.02, f"{record_path}  ·  iontodrive {__version__}", fontsize=7, color="0.4")
    fig.text(0.94, 0.02, f"page {page} of {pages}", fontsize=7, color="0.4", ha="right")


def write_pdf(record: SessionRecord, summary: dict[str, Any], out_path: str | Path) -> Path:
    """Write the report to ``out_path``; return it.

    Raises:
        ImportError: matplotlib is not installed (``pip install iontodrive[plot]``).
        OSError: the file cannot be written.
    """
    from iontodrive.plotting import _matplotlib

    plt = _matplotlib()
    from matplotlib.backends.backend_pdf import PdfPages

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    events = summary["events"]
    event_pages = max(1, -(-len(events) // EVENTS_PER_PAGE))
    pages = 1 + event_pages
    with PdfPages(out, metadata={"Title": "Iontophoresis session report", "Creator": "iontodrive"}) as pdf:
        fig = plt.figure(figsize=A4_IN)
        try:
            fig.text(0.06, 0.965, "Iontophoresis session report", fontsize=15, fontweight="bold", va="top")
            y = 0.935
            for label, text in header_lines(record, summary):
                lines = textwrap.wrap(text, WRAP) or [""]
                fig.text(0.06, y, label, fontsize=8.5, color="0.35", va="top")
                fig.text(0.20, y, "\n".join(lines), fontsize=8.5, va="top")
                y -= 0.0155 * len(lines)
            for caveat in record_caveats(record, summary):
                lines = textwrap.wrap(caveat, WRAP + 12)
                fig.text(0.06, y, "\n".join(lines), fontsize=8.5, color="C3", fontweight="bold", va="top")
                y -= 0.0155 * len(lines)
            data = figure_data(record)
            draw_session(fig, data, rect=(0.11, 0.085, 0.78, y - 0.04))
            _footer(fig, summary["record"], 1, pages)
            pdf.savefig(fig)
        finally:
            plt.close(fig)
        for page in range(event_pages):
            chunk = events[page * EVENTS_PER_PAGE : (page + 1) * EVENTS_PER_PAGE]
            fig = plt.figure(figsize=A4_IN)
            try:
                fig.text(0.06, 0.965, f"Events ({len(events)})", fontsize=13, fontweight="bold", va="top")
                fig.text(
                    0.06,
                    0.94,
                    "time since the session started (device time), event number, event",
                    fontsize=8,
                )
                y = 0.915
                for e in chunk:
                    mark = "  (fetched after reconnecting)" if e["recovered"] else ""
                    colour = "C3" if e["code"] in ALARM_EVENTS else "black"
                    fig.text(0.06, y, f"{fmt.duration(e['t_s'])}", fontsize=8.5, family="monospace", va="top")
                    fig.text(0.13, y, f"{e['t_s']:9.2f} s", fontsize=8.5, family="monospace", va="top")
                    fig.text(0.25, y, f"#{e['event_no']}", fontsize=8.5, family="monospace", va="top")
                    fig.text(0.32, y, e["text"] + mark, fontsize=8.5, va="top", color=colour)
                    y -= 0.0175
                if not chunk:
                    fig.text(0.06, y, "no events in the record", fontsize=8.5)
                _footer(fig, summary["record"], 2 + page, pages)
                pdf.savefig(fig)
            finally:
                plt.close(fig)
    return out
