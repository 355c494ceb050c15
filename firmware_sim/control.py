"""Control of a running simulator: faults, power, plugging and skin, now or at a given device time.

:class:`SimController` is the one implementation; the HTTP API (:mod:`firmware_sim.control_http`) is a
thin shell over it, and in-process users (tests, ``sim://`` ports: ``port.control``) call it directly.

Every action takes ``at_s``: the simulator (session) time in seconds, the trace's ``t_s``, at which it
happens; ``None`` (or a time already past) means now. Plant faults are scheduled in the device itself
(exact to the physics step); everything else -- link faults, host silence, power cut, reset, unplug and
replug, skin -- runs in the simulator's loop at its first tick at or after ``at_s`` (ticks are at most
``DeviceRunner.idle_s`` = 50 ms of wall time apart), on the loop's own thread, so that no transport is
touched from two threads.

Every method validates its arguments before anything happens and raises :class:`ControlError` (a
``ValueError``) naming the field and its allowed range.

:class:`DeviceControl` is the same for a device that its owner steps itself (a virtual clock: the tests'
in-process devices, ``sim://...?clock=virtual``): the plant faults and the skin only, applied at once,
since there is no loop to schedule in and no transport to act on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from iontodrive.protocol import DeviceState, StatusFlags

from .device import Device
from .faults import ContactReturn, ElectrodeLift, ImpedanceRise, OverCurrent, PlantFault, ShortCircuit
from .plant_step import PlantStepper
from .runner import DeviceRunner
from .wired import WiredTransport

log = logging.getLogger(__name__)

PLANT_FAULTS: dict[str, type[PlantFault]] = {
    "electrode_lift": ElectrodeLift,
    "contact_return": ContactReturn,
    "impedance_rise": ImpedanceRise,
    "short": ShortCircuit,
    "overcurrent": OverCurrent,
}
"""Plant faults by the name the API uses; parameters are the dataclass fields (``duration_s``, ...)."""

ACTIONS = (
    *PLANT_FAULTS,
    "host_silence",
    "host_heard",
    "link_faults",
    "power_cut",
    "reset",
    "unplug",
    "replug",
    "skin",
)
"""Every action :meth:`SimController.act` knows (the HTTP API serves ``POST /api/act/<name>``)."""

ALARM_FLAGS = (
    StatusFlags.ELECTRODE_LIFT,
    StatusFlags.LINK_LOST,
    StatusFlags.OVERCURRENT,
    StatusFlags.HARDWARE_TRIP,
    StatusFlags.RESISTANCE_LIMIT,
    StatusFlags.EVENTS_OVERFLOWED,
)


class ControlError(ValueError):
    """A control request with a bad argument; nothing was changed."""


def _number(
    params: Mapping[str, Any], name: str, lo: float, hi: float, default: float | None
) -> float | None:
    value = params.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ControlError(f"{name} = {value!r} is not a number")
    if not lo <= value <= hi:
        raise ControlError(f"{name} = {value!r} is out of range: must be in [{lo:g}, {hi:g}]")
    return float(value)


def _flag_names(flags: StatusFlags) -> list[str]:
    return [f.name for f in StatusFlags if f and f in flags and f.name is not None]


def _device_snapshot(d: Device) -> dict[str, Any]:
    """What the device alone says about itself (the caller holds its lock)."""
    status = d.status()
    flags = status.flags
    return {
        "t_s": d.session_time_s,
        "link_s": d.link_time_s,
        "state": DeviceState(status.state).name,
        "setpoint_ua": d.setpoint_ua,
        "output_ua": d.output_ua,
        "measured_ua": status.measured_ua,
        "voltage_mv": status.voltage_mv,
        "impedance_ohm": status.impedance_ohm,
        "load": {
            "r_series_ohm": d.load.r_series_ohm,
            "r_skin_ohm": d.load.r_skin_ohm,
            "c_skin_nf": d.load.c_skin_nf,
            "resting_impedance_ohm": d.load.resting_impedance_ohm,
        },
        "charge_uas": d.charge_uas,
        "target_current_ua": status.target_current_ua,
        "target_charge_uas": status.target_charge_uas,
        "telemetry_hz": status.telemetry_hz,
        "flags": _flag_names(flags),
        "alarms": [f.name for f in ALARM_FLAGS if f in flags and f.name is not None],
        "last_event_no": status.last_event_no,
        "boot_count": d.firmware.boot_count,
    }


class SimController:
    """Controls the device behind ``runner`` (and its transport, if it is a :class:`WiredTransport`)."""

    def __init__(self, runner: DeviceRunner, transport: WiredTransport | None = None) -> None:
        self.runner = runner
        self.device: Device = runner.device
        self.transport = transport
        self.log: list[dict[str, Any]] = []  # what was asked, in order (for the console and the tests)

    # --------------------------------------------------------------------------------------- reading

    def snapshot(self) -> dict[str, Any]:
        """The device now: times in s, currents in µA, voltage in mV, impedance in Ω, charge in µA·s."""
        with self.runner.lock:
            return {
                **_device_snapshot(self.device),
                "plugged": self.transport.plugged if self.transport is not None else True,
                "host_silent": self.transport.host_silent if self.transport is not None else False,
                "scheduled": self.runner.scheduled,
                "counters": self.transport.counters() if self.transport is not None else {},
            }

    def events(self, after_no: int = 0) -> list[dict[str, Any]]:
        """Events since the last power-up with a number above ``after_no``, oldest first."""
        with self.runner.lock:
            events = self.device.events
        return [
            {"no": e.event_no, "t_ms": e.device_time_ms, "code": e.code.name, "value": e.value}
            for e in events
            if e.event_no > after_no
        ]

    # --------------------------------------------------------------------------------------- actions

    def act(self, name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Do action ``name`` (one of :data:`ACTIONS`) with ``params`` (``at_s`` and the action's own).

        Returns what was scheduled: ``{"action", "at_s", ...}``. Raises ControlError for an unknown action,
        an unknown parameter or a value out of range.
        """
        params = dict(params or {})
        at_s = _number(params, "at_s", 0.0, 1e9, None)
        params.pop("at_s", None)
        if name in PLANT_FAULTS:
            return self._plant_fault(name, at_s, params)
        handler = _HANDLERS.get(name)
        if handler is None:
            raise ControlError(f"action = {name!r} is not known: must be one of {list(ACTIONS)}")
        action, detail = handler(self, params)
        return self._schedule(name, at_s, action, detail)

    def _plant_fault(self, name: str, at_s: float | None, params: dict[str, Any]) -> dict[str, Any]:
        with self.runner.lock:
            entry = inject_plant_fault(self.device, name, at_s, params)
        self.log.append(entry)
        log.info("control: %s", entry)
        return entry

    def _schedule(
        self, name: str, at_s: float | None, action: Callable[[Device], object], detail: dict[str, Any]
    ) -> dict[str, Any]:
        with self.runner.lock:
            when = self.device.session_time_s if at_s is None else max(at_s, self.device.session_time_s)
            self.runner.at(when, action)
        entry = {"action": name, "at_s": when, **detail}
        self.log.append(entry)
        log.info("control: %s", entry)
        return entry

    def _need_transport(self, what: str) -> WiredTransport:
        if self.transport is None:
            raise ControlError(f"{what} needs a transport (this simulator has none to act on)")
        return self.transport

    # one method per non-plant action: (action to run in the loop, what to report)

    def _host_silence(self, params: dict[str, Any]) -> tuple[Callable[[Device], object], dict[str, Any]]:
        transport = self._need_transport("host_silence")
        duration = _number(params, "duration_s", 0.001, 1e6, None)
        _only(params, "host_silence", {"duration_s"})
        runner = self.runner

        def silence(device: Device) -> None:
            transport.silence_host(True)
            if duration is not None:
                runner.at(
                    device.session_time_s + duration * runner.speed, lambda _: transport.silence_host(False)
                )

        return silence, {"duration_s": duration}

    def _host_heard(self, params: dict[str, Any]) -> tuple[Callable[[Device], object], dict[str, Any]]:
        transport = self._need_transport("host_heard")
        _only(params, "host_heard", set())
        return (lambda _: transport.silence_host(False)), {}

    def _link_faults(self, params: dict[str, Any]) -> tuple[Callable[[Device], object], dict[str, Any]]:
        transport = self._need_transport("link_faults")
        drop = _number(params, "drop_rate", 0.0, 1.0, 0.0) or 0.0
        corrupt = _number(params, "corrupt_rate", 0.0, 1.0, 0.0) or 0.0
        _only(params, "link_faults", {"drop_rate", "corrupt_rate"})
        return (lambda _: transport.set_link_faults(drop, corrupt)), {
            "drop_rate": drop,
            "corrupt_rate": corrupt,
        }

    def _power_cut(self, params: dict[str, Any]) -> tuple[Callable[[Device], object], dict[str, Any]]:
        _only(params, "power_cut", set())
        return (lambda device: device.power_cycle()), {}

    def _reset(self, params: dict[str, Any]) -> tuple[Callable[[Device], object], dict[str, Any]]:
        _only(params, "reset", set())
        # a reset line pulled cuts the output stage at once, as a power cut does; the firmware restarts
        return (lambda device: device.power_cycle()), {}

    def _unplug(self, params: dict[str, Any]) -> tuple[Callable[[Device], object], dict[str, Any]]:
        transport = self._need_transport("unplug")
        if not transport.pluggable:
            raise ControlError(f"unplug: the {type(transport.inner).__name__} transport cannot be unplugged")
        duration = _number(params, "duration_s", 0.001, 1e6, None)
        _only(params, "unplug", {"duration_s"})
        runner = self.runner

        def unplug(device: Device) -> None:
            transport.unplug()
            if duration is not None:  # wall seconds: a person puts the plug back in real time
                runner.at(device.session_time_s + duration * runner.speed, lambda _: transport.replug())

        return unplug, {"duration_s": duration}

    def _replug(self, params: dict[str, Any]) -> tuple[Callable[[Device], object], dict[str, Any]]:
        transport = self._need_transport("replug")
        if not transport.pluggable:
            raise ControlError(f"replug: the {type(transport.inner).__name__} transport cannot be unplugged")
        _only(params, "replug", set())
        return (lambda _: transport.replug()), {}

    def _skin(self, params: dict[str, Any]) -> tuple[Callable[[Device], object], dict[str, Any]]:
        changes = skin_changes(params)
        return (lambda device: set_load(device, **changes)), dict(changes)


