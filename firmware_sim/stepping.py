"""Block stepping: the plant simulated over a block of physics steps, the triggers scanned, the block
committed up to its first trigger.

Two paths give the same run (``tests/test_sim_fastpath.py``, ``tests/test_sim_equivalence.py``):
:func:`step_block` simulates the whole block with numpy and scans it with the vectorised detectors of
:mod:`.detect`; :func:`step_small` evaluates the same steps one at a time with Python floats, which is
faster for the few-step blocks of the real-time runner. Both apply the one set of trigger rules of
:mod:`.triggers` (armed once per block by :func:`.triggers.arm`) and the segment arithmetic of
:mod:`.segments`; they differ only in how a run or a sliding window is carried (arrays or scalars).
After committing, they hand the first trigger to :meth:`Firmware.handle_trigger`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from iontodrive.protocol import OPEN_CIRCUIT_OHM, DeviceState, StatusFlags
from iontodrive.protocol.rules import OUTPUT_STATES

from . import detect, segments, triggers
from .plant import PlantState
from .thresholds import CONTACT_LOW_OHM, LIFT_RISE, MEAN_WINDOW_STEPS, PULSE_ON_FRACTION
from .trace import TraceBlock
from .triggers import Trigger

if TYPE_CHECKING:
    from .firmware import Firmware

S = DeviceState


def _floats(history: np.ndarray | list[float]) -> list[float]:
    """A detector history as a fresh list of Python floats."""
    return history.tolist() if isinstance(history, np.ndarray) else list(history)


def step_small(fw: Firmware, n0: int, n1: int) -> None:
    """Steps ``n0 .. n1-1`` one at a time with Python scalars: the fast path for tiny blocks.

    The same per-step rules as :func:`step_block` (plant, measurements, triggers, commit, telemetry, trace),
    evaluated step by step; it stops after the first step with a trigger and handles it, exactly as a
    block that commits up to its first trigger.
    """
    dt = fw.dt
    m = fw.model
    state = fw.state
    s = fw.session
    ramp = fw.ramp
    stepper = fw.stepper
    count = n1 - n0
    fxs = stepper.fault_inputs([(n0 + j + 1) * dt for j in range(count)])
    a = triggers.arm(fw)
    # the shared rules, bound to locals: this loop runs once per physics step in real time
    t_hardware_trip, t_overcurrent, t_short, t_open = (
        triggers.hardware_trip,
        triggers.overcurrent,
        triggers.short,
        triggers.open_circuit,
    )
    t_lift, t_high, t_low, t_dose = (
        triggers.lift,
        triggers.compliance_high,
        triggers.compliance_low,
        triggers.dose_reached,
    )
    ramp_charge = segments.ramp_charge
    hw_trip = a.hardware_trip_ua
    output_state = a.output
    protective = a.protective
    counts_charge = a.counts_charge
    clear_watch = a.clear_watch
    dose_aim = fw.dose_aim(s) if output_state else 0.0  # type: ignore[arg-type]
    pulsed = s is not None and s.pulsed and state != S.CONTACT_CHECK
    output_tau_s = m.output_tau_s
    c = fw.contact if state == S.CONTACT_CHECK else None
    hist_i = _floats(fw.hist_i)
    hist_v = _floats(fw.hist_v)
    hist_r = _floats(fw.hist_r)
    hist_z = fw.hist_z
    z_floor = float(hist_z.min()) if protective else math.inf  # min over the whole carried window
    new_z: list[float] = []
    width = float(MEAN_WINDOW_STEPS)
    i_valid = fw.i_valid
    trace = fw.trace
    rows: list[tuple[float, ...]] | None = [] if trace is not None else None
    tele = fw.telemetry
    base_flags = fw.flags_now() if tele.rate_hz > 0 else StatusFlags.NONE
    disabled = fw.output_disabled()
    rel0 = n0 - fw.boot_n
    st = fw.plant_state
    i_reg0, v_c0, skin0 = st.i_reg_ua, st.v_c_mv, st.skin
    charge_sum = fw.charge_sum
    trigger: Trigger | None = None
    r = None
    zf = math.inf
    i10 = r10 = 0.0
    for j in range(count):
        n = n0 + j
        sp = ramp.value_at(n, dt)
        frac = segments.pulse_fraction(s, n, dt) if pulsed else None  # type: ignore[arg-type]
        u = sp if frac is None else sp * frac
        r = stepper.step(i_reg0, v_c0, skin0, n, u, None if fxs is None else fxs[j])
        i_reg0, v_c0, skin0 = r.i_reg, r.v_c, r.skin
        i_meas = r.i_meas
        v_meas = r.v_meas
        hist_i.append(i_meas)
        hist_v.append(v_meas)
        hist_r.append(r.i_reg)
        i10 = sum(hist_i) / width
        v10 = sum(hist_v) / width
        r10 = sum(hist_r) / width
        del hist_i[0], hist_v[0], hist_r[0]
        valid = i10 >= i_valid
        zf = v10 * 1000.0 / i10 if valid else math.inf
        open_now = t_open(a, i_meas, r.i_reg, v_meas)
        # trigger conditions, in priority order (the lowest Trigger value wins within a step)
        trigger = None
        if hw_trip and t_hardware_trip(a, r.i_true):
            trigger = Trigger.HARDWARE_TRIP
        elif a.overcurrent and t_overcurrent(a, i_meas, r.i_reg):
            trigger = Trigger.OVERCURRENT
        short_run = fw.short_run + 1 if protective and t_short(valid, zf) else 0
        if trigger is None and short_run >= fw.short_steps:
            trigger = Trigger.SHORT
        if trigger is None and protective and open_now:
            trigger = Trigger.OPEN
        if trigger is None and protective and valid:
            low = min(z_floor, zf, min(new_z) if new_z else math.inf)
            if t_lift(valid, zf, low):  # check the exact window (the oldest j samples left it)
                window = float(hist_z[j:].min()) if j < hist_z.shape[0] else math.inf
                low = min(window, zf, min(new_z) if new_z else math.inf)
                if t_lift(valid, zf, low):
                    trigger = Trigger.LIFT
        if counts_charge:
            charge_sum += i_meas
        charge = charge_sum * dt if counts_charge else fw.charge_sum * dt
        comp_run = clear_run = 0
        if output_state:
            assert s is not None
            if frac is None:
                v_high = t_high(a, v_meas)
                v_low = t_low(a, v_meas)
            elif frac > PULSE_ON_FRACTION:
                v_on = v_meas / frac
                judged = segments.pulse_judged(s, n, frac, dt)
                v_high = t_high(a, v_on) if judged else True
                v_low = t_low(a, v_on)
            else:  # off phase: neither starts nor breaks a run
                v_high = v_low = True
            comp_run = fw.comp_run + 1 if v_high else 0
            if clear_watch:
                clear_run = fw.clear_run + 1 if v_low else 0
            if trigger is None and t_dose(charge, ramp_charge(s, sp, output_tau_s, dt), dose_aim):
                trigger = Trigger.DOSE
            if trigger is None and comp_run >= fw.compliance_steps:
                trigger = Trigger.COMPLIANCE
            if trigger is None and clear_watch and clear_run >= fw.compliance_steps:
                trigger = Trigger.COMPLIANCE_CLEAR
        # ---- commit this step
        if counts_charge:
            fw.charge_sum = charge_sum
        if output_state:
            s.on_steps += 1  # type: ignore[union-attr]
        new_z.append(zf)
        fw.short_run = short_run
        fw.comp_run = comp_run
        fw.clear_run = clear_run
        if c is not None and c.measure_start <= n < c.down_start:
            c.samples_i.append([i_meas])
            c.samples_v.append([v_meas])
        if open_now:
            fw.last_impedance = OPEN_CIRCUIT_OHM
        elif valid:
            fw.last_impedance = min(round(zf), OPEN_CIRCUIT_OHM - 1)
        fw.last_i_meas = i_meas
        fw.last_v_meas = v_meas
        fw.last_output = r.i_true
        if tele.rate_hz > 0:
            for t_ms, _ in tele.due(rel0 + j, 1, dt):
                tele.sample(
                    fw.outbox,
                    t_ms,
                    state,
                    base_flags,
                    fw.polarity,
                    sp,
                    i_meas,
                    v_meas,
                    fw.last_impedance,
                    charge,
                    frac,
                    disabled,
                )
        if rows is not None:
            rows.append((n, (n + 1) * dt, sp, r.i_true, r.v_true, r.z_true, charge, r.physical))
        fw.n = n + 1
        if trigger is not None:
            break
    # ---- carried state
    fw.plant_state = PlantState(i_reg0, v_c0, skin0)
    fw.hist_i = hist_i
    fw.hist_v = hist_v
    fw.hist_r = hist_r
    fw.hist_z = np.concatenate((hist_z, new_z))[-(fw.lift_window - 1) :]
    if rows:
        _write_trace_rows(fw, rows, state)
    fw.physical_next = False
    if trigger is not None:
        assert r is not None
        fw.handle_trigger(trigger, r.i_true, r.i_meas, i10 / max(r10, 1e-9), zf)


def _write_trace_rows(fw: Firmware, rows: list[tuple[float, ...]], state: DeviceState) -> None:
    assert fw.trace is not None
    cols = list(zip(*rows, strict=True))
    k = len(rows)
    physical = np.array(cols[7], dtype=bool)
    if fw.physical_next:
        physical[0] = True
    fw.trace.write(
        TraceBlock(
            step=np.array(cols[0], dtype=np.int64),
            t_s=np.array(cols[1]),
            state=np.full(k, int(state), dtype=np.int64),
            setpoint_ua=np.array(cols[2]),
            output_ua=np.array(cols[3]),
            voltage_mv=np.array(cols[4]),
            impedance_ohm=np.array(cols[5]),
            charge_uas=np.array(cols[6]),
            physical=physical,
            polarity=np.full(k, int(fw.polarity), dtype=np.int64),
            session=np.full(k, fw.boot_count * 65_536 + fw.session_id, dtype=np.int64),
        )
    )


def step_block(fw: Firmware, n0: int, n1: int) -> None:
    dt = fw.dt
    count = n1 - n0
    idx = np.arange(n0, n1, dtype=np.int64)
    t = (idx + 1) * dt
    sp = fw.ramp.values(idx, dt)
    s = fw.session
    pulsed = s is not None and s.pulsed and fw.state != S.CONTACT_CHECK
    frac = segments.pulse_fraction(s, idx, dt) if pulsed else None  # type: ignore[arg-type]
    u = sp if frac is None else sp * frac
    pb = fw.plant.simulate(fw.plant_state, n0, u, t)
    state = fw.state
    a = triggers.arm(fw)

    # measurements derived per step (with carry-over)
    i10, v10, r10 = detect.moving_means(
        np.stack((fw.hist_i, fw.hist_v, fw.hist_r)), np.stack((pb.i_meas, pb.v_meas, pb.i_reg))
    )
    valid = i10 >= fw.i_valid
    zf = np.divide(v10 * 1000.0, i10, out=np.full(count, np.inf), where=valid)
    # cheap whole-block pre-checks: most blocks never come near a threshold
    v_peak = float(pb.v_meas.max())
    any_valid = bool(valid.any())
    open_now = triggers.open_circuit(a, pb.i_meas, pb.i_reg, pb.v_meas) if v_peak >= a.v_high_mv else None

    # trigger conditions
    candidates: list[tuple[int, Trigger]] = []
    if a.hardware_trip_ua:
        k = detect.first_true(triggers.hardware_trip(a, pb.i_true))
        if k is not None:
            candidates.append((k, Trigger.HARDWARE_TRIP))
    if a.overcurrent:
        k = detect.first_true(triggers.overcurrent(a, pb.i_meas, pb.i_reg))
        if k is not None:
            candidates.append((k, Trigger.OVERCURRENT))
    protective = a.protective
    short_runs = None
    if protective and any_valid:
        z_valid = zf[valid]
        z_low = min(float(z_valid.min()), float(fw.hist_z.min()))
        if float(z_valid.max()) > LIFT_RISE * z_low:  # otherwise no step can rise 50 % above its window
            zmin = detect.sliding_min(fw.hist_z, zf)
            k = detect.first_true(triggers.lift(valid, zf, zmin))
            if k is not None:
                candidates.append((k, Trigger.LIFT))
        if z_low < CONTACT_LOW_OHM:
            short_runs = detect.run_lengths(triggers.short(valid, zf), fw.short_run)
            k = detect.first_true(short_runs >= fw.short_steps)
            if k is not None:
                candidates.append((k, Trigger.SHORT))
    if protective and open_now is not None:
        k = detect.first_true(open_now)
        if k is not None:
            candidates.append((k, Trigger.OPEN))
    comp_runs = clear_runs = None
    charge = None
    if a.counts_charge:
        charge_sums = fw.charge_sum + np.cumsum(pb.i_meas)
        charge = charge_sums * dt
    if a.output:
        assert s is not None
        if frac is None:
            v_high = triggers.compliance_high(a, pb.v_meas) if v_peak >= a.v_high_mv else None
            v_low = triggers.compliance_low(a, pb.v_meas)
        else:  # pulsed: judge the on-phase voltage; off-phase steps neither start nor break a run
            pulse_on = frac > PULSE_ON_FRACTION
            v_on = pb.v_meas / np.where(pulse_on, frac, 1.0)
            # compliance is judged at the settled end of each pulse only (see segments.pulse_judged)
            judged = segments.pulse_judged(s, idx, frac, dt)
            v_high = np.where(judged, triggers.compliance_high(a, v_on), True)
            v_low = np.where(pulse_on, triggers.compliance_low(a, v_on), True)
        if v_high is not None:
            comp_runs = detect.run_lengths(v_high, fw.comp_run)
            k = detect.first_true(comp_runs >= fw.compliance_steps)
            if k is not None:
                candidates.append((k, Trigger.COMPLIANCE))
        if a.clear_watch:
            clear_runs = detect.run_lengths(v_low, fw.clear_run)
            k = detect.first_true(clear_runs >= fw.compliance_steps)
            if k is not None:
                candidates.append((k, Trigger.COMPLIANCE_CLEAR))
        assert charge is not None
        ramp_q = segments.ramp_charge(s, sp, fw.model.output_tau_s, dt)
        k = detect.first_true(triggers.dose_reached(charge, ramp_q, fw.dose_aim(s)))
        if k is not None:
            candidates.append((k, Trigger.DOSE))

    trigger: Trigger | None = None
    commit = count
    if candidates:
        k, trigger = min(candidates, key=lambda c: (c[0], c[1].value))
        commit = k + 1

    # ---- commit the first `commit` steps
    last = commit - 1
    fw.plant_state = pb.state_after(commit)
    if charge is not None:
        fw.charge_sum = float(charge_sums[last])
    if s is not None and state in OUTPUT_STATES:
        s.on_steps += commit
    fw.hist_i = np.concatenate((fw.hist_i, pb.i_meas[:commit]))[-(MEAN_WINDOW_STEPS - 1) :]
    fw.hist_v = np.concatenate((fw.hist_v, pb.v_meas[:commit]))[-(MEAN_WINDOW_STEPS - 1) :]
    fw.hist_r = np.concatenate((fw.hist_r, pb.i_reg[:commit]))[-(MEAN_WINDOW_STEPS - 1) :]
    fw.hist_z = np.concatenate((fw.hist_z, zf[:commit]))[-(fw.lift_window - 1) :]
    fw.short_run = int(short_runs[last]) if short_runs is not None else 0
    fw.comp_run = int(comp_runs[last]) if comp_runs is not None else 0
    fw.clear_run = int(clear_runs[last]) if clear_runs is not None else 0
    c = fw.contact
    if c is not None and state == S.CONTACT_CHECK:
        lo = max(c.measure_start, n0)
        hi = min(c.down_start, n0 + commit)
        if hi > lo:
            c.samples_i.append(pb.i_meas[lo - n0 : hi - n0])
            c.samples_v.append(pb.v_meas[lo - n0 : hi - n0])
    # reported impedance: the 10-step estimate where valid, OPEN when open, else the last known value
    known = valid[:commit] if open_now is None else valid[:commit] | open_now[:commit]
    known_at = np.flatnonzero(known)
    previous_impedance = fw.last_impedance

    def impedance_at(i: int) -> int:
        j = int(np.searchsorted(known_at, i, side="right")) - 1
        if j < 0:
            return previous_impedance
        k = int(known_at[j])
        if open_now is not None and open_now[k]:
            return OPEN_CIRCUIT_OHM
        return min(round(float(zf[k])), OPEN_CIRCUIT_OHM - 1)

    fw.last_impedance = impedance_at(last)
    fw.last_i_meas = float(pb.i_meas[last])
    fw.last_v_meas = float(pb.v_meas[last])
    fw.last_output = float(pb.i_true[last])
    charge_arr = charge[:commit] if charge is not None else np.full(commit, fw.charge)
    due = fw.telemetry.due(n0 - fw.boot_n, commit, dt)
    if due:
        base = fw.flags_now()
        disabled = fw.output_disabled()
        for t_ms, i in due:
            fw.telemetry.sample(
                fw.outbox,
                t_ms,
                state,
                base,
                fw.polarity,
                float(sp[i]),
                float(pb.i_meas[i]),
                float(pb.v_meas[i]),
                impedance_at(i),
                float(charge_arr[i]),
                None if frac is None else float(frac[i]),
                disabled,
            )
    if fw.trace is not None:
        physical = pb.physical[:commit].copy()
        if fw.physical_next:
            physical[0] = True
        fw.trace.write(
            TraceBlock(
                step=idx[:commit],
                t_s=t[:commit],
                state=np.full(commit, int(state), dtype=np.int64),
                setpoint_ua=sp[:commit],
                output_ua=pb.i_true[:commit],
                voltage_mv=pb.v_true[:commit],
                impedance_ohm=pb.z_true[:commit],
                charge_uas=charge_arr,
                physical=physical,
                polarity=np.full(commit, int(fw.polarity), dtype=np.int64),
                session=np.full(commit, fw.boot_count * 65_536 + fw.session_id, dtype=np.int64),
            )
        )
    fw.physical_next = False
    fw.n = n0 + commit
    if trigger is not None:
        fw.handle_trigger(
            trigger,
            float(pb.i_true[last]),
            float(pb.i_meas[last]),
            float(i10[last]) / max(float(r10[last]), 1e-9),
            float(zf[last]),
        )
