"""``iontodrive report``: summary of a session record, and its figure."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from iontodrive.cli import exitcodes, fmt

UAS_PER_MA_MIN = 60_000


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="summarise a session record; --plot draws current, voltage, impedance and dose",
        description=(
            "Summarise a session record written by `deliver` (or by Stimulator.deliver): prescription, "
            "device, labels, start and end times, delivered dose against the target with the error in "
            "percent, how the session ended, and every event. A record left without a summary (host killed "
            "mid-session) is reported as incomplete with the dose from its last telemetry sample."
        ),
    )
    parser.add_argument("record", metavar="RECORD", help="session record file (.jsonl)")
    parser.add_argument(
        "--plot",
        metavar="OUT.png",
        help="write a figure: current, voltage, impedance and dose against time, events marked, "
        "prescription in the title (needs matplotlib: pip install iontodrive[plot])",
    )
    parser.add_argument(
        "--pdf",
        metavar="OUT.pdf",
        help="write a report a clinic can file (A4): prescription, device, labels, dose and time as numbers, "
        "the figure, and every event (needs matplotlib)",
    )
    parser.add_argument(
        "--csv",
        metavar="OUT.csv",
        help="export the telemetry as CSV in user units (t_s since the session started, mA, V, ohm, "
        "mA·min); '-' writes to stdout",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument(
        "--no-events", action="store_true", help="leave the event list out of the text summary"
    )
    parser.set_defaults(func=run)


def summarize(record: Any) -> dict[str, Any]:
    """Everything ``report`` prints, as a JSON-friendly dict (also the ``session`` of ``deliver --json``).

    Dose error: for a dose-based session against the prescribed dose; for a time-based one against the
    charge the driver predicts for the prescription on this device (``target_kind`` says which).
    """
    from iontodrive.plotting import identity_report
    from iontodrive.prescription import Prescription

    p = record.prescription
    identity = record.identity
    description = None
    plan_charge = None
    try:
        prescription = Prescription.from_dict(p)
        description = prescription.describe()
        report_identity = identity_report(identity)
        if report_identity is not None:
            plan_charge = prescription.expected_plan(report_identity).charge_uas
    except Exception:  # a record from another version: show what is there
        prescription = None
    delivered_uas = record.delivered_uas
    if p.get("dose_ma_min") is not None:
        target_ma_min: float | None = float(p["dose_ma_min"])
        target_kind = "prescribed dose"
    elif plan_charge is not None:
        target_ma_min = plan_charge / UAS_PER_MA_MIN
        target_kind = "expected charge for the prescribed time"
    else:
        target_ma_min, target_kind = None, None
    delivered_ma_min = None if delivered_uas is None else delivered_uas / UAS_PER_MA_MIN
    error_pct = None
    if delivered_ma_min is not None and target_ma_min:
        error_pct = 100.0 * (delivered_ma_min - target_ma_min) / target_ma_min
    summary = record.summary or {}
    started: datetime | None = record.started_at  # None when the header line is unreadable
    ended = record.ended_at
    from iontodrive.plotting import session_start_s

    t0 = session_start_s(record)
    events = [
        {
            "t_s": round(e["device_time_ms"] / 1000.0 - t0, 3),
            "event_no": e["event_no"],
            "code": e["code"],
            "state": e["state"],
            "value": e["value"],
            "text": fmt.describe_event(e["code"], e["value"], e["state"]),
            "recovered": bool(e.get("recovered", False)),
        }
        for e in record.events
    ]
    device_span = None
    if record.telemetry:
        device_span = (record.telemetry[-1]["device_time_ms"] - record.telemetry[0]["device_time_ms"]) / 1000
    return {
        "record": str(record.path),
        "complete": record.complete,
        "truncated_last_line": record.truncated_last_line,
        "truncated": None if getattr(record, "truncated", None) is None else str(record.truncated),
        "problems": [str(problem) for problem in getattr(record, "problems", [])],
        "outcome": summary.get("end_reason", "incomplete"),
        "detail": summary.get("detail"),
        "prescription": p,
        "prescription_text": description,
        "device": {
            "model": identity.get("model"),
            "serial_number": identity.get("serial_number"),
            "firmware": ".".join(
                str(identity.get(k, "?")) for k in ("firmware_major", "firmware_minor", "firmware_patch")
            ),
        },
        "labels": dict(record.labels),
        "started_at": None if started is None else started.isoformat(),
        "ended_at": None if ended is None else ended.isoformat(),
        "duration_s": None if ended is None or started is None else (ended - started).total_seconds(),
        "device_time_s": device_span,
        "delivered_ma_min": delivered_ma_min,
        "target_ma_min": target_ma_min,
        "target_kind": target_kind,
        "dose_error_percent": error_pct,
        "telemetry_samples": len(record.telemetry),
        "events": events,
        "recoveries": len(record.recoveries),
    }


def summary_lines(s: dict[str, Any], *, events: bool = True) -> list[str]:
    """The text report."""
    lines = [f"record        {s['record']}" + ("" if s["complete"] else "  (INCOMPLETE: no summary line)")]
    if s.get("truncated"):
        lines.append(f"record cut    {s['truncated']}")
    for problem in s.get("problems", []):
        lines.append(f"skipped       {problem}")
    lines.append(f"prescription  {s['prescription_text'] or json.dumps(s['prescription'])}")
    d = s["device"]
    lines.append(f"device        {d['model']} #{d['serial_number']} firmware {d['firmware']}")
    if s["labels"]:
        lines.append("labels        " + ", ".join(f"{k}={v}" for k, v in s["labels"].items()))
    lines.append(f"started       {s['started_at']}")
    ended = s["ended_at"] or "-"
    took = f"  ({fmt.duration(s['duration_s'])} wall clock)" if s["duration_s"] is not None else ""
    lines.append(f"ended         {ended}{took}")
    if s["device_time_s"] is not None:
        lines.append(
            f"device time   {fmt.duration(s['device_time_s'])} of telemetry "
            f"({s['telemetry_samples']} samples)"
        )
    if s["delivered_ma_min"] is None:
        lines.append("delivered     unknown (no summary and no telemetry)")
    else:
        text = f"delivered     {s['delivered_ma_min']:.3f} mA·min"
        if s["target_ma_min"]:
            text += (
                f" of {s['target_ma_min']:.3f} mA·min {s['target_kind']}"
                f"  (error {fmt.signed_percent(s['dose_error_percent'])})"
            )
        lines.append(text)
    outcome = s["outcome"] + (f" ({s['detail']})" if s.get("detail") else "")
    lines.append(f"outcome       {outcome}")
    if events:
        lines.append(f"events        {len(s['events'])}")
        for e in s["events"]:
            mark = "  (fetched after reconnecting)" if e["recovered"] else ""
            lines.append(f"  {e['t_s']:9.2f} s  #{e['event_no']:<4} {e['text']}{mark}")
    return lines


def run(args: argparse.Namespace) -> int:
    from iontodrive.record import SessionRecord

    path = Path(args.record)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such record")
    record = SessionRecord.load(path)
    summary = summarize(record)
    plot_path = pdf_path = None
    if args.plot:
        from iontodrive.plotting import plot_record

        plot_path = plot_record(record, args.plot)
        summary["plot"] = str(plot_path)
    if args.pdf:
        from iontodrive.cli.report_pdf import write_pdf

        pdf_path = write_pdf(record, summary, args.pdf)
        summary["pdf"] = str(pdf_path)
    csv_rows = None
    if args.csv:
        from iontodrive.cli.report_csv import export_csv

        csv_rows = export_csv(record, args.csv)
        if args.csv == "-":
            return exitcodes.OK  # stdout holds the CSV alone
        summary["csv"] = str(args.csv)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for line in summary_lines(summary, events=not args.no_events):
            print(line)
        if plot_path is not None:
            print(f"plot          {plot_path}")
        if pdf_path is not None:
            print(f"pdf           {pdf_path}")
        if csv_rows is not None:
            print(f"csv           {args.csv} ({csv_rows} rows)")
    return exitcodes.OK
