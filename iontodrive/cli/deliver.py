"""``iontodrive deliver``: run a whole session with a live display.

Ctrl-C: the first one raises KeyboardInterrupt in the main thread, which the driver's ``Session.wait``
turns into a ramped stop; later ones only print a notice (they never raise), so nothing can cut the
ramp-down short. SIGTERM is handled by the driver in the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from iontodrive.cli import exitcodes, fmt
from iontodrive.cli.device import PORT_HELP
from iontodrive.cli.display import DisplayLogHandler, LiveDisplay, live_wanted
from iontodrive.cli.ports_open import add_reconnect_option, open_for

SESSION_TELEMETRY_HZ = 10


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "deliver",
        help="run a session: contact check, ramp up, hold, ramp down, with live progress",
        description=(
            "Run one session: the driver checks the prescription against the device's hard limits and "
            "the safety rules, checks contact, starts, and shows live progress (dose bar, time left, "
            "current, voltage, impedance, state, events) until output is back at zero. Give --current-ma "
            "and exactly one of --dose-ma-min / --duration-s (and --polarity), or a --preset with any "
            "field overridden. Ctrl-C ramps the output down over the ramp-down time (a second Ctrl-C does "
            "not skip the ramp) and exits with code 130. The session record (JSON Lines) is written as it "
            "happens."
        ),
    )
    parser.add_argument("port", metavar="PORT", help=PORT_HELP)
    parser.add_argument(
        "--preset",
        metavar="NAME",
        help="start from a named prescription (see `iontodrive presets`); explicit options override it",
    )
    parser.add_argument("--current-ma", type=float, metavar="MA", help="target current in mA (milliampere)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--dose-ma-min",
        type=float,
        metavar="MA_MIN",
        help="dose-based session: charge to deliver in mA·min, ramps included (1 mA·min = 60 mC)",
    )
    length.add_argument(
        "--duration-s",
        type=float,
        metavar="S",
        help="time-based session: total time in seconds with output on, ramps included",
    )
    parser.add_argument(
        "--ramp-up-s",
        type=float,
        metavar="S",
        help="ramp-up time in seconds, 5-60 (default: 30, or the preset's)",
    )
    parser.add_argument(
        "--ramp-down-s",
        type=float,
        metavar="S",
        help="ramp-down time in seconds, 5-60; also used by Ctrl-C (default: 30, or the preset's)",
    )
    parser.add_argument(
        "--polarity",
        choices=("cathode", "anode"),
        help="active (drug) electrode; dexamethasone goes from the cathode (required without a preset)",
    )
    parser.add_argument(
        "--waveform", choices=("dc", "pulsed-dc"), help="output waveform (default: dc, or the preset's)"
    )
    parser.add_argument(
        "--pulse-hz",
        type=int,
        metavar="HZ",
        help="pulse frequency in Hz for pulsed DC (model range: see info)",
    )
    parser.add_argument(
        "--duty", type=int, metavar="PERCENT", help="pulsed-DC duty cycle in percent, 10-90 (default: 50)"
    )
    parser.add_argument(
        "--area-cm2",
        type=float,
        metavar="CM2",
        help="active electrode area in cm²: enables the density check (warn > 0.5, refuse > 2 mA/cm²)",
    )
    parser.add_argument(
        "--record",
        metavar="PATH",
        help="session record to write (JSON Lines; must not exist; default: a new file in your private "
        "iontodrive data directory)",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="operator label stored in the record (repeatable), e.g. --label patient=P-017 --label site=arm",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON result on stdout at the end (the live display goes to stderr)",
    )
    parser.add_argument(
        "--interval-s",
        type=float,
        default=1.0,
        metavar="S",
        help="when output is not a terminal: seconds (wall time) between plain progress lines (default: 1)",
    )
    parser.add_argument(
        "--telemetry-hz",
        type=int,
        default=SESSION_TELEMETRY_HZ,
        metavar="HZ",
        help="telemetry rate during the session, per second of device time; feeds the display and the record "
        f"(default: {SESSION_TELEMETRY_HZ})",
    )
    add_reconnect_option(parser)
    parser.add_argument("--quiet", action="store_true", help="no live display; only the final summary")
    parser.set_defaults(func=run)


# ------------------------------------------------------------------------------------------ arguments


def parse_labels(items: list[str]) -> dict[str, str]:
    """``["patient=P1", "site=left arm"]`` -> ``{"patient": "P1", "site": "left arm"}``."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise exitcodes.UsageError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Prescription fields given explicitly on the command line (None = not given)."""
    return {
        "current_ma": args.current_ma,
        "dose_ma_min": args.dose_ma_min,
        "duration_s": args.duration_s,
        "ramp_up_s": args.ramp_up_s,
        "ramp_down_s": args.ramp_down_s,
        "polarity": args.polarity,
        "waveform": None if args.waveform is None else args.waveform.replace("-", "_"),
        "pulse_frequency_hz": args.pulse_hz,
        "duty_percent": args.duty,
        "electrode_area_cm2": args.area_cm2,
    }


