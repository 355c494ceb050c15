"""Kept importable for code written against the first wave: everything here moved to
:mod:`iontodrive.sessions` (``Session`` is now :class:`~iontodrive.sessions.device.DeviceSession`)."""

from __future__ import annotations

from iontodrive.sessions.device import DeviceSession, Stimulator
from iontodrive.sessions.engine import DeliversSessions
from iontodrive.sessions.types import Progress, SessionOutcome, Terminated
from iontodrive.sessions.waiting import sigterm_as_exception

Session = DeviceSession

__all__ = [
    "DeliversSessions",
    "DeviceSession",
    "Progress",
    "Session",
    "SessionOutcome",
    "Stimulator",
    "Terminated",
    "sigterm_as_exception",
]
