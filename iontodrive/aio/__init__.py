"""asyncio API: :class:`AsyncDeviceClient` (the second driver of :mod:`iontodrive.clientcore`).

    async with await AsyncDeviceClient.open("/dev/ttyUSB0") as client:
        status = await client.status()

See ``docs/api.md`` ("asyncio").
"""

from __future__ import annotations

from .client import AsyncDeviceClient, AsyncSubscription

__all__ = ["AsyncDeviceClient", "AsyncSubscription"]
