"""``iontodrive ports``: serial ports, running simulators and VISA resources."""

from __future__ import annotations

import argparse
import json
import os
import threading
from typing import Any

from iontodrive.cli import exitcodes

VISA_TIMEOUT_S = 5.0
VISA_LIBRARY_ENV = "IONTODRIVE_VISA_LIBRARY"  # the VISA library iontodrive.visa uses too


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ports",
        help="list serial ports, running simulators and VISA resources",
        description=(
            "List serial ports (pyserial), simulators started with `iontodrive sim` or "
            "`python -m firmware_sim` that are still running, and VISA resources (if a VISA backend is "
            "installed). Any PORT shown can be given to info, check, deliver and monitor."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--no-visa", action="store_true", help="skip the VISA resource scan (it can take a few seconds)"
    )
    parser.set_defaults(func=run)


def serial_ports() -> list[dict[str, Any]]:
    """Serial ports as pyserial lists them: device, description, hardware id."""
    from serial.tools import list_ports

    ports = []
    for info in sorted(list_ports.comports(), key=lambda p: p.device):
        ports.append({"port": info.device, "description": info.description or "", "hwid": info.hwid or ""})
    return ports


def simulators() -> list[dict[str, Any]]:
    """Running simulators announced through :mod:`firmware_sim.discovery`."""
    try:
        from firmware_sim import discovery
    except ImportError:
        return []
    return [
        {"port": e["url"], "model": e.get("model", ""), "pid": e["pid"], "started": e.get("started", "")}
        for e in discovery.list_running()
    ]


def visa_resources(timeout_s: float = VISA_TIMEOUT_S) -> tuple[list[str], str | None]:
    """(resources, note). The note says why the list is empty when no scan was possible.

    The scan uses the VISA library named by ``$IONTODRIVE_VISA_LIBRARY`` (as ``iontodrive.visa`` does; e.g.
    ``@py`` or ``bench.yaml@sim``), else pyvisa's default. It runs in a daemon thread with a deadline,
    because some VISA backends probe the network.
    """
    result: dict[str, Any] = {}

    def scan() -> None:
        try:
            import pyvisa

            library = os.environ.get(VISA_LIBRARY_ENV, "")
            manager = pyvisa.ResourceManager(library) if library else pyvisa.ResourceManager()
            try:
                result["resources"] = list(manager.list_resources())
            finally:
                manager.close()
        except ImportError:
            result["note"] = "pyvisa is not installed (pip install iontodrive[visa])"
        except Exception as exc:  # no backend (NI-VISA or pyvisa-py) is the common case
            first = str(exc).splitlines()[0] if str(exc) else repr(exc)
            result["note"] = f"no VISA backend available ({first})"

    thread = threading.Thread(target=scan, name="visa-scan", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return [], f"VISA scan did not finish within {timeout_s:g} s"
    return result.get("resources", []), result.get("note")


def run(args: argparse.Namespace) -> int:
    serial_list = serial_ports()
    sims = simulators()
    visa: list[str]
    visa_note: str | None
    if args.no_visa:
        visa, visa_note = [], "skipped (--no-visa)"
    else:
        visa, visa_note = visa_resources()
    if args.json:
        print(
            json.dumps(
                {"serial": serial_list, "simulators": sims, "visa": visa, "visa_note": visa_note}, indent=2
            )
        )
        return exitcodes.OK
    print("Serial ports:")
    if serial_list:
        for p in serial_list:
            print(f"  {p['port']:<24} {p['description']}  {p['hwid']}".rstrip())
    else:
        print("  (none)")
    print("Simulators:")
    if sims:
        for s in sims:
            print(f"  {s['port']:<24} {s['model']}  (pid {s['pid']}, since {s['started']})")
    else:
        print("  (none running; start one with `iontodrive sim --tcp 127.0.0.1:0` or `iontodrive sim --pty`)")
    print("VISA resources:")
    if visa:
        for resource in visa:
            print(f"  {resource}")
    else:
        print(f"  (none{': ' + visa_note if visa_note else ''})")
    return exitcodes.OK
