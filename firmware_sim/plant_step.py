"""The plant one physics step at a time, with Python floats: the fast path for very small blocks.

In real time the runner advances the device a few physics steps at a time (about every millisecond, and
requests are answered between such control ticks). For blocks that small the fixed cost of setting up
numpy arrays in :meth:`Plant.simulate` is far larger than the arithmetic, so :class:`PlantStepper`
evaluates the same equations for one step with scalars: the regulator, skin conditioning and skin
capacitor recurrences, the compliance clamp, the faults (taken from the same :class:`FaultSchedule`) and
the ADC readings (the same per-step noise stream). It agrees with :meth:`Plant.simulate` to rounding
error; ``tests/test_sim_fastpath.py`` and ``tests/test_sim_equivalence.py`` check that the firmware gives
the same run either way.

It reads the :class:`Plant`'s parameters and noise pages and keeps no state of its own besides a cache of
the current noise page as Python floats.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .plant import _NOISE_PAGE, _OPEN_AREA, Plant

_INF = math.inf


class StepResult(NamedTuple):
    """One step of the plant (the scalar counterpart of one index of :class:`PlantBlock`)."""

    i_reg: float  # nominal regulator output (µA)
    i_true: float  # true current through the load (µA)
    v_true: float  # true terminal voltage (mV)
    z_true: float  # true DC load impedance (ohm), inf when open
    i_meas: float  # ADC current reading (µA)
    v_meas: float  # ADC voltage reading (mV)
    physical: bool  # output shaped by physics, not by the firmware
    v_c: float  # skin capacitor voltage after the step (mV)
    skin: float  # skin conditioning after the step


FaultStep = tuple[float, float, float, float, bool, bool]  # area, z_mult, short_ohm, gain, masked, active


class PlantStepper:
    """Scalar single-step evaluation of ``plant`` (same parameters, same noise, same faults)."""

    def __init__(self, plant: Plant) -> None:
        self.plant = plant
        m = plant.model
        load = plant.load
        self.dt = plant.dt
        self.alpha = plant.alpha
        self.k0 = float(plant._kernel[0])  # (1 - alpha), exactly as the vectorised regulator uses it
        self.beta_fall = plant.beta_fall
        self.beta_recover = plant.beta_recover
        self.cond_ua = load.conditioning_current_ua
        self.r_skin0 = load.r_skin_ohm
        self.depth = load.conditioning_depth
        self.r_series = load.r_series_ohm
        self.c_skin_nf = load.c_skin_nf
        self.v_comp = plant.v_comp
        self.noise_i = m.adc_current_noise_ua
        self.noise_v = m.adc_voltage_noise_mv
        self.lsb_i = m.adc_current_lsb_ua
        self.lsb_v = m.adc_voltage_lsb_mv
        self.v_max = self.v_comp * 1.05
        self._page_no = -1
        self._page: list[list[float]] = []

    def noise(self, n: int) -> list[float]:
        """The standard normal pair of step ``n`` (the same numbers :meth:`Plant.noise` gives)."""
        page_no, offset = divmod(n, _NOISE_PAGE)
        if page_no != self._page_no:
            self._page = self.plant._noise_page(page_no).tolist()
            self._page_no = page_no
        return self._page[offset]

    def fault_inputs(self, times: list[float]) -> list[FaultStep] | None:
        """Per-step fault inputs for the step end times ``times`` (s), or None when no fault is scheduled."""
        faults = self.plant.faults
        if not len(faults):
            return None
        fx = faults.inputs(np.array(times))
        return list(
            zip(
                fx.area.tolist(),
                fx.z_mult.tolist(),
                fx.short_ohm.tolist(),
                fx.gain.tolist(),
                fx.adc_masked.tolist(),
                fx.active.tolist(),
                strict=True,
            )
        )

    def step(
        self, i_reg0: float, v_c0: float, skin0: float, n: int, u: float, fx: FaultStep | None
    ) -> StepResult:
        """Simulate step ``n`` from the carried state, given the commanded current ``u`` (µA)."""
        # regulator (first order)
        i_reg = u * self.k0 + i_reg0 * self.alpha
        # skin conditioning
        if u > 0.0:
            drive = min(1.0, u / self.cond_ua)
            beta_s = self.beta_fall
        else:
            drive = 0.0
            beta_s = self.beta_recover
        skin = beta_s * skin0 + (1.0 - beta_s) * drive
        r_skin = self.r_skin0 * (1.0 - self.depth * skin)
        r_ser = self.r_series
        active = False
        seen_reg = False
        if fx is None:
            i_src = i_reg
            z_eff = z_dc = r_ser + r_skin
            body_share = 1.0
            r_skin_c = r_skin
            open_ = shorted = False
        else:
            area, z_mult, short, gain, masked, active = fx
            seen_reg = masked
            i_src = i_reg * gain
            r_skin = r_skin * z_mult
            r_ser = r_ser * z_mult
            open_ = area <= _OPEN_AREA
            if open_:
                area = 1.0
            r_skin = r_skin / area
            r_ser = r_ser / area
            r_skin_c = r_skin * area
            z_dc = _INF if open_ else r_ser + r_skin
            shorted = short != _INF
            if shorted:
                if open_:
                    z_eff, body_share = short, 0.0
                else:
                    z_eff = z_dc * short / (z_dc + short)
                    body_share = z_eff / z_dc
            else:
                z_eff = z_dc
                body_share = 0.0 if open_ else 1.0
        i_lim = self.v_comp * 1000.0 / z_eff
        i_true = min(i_src, i_lim)
        clamped = i_src > i_lim * (1.0 + 1e-9)
        i_body = i_true * body_share
        # skin capacitor (time constant R_skin·C does not depend on the area)
        beta_c = math.exp(-self.dt / (r_skin_c * self.c_skin_nf * 1e-9))
        v_c = beta_c * v_c0 + (1.0 - beta_c) * i_body * r_skin / 1000.0
        v_true = i_body * r_ser / 1000.0 + v_c
        if shorted:
            v_true = i_true * z_eff / 1000.0
        elif open_ and u > 0.0:
            v_true = self.v_comp
        if v_true > self.v_comp:
            v_true = self.v_comp
        # ADC
        nz = self.noise(n)
        seen_i = i_reg if seen_reg else i_true
        i_meas = round((seen_i + self.noise_i * nz[0]) / self.lsb_i) * self.lsb_i
        if i_meas < 0.0:
            i_meas = 0.0
        v_meas = round((v_true + self.noise_v * nz[1]) / self.lsb_v) * self.lsb_v
        if v_meas < 0.0:
            v_meas = 0.0
        elif v_meas > self.v_max:
            v_meas = self.v_max
        return StepResult(
            i_reg, i_true, v_true, z_eff, float(i_meas), float(v_meas), clamped or active, v_c, skin
        )
