"""Bench scenario through the simulator's control API: an electrode lift, then a USB unplug and replug.

Usage::

    python examples/bench_control_api.py          # starts its own simulator subprocess

It starts ``python -m firmware_sim --pty --link <tmp>/usb-sim --control 127.0.0.1:0`` and, as a bench
tester's script would, drives it over HTTP while the driver runs sessions on the stable link:

1. a session holding 2 mA; ``POST /api/act/electrode_lift`` at a device time a few seconds ahead; the
   device ramps to zero and pauses, the driver reports ``DeviceFault(ELECTRODE_LIFT)`` and ends the
   session at zero;
2. ``POST /api/act/contact_return`` (the electrode put back), a second session;
   ``POST /api/act/unplug`` for 2 s: the path vanishes, the driver gets a typed link error, the device's
   watchdog pauses the session (``LINK_LOST``); the port comes back under the same path, a new
   connection finds the session paused with its charge, and ``recover()`` completes the record.

Resuming the remainder after the replug (issue 19 item 5) is ``examples/bench_resume.py``.
Exit status 0 and ``PASS`` if every step held, ``FAIL: ...`` and 1 otherwise.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from iontodrive import DeviceFault, Prescription, Stimulator
from iontodrive.cli.simproc import SimulatorProcess
from iontodrive.errors import LinkError
from iontodrive.protocol import DeviceState, EventCode, Stop

SPEED = 10
RX = Prescription(current_ma=2.0, duration_s=600, ramp_up_s=5, ramp_down_s=5, polarity="cathode")


def api(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(url + path, method="GET" if body is None else "POST")
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def wait_for_state(url: str, *states: str, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status: dict[str, Any] = api(url, "api/status")
        if status["state"] in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"the device never reached {' or '.join(states)}")


def run(workdir: Path) -> list[str]:
    failures: list[str] = []
    link = workdir / "usb-iontodrive-sim-if00"
    with SimulatorProcess(
        "--pty", "--link", str(link), "--control", "127.0.0.1:0", "--speed", str(SPEED),
        log_path=workdir / "sim.log",
    ) as sim:  # fmt: skip
        url = sim.control_url
        assert url is not None
        print(f"simulator on {sim.url}, control API and console on {url}")

        # 1. electrode lift through the API
        with Stimulator.open(str(link)) as stim:
            session = stim.start(RX, record_path=workdir / "lift.jsonl")
            holding = wait_for_state(url, "HOLD")
            asked = api(url, "api/act/electrode_lift", {"at_s": holding["t_s"] + 5.0})
            print(f"electrode lift asked for at device time {asked['at_s']:.1f} s")
            try:
                session.wait(timeout_s=60)
                failures.append("the driver did not report the lift")
            except DeviceFault as fault:
                print(f"driver: {fault}")
                if fault.code is not EventCode.ELECTRODE_LIFT:
                    failures.append(f"expected ELECTRODE_LIFT, got {fault.code.name}")
            after = wait_for_state(url, "PAUSED", "DONE")  # the driver ends a lifted session at zero
            print(
                f"device: {after['state']}, flags {after['flags']}, {after['charge_uas']:.0f} µA·s delivered"
            )
            if "ELECTRODE_LIFT" not in after["flags"]:
                failures.append(f"the device does not show the lift: {after['flags']}")
            if after["output_ua"] > 1.0:
                failures.append(f"output {after['output_ua']:.0f} µA after the lift")
            if after["state"] == "PAUSED":
                stim.request(Stop())  # end the paused session before the next one
        wait_for_state(url, "DONE", "IDLE")
        back = api(url, "api/act/contact_return", {})  # the electrode is put back (0.2 s)
        time.sleep(2.0 / SPEED)
        print(f"contact returned at device time {back['at_s']:.1f} s")

        # 2. unplug and replug through the API
        with Stimulator.open(str(link)) as stim:
            session = stim.start(RX, record_path=workdir / "replug.jsonl")
            wait_for_state(url, "HOLD")
            threading.Timer(1.0, api, (url, "api/act/unplug", {"duration_s": 2.0})).start()
            try:
                session.wait(timeout_s=60)
                failures.append("the driver did not notice the unplug")
            except LinkError as exc:
                print(f"driver: {type(exc).__name__}")
            if link.exists():
                print("(the path is already back)")
            else:
                print(f"{link.name} vanished")
        paused = wait_for_state(url, "PAUSED")
        if "LINK_LOST" not in paused["alarms"]:
            failures.append(f"the watchdog did not pause the session: alarms {paused['alarms']}")
        deadline = time.monotonic() + 10
        while not link.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with Stimulator.open(str(link)) as stim:
            status = stim.status()
            print(
                f"replugged: {link.name} is back, device {status.state.name}, {status.charge_uas} µA·s kept"
            )
            if status.state is not DeviceState.PAUSED:
                failures.append(f"after the replug the device is {status.state.name}, not PAUSED")
            record = stim.recover(workdir / "replug.jsonl")
            print(f"record recovered: complete={record.complete}")
            if not record.complete:
                failures.append("recover() did not complete the record")
    return failures


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-control-") as tmp:
        failures = run(Path(tmp))
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
