"""The ``iontodrive`` command: ``main(argv) -> exit code``.

Subcommands live in one module each (``ports``, ``device`` for info/check/monitor, ``deliver``,
``report``, ``presets_cmd``, ``sim``, ``demo``); each module has ``add_parser(subparsers)`` and
``run(args) -> int``. Exit codes are in :mod:`iontodrive.cli.exitcodes`; ``docs/cli.md`` is the reference.

Errors are printed as one line, ``iontodrive: error: ...``, on stderr; ``--debug`` adds the traceback and
DEBUG logging (including the decoded frame trace of the ``iontodrive.frames`` logger).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from collections.abc import Callable, Sequence

from iontodrive.cli import exitcodes

PROG = "iontodrive"
_GLOBAL_WITH_VALUE = ("--frame-trace", "--timeout-s", "--retries")
ENV_TIMEOUT = "IONTODRIVE_TIMEOUT_S"
MAX_ERROR_CHARS = 400
_GLOBAL_FLAGS = ("--debug",)

EPILOG = """exit codes:
  0    success
  1    other error
  2    usage error
  3    refused by the driver's safety checks or by the device (nothing changed)
  4    device fault, or the device ended the session on its own (e.g. electrode lift)
  5    link error: cannot open the port, no answer, or link lost during a session
  130  interrupted by Ctrl-C or SIGTERM, after the output was ramped down

