"""The firmware: boot, state transitions, the block horizon and time. No threads, no I/O, no wall clock.

Requests come in through :meth:`Firmware.handle` (one typed message in, its reply messages out) and time
through :meth:`Firmware.advance`. Unsolicited messages (telemetry, events) collect in :attr:`outbox`.
The other jobs live in their own modules:

* :mod:`.requests` -- request handling: the request x state table (:mod:`iontodrive.protocol.rules`)
  enforced first, then each request's field checks and action;
* :mod:`.thresholds` -- every judgement threshold;
* :mod:`.segments` -- ramps, the session and the contact check as data, with the arithmetic both stepping
  paths share;
* :mod:`.event_ring` -- numbered events, their ring and their state stamps;
* :mod:`.telemetry` -- the telemetry schedule and samples;
* :mod:`.triggers` -- the one set of trigger rules; :mod:`.stepping` -- the numpy and scalar block paths.

Invariants (the guide's S1–S17 as the firmware enforces them):

* The set-point moves only along linear ramps no faster than the model's slew limit (S1, S2); a session
  starts from zero after a confirmed contact check (S3, S4); abort, lift, short and trips use the slew limit.
* A rejected request changes nothing and gets a NACK naming the field and range (S12 limits are the
  model's, all reported in IdentityReport, and cannot be raised).
* Output goes to zero on: end of dose/time, stop, abort (RAMP_DOWN -> DONE); pause, electrode lift, short,
  host silence (PAUSING -> PAUSED, dose kept); over-current or hardware trip (FAULT, latched).
* Nothing ever raises the output by itself after it was brought to zero by a fault, a lift or the
  watchdog: only a host ``Resume`` (with a new contact check) or a new ``Start`` does.
* Every event of one reaction (to a request, a trigger or a scheduled step) carries the state the device is
  in after that reaction.

Time runs in blocks: the firmware computes the horizon to the next scheduled event (ramp end, contact
check phase, session time limit, watchdog deadline), steps the block (:mod:`.stepping`), commits only up to
the first trigger and reacts to it (:meth:`Firmware.handle_trigger`). The outcome is the same as a
step-by-step loop (``max_block_steps=1``), which the tests check.
"""

from __future__ import annotations

import logging
import math
from collections import deque

import numpy as np

from iontodrive.protocol import (
    OPEN_CIRCUIT_OHM,
    ContactVerdict,
    DeviceState,
    Event,
    EventCode,
    Message,
    Polarity,
    StatusFlags,
    StatusReport,
    trusted_constructor,
)
from iontodrive.protocol.rules import OUTPUT_STATES, QUIET_STATES, SESSION_STATES

from . import requests, stepping
from .event_ring import EventRing
from .models import ModelSpec
from .plant import Plant, PlantState
from .plant_step import PlantStepper
from .segments import ContactCheck, EndReason, Ramp, Session, flat, ramp_charge
from .telemetry import TelemetrySchedule
from .thresholds import (
    COMPLIANCE_RUN_S,
    CONTACT_HIGH_FRACTION,
    CONTACT_HIGH_MAX_OHM,
    CONTACT_LOW_OHM,
    CONTACT_STABILITY,
    CONTACT_WINDOW_S,
    DOSE_AIM_CAP_FRACTION,
    LIFT_WINDOW_S,
    MEAN_WINDOW_STEPS,
    PROBE_MAX_UA,
    SHORT_RUN_S,
    SMALL_BLOCK_STEPS,
)
from .trace import TraceSink
from .triggers import Armed, Trigger

log = logging.getLogger(__name__)

S = DeviceState

# Status replies go out at high rates; their values are the firmware's own (encode checks them).
_new_status = trusted_constructor(StatusReport)

_SESSION_KEPT_FLAGS = StatusFlags.CONTACT_OK  # what a new session keeps of the flags


