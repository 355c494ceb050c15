"""Live progress of several devices from one asyncio process (issue 16).

Four in-process simulated stimulators (``sim://``, session time 20 x real time), each running a dose
session; one asyncio task per device follows its telemetry, and one more prints a line of live progress
for all of them a few times a second, until every device reports its session done. The dose printed at the
end is the device's own charge (the device is the authority).

Against hardware, pass the ports instead: ``python examples/many_devices_live.py /dev/ttyUSB0 /dev/ttyUSB1``.

Note: the sessions are started with the protocol's ``Start`` through
:class:`iontodrive.aio.AsyncDeviceClient`; the asyncio session API on the one session engine
(``AsyncStimulator``) is not part of this release.
"""

from __future__ import annotations

import asyncio
import sys

import firmware_sim
from iontodrive.aio import AsyncDeviceClient
from iontodrive.protocol import DeviceState, Polarity, Start, Telemetry

DOSE_UAS = 6000  # 1 mA: 5 s ramp up, 1 s hold, 5 s ramp down (the device's own dose accounting)
START = Start(
    target_current_ua=1000,
    dose_uas=DOSE_UAS,
    duration_ms=0,
    ramp_up_ms=5000,
    ramp_down_ms=5000,
    polarity=Polarity.ANODE,
)


class Device:
    """What the display shows for one device (updated from its telemetry)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.latest: Telemetry | None = None
        self.done = asyncio.Event()


async def run_session(url: str, device: Device) -> int:
    async with await AsyncDeviceClient.open(url, telemetry_hz=50) as client:
        started = False

        def on_sample(sample: Telemetry) -> None:
            device.latest = sample
            if started and sample.state is DeviceState.DONE:
                device.done.set()

        client.add_telemetry_listener(on_sample)
        await client.request(START)
        started = True
        await asyncio.wait_for(device.done.wait(), 120)
        return (await client.status()).charge_uas


async def display(devices: list[Device]) -> None:
    while not all(d.done.is_set() for d in devices):
        cells = []
        for d in devices:
            s = d.latest
            cells.append(
                f"{d.name} {'-' if s is None else s.state.name:9s} "
                f"{0 if s is None else s.charge_uas / DOSE_UAS:4.0%}"
            )
        print(" | ".join(cells), flush=True)
        await asyncio.sleep(0.25)


async def main(urls: list[str]) -> None:
    devices = [Device(f"#{n + 1}") for n in range(len(urls))]
    painter = asyncio.create_task(display(devices))
    charges = await asyncio.gather(*(run_session(u, d) for u, d in zip(urls, devices, strict=True)))
    await painter
    for device, charge in zip(devices, charges, strict=True):
        print(f"{device.name}: done, {charge} µA·s delivered by the device's count (prescribed {DOSE_UAS})")
    print(f"all {len(devices)} sessions completed")


if __name__ == "__main__":
    firmware_sim.register_url_handler()
    ports = sys.argv[1:] or [f"sim://clinic-4?speed=20&seed={n}" for n in range(4)]
    asyncio.run(main(ports))
