"""Firmware simulator of the iontodrive stimulators.

The device is written as its firmware would be: a state machine stepped by a clock (:mod:`.firmware`),
an electrical model of the output stage and the electrode–skin load (:mod:`.plant`), and the protocol core
for I/O (:mod:`.device`). Ways to run it:

* in-process on a virtual clock: ``Device(...)``, ``receive(bytes)``, ``advance(dt)``, ``read_output()``;
* in-process on the wall clock: ``register_url_handler()`` then ``serial.serial_for_url("sim://clinic-4")``
  (``clock=virtual`` in the URL for a deterministic port without a thread);
* out of process: ``python -m firmware_sim --pty`` or ``--tcp HOST:PORT`` (``iontodrive-sim``).

Importing this package has no side effects; ``docs/simulator.md`` is the manual.
"""

from __future__ import annotations

from .clock import VirtualClock, WallClock
from .device import Device
from .faults import (
    ContactReturn,
    ElectrodeLift,
    FaultSchedule,
    ImpedanceRise,
    OverCurrent,
    PlantFault,
    ShortCircuit,
)
from .link_faults import LinkFaults
from .models import CLINIC_4, HYDRO_30, MODELS, LoadParams, ModelSpec
from .options import SimOptions
from .runner import DeviceRunner, Transport
from .streams import BytePipe, MemoryTransport
from .trace import HEADER as TRACE_HEADER
from .trace import TraceRecorder, TraceWriter

URL_HANDLER_PACKAGE = "firmware_sim.urlhandler"


def register_url_handler() -> None:
    """Make ``serial.serial_for_url("sim://...")`` work (appends to ``serial.protocol_handler_packages``).

    Idempotent.
    """
    import serial

    if URL_HANDLER_PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(URL_HANDLER_PACKAGE)


__all__ = [
    "CLINIC_4",
    "HYDRO_30",
    "MODELS",
    "TRACE_HEADER",
    "URL_HANDLER_PACKAGE",
    "BytePipe",
    "ContactReturn",
    "Device",
    "DeviceRunner",
    "ElectrodeLift",
    "FaultSchedule",
    "ImpedanceRise",
    "LinkFaults",
    "LoadParams",
    "MemoryTransport",
    "ModelSpec",
    "OverCurrent",
    "PlantFault",
    "ShortCircuit",
    "SimOptions",
    "TraceRecorder",
    "TraceWriter",
    "Transport",
    "VirtualClock",
    "WallClock",
    "register_url_handler",
]
