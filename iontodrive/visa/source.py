"""A VISA source-meter as a :class:`~iontodrive.source.CurrentSource`: same session API as the stimulator.

:meth:`VisaSource.open` takes a VISA resource string and opens it through pyvisa with any backend: the
default VISA library (NI-VISA, Keysight IO Libraries), ``"@py"`` (pyvisa-py) or ``"<file>.yaml@sim"``
(pyvisa-sim). It identifies the instrument (``*IDN?``; unknown models are refused) and synthesizes an
:class:`~iontodrive.protocol.IdentityReport` from the model and the configured limits, so that
:meth:`Prescription.check_against` works unchanged:

=======================  ==========================================================================
``model``                ``"<vendor> <model>"`` (e.g. ``"Keithley 2450"``)
``serial_number``        the digits of the ``*IDN?`` serial (the full text is in the record)
``firmware_*``           the first three numbers of the ``*IDN?`` firmware field
``protocol_version``     0 (no framed protocol)
``max_current_ua``       ``max_current_ma`` option (default 5 mA, at most the model's range)
``compliance_mv``        ``compliance_v`` option (default 30 V or the model's maximum if lower)
``dose_cap_uas``         ``dose_cap_ma_min`` option (default 80 mA·min, the clinic devices' cap)
``slew_limit_ua_per_s``  ``slew_limit_ua_per_s`` option (default: full scale in 5 s, S1's shortest ramp)
``min/max_ramp_ms``      5 000 / 60 000 (S1)
``max_duration_ms``      ``max_duration_s`` option (default 2 h)
``trip_current_ua``      110 % of ``max_current_ua`` (the driver-side S9 check)
``waveforms``            DC only (host-side ramping cannot pulse)
``max_telemetry_hz``     ``rate_hz`` (set-points and readings per second, 20-200, default 20)
``*_watchdog_ms``        0: **these instruments have no watchdog**
=======================  ==========================================================================

Options only for the pyvisa-sim backend (refused with any other): ``sim_speed`` (run the session clock
this many times faster than real time) and ``sim_load_ohm`` (the resistive load the
:class:`~iontodrive.visa.simload.SimulatedLoad` puts behind the simulated instrument, default 1 kΩ).
Environment defaults, so that a lab script changes only its resource string: ``IONTODRIVE_VISA_LIBRARY``,
``IONTODRIVE_VISA_SIM_SPEED``, ``IONTODRIVE_VISA_SIM_LOAD_OHM``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

from iontodrive.errors import LinkClosedError, SafetyRefusal
from iontodrive.prescription import Prescription
from iontodrive.protocol import Event, IdentityReport, WaveformSet
from iontodrive.resources import normalise_resource
from iontodrive.sessions.engine import DeliversSessions
from iontodrive.sessions.types import Progress
from iontodrive.units import require_real
from iontodrive.visa.clock import Clock, RealClock, ScaledClock
from iontodrive.visa.drivers import connect
from iontodrive.visa.instrument import DEFAULT_TIMEOUT_S, CommandRecorder, VisaResource
from iontodrive.visa.session import DEFAULT_TELEMETRY_HZ, LEVEL_ZERO_A, VisaSession
from iontodrive.visa.simload import DEFAULT_LOAD_OHM, SimulatedLoad
from iontodrive.visa.smu import SourceMeter

logger = logging.getLogger(__name__)

ENV_LIBRARY = "IONTODRIVE_VISA_LIBRARY"
ENV_SIM_SPEED = "IONTODRIVE_VISA_SIM_SPEED"
ENV_SIM_LOAD = "IONTODRIVE_VISA_SIM_LOAD_OHM"

DEFAULT_MAX_CURRENT_MA = 5.0
DEFAULT_COMPLIANCE_V = 30.0
DEFAULT_DOSE_CAP_MA_MIN = 80.0
DEFAULT_MAX_DURATION_S = 7200.0
DEFAULT_RATE_HZ = 20.0
MIN_RATE_HZ = 20.0
MAX_RATE_HZ = 200.0
SHORTEST_RAMP_S = 5.0  # S1
LONGEST_RAMP_S = 60.0
DEADMAN_RANGE_S = (1.0, 60.0)

NO_WATCHDOG_WARNING = (
    "{model} has no watchdog: if this host process dies or hangs mid-session, the instrument keeps "
    "sourcing the last set-point until someone ramps it down (docs/visa.md, 'No watchdog')"
)


class VisaSource(DeliversSessions):
    """A bench source-meter that runs host-ramped dose sessions. Open with :meth:`open`.

    Example::

        with VisaSource.open("USB0::0x05E6::0x2450::04096331::INSTR", compliance_v=20) as smu:
            record = smu.deliver(Prescription(current_ma=2, dose_ma_min=10, polarity="cathode"))

    Thread-safety: one session at a time; its control methods may be called from any thread. ``close()``
    ramps a running session down first (S16).
    """

    def __init__(
        self,
        instrument: SourceMeter,
        *,
        resource_name: str = "",
        max_current_ma: float = DEFAULT_MAX_CURRENT_MA,
        compliance_v: float | None = None,
        slew_limit_ua_per_s: float | None = None,
        dose_cap_ma_min: float = DEFAULT_DOSE_CAP_MA_MIN,
        max_duration_s: float = DEFAULT_MAX_DURATION_S,
        rate_hz: float = DEFAULT_RATE_HZ,
        contact_check: bool = True,
        deadman_s: float | None = None,
        clock: Clock | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        limits = instrument.limits
        model = instrument.model_name
        max_ma = require_real(
            "max_current_ma",
            max_current_ma,
            minimum=0.0,
            maximum=limits.max_current_a * 1000.0,
            min_exclusive=True,
            reason=f"must be positive and within the {model}'s range",
        )
        if compliance_v is None:
            compliance_v = min(DEFAULT_COMPLIANCE_V, limits.max_voltage_v)
        volts = require_real(
            "compliance_v",
            compliance_v,
            minimum=0.0,
            maximum=limits.max_voltage_v,
            min_exclusive=True,
            reason=f"must be positive and within the {model}'s voltage range",
        )
        max_ua = round(max_ma * 1000.0)
        if slew_limit_ua_per_s is None:
            slew_limit_ua_per_s = max_ua / SHORTEST_RAMP_S
        slew = require_real(
            "slew_limit_ua_per_s",
            slew_limit_ua_per_s,
            minimum=max_ua / LONGEST_RAMP_S,
            maximum=max_ua / SHORTEST_RAMP_S,
            reason="must let a full-scale ramp take between 5 and 60 s (S1)",
        )
        cap = require_real("dose_cap_ma_min", dose_cap_ma_min, minimum=0.0, min_exclusive=True)
        duration = require_real("max_duration_s", max_duration_s, minimum=0.0, min_exclusive=True)
        rate = require_real("rate_hz", rate_hz, minimum=MIN_RATE_HZ, maximum=MAX_RATE_HZ)
        if not isinstance(contact_check, bool):
            raise SafetyRefusal("contact_check", contact_check, reason="must be True or False")
        if deadman_s is not None:
            if not instrument.SUPPORTS_FALLBACK:
                raise SafetyRefusal(
                    "deadman_s", deadman_s, reason=f"{instrument.FAMILY} has no hardware-side fallback here"
                )
            deadman_s = require_real(
                "deadman_s", deadman_s, minimum=DEADMAN_RANGE_S[0], maximum=DEADMAN_RANGE_S[1]
            )
        self.instrument = instrument
        self.resource_name = resource_name
        self.rate_hz = rate
        self.contact_check = contact_check
        self.deadman_s = deadman_s
        self.clock: Clock = clock if clock is not None else RealClock()
        speed = getattr(self.clock, "speed", 1.0)
        self.real_seconds_per_clock_second = 1.0 / speed if speed else 1.0
        self._on_close = on_close
        self._closed = False
        self._lock = threading.Lock()
        self._session: VisaSession | None = None
        self._sessions_started = 0
        idn = instrument.idn
        major, minor, patch = idn.firmware_version()
        self.identity = IdentityReport(
            model=model,
            serial_number=idn.serial_number(),
            firmware_major=major,
            firmware_minor=minor,
            firmware_patch=patch,
            protocol_version=0,
            max_current_ua=max_ua,
            compliance_mv=round(volts * 1000.0),
            dose_cap_uas=round(cap * 60_000),
            slew_limit_ua_per_s=max(1, int(slew)),
            min_ramp_ms=round(SHORTEST_RAMP_S * 1000),
            max_ramp_ms=round(LONGEST_RAMP_S * 1000),
            max_duration_ms=round(duration * 1000),
            trip_current_ua=round(max_ua * 1.1),
            waveforms=WaveformSet.DC,
            max_telemetry_hz=round(rate),
            min_pulse_frequency_hz=0,
            max_pulse_frequency_hz=0,
            min_watchdog_ms=0,
            max_watchdog_ms=0,
        )
        logger.info("connected to %s (%s) on %s", model, idn.raw, resource_name or "a VISA resource")

    # ------------------------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        resource: str,
        *,
        visa_library: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        channel: int = 1,
        recorder: CommandRecorder | None = None,
        clock: Clock | None = None,
        sim_speed: float | None = None,
        sim_load_ohm: float | None = None,
        **options: Any,
    ) -> Self:
        """Open the VISA ``resource``, identify the instrument and return a source.

        Args:
            resource: a VISA resource string (``GPIB0::24::INSTR``, ``USB0::...::INSTR``, ...).
            visa_library: pyvisa's ResourceManager argument (``""`` default library, ``"@py"``,
                ``"bench.yaml@sim"``); default ``$IONTODRIVE_VISA_LIBRARY`` or pyvisa's default.
            timeout_s: I/O timeout per exchange.
            channel: output channel on multi-channel instruments (B2902A: 1 or 2).
            recorder: called with every command sent (see :class:`~iontodrive.visa.instrument.CommandLog`).
            clock: session clock (default real time; ``sim_speed`` makes it a ScaledClock).
            sim_speed, sim_load_ohm: pyvisa-sim only (see the module docstring).
            options: :class:`VisaSource` limits (``max_current_ma``, ``compliance_v``, ...).

        Raises:
            InvalidResourceError: malformed resource string.
            SafetyRefusal: an option out of range (named, with its range).
            LinkClosedError: pyvisa is missing or the resource cannot be opened.
            UnsupportedInstrumentError: ``*IDN?`` names an unsupported model (nothing else was sent).
        """
        resource = normalise_resource(resource, for_backend="visa")
        library = visa_library if visa_library is not None else os.environ.get(ENV_LIBRARY, "")
        simulated = library.strip().lower().endswith("@sim")
        if sim_speed is None and os.environ.get(ENV_SIM_SPEED) and simulated:
            sim_speed = _env_float(ENV_SIM_SPEED)
        if sim_load_ohm is None and os.environ.get(ENV_SIM_LOAD) and simulated:
            sim_load_ohm = _env_float(ENV_SIM_LOAD)
        for name, value in (("sim_speed", sim_speed), ("sim_load_ohm", sim_load_ohm)):
            if value is not None and not simulated:
                raise SafetyRefusal(
                    name, value, reason="only allowed with the pyvisa-sim backend ('...@sim')"
                )
        if sim_speed is not None:
            speed = require_real("sim_speed", sim_speed, minimum=0.0, maximum=10_000.0, min_exclusive=True)
            if clock is None:
                clock = ScaledClock(speed)
        load_ohm = DEFAULT_LOAD_OHM
        if sim_load_ohm is not None:
            load_ohm = require_real("sim_load_ohm", sim_load_ohm, minimum=0.0, min_exclusive=True)
        try:
            import pyvisa
        except ImportError as exc:
            raise LinkClosedError(
                f"VISA support needs pyvisa: pip install 'iontodrive[visa]' ({exc})"
            ) from exc
        try:
            manager = pyvisa.ResourceManager(library) if library else pyvisa.ResourceManager()
        except Exception as exc:
            raise LinkClosedError(f"cannot load the VISA library {library!r}: {exc}") from exc
        try:
            raw = manager.open_resource(resource)
        except Exception as exc:
            with contextlib.suppress(Exception):
                manager.close()
            raise LinkClosedError(f"cannot open VISA resource {resource!r}: {exc}") from exc
        wrapped: VisaResource = (
            SimulatedLoad(raw, load_ohm=load_ohm) if simulated else cast(VisaResource, raw)
        )

        def close_manager() -> None:
            with contextlib.suppress(Exception):
                manager.close()

        try:
            instrument = connect(
                wrapped,
                timeout_s=timeout_s,
                recorder=recorder,
                clock=None if clock is None else clock.now,
                channel=channel,
            )
            if isinstance(wrapped, SimulatedLoad):
                wrapped.bind(instrument)
            return cls(instrument, resource_name=resource, clock=clock, on_close=close_manager, **options)
        except BaseException:
            with contextlib.suppress(Exception):
                wrapped.close()
            close_manager()
            raise

    # ------------------------------------------------------------------------------------ sessions

    def start(
        self,
        prescription: Prescription,
        *,
        record_path: str | Path | None = None,
        labels: dict[str, str] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_alarm: Callable[[str], None] | None = None,
        telemetry_hz: int | None = DEFAULT_TELEMETRY_HZ,
    ) -> VisaSession:
        """Check, configure and start a session; return its handle once the ramp-up has begun.

        Raises:
            SafetyRefusal: the prescription fails the checks (nothing is sent to the instrument), another
                session is running, the instrument's output is busy, or the contact check failed.
            InstrumentError: the instrument refused the configuration.
        """
        if self._closed:
            raise LinkClosedError("this VISA source is closed")
        with self._lock:
            if self._session is not None and not self._session.finished:
                raise SafetyRefusal("state", "busy", reason="a session is already running on this source")
            self._sessions_started += 1
            session = VisaSession.begin(
                self,
                prescription,
                record_path=record_path,
                labels=labels,
                on_progress=on_progress,
                on_event=on_event,
                on_alarm=on_alarm,
                telemetry_hz=telemetry_hz,
                session_id=self._sessions_started,
            )
            self._session = session
        self._remember(session)
        return session

    @property
    def session(self) -> VisaSession | None:
        """The last session started on this source (running or finished), or None."""
        return self._session

    @property
    def no_watchdog_warning(self) -> str:
        """The warning logged and written to the record when each session starts (no watchdog)."""
        text = NO_WATCHDOG_WARNING.format(model=self.identity.model)
        if self.deadman_s is not None:
            text += f"; hardware-side fallback armed during the hold (deadman_s = {self.deadman_s:g} s)"
        return text

    @property
    def description(self) -> str:
        return f"{self.identity.model} #{self.identity.serial_number} on {self.resource_name or 'VISA'}"

    @property
    def url(self) -> str:
        return self.resource_name

    @property
    def has_device_status(self) -> bool:
        """False: a source-meter reports no session status of its own (the host ramps it)."""
        return False

    def ensure_output_zero(self, timeout_s: float) -> None:
        """Safety net after an interrupt that escaped before a session took charge: ramp a running
        session down, or ramp whatever the output sources to zero (bounded by the slew limit)."""
        session = self._session
        if session is not None and not session.finished:
            session.ramp_down_for_close("interrupted")
            return
        self.ramp_down_output()

    # --------------------------------------------------------------------------------- utilities

    def ramp_down_output(self, ramp_s: float = 0.0) -> float:
        """Ramp whatever the output sources now to zero, then switch it off; return the level found (A).

        For recovery after a host died mid-session (these instruments have no watchdog). The ramp starts
        from the read-back level and takes ``ramp_s`` seconds or what the slew limit requires, whichever is
        longer. Refused while a session of this source is running.
        """
        if self._session is not None and not self._session.finished:
            raise SafetyRefusal("state", "busy", reason="a session is running; stop it instead")
        instrument = self.instrument
        if not instrument.output_enabled():
            return 0.0
        level = instrument.source_level_a()
        from iontodrive.ramp import SetpointStream

        stream = SetpointStream(slew_limit_ua_per_s=self.identity.slew_limit_ua_per_s, rate_hz=self.rate_hz)
        last = None
        for _t, setpoint in stream.segment(level * 1e6, 0.0, ramp_s, include_start=False):
            now = self.clock.now()
            if last is not None and now - last < 1.0 / self.rate_hz:
                self.clock.sleep(1.0 / self.rate_hz - (now - last))
            instrument.set_level_a(setpoint * 1e-6)
            last = self.clock.now()
        if abs(instrument.source_level_a()) <= LEVEL_ZERO_A:
            instrument.output_off()
        logger.info("ramped the output down from %g A and switched it off", level)
        return level

    # ------------------------------------------------------------------------------------ closing

    def close(self) -> None:
        """Ramp down a running session (S16), then close the VISA resource. Idempotent."""
        if self._closed:
            return
        session = self._session
        if session is not None and not session.finished:
            session.ramp_down_for_close("source closed")
        self._closed = True
        self.instrument.close()
        if self._on_close is not None:
            self._on_close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _env_float(name: str) -> float:
    text = os.environ.get(name, "")
    try:
        return float(text)
    except ValueError:
        raise SafetyRefusal(name, text, reason="environment variable must be a number") from None
