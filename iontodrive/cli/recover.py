"""``iontodrive recover RECORD [PORT]`` and ``iontodrive resume RECORD PORT`` (issue 19 item 5).

``recover`` completes a record left unfinished (the host died, the link was lost) from the device: the
events the host missed, the device's session brought to its end at zero output, the device's own final
charge in the summary. It never marks a record complete against the device's charge unless the device
confirms the session ended (DONE, IDLE or FAULT, output at zero); without PORT it only says how the record
stands (the device is the authority: nothing is completed without it).

``resume`` delivers the remaining dose of an interrupted or paused session as a new, linked part
(:mod:`iontodrive.sessions.resume`): it completes the last part from the device first if needed, then
runs a new contact check and ramps up from zero, with the live display of ``deliver``. Current never comes
back any other way.

Exit codes as every command (:mod:`iontodrive.cli.exitcodes`); besides: a record whose device is not the
one on PORT, or whose remainder cannot be known, exits 3 (refused, nothing changed); nothing left to
deliver exits 0 with a line saying so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from iontodrive.cli import exitcodes
from iontodrive.cli.device import PORT_HELP
from iontodrive.cli.ports_open import add_reconnect_option
from iontodrive.units import UAS_PER_MA_MIN

__all__ = ["add_parser", "run_recover", "run_resume"]

ENDED_STATES = ("DONE", "IDLE", "FAULT")


def add_parser(subparsers: Any) -> None:
    recover = subparsers.add_parser(
        "recover",
        help="complete an unfinished session record from the device",
        description=(
            "Complete a session record left unfinished (host killed, link lost): fetch what the device did "
            "while the host was away, bring its session to an end at zero output (a paused session ends "
            "without any change of output; a running one ramps down), and write the device's own final "
            "charge as the summary. The record is marked complete only when the device confirms the session "
            "ended. Without PORT, only says how the record stands."
        ),
    )
    recover.add_argument("record", metavar="RECORD", help="the session record (JSON Lines)")
    recover.add_argument("port", metavar="PORT", nargs="?", help=PORT_HELP)
    recover.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    recover.set_defaults(func=run_recover)

    resume = subparsers.add_parser(
        "resume",
        help="deliver the remaining dose of an interrupted or paused session (a new contact check, a ramp)",
        description=(
            "Deliver what is left of a dose-based session whose last part is RECORD (after an electrode "
            "lift, a lost link, a stop): the record is completed from the device first if needed, then the "
            "rest is delivered as a new session linked to it (its record's labels name the part it "
            "continues), with a new contact check and a ramp up from zero. `iontodrive recover RECORD` "
            "(without PORT) shows the combined dose of the parts. Only the session's own device (same serial "
            "number and model) is used."
        ),
    )
    resume.add_argument("record", metavar="RECORD", help="the last part's session record (JSON Lines)")
    resume.add_argument("port", metavar="PORT", help=PORT_HELP)
    resume.add_argument(
        "--record",
        dest="new_record",
        metavar="PATH",
        help="record of the new part (must not exist; default: a new file in your private data directory)",
    )
    resume.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="extra label for the new part"
    )
    add_reconnect_option(resume)
    resume.add_argument("--json", action="store_true", help="print one JSON result on stdout at the end")
    resume.add_argument("--quiet", action="store_true", help="no live display; only the final lines")
    resume.add_argument(
        "--interval-s",
        type=float,
        default=1.0,
        metavar="S",
        help="when output is not a terminal: seconds between plain progress lines (default: 1)",
    )
    resume.set_defaults(func=run_resume)


# ------------------------------------------------------------------------------------------ recover


def _record_state(record: Any) -> dict[str, Any]:
    chain = record.chain()
    summary = record.summary or {}
    return {
        "record": str(record.path),
        "complete": record.complete,
        "delivered_uas": record.delivered_uas,
        "end_state": summary.get("end_state"),
        "end_reason": summary.get("end_reason"),
        "device_confirmed": summary.get("device_confirmed"),
        "dose_source": summary.get("dose_source"),
        "chain_parts": len(chain.parts),
        "chain_delivered_uas": chain.delivered_uas,
        "chain_prescribed_uas": chain.prescribed_uas,
        "chain_device_confirmed": chain.device_confirmed,
    }


def _print_state(state: dict[str, Any], *, json_out: bool, lead: str) -> None:
    if json_out:
        print(json.dumps(state, indent=2))
        return
    print(lead)
    delivered = state["delivered_uas"]
    if delivered is not None:
        how = (
            "the device's own count" if state["device_confirmed"] else (state["dose_source"] or "last figure")
        )
        print(f"delivered: {delivered / UAS_PER_MA_MIN:.3f} mA·min ({how})")
    if state["chain_parts"] > 1:
        prescribed = state["chain_prescribed_uas"]
        of = "" if prescribed is None else f" of {prescribed / UAS_PER_MA_MIN:g}"
        combined = state["chain_delivered_uas"] / UAS_PER_MA_MIN
        print(f"session in {state['chain_parts']} parts: {combined:.3f}{of} mA·min delivered in all")
    print(f"record: {state['record']}")


def run_recover(args: argparse.Namespace) -> int:
    from iontodrive.record import SessionRecord
    from iontodrive.sessions.reconnect import DifferentDeviceError, check_same_device

    record = SessionRecord.load(args.record)
    if record.complete:
        _print_state(_record_state(record), json_out=args.json, lead="the record is complete already")
        return exitcodes.OK
    if args.port is None:
        _print_state(
            _record_state(record),
            json_out=args.json,
            lead="the record is INCOMPLETE: give PORT to complete it from the device (nothing is completed "
            "without it)",
        )
        return exitcodes.USAGE
    from iontodrive.cli.ports_open import open_for

    with open_for(args) as stim:
        try:
            check_same_device(record.identity, stim.identity, stim.url)
        except DifferentDeviceError as exc:
            return _refused(args, exc)
        recovered = stim.recover(args.record)
    state = _record_state(recovered)
    ended = state["end_state"] in ENDED_STATES
    if not recovered.complete or (state["device_confirmed"] and not ended):
        _print_state(state, json_out=args.json, lead="the record could NOT be completed")
        return exitcodes.FAILURE
    lead = (
        f"record completed: the device confirms the session ended ({state['end_state']})"
        if state["device_confirmed"]
        else "record completed from its own last figure: the device no longer holds the session (restarted)"
    )
    _print_state(state, json_out=args.json, lead=lead)
    return exitcodes.OK


def _refused(args: argparse.Namespace, exc: Exception) -> int:
    from iontodrive.cli import error_line

    print(f"iontodrive: {error_line(exc, exitcodes.REFUSED)}", file=sys.stderr)
    return exitcodes.REFUSED


# ------------------------------------------------------------------------------------------- resume


def run_resume(args: argparse.Namespace) -> int:
    from iontodrive.cli.deliver import InterruptGuard, display_logging, parse_labels
    from iontodrive.cli.display import LiveDisplay
    from iontodrive.cli.ports_open import open_for
    from iontodrive.record import SessionRecord, check_record_path
    from iontodrive.sessions.reconnect import DifferentDeviceError
    from iontodrive.sessions.resume import NothingToResumeError, ResumeRefusedError, resume_session
    from iontodrive.sessions.waiting import sigterm_as_exception

    labels = parse_labels(args.label)
    if not (math.isfinite(args.interval_s) and args.interval_s > 0):
        raise exitcodes.UsageError(
            f"--interval-s = {args.interval_s} is out of range: must be a finite number > 0"
        )
    new_record = Path(args.new_record) if args.new_record else None
    if new_record is not None:
        if new_record.exists():
            raise exitcodes.UsageError(f"--record {new_record}: file exists (a record is never overwritten)")
        check_record_path(new_record, option="--record")
    # a missing or unreadable record fails here, before the port is opened
    ramp_down_s = float(SessionRecord.load(args.record).chain().head.prescription.get("ramp_down_s", 30.0))
    stream = sys.stderr if args.json else sys.stdout
    display = LiveDisplay(stream, tty=stream.isatty(), interval_s=args.interval_s, notice_stream=sys.stderr)
    result: Any = None
    session: Any = None
    with display_logging(display), InterruptGuard(display, ramp_down_s), sigterm_as_exception():
        try:
            with open_for(args) as stim:
                try:
                    session = resume_session(
                        stim,
                        args.record,
                        new_record_path=new_record,
                        labels=labels,
                        on_progress=None if args.quiet else display.progress,
                        on_alarm=lambda text: display.notice(f"ALARM: {text}"),
                    )
                except NothingToResumeError as exc:
                    display.close()
                    print(f"nothing to resume: {exc.reason}")
                    return exitcodes.OK
                except (DifferentDeviceError, ResumeRefusedError) as exc:
                    display.close()
                    return _refused(args, exc)
                if not args.quiet:
                    display.message(stim.description)
                    display.message(f"resuming: {session.prescription.describe()}")
                    display.message(f"record: {session.record_path}")
                try:
                    result = session.wait()
                finally:
                    display.close()
        finally:
            display.close()
    record = result if result is not None else SessionRecord.load(session.record_path)
    chain = record.chain()
    if args.json:
        print(
            json.dumps(
                {
                    "record": str(record.path),
                    "account": None if session.account is None else session.account.to_dict(),
                    "chain": [str(p.path) for p in chain.parts],
                    "chain_delivered_uas": chain.delivered_uas,
                    "chain_prescribed_uas": chain.prescribed_uas,
                    "chain_device_confirmed": chain.device_confirmed,
                },
                indent=2,
            )
        )
    else:
        account = session.account
        if account is not None:
            print(f"outcome: {account.outcome.value}; this part {account.delivered_ma_min:.3f} mA·min")
        print(f"session: {chain.describe()}")
        print(f"record: {record.path}")
    return exitcodes.OK
