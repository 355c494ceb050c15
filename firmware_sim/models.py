"""Hard limits of the simulated device models (S12).

Each :class:`ModelSpec` holds what the firmware enforces and reports in :class:`IdentityReport` (every limit
the firmware checks a request against is on the wire since protocol version 2, ``min_current_ua`` and the
duty-cycle range included); none of it can be changed over the protocol. ``docs/simulator.md`` gives the
source or judgement behind every number. Fields that are not on the wire (the hardware trip, ADC
resolution and noise, default load) are the simulator's own and are documented there too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from iontodrive.protocol import PROTOCOL_VERSION, IdentityReport, WaveformSet

FIRMWARE_VERSION = (1, 0, 0)


@dataclass(frozen=True, slots=True)
class LoadParams:
    """The electrode–skin load: ``R_series + (R_skin ∥ C)``, divided by the contact area fraction.

    ``r_skin_ohm`` is the resting skin resistance. While current flows it falls by up to
    ``conditioning_depth`` (fraction, 0.5–0.8 per the guide) with time constant ``fall_tau_s``; with no
    current it recovers with ``recover_tau_s``. ``conditioning_current_ua`` is the current at which the
    full fall is reached (smaller currents condition the skin proportionally less).
    """

    r_series_ohm: float = 800.0
    r_skin_ohm: float = 4000.0
    c_skin_nf: float = 50.0
    conditioning_depth: float = 0.6
    fall_tau_s: float = 90.0
    recover_tau_s: float = 600.0
    conditioning_current_ua: float = 2000.0

    def __post_init__(self) -> None:
        for name in ("r_series_ohm", "r_skin_ohm", "c_skin_nf", "fall_tau_s", "recover_tau_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"LoadParams.{name} = {value!r} is out of range: must be > 0")
        if not 0.0 <= self.conditioning_depth < 1.0:
            raise ValueError(
                f"LoadParams.conditioning_depth = {self.conditioning_depth!r} is out of range: "
                "must be in [0, 1)"
            )
        if not self.conditioning_current_ua > 0:
            raise ValueError(
                f"LoadParams.conditioning_current_ua = {self.conditioning_current_ua!r} is out of range: "
                "must be > 0"
            )

    @property
    def resting_impedance_ohm(self) -> float:
        """DC impedance of the fully attached, unconditioned load (ohm)."""
        return self.r_series_ohm + self.r_skin_ohm


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Hard limits and simulator parameters of one device model.

    Units are in the field names. ``hardware_trip_ua`` is an independent latching trip on the *true* output
    current (0 = none). ``adc_*`` describe the measurement chain: quantisation step and Gaussian noise
    (one standard deviation) of the current and voltage readings.
    """

    name: str
    max_current_ua: int
    min_current_ua: int
    compliance_mv: int
    dose_cap_uas: int
    slew_limit_ua_per_s: int
    min_ramp_ms: int
    max_ramp_ms: int
    max_duration_ms: int
    trip_current_ua: int
    hardware_trip_ua: int
    waveforms: WaveformSet
    max_telemetry_hz: int
    min_pulse_frequency_hz: int
    max_pulse_frequency_hz: int
    min_duty_percent: int
    max_duty_percent: int
    min_watchdog_ms: int = 500
    max_watchdog_ms: int = 10_000
    default_watchdog_ms: int = 2_000
    default_telemetry_hz: int = 2
    serial_number: int = 1
    adc_current_lsb_ua: float = 1.0
    adc_current_noise_ua: float = 1.0
    adc_voltage_lsb_mv: float = 2.0
    adc_voltage_noise_mv: float = 3.0
    output_tau_s: float = 0.0015
    default_load: LoadParams = field(default_factory=LoadParams)

    def identity(self) -> IdentityReport:
        """The :class:`IdentityReport` this model answers to ``Identify``."""
        return IdentityReport(
            model=self.name,
            serial_number=self.serial_number,
            firmware_major=FIRMWARE_VERSION[0],
            firmware_minor=FIRMWARE_VERSION[1],
            firmware_patch=FIRMWARE_VERSION[2],
            protocol_version=PROTOCOL_VERSION,
            max_current_ua=self.max_current_ua,
            compliance_mv=self.compliance_mv,
            dose_cap_uas=self.dose_cap_uas,
            slew_limit_ua_per_s=self.slew_limit_ua_per_s,
            min_ramp_ms=self.min_ramp_ms,
            max_ramp_ms=self.max_ramp_ms,
            max_duration_ms=self.max_duration_ms,
            trip_current_ua=self.trip_current_ua,
            waveforms=self.waveforms,
            max_telemetry_hz=self.max_telemetry_hz,
            min_pulse_frequency_hz=self.min_pulse_frequency_hz,
            max_pulse_frequency_hz=self.max_pulse_frequency_hz,
            min_watchdog_ms=self.min_watchdog_ms,
            max_watchdog_ms=self.max_watchdog_ms,
            min_current_ua=self.min_current_ua,
            min_duty_percent=self.min_duty_percent,
            max_duty_percent=self.max_duty_percent,
        )