class DeviceControl:
    """Control of a :class:`Device` that its owner steps (a virtual clock), with the API of
    :class:`SimController` for what needs neither a loop nor a transport: the plant faults
    (:data:`PLANT_FAULTS`) and ``skin``, applied at once (``at_s`` schedules a plant fault later, as
    there). The other actions raise :class:`ControlError` naming what they would need. Not thread-safe:
    call it from the thread that steps the device."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.log: list[dict[str, Any]] = []

    def snapshot(self) -> dict[str, Any]:
        """The part of :meth:`SimController.snapshot` a device alone can give (same units)."""
        return _device_snapshot(self.device)

    def act(self, name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Do action ``name`` now (a plant fault or ``skin``); return what was done.

        Raises ControlError for an action that needs the simulator's loop or transport, an unknown
        parameter or a value out of range."""
        params = dict(params or {})
        at_s = _number(params, "at_s", 0.0, 1e9, None)
        params.pop("at_s", None)
        if name in PLANT_FAULTS:
            entry = inject_plant_fault(self.device, name, at_s, params)
        elif name == "skin":
            if at_s is not None and at_s > self.device.session_time_s:
                raise ControlError("skin: at_s in the future needs the simulator's loop (SimController)")
            changes = skin_changes(params)
            set_load(self.device, **changes)
            entry = {"action": name, "at_s": self.device.session_time_s, **changes}
        elif name in ACTIONS:
            raise ControlError(f"{name} needs the simulator's loop and transport (SimController)")
        else:
            raise ControlError(f"action = {name!r} is not known: must be one of {list(ACTIONS)}")
        self.log.append(entry)
        return entry


