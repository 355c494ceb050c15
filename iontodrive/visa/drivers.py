"""Choosing the driver for an instrument from its ``*IDN?`` reply.

:func:`connect` sends ``*IDN?`` (and nothing else), picks the family driver whose manufacturer and model
match, and returns it. An instrument no driver supports is refused with
:class:`~iontodrive.visa.instrument.UnsupportedInstrumentError` naming the supported models.
"""

from __future__ import annotations

from collections.abc import Callable

from iontodrive.visa.instrument import (
    DEFAULT_TIMEOUT_S,
    CommandRecorder,
    Identification,
    ScpiInstrument,
    UnsupportedInstrumentError,
    VisaResource,
)
from iontodrive.visa.keithley2400 import Keithley2400
from iontodrive.visa.keithley2450 import Keithley2450
from iontodrive.visa.keysight_b2900 import KeysightB2900
from iontodrive.visa.smu import SourceMeter

DRIVERS: tuple[type[SourceMeter], ...] = (Keithley2400, Keithley2450, KeysightB2900)


def supported_models() -> list[str]:
    """Every supported model as ``"<vendor> <model>"``."""
    return [name for driver in DRIVERS for name in driver.supported()]


def driver_for(idn: Identification) -> type[SourceMeter]:
    """The driver class for ``idn``; UnsupportedInstrumentError if none matches."""
    for driver in DRIVERS:
        if driver.matches(idn):
            return driver
    raise UnsupportedInstrumentError(idn.raw, supported_models())


def connect(
    resource: VisaResource,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    recorder: CommandRecorder | None = None,
    clock: Callable[[], float] | None = None,
    channel: int = 1,
) -> SourceMeter:
    """Identify the instrument on ``resource`` (``*IDN?`` only) and return its driver.

    Raises:
        UnsupportedInstrumentError: no driver supports the model (nothing else was sent).
        InstrumentLinkError: the instrument does not answer.
        RemoteProtocolError: the ``*IDN?`` reply is malformed.
        ValueError: ``channel`` does not exist on this model.
    """
    kwargs = {} if clock is None else {"clock": clock}
    probe = ScpiInstrument(resource, timeout_s=timeout_s, recorder=recorder, **kwargs)
    idn = probe.identify()
    driver = driver_for(idn)
    return driver(resource, idn, timeout_s=timeout_s, recorder=recorder, clock=clock, channel=channel)