CLINIC_4 = ModelSpec(
    name="clinic-4",
    max_current_ua=4_000,
    min_current_ua=100,
    compliance_mv=80_000,
    dose_cap_uas=4_800_000,  # 80 mA·min
    slew_limit_ua_per_s=5_000,  # 4 mA -> 0 in 0.8 s
    min_ramp_ms=5_000,
    max_ramp_ms=60_000,
    max_duration_ms=3_600_000,
    trip_current_ua=4_400,
    hardware_trip_ua=0,
    waveforms=WaveformSet.DC,
    max_telemetry_hz=5_000,
    min_pulse_frequency_hz=0,
    max_pulse_frequency_hz=0,
    min_duty_percent=0,
    max_duty_percent=0,
    serial_number=40_001,
    adc_current_lsb_ua=1.0,
    adc_current_noise_ua=1.0,
    adc_voltage_lsb_mv=2.0,
    adc_voltage_noise_mv=3.0,
    default_load=LoadParams(
        r_series_ohm=800.0,
        r_skin_ohm=4_000.0,
        c_skin_nf=50.0,
        conditioning_current_ua=2_000.0,
    ),
)

HYDRO_30 = ModelSpec(
    name="hydro-30",
    max_current_ua=30_000,
    min_current_ua=1_000,
    compliance_mv=60_000,
    dose_cap_uas=36_000_000,  # 600 mA·min: 30 mA for 20 min
    slew_limit_ua_per_s=35_000,
    min_ramp_ms=5_000,
    max_ramp_ms=60_000,
    max_duration_ms=1_800_000,
    trip_current_ua=33_000,
    hardware_trip_ua=35_000,
    waveforms=WaveformSet.DC | WaveformSet.PULSED_DC,
    max_telemetry_hz=5_000,
    min_pulse_frequency_hz=10,
    max_pulse_frequency_hz=1_000,
    min_duty_percent=10,
    max_duty_percent=90,
    serial_number=30_001,
    adc_current_lsb_ua=1.0,
    adc_current_noise_ua=5.0,
    adc_voltage_lsb_mv=2.0,
    adc_voltage_noise_mv=3.0,
    default_load=LoadParams(
        r_series_ohm=300.0,
        r_skin_ohm=1_200.0,
        c_skin_nf=100.0,
        conditioning_current_ua=10_000.0,
    ),
)

MODELS: dict[str, ModelSpec] = {CLINIC_4.name: CLINIC_4, HYDRO_30.name: HYDRO_30}


def resolve_model(model: str | ModelSpec) -> ModelSpec:
    """Return the :class:`ModelSpec` for a model name or spec.

    Raises:
        ValueError: unknown model name (the message lists the known ones).
    """
    if isinstance(model, ModelSpec):
        return model
    try:
        return MODELS[model]
    except KeyError:
        raise ValueError(f"model = {model!r} is not known: must be one of {sorted(MODELS)}") from None