def inject_plant_fault(
    device: Device, name: str, at_s: float | None, params: Mapping[str, Any]
) -> dict[str, Any]:
    """Schedule the plant fault ``name`` (a key of :data:`PLANT_FAULTS`) with ``params`` on ``device``;
    return ``{"action", "at_s", ...}`` with ``at_s`` resolved (simulator seconds). The caller holds the
    device's lock. Raises ControlError for an unknown parameter or a value out of range."""
    cls = PLANT_FAULTS[name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"at_s"}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ControlError(f"{name} has no parameter {unknown[0]!r}: it takes {sorted(fields)}")
    try:
        resolved = device.inject(cls(at_s=at_s, **params))
    except (TypeError, ValueError) as exc:
        raise ControlError(str(exc)) from None
    return {"action": name, "at_s": resolved.at_s, **params}


def skin_changes(params: Mapping[str, Any]) -> dict[str, float]:
    """The :func:`set_load` changes the ``skin`` action asks for (``r_skin_kohm`` in kΩ, ``r_series_ohm``
    in Ω, ``c_skin_nf`` in nF). Raises ControlError for a value out of range, an unknown parameter or
    none at all."""
    r_skin = _number(params, "r_skin_kohm", 0.01, 1000.0, None)
    r_series = _number(params, "r_series_ohm", 0.0, 100_000.0, None)
    c_skin = _number(params, "c_skin_nf", 0.01, 100_000.0, None)
    _only(params, "skin", {"r_skin_kohm", "r_series_ohm", "c_skin_nf"})
    changes: dict[str, float] = {}
    if r_skin is not None:
        changes["r_skin_ohm"] = r_skin * 1000.0
    if r_series is not None:
        changes["r_series_ohm"] = r_series
    if c_skin is not None:
        changes["c_skin_nf"] = c_skin
    if not changes:
        raise ControlError("skin needs at least one of r_skin_kohm, r_series_ohm, c_skin_nf")
    return changes


def _only(params: Mapping[str, Any], action: str, allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ControlError(f"{action} has no parameter {unknown[0]!r}: it takes {sorted(allowed) or 'none'}")


_HANDLERS: dict[
    str, Callable[[SimController, dict[str, Any]], tuple[Callable[[Device], object], dict[str, Any]]]
] = {
    "host_silence": SimController._host_silence,
    "host_heard": SimController._host_heard,
    "link_faults": SimController._link_faults,
    "power_cut": SimController._power_cut,
    "reset": SimController._reset,
    "unplug": SimController._unplug,
    "replug": SimController._replug,
    "skin": SimController._skin,
}


def set_load(device: Device, **changes: float) -> None:
    """Change the electrode-skin load of a running device (``r_skin_ohm``, ``r_series_ohm``,
    ``c_skin_nf``): the vectorised plant reads its load every block, the scalar stepper copies it, so
    both are updated. The conditioning time constants cannot change at run time (the plant precomputes
    them)."""
    plant = device.plant
    plant.load = dataclasses.replace(plant.load, **changes)
    device.load = plant.load
    device.firmware.stepper = PlantStepper(plant)
