"""Electrical model of the output stage and the electrode–skin load, vectorised over blocks of steps.

Per physics step ``n`` (length ``dt``), with ``u[n]`` the commanded current (µA, the pulse-averaged
envelope for pulsed DC):

* regulator: ``i_reg[n] = α·i_reg[n-1] + (1-α)·u[n]``, ``α = exp(-dt/τ_out)`` (first-order response);
  a regulator fault multiplies it by ``gain[n]``;
* load: ``Z = (R_series + R_skin)·z_mult / area`` with ``R_skin = R_skin0·(1 - depth·s)``, where the
  skin conditioning ``s`` follows ``min(1, u/I_cond)`` with ``τ_fall`` while current flows and relaxes to 0
  with ``τ_recover`` when it does not; a short adds a parallel resistance;
* compliance: the source delivers ``i_true = min(i_src, V_compliance / Z)`` (quasi-static clamp; open
  circuit gives 0);
* skin capacitor: ``v_c[n] = β·v_c[n-1] + (1-β)·i_body·R_skin/area``, ``β = exp(-dt/(R_skin·C))``;
  terminal voltage ``v = i_body·R_series/area + v_c``, capped at compliance (and at compliance when the
  circuit is open with a non-zero command);
* ADC: current and voltage readings with Gaussian noise and quantisation, seeded per step index so that
  the readings do not depend on how steps are grouped into blocks.

All linear recurrences are solved with an associative scan, so a block costs O(N log N) array work and no
Python loop per step. :meth:`Plant.simulate` is a pure function of the state and the inputs.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass

import numpy as np

from .faults import FaultSchedule
from .models import LoadParams, ModelSpec

_NOISE_PAGE = 8192
_OPEN_AREA = 1e-9


_NEGLIGIBLE = 1e-20  # a product of coefficients below this no longer changes a result
_MAX_LOG_SPAN = 600.0  # the log-domain solution needs exp(-sum(log a)) to stay finite


def linear_recurrence(a: np.ndarray, b: np.ndarray, x0: float) -> np.ndarray:
    """Solve ``x[n] = a[n]·x[n-1] + b[n]`` for all n, given ``x[-1] = x0``.

    ``a`` must hold values in (0, 1]. Fast-decaying coefficients use a Hillis–Steele doubling scan that
    stops once the coefficient products are negligible; slowly decaying ones (a close to 1) use the
    closed form ``x[n] = P[n]·(x0 + sum_k b[k] / P[k])`` with ``P`` the running product, in log space.
    Both agree with the plain loop to rounding error. Inputs are not modified.
    """
    n = a.shape[0]
    if n == 0:
        return b.astype(float, copy=True)
    if n == 1:
        return np.array([a[0] * x0 + b[0]])
    a_max = float(a.max())
    if a_max <= 0.0:
        return b.astype(float, copy=True)
    if a_max >= 0.9 and float(a.min()) > 0.0:
        log_p = np.cumsum(np.log(a))
        if -log_p[-1] < _MAX_LOG_SPAN:
            scale = np.exp(-log_p)
            result: np.ndarray = np.exp(log_p) * (x0 + np.cumsum(b * scale))
            return result
    passes = n if a_max >= 1.0 else math.ceil(math.log2(max(1.0, math.log(_NEGLIGIBLE) / math.log(a_max))))
    acc_a = a.astype(float, copy=True)
    acc_b = b.astype(float, copy=True)
    acc_b[0] += acc_a[0] * x0
    acc_a[0] = 0.0
    k = 1
    for _ in range(passes):
        if k >= n:
            break
        acc_b[k:] = acc_b[k:] + acc_a[k:] * acc_b[:-k]
        acc_a[k:] = acc_a[k:] * acc_a[:-k]
        k *= 2
    return acc_b


@dataclass(frozen=True, slots=True)
class PlantState:
    """State carried from one step to the next."""

    i_reg_ua: float = 0.0  # regulator output before any fault gain
    v_c_mv: float = 0.0  # skin capacitor voltage
    skin: float = 0.0  # conditioning, 0 (resting) .. 1 (fully conditioned)


@dataclass(frozen=True, slots=True)
class PlantBlock:
    """Per-step results of :meth:`Plant.simulate` (arrays of length N, index i = step n0+i)."""

    i_reg: np.ndarray  # nominal regulator output (µA), what a healthy output stage would deliver
    i_true: np.ndarray  # true current through the load (µA)
    v_true: np.ndarray  # true terminal voltage (mV)
    z_true: np.ndarray  # true DC load impedance (ohm), inf when open
    i_meas: np.ndarray  # ADC current reading (µA, >= 0, quantised)
    v_meas: np.ndarray  # ADC voltage reading (mV, >= 0, quantised)
    physical: np.ndarray  # bool: output shaped by physics, not by the firmware (clamp, open, fault)
    v_c: np.ndarray
    skin: np.ndarray

    def state_after(self, k: int) -> PlantState:
        """State after the first ``k`` (>= 1) steps of the block."""
        return PlantState(float(self.i_reg[k - 1]), float(self.v_c[k - 1]), float(self.skin[k - 1]))


class Plant:
    """Output stage + load + ADC of one device. Not thread-safe."""

    def __init__(
        self, model: ModelSpec, load: LoadParams, dt: float, seed: int, faults: FaultSchedule
    ) -> None:
        self.model = model
        self.load = load
        self.dt = dt
        self.seed = seed
        self.faults = faults
        self.alpha = math.exp(-dt / model.output_tau_s)
        # impulse response of the regulator, truncated where it no longer matters (alpha^K < 1e-20)
        taps = max(1, math.ceil(math.log(_NEGLIGIBLE) / math.log(self.alpha))) if self.alpha > 0 else 1
        self._kernel = (1.0 - self.alpha) * self.alpha ** np.arange(taps)
        self.beta_fall = math.exp(-dt / load.fall_tau_s)
        self.beta_recover = math.exp(-dt / load.recover_tau_s)
        self._slow_skin = max(dt / load.fall_tau_s, dt / load.recover_tau_s) * 65_536 < _MAX_LOG_SPAN
        self.v_comp = float(model.compliance_mv)
        self._page_no = -1
        self._page = np.zeros((0, 2))
        self._contact_rng = np.random.default_rng([seed, 0x0C0C])

    # ------------------------------------------------------------------------------------------ noise

    def _noise_page(self, page_no: int) -> np.ndarray:
        if page_no != self._page_no:
            self._page = np.random.default_rng([self.seed, 0x5EED, page_no]).standard_normal((_NOISE_PAGE, 2))
            self._page_no = page_no
        return self._page

    def noise(self, n0: int, count: int) -> np.ndarray:
        """Standard normal pairs for steps n0..n0+count-1, independent of how steps are grouped."""
        out = np.empty((count, 2))
        pos = 0
        while pos < count:
            n = n0 + pos
            page_no, offset = divmod(n, _NOISE_PAGE)
            take = min(count - pos, _NOISE_PAGE - offset)
            out[pos : pos + take] = self._noise_page(page_no)[offset : offset + take]
            pos += take
        return out

    # -------------------------------------------------------------------------------------- simulation

    def simulate(self, state: PlantState, n0: int, u: np.ndarray, t: np.ndarray) -> PlantBlock:
        """Simulate steps n0..n0+N-1 given the commanded current ``u`` (µA) and step end times ``t`` (s)."""
        load = self.load
        fx = self.faults.inputs(t) if len(self.faults) else None
        n = u.shape[0]
        # regulator (first order)
        i_reg = np.convolve(u, self._kernel)[:n]
        if state.i_reg_ua:
            i_reg += state.i_reg_ua * self.alpha ** np.arange(1, n + 1)
        # skin conditioning
        flowing = u > 0.0
        drive = np.where(flowing, np.minimum(1.0, u / load.conditioning_current_ua), 0.0)
        if self._slow_skin and n <= 65_536:
            # x[n] = P[n]·(x0 + sum_k (1-b_k)·d_k / P[k]) with P the running product of the b_k (> 0.99)
            log_p = np.cumsum(np.where(flowing, -self.dt / load.fall_tau_s, -self.dt / load.recover_tau_s))
            p = np.exp(log_p)
            gain = np.where(flowing, 1.0 - self.beta_fall, 1.0 - self.beta_recover)
            skin = p * (state.skin + np.cumsum(gain * drive / p))
        else:
            beta_s = np.where(flowing, self.beta_fall, self.beta_recover)
            skin = linear_recurrence(beta_s, (1.0 - beta_s) * drive, state.skin)
        r_skin = load.r_skin_ohm * (1.0 - load.conditioning_depth * skin)
        r_ser: np.ndarray | float = load.r_series_ohm
        if fx is None:
            i_src = i_reg
            z_dc = r_ser + r_skin
            z_eff: np.ndarray | float = z_dc
            body_share: np.ndarray | float = 1.0
            area = None
            open_ = None
        else:
            i_src = i_reg * fx.gain
            r_skin = r_skin * fx.z_mult
            r_ser = r_ser * fx.z_mult
            open_ = fx.area <= _OPEN_AREA
            area = np.where(open_, 1.0, fx.area)
            r_skin = r_skin / area
            r_ser = r_ser / area
            z_dc = np.where(open_, np.inf, r_ser + r_skin)
            shorted = np.isfinite(fx.short_ohm)
            if shorted.any():
                with np.errstate(invalid="ignore"):
                    z_eff = np.where(
                        shorted,
                        np.where(open_, fx.short_ohm, z_dc * fx.short_ohm / (z_dc + fx.short_ohm)),
                        z_dc,
                    )
                    body_share = np.where(shorted, np.where(open_, 0.0, z_eff / z_dc), 1.0)
            else:
                z_eff = z_dc
                body_share = np.where(open_, 0.0, 1.0)
        i_lim = self.v_comp * 1000.0 / z_eff
        i_true = np.minimum(i_src, i_lim)
        clamped = i_src > i_lim * (1.0 + 1e-9)
        i_body = i_true * body_share
        # skin capacitor (time constant R_skin·C does not depend on the area)
        beta_c = np.exp(-self.dt / ((r_skin if area is None else r_skin * area) * load.c_skin_nf * 1e-9))
        v_c = linear_recurrence(beta_c, (1.0 - beta_c) * i_body * r_skin / 1000.0, state.v_c_mv)
        v_true = i_body * r_ser / 1000.0 + v_c
        if fx is not None:
            shorted = np.isfinite(fx.short_ohm)
            if shorted.any():
                with np.errstate(invalid="ignore"):
                    v_true = np.where(shorted, i_true * z_eff / 1000.0, v_true)
            assert open_ is not None
            v_true = np.where(open_ & ~shorted & (u > 0.0), self.v_comp, v_true)
        np.minimum(v_true, self.v_comp, out=v_true)
        # ADC
        m = self.model
        noise = self.noise(n0, n)
        seen_i = i_true if fx is None or not fx.adc_masked.any() else np.where(fx.adc_masked, i_reg, i_true)
        i_meas = np.round((seen_i + m.adc_current_noise_ua * noise[:, 0]) / m.adc_current_lsb_ua)
        i_meas = np.maximum(i_meas * m.adc_current_lsb_ua, 0.0)
        v_meas = np.round((v_true + m.adc_voltage_noise_mv * noise[:, 1]) / m.adc_voltage_lsb_mv)
        v_meas = np.clip(v_meas * m.adc_voltage_lsb_mv, 0.0, self.v_comp * 1.05)
        physical = clamped if fx is None else clamped | fx.active
        z_block = typing.cast(np.ndarray, z_eff)  # r_skin is per step, so the impedance is too
        return PlantBlock(i_reg, i_true, v_true, z_block, i_meas, v_meas, physical, v_c, skin)

    # ------------------------------------------------------------------------------------ contact check

    def true_impedance(self, state: PlantState, t: float) -> float:
        """True DC impedance of the load at time ``t`` (ohm, inf when open), shorts included."""
        fx = self.faults.inputs(np.array([t])) if len(self.faults) else None
        r = self.load.r_series_ohm + self.load.r_skin_ohm * (1.0 - self.load.conditioning_depth * state.skin)
        if fx is None:
            return r
        r *= float(fx.z_mult[0])
        area = float(fx.area[0])
        z = math.inf if area <= _OPEN_AREA else r / area
        short = float(fx.short_ohm[0])
        if math.isfinite(short):
            z = short if math.isinf(z) else z * short / (z + short)
        return z

    def probe_impedance(self, state: PlantState, t: float, probe_ua: float) -> float:
        """Impedance measured with a ``probe_ua`` probe, averaged over 16 ADC samples (ohm, inf if open).

        The result is noisy (seeded stream of its own) and limited by the compliance voltage.
        """
        z = self.true_impedance(state, t)
        m = self.model
        i = 0.0 if math.isinf(z) else min(probe_ua, self.v_comp * 1000.0 / z)
        v = self.v_comp if math.isinf(z) else i * z / 1000.0
        noise = self._contact_rng.standard_normal(2) / 4.0
        i_meas = max(
            0.0, round((i + m.adc_current_noise_ua * noise[0]) / m.adc_current_lsb_ua) * m.adc_current_lsb_ua
        )
        v_meas = max(
            0.0, round((v + m.adc_voltage_noise_mv * noise[1]) / m.adc_voltage_lsb_mv) * m.adc_voltage_lsb_mv
        )
        if i_meas < max(0.2 * probe_ua, 2 * m.adc_current_noise_ua):
            return math.inf
        return float(v_meas * 1000.0 / i_meas)
