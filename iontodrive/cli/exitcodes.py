"""Exit codes of the ``iontodrive`` command, and the mapping from exceptions to them.

======  ===========================================================================================
code    meaning
======  ===========================================================================================
0       success
1       any other error (bad file, unexpected device answer, a bug)
2       usage error (bad option, unknown preset, missing argument)
3       refused: the driver (SafetyRefusal) or the device (NACK, DeviceRefusal) refused; nothing was
        changed on the device. ``check`` also exits 3 when the contact check does not pass.
4       device fault: the device latched a fault or ended the session on its own (over-current trip,
        hardware trip, electrode lift)
5       link error: the port cannot be opened, the device does not answer, or the link was lost
        during a session (the device's watchdog then ramps down by itself)
130     interrupted by Ctrl-C or SIGTERM (after the output was ramped down)
======  ===========================================================================================
"""

from __future__ import annotations

from typing import Final

OK: Final = 0
FAILURE: Final = 1
USAGE: Final = 2
REFUSED: Final = 3
DEVICE_FAULT: Final = 4
LINK_ERROR: Final = 5
INTERRUPTED: Final = 130

DESCRIPTIONS: Final = {
    OK: "success",
    FAILURE: "other error",
    USAGE: "usage error",
    REFUSED: "refused (by the driver's safety checks or by the device); nothing changed",
    DEVICE_FAULT: "device fault, or the device ended the session on its own (e.g. electrode lift)",
    LINK_ERROR: "link error: cannot open the port, no answer, or link lost during a session",
    INTERRUPTED: "interrupted (Ctrl-C or SIGTERM), after ramping the output down",
}


class UsageError(Exception):
    """A command-line usage error found after parsing (exit code 2)."""


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for an exception that ended a command."""
    from iontodrive.errors import (
        ContradictoryIdentityError,
        DeviceFault,
        DeviceRefusal,
        LinkError,
        SafetyRefusal,
        SessionInterrupted,
    )
    from iontodrive.presets import PresetError

    if isinstance(exc, (UsageError, PresetError)):
        return USAGE
    if isinstance(exc, (SafetyRefusal, DeviceRefusal, ContradictoryIdentityError)):  # (S18: before sending)
        return REFUSED
    if isinstance(exc, DeviceFault):
        return DEVICE_FAULT
    if isinstance(exc, LinkError):
        return LINK_ERROR
    if isinstance(exc, (SessionInterrupted, KeyboardInterrupt)):
        return INTERRUPTED
    return FAILURE
