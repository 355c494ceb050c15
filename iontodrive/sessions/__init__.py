"""One session engine for every source (see :mod:`iontodrive.sessions.engine` and ``docs/api.md``).

Light to import: the shared types load no pyserial, no pyvisa and no device client. The device backend
(:class:`~iontodrive.sessions.device.Stimulator`) is loaded on first use.

=====================  ===============================================================================
module                 job
=====================  ===============================================================================
``types``              Progress, SessionOutcome, SessionAccount, SessionHandle, CurrentSource
``progress``           the one progress builder (fractions, time left, pulsed values, alarms)
``outcome``            the one outcome decision
``guards``             the driver's over-current check and its constants (S9, S18)
``recording``          the record lifecycle (a write failure is an alarm, never an exception)
``waiting``            the interrupt-safe wait, SIGTERM as an exception
``engine``             SessionEngine (what every session does) and ``deliver()``
``host_ramp``          the sans-I/O controller of host-ramped sources (ramps, S5/S6/S9 guards)
``device``             the protocol device: DeviceSession and Stimulator
=====================  ===============================================================================
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from iontodrive.sessions.types import (
    CurrentSource,
    OutputNotConfirmedError,
    Progress,
    SessionAccount,
    SessionHandle,
    SessionOutcome,
    Terminated,
)

if TYPE_CHECKING:
    from iontodrive.sessions.device import DeviceSession, Stimulator

__all__ = [
    "CurrentSource",
    "DeviceSession",
    "OutputNotConfirmedError",
    "Progress",
    "SessionAccount",
    "SessionHandle",
    "SessionOutcome",
    "Stimulator",
    "Terminated",
]


def __getattr__(name: str) -> Any:
    if name in ("DeviceSession", "Stimulator"):
        value = getattr(importlib.import_module("iontodrive.sessions.device"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'iontodrive.sessions' has no attribute {name!r}")
