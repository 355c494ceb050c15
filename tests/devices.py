"""Device identities for tests that need a device's hard limits without a simulator.

Written from the guide's device table; the simulator's own models (``firmware_sim.MODELS``) may differ on
purpose (a slower slew limit here exercises the driver's ramp checks).
"""

from __future__ import annotations

import dataclasses

from iontodrive.protocol import PROTOCOL_VERSION, IdentityReport, WaveformSet

CLINIC = IdentityReport(
    model="clinic-4",
    serial_number=1,
    firmware_major=1,
    firmware_minor=0,
    firmware_patch=0,
    protocol_version=PROTOCOL_VERSION,
    max_current_ua=4000,
    compliance_mv=80_000,
    dose_cap_uas=80 * 60_000,
    slew_limit_ua_per_s=400,
    min_ramp_ms=1000,
    max_ramp_ms=120_000,
    max_duration_ms=60 * 60_000,
    trip_current_ua=4400,
    waveforms=WaveformSet.DC,
    max_telemetry_hz=1000,
    min_pulse_frequency_hz=0,
    max_pulse_frequency_hz=0,
    min_watchdog_ms=500,
    max_watchdog_ms=10_000,
)
HYDRO = dataclasses.replace(
    CLINIC,
    model="hydro-30",
    max_current_ua=30_000,
    compliance_mv=60_000,
    dose_cap_uas=30 * 40 * 60_000,
    slew_limit_ua_per_s=2000,
    max_duration_ms=40 * 60_000,
    trip_current_ua=35_000,
    waveforms=WaveformSet.DC | WaveformSet.PULSED_DC,
    min_pulse_frequency_hz=100,
    max_pulse_frequency_hz=10_000,
)
