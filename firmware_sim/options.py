"""Simulator options shared by the command line and the ``sim://`` URL handler."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .device import Device
from .faults import ContactReturn, ElectrodeLift, ImpedanceRise, OverCurrent, PlantFault, ShortCircuit
from .link_faults import LinkFaults
from .models import MODELS, resolve_model
from .trace import TraceWriter
from .wire import WireSettings


@dataclass(slots=True)
class SimOptions:
    """Everything needed to build a simulated device; units in the names, times in simulator seconds."""

    model: str = "clinic-4"
    speed: float = 1.0
    seed: int = 0
    trace: str | None = None
    trace_rate_hz: float | None = None
    physics_step_ms: float = 1.0
    telemetry_hz: int | None = None
    skin_kohm: float | None = None
    lift_at_s: list[float] = field(default_factory=list)
    contact_return_at_s: list[float] = field(default_factory=list)
    impedance_rise_at_s: list[float] = field(default_factory=list)
    short_at_s: list[float] = field(default_factory=list)
    overcurrent_at_s: list[float] = field(default_factory=list)
    drop_rate: float = 0.0
    corrupt_rate: float = 0.0
    junk_rate: float = 0.0
    split: bool = False
    latency_ms: float = 0.0
    silent_at_s: float | None = None
    clock: str = "wall"
    baud: int | None = None  # wire model of a serial line (wall clock only); None = none
    latency_timer_ms: float | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first bad option and its allowed range."""
        resolve_model(self.model)
        if not 0 < self.speed <= 100_000:
            raise ValueError(f"speed = {self.speed!r} is out of range: must be in (0, 100000]")
        if not 0.001 <= self.physics_step_ms <= 100:
            raise ValueError(
                f"physics_step_ms = {self.physics_step_ms!r} is out of range: must be in [0.001, 100]"
            )
        if self.trace_rate_hz is not None and not self.trace_rate_hz > 0:
            raise ValueError(f"trace_rate = {self.trace_rate_hz!r} is out of range: must be > 0")
        if self.skin_kohm is not None and not 0 < self.skin_kohm <= 1000:
            raise ValueError(f"skin_kohm = {self.skin_kohm!r} is out of range: must be in (0, 1000]")
        if self.clock not in ("wall", "virtual"):
            raise ValueError(f"clock = {self.clock!r} is out of range: must be 'wall' or 'virtual'")
        self.link_faults()  # validates the rates
        if self.latency_timer_ms is not None and self.baud is None:
            raise ValueError("latency_timer_ms needs baud (the latency timer is part of the wire model)")
        if self.baud is not None and self.clock == "virtual":
            raise ValueError("baud needs clock=wall (the wire model paces bytes in wall time)")
        self.wire_settings()  # validates baud and the latency timer

    def wire_settings(self) -> WireSettings | None:
        """The wire model these options ask for (None: no serial line modelled)."""
        if self.baud is None:
            return None
        return WireSettings(baud=self.baud, latency_timer_ms=self.latency_timer_ms)

    def plant_faults(self) -> list[PlantFault]:
        faults: list[PlantFault] = []
        faults += [ElectrodeLift(at_s=t) for t in self.lift_at_s]
        faults += [ContactReturn(at_s=t) for t in self.contact_return_at_s]
        faults += [ImpedanceRise(at_s=t) for t in self.impedance_rise_at_s]
        faults += [ShortCircuit(at_s=t) for t in self.short_at_s]
        faults += [OverCurrent(at_s=t) for t in self.overcurrent_at_s]
        return faults

    def link_faults(self) -> LinkFaults | None:
        lf = LinkFaults(
            drop_rate=self.drop_rate,
            corrupt_rate=self.corrupt_rate,
            junk_rate=self.junk_rate,
            split=self.split,
            latency_ms=self.latency_ms,
            silent_at_s=self.silent_at_s,
        )
        return lf if lf.active else None

    def build_device(self) -> Device:
        """A :class:`Device` with these options, faults injected, trace opened."""
        self.validate()
        spec = resolve_model(self.model)
        load = spec.default_load
        if self.skin_kohm is not None:
            load = dataclasses.replace(load, r_skin_ohm=self.skin_kohm * 1000.0)
        trace = None
        if self.trace:
            trace = TraceWriter(Path(self.trace), rate_hz=self.trace_rate_hz)
        device = Device(
            spec,
            seed=self.seed,
            physics_step_s=self.physics_step_ms / 1000.0,
            load=load,
            trace=trace,
            link_faults=self.link_faults(),
            telemetry_hz=self.telemetry_hz,
        )
        for fault in self.plant_faults():
            device.inject(fault)
        return device


MODEL_NAMES = sorted(MODELS)
