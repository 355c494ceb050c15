"""Rendering a :class:`~iontodrive.conformance.runner.SuiteReport`: one text row per rule, or JSON for CI.

The JSON layout is documented in ``docs/conformance.md`` §5 and versioned by ``format``.
"""

from __future__ import annotations

import json
from typing import Any

from .rule import Outcome, RuleResult
from .runner import REPORT_FORMAT, SUITE_NAME, SuiteReport

_MARK = {
    Outcome.PASS: "PASS",
    Outcome.FAIL: "FAIL",
    Outcome.NOT_APPLICABLE: "N/A",
    Outcome.ERROR: "ERROR",
    Outcome.NOT_RUN: "NOT RUN",
}


def header_lines(report: SuiteReport) -> list[str]:
    """Who was checked: port, model, serial, firmware, protocol version, speed."""
    ident = report.identity
    if ident is None:
        return [f"port {report.port}: no identity"]
    firmware = f"{ident.firmware_major}.{ident.firmware_minor}.{ident.firmware_patch}"
    fixture = f"; load fixture: {report.fixture}" if report.fixture else ""
    return [
        f"port {report.port}: {ident.model} serial {ident.serial_number}, firmware {firmware}, "
        f"protocol {ident.protocol_version}, device time x{report.speed:.2f} of the host clock{fixture}"
    ]


def row(result: RuleResult, width: int = 24, section_width: int = 36) -> str:
    """``ID  section  RESULT  evidence`` on one line (a rule needing a load is marked ``[load]``, one
    needing a load fixture ``[fixture]``)."""
    load = (" [load]" if result.needs_load else "") + (" [fixture]" if result.needs_fixture else "")
    mark = _MARK[result.outcome]
    return f"{result.rule_id:<{width}} {result.section:<{section_width}} {mark:<7} {result.evidence}{load}"


def summary_line(report: SuiteReport) -> str:
    """``N rules: a pass, b fail, ...`` and the verdict."""
    counts = report.counts()
    parts = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    verdict = "CONFORMS" if report.ok else "DOES NOT CONFORM"
    tail = f" ({report.fatal})" if report.fatal else ""
    return f"{len(report.results)} rules: {parts} in {report.duration_s:.1f} s: {verdict}{tail}"


def as_text(report: SuiteReport) -> str:
    """The whole report as text: header, one row per rule, the summary."""
    width = max((len(r.rule_id) for r in report.results), default=10)
    lines = header_lines(report)
    lines += [row(r, width) for r in report.results]
    lines.append(summary_line(report))
    return "\n".join(lines)


def as_dict(report: SuiteReport) -> dict[str, Any]:
    """The report as plain JSON-ready data (``docs/conformance.md`` §5)."""
    ident = report.identity
    device: dict[str, Any] | None = None
    if ident is not None:
        device = {
            "model": ident.model,
            "serial_number": ident.serial_number,
            "firmware": f"{ident.firmware_major}.{ident.firmware_minor}.{ident.firmware_patch}",
            "protocol_version": ident.protocol_version,
        }
    return {
        "suite": SUITE_NAME,
        "format": REPORT_FORMAT,
        "port": report.port,
        "started_utc": report.started_utc,
        "duration_s": round(report.duration_s, 3),
        "device": device,
        "device_speed": round(report.speed, 3),
        "fixture": report.fixture,
        "ok": report.ok,
        "fatal": report.fatal,
        "counts": report.counts(),
        "rules": [
            {
                "id": r.rule_id,
                "section": r.section,
                "description": r.description,
                "result": r.outcome.value,
                "evidence": r.evidence,
                "needs_load": r.needs_load,
                "needs_fixture": r.needs_fixture,
                "duration_s": round(r.duration_s, 3),
            }
            for r in report.results
        ],
    }


def as_json(report: SuiteReport) -> str:
    """:func:`as_dict` as indented JSON text."""
    return json.dumps(as_dict(report), indent=2, ensure_ascii=False)
