"""``iontodrive conformance PORT``: the command-line face of the suite (``docs/conformance.md`` §1).

Registered by :mod:`iontodrive.cli` like every subcommand (``add_parser(subparsers)``, ``run(args)``).
Exit status: 0 when every rule passes or does not apply; 1 when any rule fails, errs or was not run;
5 when the port cannot be opened or the device never answers; 2 for a usage error (an unknown rule id).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

from iontodrive.cli import exitcodes
from iontodrive.cli.ports_open import normalise_port, register_sim_handler
from iontodrive.link import DEFAULT_BAUDRATE, SerialLink

from .fixture import Fixture, FixtureError, open_fixture
from .probe import Probe
from .report import as_json, header_lines, row, summary_line
from .rule import RuleResult
from .rules import ALL_RULES
from .runner import SuiteReport, run_suite, select_rules

#: Host seconds between closing the port and opening it again, for the device to see its host go.
RECONNECT_GAP_S = 0.3
#: Where pseudo-terminals live (Linux, macOS): a pty's device sees its host's last close.
PTY_PREFIXES = ("/dev/pts/", "/dev/ttys")
HELP = "check a device against every rule of the protocol spec (one row per rule)"
DESCRIPTION = (
    "Check whatever answers on PORT against every rule of docs/protocol.md: framing, CRC, refusals "
    "naming the field, limits from the identity, sequencing and retries, ramps and slew limit, polarity "
    "lock, watchdog timing, and with a load fixture (--fixture) the contact refusals, the resistance limit, "
    "electrode lift and the FAULT row of the state table. Prints one row per rule (id, spec section, "
    "result, evidence). The device is "
    "brought back to idle (Abort if needed, then Reset) after every rule, and no current above a quarter "
    "of the device's maximum (at most 10 mA) is ever asked for. Rules marked [load] start output: connect "
    "a 1 kohm resistor (docs/conformance.md) or pass --no-load to skip them. Exit code 0 only when "
    "every rule passes or does not apply."
)


def add_parser(subparsers: Any) -> None:
    """Register the ``conformance`` subcommand."""
    parser = subparsers.add_parser("conformance", help=HELP, description=DESCRIPTION)
    parser.add_argument(
        "port",
        metavar="PORT",
        nargs="?",
        help="serial path, pty, socket://HOST:PORT, or sim://MODEL?clock=virtual (in-process simulator)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON report (docs/conformance.md §5)")
    parser.add_argument(
        "--baud",
        type=int,
        default=DEFAULT_BAUDRATE,
        metavar="N",
        help=f"baud rate (default {DEFAULT_BAUDRATE})",
    )
    parser.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="ID",
        help="run only this rule, or every rule whose id starts with ID (repeatable; e.g. --rule FRAME-)",
    )
    parser.add_argument(
        "--no-load", action="store_true", help="no load connected: report the [load] rules as not run"
    )
    parser.add_argument(
        "--fixture",
        metavar="SPEC",
        default=None,
        help="a load fixture for the rules marked [fixture]: 'sim' (the simulator of a sim:// PORT), "
        "http://HOST:PORT/[?token=T] (the simulator's control API), or MODULE:NAME (a bench fixture, "
        "docs/conformance.md §3.1); without one those rules are not run",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the rules (id, section, description) and exit"
    )
    parser.add_argument("--seed", type=int, default=None, metavar="N", help="seed the first sequence number")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the suite as the parsed command line says; return the exit status."""
    try:
        rules = select_rules(ALL_RULES, args.rule)
    except ValueError as exc:
        raise exitcodes.UsageError(str(exc)) from exc
    if args.list:
        id_width = max(len(r.id) for r in rules)
        section_width = max(len(r.section) for r in rules)
        for item in rules:
            load = (" [load]" if item.needs_load else "") + (" [fixture]" if item.needs_fixture else "")
            since = f" (since v{item.min_version})" if item.min_version > 1 else ""
            print(f"{item.id:<{id_width}}  {item.section:<{section_width}}  {item.description}{load}{since}")
        return exitcodes.OK
    if not args.port:
        raise exitcodes.UsageError("PORT is required (or --list)")
    port = normalise_port(args.port)
    if port.lower().startswith("sim://"):
        register_sim_handler()
    links = [SerialLink.open(port, baudrate=args.baud)]
    try:
        fixture = _fixture(args.fixture, links[0].port)
        probe = Probe(
            links[0],
            port_clock(links[0].port),
            seed=args.seed,
            fixture=fixture,
            reconnect=host_reconnect(links, port, args.baud),
        )
        if args.timeout_s is not None:
            probe.reply_timeout_s = float(args.timeout_s)
        if args.retries is not None:
            probe.retries = int(args.retries)
        live = not args.json
        report = run_suite(
            probe,
            rules,
            port=port,
            with_load=not args.no_load,
            on_connect=_print_header if live else None,
            on_result=_print_row if live else None,
        )
    finally:
        links[-1].close()
    if args.json:
        print(as_json(report))
    else:
        print(summary_line(report))
    if report.identity is None:
        return exitcodes.LINK_ERROR
    return exitcodes.OK if report.ok else exitcodes.FAILURE


def _fixture(spec: str | None, port: object) -> Fixture | None:
    if spec is None:
        return None
    try:
        return open_fixture(spec, port)
    except (ValueError, ImportError, FixtureError) as exc:
        raise exitcodes.UsageError(f"--fixture {spec}: {exc}") from exc


def host_reconnect(links: list[SerialLink], url: str, baud: int) -> Callable[[], SerialLink] | None:
    """How the probe makes its host go away and come back (``HOST-CACHE-GONE``), or None.

    A TCP link (``socket://``) or a pty: close the port, wait :data:`RECONNECT_GAP_S` so that the
    device's transport sees the close (a TCP disconnect, a pty's last close), and open it again; the new
    link is appended to ``links``. A ``sim://`` port is the simulator itself (closing it ends the
    simulation): there the device is told what its transport would tell it,
    ``Device.end_host_session()``, and the link stays. A serial port: None, since whether its device can
    see the host go is up to its transport (a UART cannot; §7.3 then relies on ``OpenSession``), and
    reopening many USB boards resets them."""
    first = links[0].port
    device = getattr(first, "device", None)
    if url.lower().startswith("sim://") and device is not None:
        runner = getattr(first, "runner", None)

        def tell_device() -> SerialLink:
            if runner is not None:
                runner.call(lambda d: d.end_host_session())
            else:
                device.end_host_session()
            return links[-1]

        return tell_device

    if "://" not in url and not os.path.realpath(url).startswith(PTY_PREFIXES):
        return None

    def reopen() -> SerialLink:
        links[-1].close()
        time.sleep(RECONNECT_GAP_S)
        links.append(SerialLink.open(url, baudrate=baud))
        return links[-1]

    return reopen


def port_clock(port: object) -> Callable[[], float]:
    """The host clock for ``port``: a simulator port's own virtual clock (``port.clock.now``, as the
    ``sim://...?clock=virtual`` handler documents), else ``time.monotonic``."""
    clock = getattr(port, "clock", None)
    now = getattr(clock, "now", None)
    return now if callable(now) else time.monotonic


def _print_header(report: SuiteReport) -> None:
    for line in header_lines(report):
        print(line, flush=True)


def _print_row(result: RuleResult) -> None:
    print(row(result), flush=True)


__all__ = ["add_parser", "host_reconnect", "port_clock", "run"]