def prescription_from(args: argparse.Namespace) -> Any:
    """The Prescription to deliver: a preset with overrides, or the explicit options alone.

    Raises:
        UsageError: required options are missing (exit code 2).
        PresetError: unknown preset (exit code 2).
        SafetyRefusal: a value is out of range (exit code 3).
    """
    from iontodrive.presets import build_prescription

    overrides = overrides_from(args)
    if args.preset is None:
        missing = [
            option
            for option, present in (
                ("--current-ma", overrides["current_ma"] is not None),
                (
                    "--dose-ma-min or --duration-s",
                    args.dose_ma_min is not None or args.duration_s is not None,
                ),
                ("--polarity", overrides["polarity"] is not None),
            )
            if not present
        ]
        if missing:
            raise exitcodes.UsageError(f"deliver needs {', '.join(missing)} (or a --preset)")
    if overrides["pulse_frequency_hz"] is not None and overrides["waveform"] is None:
        overrides["waveform"] = "pulsed_dc"
    return build_prescription(args.preset, overrides)


# ------------------------------------------------------------------------------------------- Ctrl-C


class InterruptGuard:
    """SIGINT handler for the duration of a session.

    The first Ctrl-C prints what happens and raises KeyboardInterrupt (the driver then ramps down); every
    later one prints a notice and returns, so it can never interrupt the ramp-down or the clean-up.
    """

    def __init__(self, display: LiveDisplay, ramp_down_s: float) -> None:
        self._display = display
        self._ramp_down_s = ramp_down_s
        self.count = 0
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._installed:
            return
        self._installed = False
        if self.count:
            # Already stopping: a late Ctrl-C while the command finishes must not kill it half-way (with a
            # traceback, an unwritten summary). Keep ignoring SIGINT until the process exits.
            signal.signal(signal.SIGINT, self._late)
            return
        previous = self._previous if self._previous is not None else signal.default_int_handler
        signal.signal(signal.SIGINT, previous)

    def _late(self, signum: int, frame: FrameType | None) -> None:
        self._display.notice("Ctrl-C again: the output is already at zero; finishing the record.")

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            self._display.notice(
                f"Ctrl-C: stopping. Ramping the output down to 0 mA over {self._ramp_down_s:g} s "
                "(device time); the output is not cut. Pressing Ctrl-C again will not skip the ramp."
            )
            raise KeyboardInterrupt
        self._display.notice("Ctrl-C again: still ramping down; the ramp-down is not skipped.")


class _DropDriverInterruptNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from iontodrive.sessions.waiting import INTERRUPT_MESSAGES, logger

        return not (record.name == logger.name and record.msg in INTERRUPT_MESSAGES)


@contextlib.contextmanager
def display_logging(display: LiveDisplay) -> Iterator[None]:
    """Route WARNING+ log records through the display while it is live (so they do not tear its line)."""
    root = logging.getLogger()
    cli_handlers = [h for h in root.handlers if getattr(h, "_iontodrive_cli", False)]
    handler = DisplayLogHandler(display)
    level = root.level
    if cli_handlers:
        handler.setFormatter(cli_handlers[0].formatter)
        handler.setLevel(min(h.level for h in cli_handlers) or logging.NOTSET)
        for log_filter in cli_handlers[0].filters:
            handler.addFilter(log_filter)
    handler.addFilter(_DropDriverInterruptNotices())
    for h in cli_handlers:
        root.removeHandler(h)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for h in cli_handlers:
            root.addHandler(h)
        root.setLevel(level)


# ------------------------------------------------------------------------------------------------ run


