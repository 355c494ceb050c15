"""Opening whatever the user typed as PORT.

Accepted forms:

* a serial device or pty path (``/dev/ttyUSB0``, ``/dev/pts/5``, ``COM3``);
* ``socket://host:port`` (the simulator's ``--tcp`` route) and any other pyserial URL;
* ``sim://MODEL?speed=N`` -- an in-process simulator (the URL handler is registered here on demand);
* a VISA resource string (``GPIB0::24::INSTR``, ``USB0::0x05E6::0x2450::0123::INSTR``,
  ``TCPIP0::10.0.0.5::inst0::INSTR``, ``ASRL/dev/ttyUSB0::INSTR``) -- routed to
  ``iontodrive.visa.open_source``.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path
from typing import Any

from iontodrive.cli.exitcodes import UsageError
from iontodrive.resources import is_visa_resource  # the one resource grammar (h18: issue 18, item 2)


def add_reconnect_option(parser: argparse.ArgumentParser) -> None:
    """``--reconnect-s S`` (deliver, resume): after a lost link keep trying to reach the same device for S
    seconds, then reconcile the record with it (:mod:`iontodrive.sessions.reconnect`)."""
    parser.add_argument(
        "--reconnect-s",
        type=float,
        metavar="S",
        help="if the link is lost, keep trying to reach the same device for S seconds and reconcile the "
        "record with it (no current resumes by itself)",
    )


def normalise_port(port: str) -> str:
    """Turn a bare ``host:port`` into ``socket://host:port``; leave everything else as typed."""
    if "://" in port or is_visa_resource(port):
        return port
    match = re.fullmatch(r"([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})", port)
    if match and not Path(port).exists():
        return f"socket://{port}"
    return port


def register_sim_handler() -> None:
    """Make ``sim://`` URLs work in this process (the simulator's in-process route)."""
    try:
        firmware_sim = importlib.import_module("firmware_sim")
    except ImportError as exc:
        raise UsageError(f"sim:// needs the firmware_sim package, which cannot be imported: {exc}") from exc
    register = getattr(firmware_sim, "register_url_handler", None)
    if register is None:
        raise UsageError("this firmware_sim has no register_url_handler(); use --tcp or --pty instead")
    register()


def open_device(
    port: str,
    *,
    frame_trace: str | Path | None = None,
    telemetry_hz: int | None = None,
    timeout_s: float | None = None,
    retries: int | None = None,
    reconnect_s: float | None = None,
) -> Any:
    """Open PORT and return a connected client (a :class:`~iontodrive.Stimulator`, or a VISA source).

    Raises:
        LinkError: the port cannot be opened or the device does not answer.
        IncompatibleDeviceError: the device speaks another protocol version.
        UsageError: the PORT form needs a component that is not available (VISA, simulator).
    """
    port = normalise_port(port)
    if is_visa_resource(port):
        return open_visa(port)
    if port.lower().startswith("sim://"):
        register_sim_handler()
    from iontodrive.session import Stimulator

    options: dict[str, Any] = {"trace_path": frame_trace, "telemetry_hz": telemetry_hz}
    if timeout_s is not None:
        options["timeout_s"] = timeout_s
    if retries is not None:
        options["retries"] = retries
    if reconnect_s is not None:  # issue 19: reach the same device again after a lost link
        options["reconnect_s"] = reconnect_s
    return Stimulator.open(port, **options)


def open_for(args: Any, port: str | None = None) -> Any:
    """:func:`open_device` for a parsed command line (PORT, --frame-trace, --timeout-s, --retries)."""
    return open_device(
        port if port is not None else args.port,
        frame_trace=getattr(args, "frame_trace", None),
        timeout_s=getattr(args, "timeout_s", None),
        retries=getattr(args, "retries", None),
        reconnect_s=getattr(args, "reconnect_s", None),
    )


def open_visa(resource: str) -> Any:
    """Open a VISA resource through ``iontodrive.visa.open_source`` (a bench source-meter)."""
    try:
        visa = importlib.import_module("iontodrive.visa")
    except ImportError as exc:
        if exc.name not in ("iontodrive.visa", "pyvisa"):
            raise
        raise UsageError(
            f"{resource!r} looks like a VISA resource string, but VISA support is not available "
            f"({exc}); install iontodrive[visa]"
        ) from exc
    opener = getattr(visa, "open_source", None)
    if opener is None:
        raise UsageError("iontodrive.visa has no open_source(); VISA resources cannot be opened")
    return opener(resource)
