"""Building :class:`~iontodrive.sessions.types.Progress` from a telemetry sample: the one definition.

Both sources call :meth:`ProgressBuilder.build` with a :class:`~iontodrive.protocol.Telemetry` sample (the
VISA source synthesizes one per report) and the facts only they know: device seconds since the session
started and, for a time-based session, the on-time counted so far. Everything else (fraction, time left,
ramp-down countdown, pulsed-DC values, alarms from the status flags) is computed here, once.

Rules:

* dose-based: ``fraction = delivered / dose``; time left = the rest of the dose at the prescribed average
  current plus half the ramp-down (a ramp delivers half its duration's worth), 0 once delivered;
* time-based: ``fraction = on_time / duration``; time left = ``duration - on_time``;
* a completed session reports ``fraction = 1.0`` and ``time_left_s = 0`` exactly (``completed=True``);
* while ramping down after a stop or at the end: ``ramp_down_left_s = setpoint / ramp rate`` (the
  prescription's ramp-down rate, or the slew limit after an abort);
* pulsed DC: a sample's ``measured_ua`` is an instantaneous reading, somewhere in a pulse or between
  two, so it is neither the average nor the pulse height. ``average_current_ma`` is the rate of the
  device's own charge count over the last :data:`AVERAGE_WINDOW_S` of device time (the true average over
  the pulses) and ``pulse_amplitude_ma`` the pulse height that average implies (average / duty); both
  None for DC.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from iontodrive.protocol import OPEN_CIRCUIT_OHM, StatusFlags, Telemetry, Waveform
from iontodrive.protocol.messages import Start
from iontodrive.protocol.rules import RAMPING_DOWN_STATES
from iontodrive.sessions.types import Progress
from iontodrive.units import UAS_PER_MA_MIN

#: Status flags shown as alarms, in plain words (the order they are shown in).
FLAG_ALARMS: tuple[tuple[StatusFlags, str], ...] = (
    (StatusFlags.ELECTRODE_LIFT, "ELECTRODE LIFT"),
    (StatusFlags.OVERCURRENT, "OVER-CURRENT"),
    (StatusFlags.HARDWARE_TRIP, "HARDWARE TRIP"),
    (StatusFlags.LINK_LOST, "LINK LOST"),
    (StatusFlags.RESISTANCE_LIMIT, "RESISTANCE LIMIT"),
)
_FLAG_ALARM_BITS = tuple((int(flag), text) for flag, text in FLAG_ALARMS)  # int tests: Flag.__and__ is slow
AVERAGE_WINDOW_S = 0.5  # pulsed DC: the average current is the charge rate over at least this long


def record_alarm(reason: str) -> str:
    """The alarm text for a record that cannot be written."""
    return f"RECORD NOT WRITTEN: {reason}"


@dataclass
class ProgressBuilder:
    """Turns telemetry into :class:`Progress` for one session (``start`` is what was sent to the device)."""

    session_id: str
    start: Start
    compliance_mv: int
    slew_limit_ua_per_s: int
    _charges: deque[tuple[int, int]] = field(default_factory=deque, repr=False)

    def _pulsed_values(self, sample: Telemetry) -> tuple[float | None, float | None]:
        """(pulse amplitude, average current) in mA from the on-phase readings and the charge count."""
        charges = self._charges
        charges.append((sample.device_time_ms, sample.charge_uas))
        window_ms = AVERAGE_WINDOW_S * 1000.0
        while len(charges) > 2 and sample.device_time_ms - charges[1][0] >= window_ms:
            charges.popleft()
        average: float | None = None
        (t0, q0), (t1, q1) = charges[0], charges[-1]
        if t1 > t0:
            average = (q1 - q0) / (t1 - t0)  # µA·s per ms = mA
        amplitude = None if average is None else average / self.duty
        return amplitude, average

    @property
    def duty(self) -> float:
        if self.start.waveform is Waveform.PULSED_DC and self.start.duty_percent:
            return self.start.duty_percent / 100.0
        return 1.0

    def build(
        self,
        sample: Telemetry,
        *,
        elapsed_s: float,
        on_time_s: float | None = None,
        completed: bool = False,
        aborting: bool = False,
        alarms: tuple[str, ...] = (),
        record_error: str | None = None,
    ) -> Progress:
        """Progress for ``sample``. ``on_time_s`` is needed for time-based sessions (seconds counted
        toward the duration); ``completed`` marks the final sample of a completed session; ``aborting``
        makes the ramp-down countdown use the slew limit; ``alarms`` are the engine's own (added after the
        flags' ones)."""
        start = self.start
        delivered = sample.charge_uas
        state = sample.state
        target_s: float | None = None
        target_ma_min: float | None = None
        if start.dose_uas:
            target_ma_min = start.dose_uas / UAS_PER_MA_MIN
            fraction = min(1.0, delivered / start.dose_uas)
            average_ua = start.target_current_ua * self.duty
            rest_uas = max(0, start.dose_uas - delivered)
            time_left: float | None = (
                rest_uas / average_ua + start.ramp_down_ms / 2000.0 if rest_uas and average_ua else 0.0
            )
        else:
            target_s = start.duration_ms / 1000.0
            counted = 0.0 if on_time_s is None else max(0.0, on_time_s)
            time_left = max(0.0, target_s - counted) if on_time_s is not None else None
            fraction = min(1.0, counted / target_s) if target_s else 0.0
        if completed:
            fraction, time_left = 1.0, 0.0
        ramp_down_left: float | None = None
        if state in RAMPING_DOWN_STATES:
            if aborting or not start.ramp_down_ms:
                rate = float(self.slew_limit_ua_per_s)
            else:
                rate = start.target_current_ua / (start.ramp_down_ms / 1000.0)
            ramp_down_left = sample.setpoint_ua / rate if rate > 0 else None
        measured_ma = sample.measured_ua / 1000.0
        pulsed = start.waveform is Waveform.PULSED_DC
        amplitude, average = self._pulsed_values(sample) if pulsed else (None, None)
        flags = int(sample.flags)
        flag_alarms = tuple(text for bit, text in _FLAG_ALARM_BITS if flags & bit)
        extra = tuple(a for a in alarms if a not in flag_alarms)
        if record_error is not None and record_alarm(record_error) not in extra:
            extra += (record_alarm(record_error),)
        return Progress(
            session_id=self.session_id,
            state=state,
            flags=sample.flags,
            device_time_s=sample.device_time_ms / 1000.0,
            elapsed_s=max(0.0, elapsed_s),
            delivered_uas=delivered,
            delivered_ma_min=delivered / UAS_PER_MA_MIN,
            target_ma_min=target_ma_min,
            target_s=target_s,
            fraction=fraction,
            time_left_s=time_left,
            ramp_down_left_s=ramp_down_left,
            setpoint_ma=sample.setpoint_ua / 1000.0,
            current_ma=measured_ma,
            pulse_amplitude_ma=amplitude,
            average_current_ma=average,
            voltage_v=sample.voltage_mv / 1000.0,
            compliance_v=self.compliance_mv / 1000.0,
            impedance_ohm=None if sample.impedance_ohm == OPEN_CIRCUIT_OHM else sample.impedance_ohm,
            alarms=flag_alarms + extra,
            record_error=record_error,
        )