class Firmware:
    """Firmware of one device. Not thread-safe; one caller drives it.

    ``dt`` is the physics step (s). ``max_block_steps`` bounds a block (1 = step by step, for tests).
    """

    # Every field in a slot: a status poll reads some twenty of them, and slot reads stay fast.
    # fmt: off
    __slots__ = (
        "_events_log",
        "armed_cache",
        "boot_count",
        "boot_n",
        "charge_sum",
        "clear_run",
        "comp_run",
        "compliance_steps",
        "contact",
        "dt",
        "flags",
        "held_ua",
        "hist_i",
        "hist_r",
        "hist_v",
        "hist_z",
        "host_nonce",
        "host_session_no",
        "i_valid",
        "last_frame_link",
        "last_i_meas",
        "last_impedance",
        "last_output",
        "last_v_meas",
        "lift_window",
        "link_now",
        "max_block_steps",
        "model",
        "n",
        "outbox",
        "physical_next",
        "plant",
        "plant_state",
        "polarity",
        "power_up_telemetry_hz",
        "ramp",
        "ramp_done_at",
        "reboot_pending",
        "ring",
        "session",
        "session_id",
        "settle_steps",
        "short_run",
        "short_steps",
        "small_block_steps",
        "state",
        "stepper",
        "t_acc",
        "telemetry",
        "trace",
        "trip_margin",
        "watchdog_fired",
        "watchdog_ms",
    )
    # fmt: on

    def __init__(
        self,
        model: ModelSpec,
        plant: Plant,
        dt: float,
        trace: TraceSink | None = None,
        *,
        max_block_steps: int = 65_536,
        telemetry_hz: int | None = None,
    ) -> None:
        if max_block_steps < 1:
            raise ValueError(f"max_block_steps = {max_block_steps!r} is out of range: must be >= 1")
        self.model = model
        self.plant = plant
        self.dt = dt
        self.trace = trace
        self.max_block_steps = max_block_steps
        # blocks of at most this many steps are simulated with scalars (0 = always numpy; tests use it)
        self.small_block_steps = SMALL_BLOCK_STEPS
        self.power_up_telemetry_hz = model.default_telemetry_hz if telemetry_hz is None else telemetry_hz
        if not 0 <= self.power_up_telemetry_hz <= model.max_telemetry_hz:
            raise ValueError(
                f"telemetry_hz = {telemetry_hz!r} is out of range: must be in [0, {model.max_telemetry_hz}]"
            )
        self.outbox: list[Message] = []
        self.n = 0  # physics steps done since the simulator was created
        self.link_now = 0.0  # link (wall or virtual) seconds since creation
        self.t_acc = 0.0
        self.settle_steps = max(1, math.ceil(10.0 * model.output_tau_s / dt))
        self.lift_window = max(2, round(LIFT_WINDOW_S / dt))
        self.compliance_steps = max(1, round(COMPLIANCE_RUN_S / dt))
        self.short_steps = max(1, round(SHORT_RUN_S / dt))
        self.i_valid = max(50.0, 50.0 * model.adc_current_noise_ua)
        self.trip_margin = max(0.01 * model.max_current_ua, 6.0 * model.adc_current_noise_ua)
        self.plant_state = PlantState()
        self.stepper = PlantStepper(plant)
        self._events_log: deque[Event] | None = None  # every event, across restarts (made by the first boot)
        self.physical_next = False
        self.armed_cache: tuple[tuple[object, ...], Armed] | None = None  # see triggers.arm
        self.boot_count = 0
        self._boot(cold=True)

    # ------------------------------------------------------------------------------------------ boot

    def _boot(self, cold: bool) -> None:
        """Firmware start: output disabled, IDLE, no session, no host session, fresh event ring (S15)."""
        self.boot_n = self.n
        self.boot_count += 1
        self.state = S.IDLE
        self.polarity = Polarity.NONE
        self.session: Session | None = None
        self.session_id = 0
        self.host_nonce = 0  # no host session open (docs/protocol.md §7.3)
        self.host_session_no = 0
        self.contact: ContactCheck | None = None
        self.ramp = flat(self.n, 0.0)
        self.ramp_done_at: int | None = None  # step count at which the current ramp phase is complete
        self.charge_sum = 0.0  # sum of measured current samples (uA); exact, since samples are ADC steps
        self.flags = StatusFlags.NONE
        self.ring = EventRing(self._events_log)
        self._events_log = self.ring.log
        self.watchdog_ms = self.model.default_watchdog_ms
        self.last_frame_link = self.link_now
        self.watchdog_fired = False
        self.telemetry = TelemetrySchedule(
            self.power_up_telemetry_hz, max(10.0, 5.0 * self.model.adc_current_noise_ua)
        )
        self.last_i_meas = 0.0
        self.last_v_meas = 0.0
        self.last_output = 0.0
        self.last_impedance = 0
        self.held_ua = 0.0
        self._reset_detectors()
        self.physical_next = self.physical_next or not cold
        self.reboot_pending = False
        # power loss: the output stage stops at once (a physical break, not a firmware ramp)
        self.plant_state = PlantState(0.0, self.plant_state.v_c_mv, self.plant_state.skin)
        self.emit(EventCode.POWER_ON, 0)
        self.commit_events()

    def power_cycle(self) -> None:
        """Restart as after a power loss: output cut at once, session lost, event ring restarts."""
        self._boot(cold=False)

    def restart(self) -> None:
        """Firmware restart on a Reset request (output is already at zero)."""
        self._boot(cold=True)

    def end_host_session(self) -> None:
        """The host went away (a transport saw it disconnect): no host session is open any more.

        The device forgets the host's nonce; the reply cache that belonged to it is the transport's
        (:meth:`firmware_sim.Device.end_host_session` clears both). Output and session are untouched: the
        watchdog (S10) acts on the silence as it would on any other.
        """
        self.host_nonce = 0

    def _reset_detectors(self) -> None:
        # last MEAN_WINDOW_STEPS - 1 samples of measured I, V and nominal I (arrays or lists of floats)
        self.hist_i: np.ndarray | list[float] = np.zeros(MEAN_WINDOW_STEPS - 1)
        self.hist_v: np.ndarray | list[float] = np.zeros(MEAN_WINDOW_STEPS - 1)
        self.hist_r: np.ndarray | list[float] = np.zeros(MEAN_WINDOW_STEPS - 1)
        self._reset_lift_window()
        self.comp_run = 0
        self.clear_run = 0
        self.short_run = 0

    def _reset_lift_window(self) -> None:
        self.hist_z = np.full(self.lift_window - 1, np.inf)

    # ---------------------------------------------------------------------------------- introspection

    @property
    def device_time_s(self) -> float:
        return (self.n - self.boot_n) * self.dt

    @property
    def device_time_ms(self) -> int:
        return round((self.n - self.boot_n) * self.dt * 1000.0) & 0xFFFF_FFFF

    @property
    def charge(self) -> float:
        """Delivered charge of the session (uA·s): the integral of measured current (S11)."""
        return self.charge_sum * self.dt

    @property
    def setpoint(self) -> float:
        return self.ramp.value_after(self.n, self.dt)

    @property
    def telemetry_hz(self) -> int:
        return self.telemetry.rate_hz

    @property
    def events(self) -> deque[Event]:
        """The ring FetchEvents serves."""
        return self.ring.ring

    @property
    def boot_events(self) -> deque[Event]:
        """Every event since the last boot, oldest first."""
        return self.ring.boot_log

    @property
    def events_log(self) -> deque[Event]:
        """Every event since the simulator was created, across boots (bounded)."""
        return self.ring.log

    @property
    def next_event_no(self) -> int:
        return self.ring.next_event_no

    def output_is_zero(self) -> bool:
        """The output is at zero and nothing is ramping (a quiet state after its ramp ended)."""
        return self.setpoint == 0.0 and self.ramp_done_at is None and self.state in QUIET_STATES

    def output_disabled(self) -> bool:
        """The output stage is off for the rest of this block: a quiet state with no ramp under way."""
        return self.ramp_done_at is None and self.state in QUIET_STATES

    def hardware_trip_latched(self) -> bool:
        return bool(self.flags & StatusFlags.HARDWARE_TRIP)

    def flags_now(self) -> StatusFlags:
        flags = self.flags
        if self.ring.overflowed:
            flags |= StatusFlags.EVENTS_OVERFLOWED
        if self.state in SESSION_STATES:
            flags |= StatusFlags.SESSION_ACTIVE
            if self.session is not None and self.session.dose_based:
                flags |= StatusFlags.DOSE_BASED
        return flags

    # ----------------------------------------------------------------------------------------- events

    def emit(self, code: EventCode, value: int) -> None:
        """Record an event now; it is stamped with the state after the present reaction and sent."""
        self.ring.record(code, value, self.device_time_ms)

    def commit_events(self) -> None:
        """Stamp the events of the reaction just finished with the present state and send them."""
        self.ring.commit(self.state, self.outbox)

    def _set_state(self, new: DeviceState) -> None:
        if new == self.state:
            return
        previous = self.state
        self.state = new
        self.emit(EventCode.STATE_CHANGED, int(previous))

    # --------------------------------------------------------------------------------------- requests

    def feed_watchdog(self) -> None:
        """A valid request frame arrived (S10)."""
        self.last_frame_link = self.link_now
        self.watchdog_fired = False

    def handle(self, request: Message) -> list[Message]:
        """Execute one request (:func:`.requests.handle`); return its reply (and, for FetchEvents, the
        replayed events). The events it caused are queued in :attr:`outbox`."""
        replies = requests.handle(self, request)
        self.commit_events()
        return replies

    def status(self) -> StatusReport:
        s = self.session
        sp = self.setpoint
        flags = self.flags_now()
        quiet = sp == 0.0 and self.ramp_done_at is None and self.state in QUIET_STATES
        if not quiet:
            flags |= StatusFlags.OUTPUT_ON
        return _new_status(  # type: ignore[return-value]
            self.device_time_ms,
            self.state,
            flags,
            self.polarity,
            s.target_ua if s is not None else 0,  # target_current_ua
            round(sp),
            0 if quiet else int(self.last_i_meas),  # output disabled: 0, not the ADC offset (§4.3)
            0 if quiet else int(self.last_v_meas),
            int(self.last_impedance),
            min(int(self.charge), 0xFFFF_FFFF),
            s.dose_uas if s is not None else 0,  # target_charge_uas
            self._remaining_ms(),
            self.session_id & 0xFFFF,
            self.ring.last_event_no,
            self.watchdog_ms,
            self.telemetry.rate_hz,
        )

    def _remaining_ms(self) -> int:
        s = self.session
        if s is None or self.state not in SESSION_STATES:
            return 0
        if not s.dose_based:
            return max(0, s.duration_ms - round(s.on_steps * self.dt * 1000.0))
        sp = self.setpoint
        current = (sp if sp > 0 else s.target_ua) * s.duty
        left = self.dose_aim(s) - self.charge - ramp_charge(s, sp, self.model.output_tau_s, self.dt)
        seconds = max(0.0, left) / max(current, 1.0) + sp / s.rate_down(sp)
        return min(int(seconds * 1000.0), 0xFFFF_FFFF)

    def dose_aim(self, s: Session) -> float:
        """Charge the session aims at (µA·s): its dose, never above 99.9 % of the model's dose cap."""
        cap = DOSE_AIM_CAP_FRACTION * self.model.dose_cap_uas
        return min(float(s.dose_uas), cap) if s.dose_based else cap

    def contact_limits(self, target_ua: int) -> tuple[int, int]:
        """(low, high) impedance limits for starting at ``target_ua`` (S3)."""
        high = CONTACT_HIGH_MAX_OHM
        if target_ua > 0:
            high = min(high, int(CONTACT_HIGH_FRACTION * self.model.compliance_mv * 1000 / target_ua))
        return CONTACT_LOW_OHM, high

    def measure_contact(self, probe_ua: float, target_ua: int) -> tuple[int, ContactVerdict, int, int]:
        """Spot measurement of the impedance at ``probe_ua`` (S3): (impedance, verdict, low, high)."""
        z = self.plant.probe_impedance(self.plant_state, (self.n + 1) * self.dt, probe_ua)
        low, high = self.contact_limits(target_ua)
        if math.isinf(z):
            return OPEN_CIRCUIT_OHM, ContactVerdict.OPEN, low, high
        z_int = min(round(z), OPEN_CIRCUIT_OHM - 1)
        if z_int < low:
            return z_int, ContactVerdict.LOW, low, high
        if z_int > high:
            return z_int, ContactVerdict.HIGH, low, high
        return z_int, ContactVerdict.OK, low, high

    def set_contact_flag(self, ok: bool) -> None:
        if ok:
            self.flags |= StatusFlags.CONTACT_OK
        else:
            self.flags &= ~StatusFlags.CONTACT_OK

    def clear_session_flags(self) -> None:
        """A new session starts with only the contact flag of the flags before it."""
        self.flags &= _SESSION_KEPT_FLAGS

    def change_setpoint(self, target_ua: int, ramp_ms: int) -> None:
        """SetCurrent accepted: ramp to ``target_ua`` over ``ramp_ms`` (ADJUST), or hold if already there."""
        s = self.session
        assert s is not None
        sp = self.setpoint
        delta = abs(target_ua - sp)
        s.target_ua = target_ua
        self.flags &= ~StatusFlags.RESISTANCE_LIMIT
        self.comp_run = 0
        self.clear_run = 0
        self.emit(EventCode.SETPOINT_CHANGED, target_ua)
        if delta == 0.0:
            self.ramp = flat(self.n, sp)
            self.ramp_done_at = None
            self._set_state(S.HOLD)
        else:
            self.start_ramp(float(target_ua), delta * 1000.0 / ramp_ms)
            self._set_state(S.ADJUST)

    def clear_fault(self) -> None:
        """ClearFault accepted (output at zero, no hardware latch): latches and session cleared, IDLE."""
        self.flags &= ~(
            StatusFlags.OVERCURRENT
            | StatusFlags.RESISTANCE_LIMIT
            | StatusFlags.TIME_EXTENDED
            | StatusFlags.ELECTRODE_LIFT
            | StatusFlags.LINK_LOST
        )
        self.session = None
        self.polarity = Polarity.NONE
        self.emit(EventCode.FAULT_CLEARED, 0)
        self._set_state(S.IDLE)
        self._reset_detectors()

    # ------------------------------------------------------------------------------------ transitions

    def start_ramp(self, goal: float, rate: float, settle: bool = False) -> None:
        """Ramp from the present set-point to ``goal`` at ``rate`` µA/s, starting with the next step."""
        sp = self.setpoint
        self.ramp = Ramp(self.n, sp, goal, rate)
        done = self.ramp.end_step(self.dt) + 1
        if settle:
            done += self.settle_steps
        self.ramp_done_at = max(done, self.n)

    def pause_rate(self) -> float:
        if self.state == S.CONTACT_CHECK or self.session is None:
            return float(self.model.slew_limit_ua_per_s)
        return self.session.rate_down(self.setpoint)

    def begin_pausing(self, rate: float) -> None:
        self.contact = None
        self.start_ramp(0.0, rate, settle=True)
        self._set_state(S.PAUSING)

    def end_session(self, reason: EndReason, rate: float | None) -> None:
        s = self.session
        assert s is not None
        s.end_reason = reason
        self.contact = None
        if self.state == S.PAUSED:
            self._finish_session()
            return
        if rate is None:
            rate = (
                float(self.model.slew_limit_ua_per_s)
                if self.state == S.CONTACT_CHECK
                else s.rate_down(self.setpoint)
            )
        if self.state in (S.PAUSING, S.RAMP_DOWN):
            rate = max(rate, self.ramp.rate)  # never slow down a ramp that is already under way
        self.start_ramp(0.0, rate, settle=True)
        self._set_state(S.RAMP_DOWN)

    def _finish_session(self) -> None:
        s = self.session
        assert s is not None
        if s.end_reason in (EndReason.DOSE, EndReason.CAP):
            self.emit(EventCode.DOSE_COMPLETE, int(self.charge))
        self.emit(EventCode.SESSION_ENDED, int(self.charge))
        self.ramp = flat(self.n, 0.0)
        self.ramp_done_at = None
        self._set_state(S.DONE)

    def begin_contact_check(self, resume: bool) -> None:
        slew = float(self.model.slew_limit_ua_per_s)
        probe = float(PROBE_MAX_UA)
        ramp_steps = max(1, math.ceil(probe / (slew * self.dt) - 1e-9))
        n0 = self.n
        window = max(1, round(CONTACT_WINDOW_S / self.dt))
        measure_start = n0 + ramp_steps + self.settle_steps
        min_measure = max(10, round(0.05 / self.dt))
        down_start = max(n0 + window - ramp_steps - self.settle_steps, measure_start + min_measure)
        assert self.session is not None
        _, high = self.contact_limits(self.session.target_ua)
        self.contact = ContactCheck(
            resume=resume,
            probe_ua=probe,
            high_limit=high,
            start_step=n0,
            measure_start=measure_start,
            down_start=down_start,
            end_step=down_start + ramp_steps + self.settle_steps,
            samples_i=[],
            samples_v=[],
        )
        self.ramp = Ramp(n0, 0.0, probe, slew)
        self.ramp_done_at = None
        self._set_state(S.CONTACT_CHECK)

    def _finish_contact_check(self) -> None:
        c = self.contact
        s = self.session
        assert c is not None and s is not None
        self.contact = None
        i = np.concatenate(c.samples_i) if c.samples_i else np.zeros(0)
        v = np.concatenate(c.samples_v) if c.samples_v else np.zeros(0)
        half = i.shape[0] // 2
        verdict_ok = False
        z_report = OPEN_CIRCUIT_OHM
        if half >= 1 and i.mean() >= 0.5 * c.probe_ua:
            z1 = v[:half].mean() * 1000.0 / max(i[:half].mean(), 1e-9)
            z2 = v[half:].mean() * 1000.0 / max(i[half:].mean(), 1e-9)
            z = v.mean() * 1000.0 / i.mean()
            z_report = min(round(z), OPEN_CIRCUIT_OHM - 1)
            stable = abs(z1 - z2) <= CONTACT_STABILITY * min(z1, z2)
            verdict_ok = stable and CONTACT_LOW_OHM <= z <= c.high_limit
        self.last_impedance = z_report
        self.ramp = flat(self.n, 0.0)
        self.ramp_done_at = None
        if not verdict_ok:
            self.flags &= ~StatusFlags.CONTACT_OK
            self.emit(EventCode.CONTACT_FAILED, z_report)
            if c.resume:
                self._set_state(S.PAUSED)
            else:
                self.session = None
                self.polarity = Polarity.NONE
                self._set_state(S.IDLE)
            return
        self.flags |= StatusFlags.CONTACT_OK
        self.flags &= ~StatusFlags.ELECTRODE_LIFT
        self.emit(EventCode.CONTACT_OK, z_report)
        if c.resume:
            self.emit(EventCode.RESUMED, int(self.charge))
        self._reset_detectors()
        s.pulse_anchor = self.n
        self.start_ramp(float(s.target_ua), s.rate_up)
        self._set_state(S.RAMP_UP)

    def _watchdog_fire(self) -> None:
        self.watchdog_fired = True
        silent_ms = round((self.link_now - self.last_frame_link) * 1000.0)
        if self.state in OUTPUT_STATES or self.state == S.CONTACT_CHECK:
            self.flags |= StatusFlags.LINK_LOST
            self.emit(EventCode.LINK_LOST, max(silent_ms, self.watchdog_ms))
            self.begin_pausing(self.pause_rate())
        elif self.state in (S.PAUSING, S.RAMP_DOWN) or (self.state == S.FAULT and not self.output_is_zero()):
            self.flags |= StatusFlags.LINK_LOST
            self.emit(EventCode.LINK_LOST, max(silent_ms, self.watchdog_ms))

    def _ramp_complete(self) -> None:
        st = self.state
        if st == S.RAMP_UP or st == S.ADJUST:
            self.ramp = Ramp(self.n, self.ramp.goal, self.ramp.goal, 0.0)
            self.ramp_done_at = None
            self._set_state(S.HOLD)
        elif st == S.PAUSING:
            self.ramp = flat(self.n, 0.0)
            self.ramp_done_at = None
            self.emit(EventCode.PAUSED, int(self.charge))
            self._set_state(S.PAUSED)
        elif st == S.RAMP_DOWN:
            self._finish_session()
        elif st == S.FAULT:
            self.ramp = flat(self.n, 0.0)
            self.ramp_done_at = None
        else:  # pragma: no cover - no other state has a finite ramp
            self.ramp_done_at = None

    def _on_limit_steps(self) -> int | None:
        s = self.session
        if s is None or self.state not in OUTPUT_STATES:
            return None
        limit_ms = self.model.max_duration_ms - s.ramp_down_ms
        if not s.dose_based:
            limit_ms = min(limit_ms, s.duration_ms - s.ramp_down_ms)
        return max(0, math.ceil(limit_ms / 1000.0 / self.dt - 1e-9))

    def _boundary(self, wd_step: int | None) -> None:
        """Handle every scheduled event that is due after ``self.n`` steps."""
        ring = self.ring
        for _ in range(16):
            if ring.pending:  # events of the previous action (or of the trigger that ended the block)
                ring.commit(self.state, self.outbox)
            if wd_step is not None and not self.watchdog_fired and self.n >= wd_step:
                self._watchdog_fire()
                continue
            c = self.contact
            if c is not None and self.state == S.CONTACT_CHECK:
                if not c.down and self.n >= c.down_start:
                    c.down = True
                    self.ramp = Ramp(self.n, self.setpoint, 0.0, float(self.model.slew_limit_ua_per_s))
                    continue
                if self.n >= c.end_step:
                    self._finish_contact_check()
                    continue
            if self.ramp_done_at is not None and self.n >= self.ramp_done_at:
                self._ramp_complete()
                continue
            limit = self._on_limit_steps()
            s = self.session
            if limit is not None and s is not None and s.on_steps >= limit:
                self.end_session(EndReason.MAX_DURATION if s.dose_based else EndReason.TIME, None)
                continue
            return

    def _horizon(self, wd_step: int | None) -> int:
        """Step count at which the next scheduled event is due (> self.n), or a large number."""
        h = self.n + self.max_block_steps
        if wd_step is not None and not self.watchdog_fired and wd_step > self.n:
            h = min(h, wd_step)
        c = self.contact
        if c is not None and self.state == S.CONTACT_CHECK:
            h = min(h, c.down_start if not c.down else c.end_step)
        if self.ramp_done_at is not None:
            h = min(h, self.ramp_done_at)
        limit = self._on_limit_steps()
        if limit is not None and self.session is not None:
            h = min(h, self.n + max(1, limit - self.session.on_steps))
        return max(h, self.n + 1)

    def idle_horizon_s(self) -> float:
        """Device seconds until the firmware next has something to do or send, if nothing is under way.

        0 in any state with output, a ramp, a contact check or a session in progress (they need regular
        advancing); otherwise (IDLE, DONE, PAUSED, FAULT with the output at zero) the time to the next
        telemetry sample, or ``inf`` with telemetry off. In those states the watchdog has nothing to do.
        """
        if (
            self.state not in QUIET_STATES
            or self.ramp_done_at is not None
            or self.contact is not None
            or self.setpoint != 0.0
        ):
            return 0.0
        return max(0.0, self.telemetry.next_due_s() - self.device_time_s)

    # ------------------------------------------------------------------------------------------- time

    def advance_link(self, link_dt: float) -> None:
        """Let ``link_dt`` seconds of link time pass and no session time (a request between two ticks).

        The same as ``advance(0.0, link_dt)`` -- the watchdog fires if its deadline passes -- but cheap when
        it does not. Raises ValueError for a negative or non-finite interval.
        """
        if (
            self.watchdog_fired
            or self.last_frame_link + self.watchdog_ms / 1000.0 > self.link_now + link_dt + 1e-12
        ) and 0.0 <= link_dt < math.inf:
            self.link_now += link_dt
            return
        self.advance(0.0, link_dt)

    def advance(self, session_dt: float, link_dt: float | None = None) -> None:
        """Run forward by ``session_dt`` seconds of session time and ``link_dt`` of link time.

        Raises:
            ValueError: a negative or non-finite interval.
        """
        if link_dt is None:
            link_dt = session_dt
        for name, value in (("session_dt_s", session_dt), ("link_dt_s", link_dt)):
            if not (value >= 0.0 and math.isfinite(value)):
                raise ValueError(f"{name} = {value!r} is out of range: must be a finite number >= 0")
        self.t_acc += session_dt
        n_target = max(self.n, math.floor(self.t_acc / self.dt + 1e-9))
        steps = n_target - self.n
        link0 = self.link_now
        wd_step: int | None = None
        if not self.watchdog_fired:
            deadline = self.last_frame_link + self.watchdog_ms / 1000.0
            if deadline <= link0 + link_dt + 1e-12:
                frac = 0.0 if link_dt <= 0 else max(0.0, (deadline - link0) / link_dt)
                wd_step = self.n + min(steps, math.ceil(frac * steps - 1e-9))
        while True:
            if wd_step is not None and self.n >= wd_step:
                self.link_now = max(
                    self.link_now, min(link0 + link_dt, self.last_frame_link + self.watchdog_ms / 1000.0)
                )
            self._boundary(wd_step)
            if self.n >= n_target:
                break
            end = min(n_target, self._horizon(wd_step))
            if end - self.n <= self.small_block_steps:
                stepping.step_small(self, self.n, end)
            else:
                stepping.step_block(self, self.n, end)
        self.link_now = link0 + link_dt
        self.commit_events()

    # --------------------------------------------------------------------------------- trigger reactions

    def handle_trigger(
        self, trigger: Trigger, i_true: float, i_meas: float, delivered: float, z: float
    ) -> None:
        """React to a trigger found at the step just committed.

        ``i_true``, ``i_meas`` are that step's true and measured current (µA), ``delivered`` the 10-step mean
        of measured / nominal current, ``z`` the 10-step impedance estimate (ohm, inf when not valid).
        """
        slew = float(self.model.slew_limit_ua_per_s)
        s = self.session
        if trigger in (Trigger.HARDWARE_TRIP, Trigger.OVERCURRENT):
            if trigger == Trigger.HARDWARE_TRIP:
                self.flags |= StatusFlags.HARDWARE_TRIP
                code, value = EventCode.HARDWARE_TRIP, round(i_true)
            else:
                self.flags |= StatusFlags.OVERCURRENT
                code, value = EventCode.OVERCURRENT_TRIP, round(i_meas)
            self.contact = None
            self.emit(code, value)
            self.start_ramp(0.0, slew, settle=True)
            self._set_state(S.FAULT)
            return
        if trigger in (Trigger.SHORT, Trigger.LIFT, Trigger.OPEN):
            if trigger == Trigger.SHORT:
                self.emit(EventCode.SHORT_CIRCUIT, round(z))
            else:
                self.flags |= StatusFlags.ELECTRODE_LIFT
                self.emit(
                    EventCode.ELECTRODE_LIFT,
                    OPEN_CIRCUIT_OHM if trigger == Trigger.OPEN else min(round(z), OPEN_CIRCUIT_OHM - 1),
                )
            self._reset_lift_window()
            self.short_run = 0
            if self.state in OUTPUT_STATES:
                self.begin_pausing(slew)
            else:  # already ramping to zero: hurry up
                self.start_ramp(0.0, slew, settle=True)
            return
        assert s is not None
        if trigger == Trigger.DOSE:
            self.end_session(EndReason.DOSE if s.dose_based else EndReason.CAP, None)
            return
        if trigger == Trigger.COMPLIANCE:
            self.comp_run = 0
            held = math.floor(min(delivered, 1.0) * self.setpoint)
            first = not self.flags & StatusFlags.RESISTANCE_LIMIT
            self.flags |= StatusFlags.RESISTANCE_LIMIT
            self.held_ua = held
            # the set-point comes down to the reachable current at the slew limit, never in a step: with
            # DC the output is clamped there already, with pulsed DC the envelope is the waveform (S2)
            lowering = held < self.setpoint
            if lowering:
                self.start_ramp(float(held), slew)
            else:
                self.ramp = Ramp(self.n, float(held), float(held), 0.0)
                self.ramp_done_at = None
            if first:
                self.emit(EventCode.RESISTANCE_LIMIT, held)
                if s.dose_based and not self.flags & StatusFlags.TIME_EXTENDED:
                    self.flags |= StatusFlags.TIME_EXTENDED
                    left = max(0.0, self.dose_aim(s) - self.charge)
                    extension = left / max(held * s.duty, 1.0) - left / (s.target_ua * s.duty)
                    self.emit(EventCode.TIME_EXTENDED, max(0, round(extension * 1000.0)))
            self._set_state(S.ADJUST if lowering else S.HOLD)
            return
        if trigger == Trigger.COMPLIANCE_CLEAR:
            self.clear_run = 0
            self.flags &= ~StatusFlags.RESISTANCE_LIMIT
            self.emit(EventCode.RESISTANCE_LIMIT_CLEARED, s.target_ua)
            self.start_ramp(float(s.target_ua), s.rate_up)
            self._set_state(S.ADJUST)
            return
