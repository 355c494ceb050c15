"""iontodrive: driver for constant-current iontophoresis stimulators.

Layers, each depending only on those before it: :mod:`iontodrive.protocol` (sans-I/O wire protocol),
:mod:`iontodrive.link` (pyserial URLs), :mod:`iontodrive.client` (requests, telemetry, events),
:mod:`iontodrive.ramp` and :mod:`iontodrive.prescription` (planning and checks), :mod:`iontodrive.sessions`
(one session engine for every source; :class:`Stimulator`), :mod:`iontodrive.record` (session records),
:mod:`iontodrive.source` (:func:`open_source`, one factory over a table of backends) and the command line.

``sim://`` resources work as soon as this package is imported: :func:`open_source` and
:meth:`Stimulator.open` register the simulator's URL handler on first use (:mod:`iontodrive.resources`).

Quick use::

    from iontodrive import Prescription, Stimulator

    with Stimulator.open("socket://127.0.0.1:7000") as stim:
        record = stim.deliver(Prescription(current_ma=4, dose_ma_min=40, polarity="cathode"))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iontodrive.errors import (
        DeviceFault,
        DeviceRefusal,
        IncompatibleDeviceError,
        IontodriveError,
        LinkClosedError,
        LinkError,
        LinkLostError,
        LinkTimeoutError,
        LocalProtocolError,
        ProtocolViolation,
        RemoteProtocolError,
        SafetyRefusal,
        SessionInterrupted,
        SessionWaitTimeout,
    )
    from iontodrive.prescription import Prescription
    from iontodrive.protocol import DeviceState, Polarity, Waveform
    from iontodrive.record import SessionRecord
    from iontodrive.resources import InvalidResourceError
    from iontodrive.sessions.device import DeviceSession, Stimulator
    from iontodrive.sessions.types import (
        CurrentSource,
        OutputNotConfirmedError,
        Progress,
        SessionAccount,
        SessionHandle,
        SessionOutcome,
    )
    from iontodrive.source import open_source

    Session = DeviceSession

# Exports are loaded on first use (PEP 562), so ``import iontodrive.protocol`` stays light: the firmware
# simulator imports only the protocol and must not pull in the driver, numpy planning or pyserial.
_EXPORTS = {
    "iontodrive.errors": (
        "DeviceFault",
        "DeviceRefusal",
        "IncompatibleDeviceError",
        "IontodriveError",
        "LinkClosedError",
        "LinkError",
        "LinkLostError",
        "LinkTimeoutError",
        "LocalProtocolError",
        "ProtocolViolation",
        "RemoteProtocolError",
        "SafetyRefusal",
        "SessionInterrupted",
        "SessionWaitTimeout",
    ),
    "iontodrive.prescription": ("Prescription",),
    "iontodrive.protocol": ("DeviceState", "Polarity", "Waveform"),
    "iontodrive.record": ("SessionRecord",),
    "iontodrive.resources": ("InvalidResourceError",),
    "iontodrive.sessions.device": ("DeviceSession", "Stimulator"),
    "iontodrive.sessions.types": (
        "CurrentSource",
        "OutputNotConfirmedError",
        "Progress",
        "SessionAccount",
        "SessionHandle",
        "SessionOutcome",
    ),
    "iontodrive.session": ("Session",),
    "iontodrive.source": ("open_source",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'iontodrive' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "CurrentSource",
    "DeviceFault",
    "DeviceRefusal",
    "DeviceSession",
    "DeviceState",
    "IncompatibleDeviceError",
    "InvalidResourceError",
    "IontodriveError",
    "LinkClosedError",
    "LinkError",
    "LinkLostError",
    "LinkTimeoutError",
    "LocalProtocolError",
    "OutputNotConfirmedError",
    "Polarity",
    "Prescription",
    "Progress",
    "ProtocolViolation",
    "RemoteProtocolError",
    "SafetyRefusal",
    "Session",
    "SessionAccount",
    "SessionHandle",
    "SessionInterrupted",
    "SessionOutcome",
    "SessionRecord",
    "SessionWaitTimeout",
    "Stimulator",
    "Waveform",
    "__version__",
    "open_source",
]
