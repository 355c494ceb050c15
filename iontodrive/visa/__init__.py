"""Bench source-meters over VISA, ramped by the host: Keithley 2400 series and 2450, Keysight B2901A/B2902A.

Layers: :mod:`~iontodrive.visa.instrument` (SCPI exchanges, command recorder, error queue),
:mod:`~iontodrive.visa.smu` and one module per family (the SCPI dialects),
:mod:`~iontodrive.visa.drivers` (choosing a driver from ``*IDN?``), :mod:`~iontodrive.visa.session`
(host-ramped sessions), :mod:`~iontodrive.visa.source` (:class:`VisaSource`, the
:class:`~iontodrive.source.CurrentSource` for VISA), :mod:`~iontodrive.visa.clock` and
:mod:`~iontodrive.visa.simload` (simulation aids). Commands, sources and the no-watchdog warning:
``docs/visa.md``.

Quick use::

    from iontodrive import Prescription
    from iontodrive.source import open_source

    with open_source("GPIB0::24::INSTR", compliance_v=20) as smu:   # or "socket://..." for a stimulator
        record = smu.deliver(Prescription(current_ma=2, dose_ma_min=10, polarity="cathode"))
"""

from __future__ import annotations

from iontodrive.source import open_source
from iontodrive.visa.clock import Clock, RealClock, ScaledClock, VirtualClock
from iontodrive.visa.drivers import DRIVERS, connect, driver_for, supported_models
from iontodrive.visa.instrument import (
    CommandEntry,
    CommandLog,
    Identification,
    InstrumentError,
    InstrumentLinkError,
    ScpiInstrument,
    UnsupportedInstrumentError,
)
from iontodrive.visa.keithley2400 import Keithley2400
from iontodrive.visa.keithley2450 import Keithley2450
from iontodrive.visa.keysight_b2900 import KeysightB2900
from iontodrive.visa.session import VisaSession
from iontodrive.visa.simload import SimulatedLoad
from iontodrive.visa.smu import ModelLimits, Reading, SourceMeter
from iontodrive.visa.source import VisaSource

__all__ = [
    "DRIVERS",
    "Clock",
    "CommandEntry",
    "CommandLog",
    "Identification",
    "InstrumentError",
    "InstrumentLinkError",
    "Keithley2400",
    "Keithley2450",
    "KeysightB2900",
    "ModelLimits",
    "Reading",
    "RealClock",
    "ScaledClock",
    "ScpiInstrument",
    "SimulatedLoad",
    "SourceMeter",
    "UnsupportedInstrumentError",
    "VirtualClock",
    "VisaSession",
    "VisaSource",
    "connect",
    "driver_for",
    "open_source",
    "supported_models",
]
