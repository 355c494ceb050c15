"""asyncio API: :class:`AsyncStimulator` (dose sessions on the one session engine) and
:class:`AsyncDeviceClient` (the second driver of :mod:`iontodrive.clientcore`).

    async with AsyncStimulator.open("/dev/ttyUSB0") as stim:
        record = await stim.deliver(prescription)

See ``docs/api.md`` ("asyncio").
"""

from __future__ import annotations

from .client import AsyncDeviceClient, AsyncSubscription
from .loop_client import LoopClient
from .stimulator import AsyncSession, AsyncStimulator, TaskCancelled

__all__ = [
    "AsyncDeviceClient",
    "AsyncSession",
    "AsyncStimulator",
    "AsyncSubscription",
    "LoopClient",
    "TaskCancelled",
]
