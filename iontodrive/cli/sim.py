"""``iontodrive sim ...``: the simulator's own command line, exactly as ``python -m firmware_sim ...``."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from iontodrive.cli import exitcodes


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="run the firmware simulator (options as `python -m firmware_sim`; `iontodrive sim --help`)",
        description=(
            "Run the firmware simulator. Everything after `sim` is passed to the simulator's own command "
            "line unchanged, e.g. `iontodrive sim --pty --model hydro-30 --speed 20`, "
            "`iontodrive sim --tcp 127.0.0.1:0 --trace trace.csv` or "
            "`iontodrive sim --serial /dev/ttyUSB0 --baud 115200 --control 127.0.0.1:8765` (a web console "
            "and control API). It prints `PORT <path-or-url>` first (and `CONTROL <url>` with --control)."
        ),
        add_help=False,
    )
    parser.add_argument("sim_args", nargs=argparse.REMAINDER, help="simulator options")
    parser.set_defaults(func=lambda args: delegate(args.sim_args))


def delegate(argv: list[str]) -> int:
    """Run ``firmware_sim.__main__.main(argv)`` and return its exit code."""
    try:
        module = importlib.import_module("firmware_sim.__main__")
    except ImportError as exc:
        raise exitcodes.UsageError(f"the simulator (firmware_sim) cannot be imported: {exc}") from exc
    try:
        code = module.main(list(argv))
    except SystemExit as exc:  # argparse inside the simulator, or an explicit exit
        code = exc.code
    if code is None:
        return exitcodes.OK
    return code if isinstance(code, int) else exitcodes.FAILURE