PORT forms: /dev/ttyUSB0, /dev/pts/N (simulator --pty), socket://HOST:PORT (simulator --tcp; a bare
HOST:PORT works too), sim://clinic-4?speed=50 (in-process simulator), or a VISA resource string such as
GPIB0::24::INSTR, USB0::...::INSTR, TCPIP0::...::INSTR, ASRL...::INSTR (bench source-meters).
See docs/cli.md for the full reference."""


def build_parser() -> argparse.ArgumentParser:
    """The whole command-line grammar (also used to generate and check ``docs/cli.md``)."""
    from iontodrive.cli import deliver, demo, device, ports, presets_cmd, report, sim

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Drive constant-current iontophoresis stimulators and their simulator.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks and DEBUG logging, including every frame sent and received",
    )
    parser.add_argument(
        "--frame-trace",
        metavar="PATH",
        help="append the decoded frame trace (every frame, hex and decoded) to this file",
    )
    parser.add_argument(
        "--timeout-s",
        type=_positive_float,
        default=_env_float(ENV_TIMEOUT),
        metavar="S",
        help="reply deadline per attempt in seconds (default: 0.25, or $IONTODRIVE_TIMEOUT_S); raise it for "
        "slow links or a heavily loaded host",
    )
    parser.add_argument(
        "--retries",
        type=int,
        choices=range(21),
        default=None,
        metavar="N",
        help="re-sends of an unanswered request, with the same sequence number (0-20, default: 3)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (ports, device, deliver, report, presets_cmd, sim, demo):
        module.add_parser(subparsers)
    from iontodrive.cli import recover  # recover, resume (issue 19)
    from iontodrive.conformance import command as conformance  # the conformance suite (issue 14)

    recover.add_parser(subparsers)
    conformance.add_parser(subparsers)
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.001 <= value <= 60:
        raise argparse.ArgumentTypeError(f"{value:g} is out of range: must be in [0.001, 60] s")
    return value


def _env_float(name: str) -> float | None:
    import os

    text = os.environ.get(name)
    if not text:
        return None
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        return None


def _version() -> str:
    from iontodrive import __version__

    return __version__


def _split_sim(argv: list[str]) -> tuple[list[str], list[str]] | None:
    """If the command is ``sim``, return (global options, simulator argv): the rest goes through as is."""
    index = 0
    while index < len(argv):
        token = argv[index]
        if token in _GLOBAL_FLAGS:
            index += 1
        elif token in _GLOBAL_WITH_VALUE:
            index += 2
        elif any(token.startswith(opt + "=") for opt in _GLOBAL_WITH_VALUE):
            index += 1
        elif token == "sim":
            return argv[:index], argv[index + 1 :]
        else:
            return None
    return None


def configure_logging(debug: bool) -> Callable[[], None]:
    """WARNING and above as ``iontodrive: warning: ...`` on stderr; everything with ``--debug``.

    Returns a function that puts the logging configuration back as it was (``main`` calls it on return,
    so that calling ``main()`` from Python leaves the caller's logging alone)."""
    root = logging.getLogger()
    previous_level = root.level
    for handler in list(root.handlers):
        if getattr(handler, "_iontodrive_cli", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._iontodrive_cli = True  # type: ignore[attr-defined]
    if debug:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        root.setLevel(logging.DEBUG)
    else:
        handler.setFormatter(_CliFormatter())
        handler.addFilter(_NoLibraryErrors())
        handler.addFilter(_AreaHintOnce())
        root.setLevel(logging.WARNING)
    logging.captureWarnings(True)  # library warnings (e.g. pyvisa's) as one line each, like ours
    root.addHandler(handler)

    def restore() -> None:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        logging.captureWarnings(False)

    return restore


class _NoLibraryErrors(logging.Filter):
    """Without --debug, the driver's ERROR records are left out: the exception that follows them is printed
    as the command's one error line. Warnings (e.g. a density warning) still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name.startswith("iontodrive"))


AREA_HINT = (
    "no electrode area given, so the current density (S13: warn above 0.5, refuse above 2 mA/cm²) was not "
    "checked; give the active electrode's area with --area-cm2"
)


class _AreaHintOnce(logging.Filter):
    """The library warns about a missing electrode area on every session it checks; the command line shows
    it once per process, as a hint naming the option that gives the area."""

    def __init__(self) -> None:
        super().__init__()
        self.shown = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "electrode_area_cm2 not given" not in record.getMessage():
            return True
        if self.shown:
            return False
        self.shown = True
        record.msg, record.args = AREA_HINT, None
        record.cli_prefix = "hint"
        return True


class _CliFormatter(logging.Formatter):
    """``iontodrive: warning: ...`` on one line; Python warnings (captured) without file and source line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "py.warnings":
            first = message.strip().splitlines()[0] if message.strip() else message
            match = re.match(r"^.*?:\d+: (\w+: .*)$", first)
            message = match.group(1) if match else first
        prefix = getattr(record, "cli_prefix", record.levelname.lower())
        return f"{PROG}: {prefix}: {message}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see :mod:`iontodrive.cli.exitcodes`)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    split = _split_sim(args_list)
    if split is not None:
        from iontodrive.cli import sim

        restore = configure_logging("--debug" in split[0])
        try:
            return sim.delegate(split[1])
        finally:
            restore()
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help, --version, or a usage error (argparse prints it)
        return exc.code if isinstance(exc.code, int) else exitcodes.USAGE
    restore = configure_logging(args.debug)
    try:
        return int(args.func(args))
    except exitcodes.UsageError as exc:
        return _fail(args, exc, exitcodes.USAGE)
    except KeyboardInterrupt as exc:
        return _fail(args, exc, exitcodes.INTERRUPTED)
    except BrokenPipeError:
        # e.g. `iontodrive monitor PORT --csv | head`: the reader went away; not an error worth a traceback.
        _silence_stdout()
        return exitcodes.OK
    except Exception as exc:
        return _fail(args, exc, exitcodes.exit_code_for(exc))
    finally:
        restore()


def _fail(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    if getattr(args, "debug", False):
        traceback.print_exception(exc, file=sys.stderr)
    print(f"{PROG}: {error_line(exc, code, args)}", file=sys.stderr)
    return code


def error_line(exc: BaseException, code: int, args: argparse.Namespace | None = None) -> str:
    """``error: ...``, or for an interrupt ``stopped by Ctrl-C; ...``: the single line for a failed command.

    Worded by :func:`iontodrive.cli.messages.plain_message` (what was asked, the range in the user's units,
    what to do), without Python class names; ``--debug`` prints the traceback as well."""
    from iontodrive.cli.messages import plain_message

    detail = plain_message(exc, args)
    lines = detail.strip().splitlines() or [detail]
    detail = lines[0]
    if len(detail) > MAX_ERROR_CHARS or len(lines) > 1:
        detail = detail[:MAX_ERROR_CHARS].rstrip() + " ... (--debug shows all)"
    if code == exitcodes.INTERRUPTED:
        return detail  # "stopped by Ctrl-C; the output was ramped down ..." is not an error
    return f"error: {detail}"


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


__all__ = ["build_parser", "main"]