def run(args: argparse.Namespace) -> int:
    from iontodrive.cli.report import summarize
    from iontodrive.errors import SessionInterrupted
    from iontodrive.record import SessionRecord

    prescription = prescription_from(args)
    labels = parse_labels(args.label)
    if not (math.isfinite(args.interval_s) and args.interval_s > 0):  # NaN fails every comparison
        raise exitcodes.UsageError(
            f"--interval-s = {args.interval_s} is out of range: must be a finite number > 0"
        )
    if args.telemetry_hz < 1:
        raise exitcodes.UsageError("--telemetry-hz must be >= 1")
    from iontodrive.record import check_record_path, default_record_path

    record_path = Path(args.record) if args.record else None
    if record_path is not None and record_path.exists():
        raise exitcodes.UsageError(f"--record {record_path}: file exists (a record is never overwritten)")
    if record_path is not None:
        check_record_path(record_path, option="--record")  # before anything is sent to the device

    stream = sys.stderr if args.json else sys.stdout
    # h17 (issue 17): the live view only on a terminal, never with --json or NO_COLOR.
    live = live_wanted(stream, plain=args.json) and not args.quiet
    display = LiveDisplay(stream, tty=live, interval_s=args.interval_s, notice_stream=sys.stderr)
    error: BaseException | None = None
    code = exitcodes.OK
    account: Any = None
    with display_logging(display), InterruptGuard(display, prescription.ramp_down_s) as guard:
        try:
            with open_for(args) as stim:
                identity = stim.identity
                if record_path is None:
                    record_path = default_record_path(identity.serial_number)
                _check_and_plan(display, prescription, identity, args.preset)
                if not args.quiet:
                    display.message(stim.description)
                    display.message(f"prescription: {prescription.describe()}")
                    if display.plan is not None:
                        plan = display.plan
                        display.message(
                            f"expected: {fmt.duration(plan.total_s)} (m:s of device time), "
                            f"{plan.charge_uas / 60000:.2f} mA·min"
                        )
                    display.message(f"record: {record_path}")

                def on_alarm(text: str) -> None:
                    display.notice(f"ALARM: {text}")

                try:
                    # h17 (issue 17): the operator keys (iontodrive.cli.keys) act on the session handle
                    # while it runs, through the one deliver() path.
                    from iontodrive.cli.keys import keys_while_running

                    def with_keys(session: Any) -> contextlib.AbstractContextManager[None]:
                        return keys_while_running(session, prescription, display)

                    stim.deliver(
                        prescription,
                        None if args.quiet else display.progress,
                        record_path=record_path,
                        labels=labels,
                        on_event=None if args.quiet else display.event,
                        on_alarm=on_alarm,
                        telemetry_hz=args.telemetry_hz,
                        while_running=with_keys if live else None,
                    )
                except KeyboardInterrupt:
                    # Escaped before the session's own handling took over: make sure output ramps down.
                    display.notice("interrupted before the session was under way: checking the output")
                    stim.ensure_output_zero(prescription.ramp_down_s * 2 + 10)
                    raise
                finally:
                    session = stim.last_session
                    account = None if session is None else session.account
        except BaseException as exc:
            if not isinstance(exc, Exception | KeyboardInterrupt):
                raise
            error = exc
            code = exitcodes.exit_code_for(exc)
        finally:
            display.close()
        if guard.count and error is None:
            # The session ended by itself between the Ctrl-C and the driver seeing it.
            error = SessionInterrupted("KeyboardInterrupt")
            code = exitcodes.INTERRUPTED

    summary: dict[str, Any] | None = None
    if record_path is not None and record_path.exists():
        try:
            summary = summarize(SessionRecord.load(record_path))
        except Exception as exc:  # a broken record must not hide the session's own error
            logging.getLogger(__name__).warning("cannot read the record %s: %s", record_path, exc)
    if args.json:
        result = {
            "exit_code": code,
            "ok": code == exitcodes.OK,
            "error": None if error is None else str(error),
            "error_type": None if error is None else type(error).__name__,
            "record": None if record_path is None else str(record_path),
            "record_complete": None if account is None else account.record_complete,
            "device": None if account is None else account.to_dict(),
            "session": summary,
        }
        print(json.dumps(result, indent=2))
    elif account is not None or summary is not None:
        _print_result(account, summary, record_path)
    if error is not None:
        from iontodrive.cli import error_line

        if args.debug:
            import traceback

            traceback.print_exception(error, file=sys.stderr)
        print(f"iontodrive: {error_line(error, code, args)}", file=sys.stderr)
    return code


def _check_and_plan(
    display: LiveDisplay, prescription: Any, identity: Any, preset: str | None = None
) -> None:
    """Check the prescription against the device (a refusal raises SafetyRefusal here, before anything is
    sent, or PresetModelError for a preset made for another model; warnings are logged by the session when
    it starts) and give the display the driver's plan."""
    from iontodrive.presets import check_preset_fits

    check_preset_fits(preset, prescription, identity)
    display.set_plan(prescription.expected_plan(identity))


def _print_result(account: Any, summary: dict[str, Any] | None, record_path: Path | None) -> None:
    """The outcome line: the source's own account (the device is the authority on the dose), then the
    record's state said plainly when it is incomplete."""
    summary = summary or {}
    if account is not None:
        line = f"outcome: {account.outcome.value}; delivered {account.delivered_ma_min:.3f} mA·min"
        if account.target_uas:
            target = account.target_uas / 60_000
            error = 100.0 * (account.delivered_uas - account.target_uas) / account.target_uas
            line += f" of {target:g} ({error:+.2f} %)"
        line += f" ({account.dose_source}{'' if account.confirmed else ', NOT confirmed at the end'})"
    else:
        line = f"outcome: {summary.get('outcome')}"
        delivered = summary.get("delivered_ma_min")
        if delivered is not None:
            line += f"; delivered {delivered:.3f} mA·min (from the record)"
    if summary.get("duration_s") is not None:
        line += f" in {fmt.duration(summary['duration_s'])}"
    print(line)
    if account is not None and not account.record_complete:
        print(
            f"RECORD INCOMPLETE: {account.record_error or 'the record could not be completed'}; the figures "
            f"above are the {account.dose_source}'s own, not the record's"
        )
    if record_path is not None:
        print(f"record: {record_path}")
        print(f"report: iontodrive report {record_path} --plot {record_path.with_suffix('.png')}")
