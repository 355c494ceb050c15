"""When telemetry samples are due, in device time (S14), and how one sample is made.

Sample ``j`` is due ``j / rate`` after the rate was set (the anchor), taken at the end of the physics step in
which that time falls and stamped with its own time, so rates above the physics rate give several samples
per step, each numbered. The step of a sample depends only on its time, never on how steps are grouped
into blocks.
"""

from __future__ import annotations

import math

import numpy as np

from iontodrive.protocol import DeviceState, Message, Polarity, StatusFlags, Telemetry, trusted_constructor

_new_telemetry = trusted_constructor(Telemetry)  # the firmware's own values; encode checks them when sent
_U32 = 0xFFFF_FFFF


class TelemetrySchedule:
    """The telemetry rate, the sample counter and the schedule of due samples."""

    __slots__ = ("_anchor_s", "_j", "output_on_threshold_ua", "rate_hz", "sample_no")

    def __init__(self, rate_hz: int, output_on_threshold_ua: float) -> None:
        self.rate_hz = rate_hz
        self.sample_no = 0
        self.output_on_threshold_ua = output_on_threshold_ua
        self._anchor_s = 0.0
        self._j = 1

    def set_rate(self, rate_hz: int, now_s: float) -> None:
        """Change the rate; the next sample is due one new period after ``now_s`` (device seconds)."""
        self.rate_hz = rate_hz
        self._anchor_s = now_s
        self._j = 1

    def next_due_s(self) -> float:
        """Device time of the next sample (``inf`` with telemetry off)."""
        if self.rate_hz <= 0:
            return math.inf
        return self._anchor_s + self._j * (1.0 / self.rate_hz)

    def due(self, rel0: int, count: int, dt: float) -> list[tuple[int, int]]:
        """Samples due in the steps ``rel0 .. rel0+count-1`` (counted from boot): (device_time_ms, index in
        the block) for each, in order; consumes them."""
        rate = self.rate_hz
        if rate <= 0:
            return []
        period = 1.0 / rate
        rel_end = rel0 + count
        anchor = self._anchor_s
        j = self._j
        t = anchor + j * period
        if math.ceil(t / dt - 1e-6) > rel_end:  # the first due sample is beyond this block
            return []
        estimate = math.floor((rel_end * dt - t) * rate + 1e-9) + 2
        out: list[tuple[int, int]]
        if estimate <= 64:
            out = []
            while True:
                step = math.ceil(t / dt - 1e-6) - 1  # relative index of the step that ends at or after t
                if step >= rel_end:
                    break
                out.append((round(t * 1000.0) & _U32, max(step - rel0, 0)))
                j += 1
                t = anchor + j * period
        else:
            times = anchor + np.arange(j, j + estimate) * period
            steps = np.ceil(times / dt - 1e-6).astype(np.int64) - 1
            keep = int(np.searchsorted(steps, rel_end, side="left"))
            ms = (np.rint(times[:keep] * 1000.0).astype(np.int64) & _U32).tolist()
            out = list(zip(ms, np.maximum(steps[:keep] - rel0, 0).tolist(), strict=True))
            j += keep
        self._j = j
        return out

    def sample(
        self,
        outbox: list[Message],
        t_ms: int,
        state: DeviceState,
        base: StatusFlags,
        polarity: Polarity,
        sp: float,
        i_meas: float,
        v_meas: float,
        impedance: int,
        charge: float,
        frac: float | None,
        output_disabled: bool,
    ) -> None:
        """Queue one sample with the values of the step it was taken in.

        With the output disabled (``output_disabled``: a quiet state at set-point 0 with no ramp under way)
        the sample reports ``measured_ua`` = ``voltage_mv`` = 0, not the measurement chain's offset and
        noise (``docs/protocol.md`` §4.3).
        """
        flags = base
        if output_disabled and sp == 0.0:
            i_meas = v_meas = 0.0
        elif sp > 0 or i_meas > self.output_on_threshold_ua:
            flags |= StatusFlags.OUTPUT_ON
        if frac is not None and frac >= 0.5:
            flags |= StatusFlags.PULSE_ON
        self.sample_no += 1
        outbox.append(
            _new_telemetry(
                self.sample_no & _U32,
                t_ms,
                state,
                flags,
                polarity,
                round(sp),
                int(i_meas),
                int(v_meas),
                impedance,
                min(int(charge), _U32),
            )
        )
