"""Fault-campaign cases of issue 19: faults injected while the simulator runs, and a USB replug.

Imported by ``bench/faults.py`` (one delimited hunk there adds :data:`RUNTIME_FAULTS` to its table and
calls :func:`inject_in_process` / :func:`run_replug`). Each case goes through the simulator's control API
(:class:`firmware_sim.control.SimController`; over HTTP for the replug), the same route the web console
and a bench tester's script take:

==================  ==================================================================================
``rt_lift``         electrode lift asked for through the control API at the fault time
``rt_short``        short asked for through the control API
``rt_overcurrent``  regulator fault asked for through the control API
``rt_drop``         byte loss 1e-3 (both directions) switched on through the API mid-session
``rt_power_cut``    power cut through the API at the fault time
``replug``          the simulator's pty unplugged (the path vanishes, the host's port fails with EIO)
                    for 1 s of wall time and plugged back under the same stable link; a new host
                    reopens that path and recovers the record
==================  ==================================================================================
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

RUNTIME_PLANT = {"rt_lift": "electrode_lift", "rt_short": "short", "rt_overcurrent": "overcurrent"}
UNPLUGGED_S = 1.0


def runtime_faults(fault_cls: Any, lift_end: tuple[str, ...]) -> tuple[Any, ...]:
    """The cases as ``faults.Fault`` rows (the class is passed in so this module imports nothing of it)."""
    return (
        fault_cls("rt_lift", stops_output=True, expected=lift_end),
        fault_cls("rt_short", stops_output=True, expected=("fault", "electrode_lift", "completed")),
        fault_cls("rt_overcurrent", stops_output=True, expected=("fault", "aborted", "completed")),
        fault_cls("rt_drop"),
        fault_cls("rt_power_cut", stops_output=True, expected=("fault",)),
        fault_cls("replug", stops_output=True, process=True, expected=("recovered_after_host_loss",)),
    )


def is_runtime(name: str) -> bool:
    return name.startswith("rt_")


def inject_in_process(name: str, control: Any, at_s: float, facts: dict[str, Any]) -> None:
    """Ask the in-process simulator's controller (``port.control``) for fault ``name`` at device time
    ``at_s``; records ``fault_at_s`` (and, for the power cut, what ``faults.check`` needs)."""
    if name in RUNTIME_PLANT:
        facts["fault_at_s"] = control.act(RUNTIME_PLANT[name], {"at_s": at_s})["at_s"]
    elif name == "rt_drop":
        control.act("link_faults", {"at_s": at_s, "drop_rate": 1e-3})
    elif name == "rt_power_cut":
        device = control.device

        def cut(_: Any) -> None:  # runs in the simulator's loop, under its lock
            facts["fault_at_s"] = device.session_time_s
            facts["charge_before_uas"] = device.charge_uas
            device.power_cycle()

        control.runner.at(at_s, cut)
    else:
        raise ValueError(f"not a run-time fault: {name!r}")


def simulator_args() -> list[str]:
    """Extra simulator options for the replug case (``{link}`` is filled in by the caller)."""
    return ["--link", "{link}", "--control", "127.0.0.1:0"]


def unplug_for(control_url: str, seconds: float, facts: dict[str, Any]) -> None:
    """Unplug the simulator's port through its HTTP control API and plug it back ``seconds`` later."""
    req = urllib.request.Request(
        control_url + "api/act/unplug",
        data=json.dumps({"duration_s": seconds}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    facts["fault_wall"] = time.monotonic()
    with urllib.request.urlopen(req, timeout=10) as r:
        facts["unplug"] = json.loads(r.read())


def session_with_fault(
    ctx: Any, port: str, after_wall_s: float, inject: Any, close_as: str, facts: dict[str, Any]
) -> None:
    """Open the device at ``port``, start the scenario's session, call ``inject(stim)`` on a timer thread
    ``after_wall_s`` (wall s) later, and wait for the session; its typed error (or a watchdog's
    KeyboardInterrupt) goes in ``facts["error"]``. Then close the device (the step named ``close_as``).
    Every step is under ``ctx.guard`` and its hang noted, as the campaign does for each step."""
    import threading

    from iontodrive import Stimulator
    from iontodrive.errors import IontodriveError

    with ctx.guard("open") as dog:
        stim = Stimulator.open(port)
    ctx.note_hang(dog)
    with ctx.guard("session") as dog:
        try:
            session = stim.start(ctx.scenario.prescription, record_path=ctx.record_path)
            injector = threading.Timer(after_wall_s, inject, (stim,))
            injector.start()
            try:
                session.wait()
            finally:
                injector.join()
        except IontodriveError as exc:
            facts["error"] = f"{type(exc).__name__}: {exc}"
        except KeyboardInterrupt:
            facts["error"] = "KeyboardInterrupt (watchdog)"
    ctx.note_hang(dog)
    with ctx.guard(close_as, 60.0) as dog:
        stim.close()
    ctx.note_hang(dog)


def run_replug(
    ctx: Any, port: str, control_url: str, offset_s: float, wait_s: float, facts: dict[str, Any], recover: Any
) -> None:
    """The ``replug`` case: a session on the stable link, the port unplugged for :data:`UNPLUGGED_S` at
    ``offset_s`` (device s) into it, the driver's typed link error, then ``recover(ctx, port, facts)`` on
    the same path once the device's watchdog has paused the session."""

    def unplug(_stim: Any) -> None:
        unplug_for(control_url, UNPLUGGED_S, facts)

    session_with_fault(ctx, port, offset_s / ctx.speed, unplug, "close after unplug", facts)
    time.sleep(max(wait_s, UNPLUGGED_S + 0.5))
    recover(ctx, port, facts)


_JUDGED_AS = {
    "rt_lift": "lift",
    "rt_short": "short",
    "rt_overcurrent": "overcurrent",
    "rt_power_cut": "power_cycle",
}


class judged_as_base:
    """``with judged_as_base(ctx): check(ctx, facts)``: a run-time case is judged by exactly the rules of
    the fault it injects (``rt_power_cut`` as ``power_cycle``...), its result keeps its own name."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.saved = ctx.fault

    def __enter__(self) -> None:
        import dataclasses

        base = _JUDGED_AS.get(self.saved.name)
        if base is not None:
            self.ctx.fault = dataclasses.replace(self.saved, name=base)

    def __exit__(self, *exc: object) -> None:
        self.ctx.fault = self.saved
