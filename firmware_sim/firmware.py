"""The firmware: state machine, safety logic, session and dose. No threads, no I/O, no wall clock.

Requests come in through :meth:`Firmware.handle` (one typed message in, its reply messages out) and time
through :meth:`Firmware.advance`. Unsolicited messages (telemetry, events) collect in :attr:`outbox`.

Invariants (the guide's S1–S17 as this module enforces them):

* The set-point moves only along linear ramps no faster than the model's slew limit (S1, S2); a session
  starts from zero after a confirmed contact check (S3, S4); abort, lift, short and trips use the slew limit.
* A rejected request changes nothing and gets a NACK naming the field and range (S12 limits are the
  model's and cannot be raised).
* Output goes to zero on: end of dose/time, stop, abort (RAMP_DOWN -> DONE); pause, electrode lift, short,
  host silence (PAUSING -> PAUSED, dose kept); over-current or hardware trip (FAULT, latched).
* Nothing ever raises the output by itself after it was brought to zero by a fault, a lift or the
  watchdog: only a host ``Resume`` (with a new contact check) or a new ``Start`` does.

Time runs in blocks: the firmware computes the horizon to the next scheduled event (ramp end, contact
check phase, session time limit, watchdog deadline), simulates the plant over the block with numpy, scans
the block for the per-step trigger conditions (over-current, hardware trip, lift, open circuit, short,
compliance run, dose threshold), commits only up to the first trigger and handles it. The outcome is the
same as a step-by-step loop (``max_block_steps=1``), which the tests check. Blocks of a few steps (the
real-time runner advances about every millisecond) run on a scalar path with the same rules, because for
them numpy's per-call overhead would dominate (:meth:`Firmware._block_small`, :mod:`.plant_step`).

Telemetry is sampled at the configured rate in device time: sample ``j`` is due ``j / rate`` after the
rate was set, taken at the end of the physics step in which that time falls and stamped with its own time,
so rates above the physics rate give several samples per step, each numbered.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import numpy as np

from iontodrive.protocol import (
    OPEN_CIRCUIT_OHM,
    Abort,
    Ack,
    CheckContact,
    ClearFault,
    ConfigureTelemetry,
    ContactReport,
    ContactVerdict,
    DeviceState,
    ErrorCode,
    Event,
    EventCode,
    EventsReport,
    FetchEvents,
    Field,
    GetStatus,
    Heartbeat,
    Identify,
    Message,
    Nack,
    Pause,
    Polarity,
    Reset,
    Resume,
    SetCurrent,
    SetWatchdog,
    Start,
    StatusFlags,
    StatusReport,
    Stop,
    Telemetry,
    Waveform,
    WaveformSet,
    trusted_constructor,
)

from . import detect
from .models import ModelSpec
from .plant import Plant, PlantState
from .plant_step import PlantStepper
from .trace import TraceBlock, TraceSink

log = logging.getLogger(__name__)

S = DeviceState
EVENT_RING_SIZE = 256
EVENT_LOG_SIZE = 65_536

# Judgement thresholds (docs/simulator.md §Firmware)
CONTACT_LOW_OHM = 200  # S3 short-circuit limit
CONTACT_HIGH_MAX_OHM = 10_000  # S3 absolute high limit
CONTACT_HIGH_FRACTION = 0.8  # S3: high limit = 0.8 × V_compliance / I_target
PROBE_MAX_UA = 50  # S3 probe current
CONTACT_WINDOW_S = 0.2  # length of the contact-check state
CONTACT_STABILITY = 0.2  # impedance of the two halves of the window must agree within 20 %
COMPLIANCE_HIGH = 0.95  # S5: voltage >= 95 % of compliance ...
COMPLIANCE_RUN_S = 2.0  # ... for >= 2 s
COMPLIANCE_CLEAR = 0.80  # resistance limit cleared after 2 s below 80 %
LIFT_RISE = 1.5  # S6: impedance rising > 50 % ...
LIFT_WINDOW_S = 1.0  # ... within 1 s
SHORT_RUN_S = 0.02  # impedance below the low limit for 20 ms = short
OVERCURRENT_FRACTION = 1.10  # S9: trip at set-point + 10 %
DOSE_AIM_CAP_FRACTION = 0.999  # the planned ramp-down aims at most at 99.9 % of the dose cap
MEAN_WINDOW_STEPS = 10  # impedance is computed from 10-step means of V and I

# Blocks of at most this many steps take the scalar path (:meth:`Firmware._block_small`): in real time the
# runner advances a few steps per control tick, where numpy's set-up cost dominates. Both paths give the
# same run (tests/test_sim_fastpath.py, tests/test_sim_equivalence.py).
SMALL_BLOCK_STEPS = 8

OUTPUT_STATES = frozenset({S.RAMP_UP, S.HOLD, S.ADJUST})
SESSION_STATES = frozenset({S.CONTACT_CHECK, S.RAMP_UP, S.HOLD, S.ADJUST, S.RAMP_DOWN, S.PAUSING, S.PAUSED})
QUIET_STATES = frozenset({S.IDLE, S.DONE, S.PAUSED, S.FAULT})  # nothing scheduled once output is zero
CHARGE_STATES = frozenset({S.RAMP_UP, S.HOLD, S.ADJUST, S.RAMP_DOWN, S.PAUSING, S.FAULT})


class EndReason(Enum):
    TIME = "time"
    DOSE = "dose"
    CAP = "cap"
    MAX_DURATION = "max_duration"
    STOP = "stop"
    ABORT = "abort"


class Trigger(Enum):
    HARDWARE_TRIP = 1
    OVERCURRENT = 2
    SHORT = 3
    OPEN = 4
    LIFT = 5
    DOSE = 6
    COMPLIANCE = 7
    COMPLIANCE_CLEAR = 8


# Status replies and telemetry go out at high rates; their values are the firmware's own (encode checks them).
_new_status = trusted_constructor(StatusReport)
_new_telemetry = trusted_constructor(Telemetry)


def _floats(history: np.ndarray | list[float]) -> list[float]:
    """A detector history as a fresh list of Python floats."""
    return history.tolist() if isinstance(history, np.ndarray) else list(history)


@dataclass(frozen=True, slots=True)
class Ramp:
    """A linear set-point segment: from ``start`` (value before step ``start_step``) towards ``goal`` at
    ``rate`` µA/s; each step moves ``rate·dt``; the value stays at ``goal`` once reached."""

    start_step: int
    start: float
    goal: float
    rate: float

    def values(self, idx: np.ndarray, dt: float) -> np.ndarray:
        if self.goal == self.start or self.rate <= 0:
            return np.full(idx.shape[0], self.start if self.rate <= 0 else self.goal)
        k = np.maximum(idx - self.start_step + 1, 0)
        if self.goal > self.start:
            return np.minimum(self.start + self.rate * dt * k, self.goal)
        return np.maximum(self.start - self.rate * dt * k, self.goal)

    def value_at(self, idx: int, dt: float) -> float:
        """Set-point of global step ``idx`` (the scalar twin of :meth:`values`, same arithmetic)."""
        if self.goal == self.start or self.rate <= 0:
            return self.start if self.rate <= 0 else self.goal
        k = idx - self.start_step + 1
        if k < 0:
            k = 0
        if self.goal > self.start:
            return min(self.start + self.rate * dt * k, self.goal)
        return max(self.start - self.rate * dt * k, self.goal)

    def value_after(self, steps_done: int, dt: float) -> float:
        """Set-point after ``steps_done`` global steps (value of step ``steps_done - 1``)."""
        return float(self.value_at(steps_done - 1, dt))

    def end_step(self, dt: float) -> int:
        """Index of the first step at the goal (``start_step - 1`` if there is nothing to do)."""
        if self.goal == self.start or self.rate <= 0:
            return self.start_step - 1
        return self.start_step + max(1, math.ceil(abs(self.goal - self.start) / (self.rate * dt) - 1e-9)) - 1


@dataclass(slots=True)
class Session:
    """Parameters and progress of the session in progress."""

    target_ua: int
    dose_uas: int
    duration_ms: int
    ramp_up_ms: int
    ramp_down_ms: int
    polarity: Polarity
    waveform: Waveform
    pulse_frequency_hz: int
    duty_percent: int
    start_step: int
    on_steps: int = 0
    end_reason: EndReason | None = None
    pulse_anchor: int = 0

    @property
    def dose_based(self) -> bool:
        return self.dose_uas > 0

    @property
    def duty(self) -> float:
        return self.duty_percent / 100.0 if self.waveform == Waveform.PULSED_DC else 1.0

    @property
    def rate_up(self) -> float:
        return self.target_ua * 1000.0 / self.ramp_up_ms

    def rate_down(self, sp: float) -> float:
        """Ramp-to-zero rate (uA/s) from set-point ``sp``: full scale in ``ramp_down_ms``, and never
        longer than ``ramp_down_ms`` from a set-point above the target (an ADJUST downwards)."""
        return max(self.target_ua, sp) * 1000.0 / self.ramp_down_ms


@dataclass(slots=True)
class ContactCheck:
    """Progress of the CONTACT_CHECK state."""

    resume: bool
    probe_ua: float
    high_limit: int
    start_step: int
    measure_start: int
    down_start: int
    end_step: int
    samples_i: list[np.ndarray]
    samples_v: list[np.ndarray]
    down: bool = False


class Firmware:
    """Firmware of one device. Not thread-safe; one caller drives it.

    ``dt`` is the physics step (s). ``max_block_steps`` bounds a block (1 = step by step, for tests).
    """

    # Every field in a slot: a status poll reads some twenty of them, and slot reads stay fast and
    # compact in the cache where a 58-entry instance dict does not.
    # fmt: off
    __slots__ = (
        "_physical_next", "_stepper", "_t_acc", "_tele_anchor", "_tele_j", "boot_count", "boot_events",
        "boot_n", "charge_sum", "clear_run", "comp_run", "compliance_steps", "contact", "dt", "events",
        "events_dropped", "events_log", "flags", "held_ua", "hist_i", "hist_r", "hist_v", "hist_z", "i_valid",
        "last_fetched_no", "last_frame_link", "last_i_meas", "last_impedance", "last_output", "last_v_meas",
        "lift_window", "link_now", "max_block_steps", "model", "n", "next_event_no", "outbox",
        "output_on_threshold", "plant", "plant_state", "polarity", "power_up_telemetry_hz", "ramp",
        "ramp_done_at", "reboot_pending", "sample_no", "session", "session_id", "settle_steps", "short_run",
        "short_steps", "small_block_steps", "state", "telemetry_hz", "trace", "trip_margin", "watchdog_fired",
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
        self._t_acc = 0.0
        self.settle_steps = max(1, math.ceil(10.0 * model.output_tau_s / dt))
        self.lift_window = max(2, round(LIFT_WINDOW_S / dt))
        self.compliance_steps = max(1, round(COMPLIANCE_RUN_S / dt))
        self.short_steps = max(1, round(SHORT_RUN_S / dt))
        self.i_valid = max(50.0, 50.0 * model.adc_current_noise_ua)
        self.trip_margin = max(0.01 * model.max_current_ua, 6.0 * model.adc_current_noise_ua)
        self.output_on_threshold = max(10.0, 5.0 * model.adc_current_noise_ua)
        self.plant_state = PlantState()
        self._stepper = PlantStepper(plant)
        self.events_log: deque[Event] = deque(maxlen=EVENT_LOG_SIZE)  # every event, across restarts
        self.boot_count = 0
        self._boot(cold=True)

    # ------------------------------------------------------------------------------------------ boot

    def _boot(self, cold: bool) -> None:
        """Firmware start: output disabled, IDLE, no session, fresh event ring (S15)."""
        self.boot_n = self.n
        self.boot_count += 1
        self.state = S.IDLE
        self.polarity = Polarity.NONE
        self.session: Session | None = None
        self.session_id = 0
        self.contact: ContactCheck | None = None
        self.ramp = Ramp(self.n, 0.0, 0.0, 0.0)
        self.ramp_done_at: int | None = None  # step count at which the current ramp phase is complete
        self.charge_sum = 0.0  # sum of measured current samples (uA); exact, since samples are ADC steps
        self.flags = StatusFlags.NONE
        self.events: deque[Event] = deque()  # the ring served by FetchEvents
        self.boot_events: deque[Event] = deque(maxlen=EVENT_LOG_SIZE)  # every event since this boot
        self.next_event_no = 1
        self.last_fetched_no = 0
        self.events_dropped = 0  # unfetched events dropped from the ring in this overflow episode
        self.watchdog_ms = self.model.default_watchdog_ms
        self.last_frame_link = self.link_now
        self.watchdog_fired = False
        self.telemetry_hz = self.power_up_telemetry_hz
        self.sample_no = 0
        self._tele_anchor = 0.0
        self._tele_j = 1
        self.last_i_meas = 0.0
        self.last_v_meas = 0.0
        self.last_output = 0.0
        self.last_impedance = 0
        self.held_ua = 0.0
        self._reset_detectors()
        self._physical_next = getattr(self, "_physical_next", False) or not cold
        self.reboot_pending = False
        # power loss: the output stage stops at once (a physical break, not a firmware ramp)
        self.plant_state = PlantState(0.0, self.plant_state.v_c_mv, self.plant_state.skin)
        self._emit(EventCode.POWER_ON, 0)

    def power_cycle(self) -> None:
        """Restart as after a power loss: output cut at once, session lost, event ring restarts."""
        self._boot(cold=False)

    def restart(self) -> None:
        """Firmware restart on a Reset request (output is already at zero)."""
        self._boot(cold=True)

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

    def _output_is_zero(self) -> bool:
        return (
            self.setpoint == 0.0
            and self.ramp_done_at is None
            and self.state in (S.IDLE, S.PAUSED, S.DONE, S.FAULT)
        )

    def _flags_now(self) -> StatusFlags:
        flags = self.flags
        if self.state in SESSION_STATES:
            flags |= StatusFlags.SESSION_ACTIVE
            if self.session is not None and self.session.dose_based:
                flags |= StatusFlags.DOSE_BASED
        return flags

    # ----------------------------------------------------------------------------------------- events

    def _emit(self, code: EventCode, value: int) -> None:
        event = Event(
            event_no=self.next_event_no & 0xFFFF_FFFF,
            device_time_ms=self.device_time_ms,
            code=code,
            state=self.state,
            value=int(value),
        )
        self.next_event_no += 1
        first_loss = False
        if len(self.events) >= EVENT_RING_SIZE:
            dropped = self.events.popleft()
            if dropped.event_no > self.last_fetched_no:
                first_loss = not self.flags & StatusFlags.EVENTS_OVERFLOWED
                self.flags |= StatusFlags.EVENTS_OVERFLOWED
                self.events_dropped += 1
        self.events.append(event)
        self.events_log.append(event)
        self.boot_events.append(event)
        self.outbox.append(event)
        if first_loss:  # once per overflow episode (until a FetchEvents acknowledges it)
            self._emit(EventCode.EVENTS_LOST, self.events_dropped)

    def _set_state(self, new: DeviceState) -> None:
        if new == self.state:
            return
        previous = self.state
        self.state = new
        self._emit(EventCode.STATE_CHANGED, int(previous))

    # --------------------------------------------------------------------------------------- requests

    def feed_watchdog(self) -> None:
        """A valid request frame arrived (S10)."""
        self.last_frame_link = self.link_now
        self.watchdog_fired = False

    def handle(self, request: Message) -> list[Message]:
        """Execute one request; return its reply (and, for FetchEvents, the replayed events)."""
        handler = self._HANDLERS.get(type(request))
        if handler is None:
            return [Nack(int(request.TYPE), ErrorCode.UNKNOWN_REQUEST)]
        return handler(self, request)

    def _nack(
        self,
        request: Message,
        code: ErrorCode,
        field: Field = Field.NONE,
        value: int = 0,
        lo: int = 0,
        hi: int = 0,
    ) -> list[Message]:
        return [Nack(int(request.TYPE), code, field, int(value), int(lo), int(hi))]

    def _ack(self, request: Message) -> list[Message]:
        return [Ack(int(request.TYPE))]

    def _state_nack(self, request: Message) -> list[Message]:
        """BAD_STATE, or FAULT_LATCHED for a request that would make output while a fault is latched."""
        makes_output = isinstance(request, Start | Resume | SetCurrent | CheckContact)
        code = ErrorCode.FAULT_LATCHED if self.state == S.FAULT and makes_output else ErrorCode.BAD_STATE
        return self._nack(request, code, Field.STATE, int(self.state))

    def _on_identify(self, request: Identify) -> list[Message]:
        return [self.model.identity()]

    def _on_get_status(self, request: GetStatus) -> list[Message]:
        return [self.status()]

    def status(self) -> StatusReport:
        s = self.session
        sp = self.setpoint
        flags = self._flags_now()
        if not (sp == 0.0 and self.ramp_done_at is None and self.state in QUIET_STATES):
            flags |= StatusFlags.OUTPUT_ON
        return _new_status(  # type: ignore[no-any-return]
            self.device_time_ms,
            self.state,
            flags,
            self.polarity,
            s.target_ua if s is not None else 0,  # target_current_ua
            round(sp),
            int(self.last_i_meas),
            int(self.last_v_meas),
            int(self.last_impedance),
            min(int(self.charge), 0xFFFF_FFFF),
            s.dose_uas if s is not None else 0,  # target_charge_uas
            self._remaining_ms(),
            self.session_id & 0xFFFF,
            (self.next_event_no - 1) & 0xFFFF_FFFF,  # last_event_no
            self.watchdog_ms,
            self.telemetry_hz,
        )

    def _remaining_ms(self) -> int:
        s = self.session
        if s is None or self.state not in SESSION_STATES:
            return 0
        if not s.dose_based:
            return max(0, s.duration_ms - round(s.on_steps * self.dt * 1000.0))
        sp = self.setpoint
        current = (sp if sp > 0 else s.target_ua) * s.duty
        left = self._dose_aim(s) - self.charge - self._ramp_charge(s, sp)
        seconds = max(0.0, left) / max(current, 1.0) + sp / s.rate_down(sp)
        return min(int(seconds * 1000.0), 0xFFFF_FFFF)

    def _contact_limits(self, target_ua: int) -> tuple[int, int]:
        """(low, high) impedance limits for starting at ``target_ua`` (S3)."""
        high = CONTACT_HIGH_MAX_OHM
        if target_ua > 0:
            high = min(high, int(CONTACT_HIGH_FRACTION * self.model.compliance_mv * 1000 / target_ua))
        return CONTACT_LOW_OHM, high

    def _measure_contact(self, probe_ua: float, target_ua: int) -> tuple[int, ContactVerdict, int, int]:
        z = self.plant.probe_impedance(self.plant_state, (self.n + 1) * self.dt, probe_ua)
        low, high = self._contact_limits(target_ua)
        if math.isinf(z):
            return OPEN_CIRCUIT_OHM, ContactVerdict.OPEN, low, high
        z_int = min(round(z), OPEN_CIRCUIT_OHM - 1)
        if z_int < low:
            return z_int, ContactVerdict.LOW, low, high
        if z_int > high:
            return z_int, ContactVerdict.HIGH, low, high
        return z_int, ContactVerdict.OK, low, high

    def _on_check_contact(self, request: CheckContact) -> list[Message]:
        if not 1 <= request.probe_current_ua <= PROBE_MAX_UA:
            return self._nack(
                request,
                ErrorCode.OUT_OF_RANGE,
                Field.PROBE_CURRENT_UA,
                request.probe_current_ua,
                1,
                PROBE_MAX_UA,
            )
        if not 1 <= request.target_current_ua <= self.model.max_current_ua:
            return self._nack(
                request,
                ErrorCode.OUT_OF_RANGE,
                Field.TARGET_CURRENT_UA,
                request.target_current_ua,
                1,
                self.model.max_current_ua,
            )
        if self.state == S.FAULT or not self._output_is_zero():
            return self._state_nack(request)
        z, verdict, low, high = self._measure_contact(request.probe_current_ua, request.target_current_ua)
        if verdict == ContactVerdict.OK:
            self.flags |= StatusFlags.CONTACT_OK
        else:
            self.flags &= ~StatusFlags.CONTACT_OK
        self.last_impedance = z
        return [ContactReport(z, verdict, low, high, request.probe_current_ua)]

    def _validate_start(self, r: Start) -> list[Message] | None:
        m = self.model
        if self.state == S.FAULT:
            return self._nack(r, ErrorCode.FAULT_LATCHED, Field.STATE, int(self.state))
        if self.state not in (S.IDLE, S.DONE):
            if not self._output_is_zero() and r.polarity != self.polarity:
                return self._nack(
                    r,
                    ErrorCode.POLARITY_LOCKED,
                    Field.POLARITY,
                    int(r.polarity),
                    int(self.polarity),
                    int(self.polarity),
                )
            return self._nack(r, ErrorCode.BAD_STATE, Field.STATE, int(self.state))
        oor = ErrorCode.OUT_OF_RANGE
        if not m.min_current_ua <= r.target_current_ua <= m.max_current_ua:
            return self._nack(
                r, oor, Field.TARGET_CURRENT_UA, r.target_current_ua, m.min_current_ua, m.max_current_ua
            )
        if r.dose_uas > m.dose_cap_uas:
            return self._nack(r, oor, Field.DOSE_UAS, r.dose_uas, 1, m.dose_cap_uas)
        if r.duration_ms > m.max_duration_ms:
            return self._nack(r, oor, Field.DURATION_MS, r.duration_ms, 2 * m.min_ramp_ms, m.max_duration_ms)
        for value, field in ((r.ramp_up_ms, Field.RAMP_UP_MS), (r.ramp_down_ms, Field.RAMP_DOWN_MS)):
            if not m.min_ramp_ms <= value <= m.max_ramp_ms:
                return self._nack(r, oor, field, value, m.min_ramp_ms, m.max_ramp_ms)
        if r.polarity == Polarity.NONE:
            return self._nack(
                r, oor, Field.POLARITY, int(r.polarity), int(Polarity.ANODE), int(Polarity.CATHODE)
            )
        if r.waveform == Waveform.PULSED_DC:
            if not m.waveforms & WaveformSet.PULSED_DC:
                return self._nack(
                    r,
                    ErrorCode.UNSUPPORTED,
                    Field.WAVEFORM,
                    int(r.waveform),
                    int(Waveform.DC),
                    int(Waveform.DC),
                )
            if not m.min_pulse_frequency_hz <= r.pulse_frequency_hz <= m.max_pulse_frequency_hz:
                return self._nack(
                    r,
                    oor,
                    Field.PULSE_FREQUENCY_HZ,
                    r.pulse_frequency_hz,
                    m.min_pulse_frequency_hz,
                    m.max_pulse_frequency_hz,
                )
            if not m.min_duty_percent <= r.duty_percent <= m.max_duty_percent:
                return self._nack(
                    r, oor, Field.DUTY_PERCENT, r.duty_percent, m.min_duty_percent, m.max_duty_percent
                )
        else:
            if r.pulse_frequency_hz != 0:
                return self._nack(
                    r, ErrorCode.INCONSISTENT, Field.PULSE_FREQUENCY_HZ, r.pulse_frequency_hz, 0, 0
                )
            if r.duty_percent != 0:
                return self._nack(r, ErrorCode.INCONSISTENT, Field.DUTY_PERCENT, r.duty_percent, 0, 0)
        if (r.dose_uas == 0) == (r.duration_ms == 0):
            return self._nack(r, ErrorCode.INCONSISTENT, Field.DOSE_UAS, r.dose_uas, 0, m.dose_cap_uas)
        ramps = r.ramp_up_ms + r.ramp_down_ms
        if r.duration_ms and r.duration_ms < ramps:
            return self._nack(
                r, ErrorCode.INCONSISTENT, Field.DURATION_MS, r.duration_ms, ramps, m.max_duration_ms
            )
        for value, field in ((r.ramp_up_ms, Field.RAMP_UP_MS), (r.ramp_down_ms, Field.RAMP_DOWN_MS)):
            if r.target_current_ua * 1000 > m.slew_limit_ua_per_s * value:
                fastest = math.ceil(r.target_current_ua * 1000 / m.slew_limit_ua_per_s)
                return self._nack(
                    r, ErrorCode.SLEW_LIMIT, field, value, max(fastest, m.min_ramp_ms), m.max_ramp_ms
                )
        duty = r.duty_percent / 100.0 if r.waveform == Waveform.PULSED_DC else 1.0
        if r.duration_ms:
            planned = r.target_current_ua * duty * (r.duration_ms - ramps / 2.0) / 1000.0
            if planned > DOSE_AIM_CAP_FRACTION * m.dose_cap_uas:
                longest = int(
                    DOSE_AIM_CAP_FRACTION * m.dose_cap_uas * 1000.0 / (r.target_current_ua * duty)
                    + ramps / 2.0
                )
                return self._nack(
                    r, oor, Field.DURATION_MS, r.duration_ms, ramps, min(longest, m.max_duration_ms)
                )
        else:
            up = r.target_current_ua * duty * r.ramp_up_ms / 2000.0
            down = r.target_current_ua * duty * r.ramp_down_ms / 2000.0
            longest_dose = up + down + r.target_current_ua * duty * (m.max_duration_ms - ramps) / 1000.0
            if r.dose_uas > longest_dose:
                return self._nack(
                    r, oor, Field.DOSE_UAS, r.dose_uas, 1, min(int(longest_dose), m.dose_cap_uas)
                )
        return None

    def _contact_nack(self, request: Message, target_ua: int) -> list[Message] | None:
        z, verdict, low, high = self._measure_contact(PROBE_MAX_UA, target_ua)
        if verdict == ContactVerdict.OK:
            return None
        code = {
            ContactVerdict.OPEN: ErrorCode.CONTACT_OPEN,
            ContactVerdict.LOW: ErrorCode.CONTACT_LOW,
            ContactVerdict.HIGH: ErrorCode.CONTACT_HIGH,
        }[verdict]
        return self._nack(request, code, Field.IMPEDANCE_OHM, z, low, high)

    def _on_start(self, r: Start) -> list[Message]:
        nack = self._validate_start(r)
        if nack is not None:
            return nack
        nack = self._contact_nack(r, r.target_current_ua)
        if nack is not None:
            return nack
        self.session_id += 1
        self.session = Session(
            target_ua=r.target_current_ua,
            dose_uas=r.dose_uas,
            duration_ms=r.duration_ms,
            ramp_up_ms=r.ramp_up_ms,
            ramp_down_ms=r.ramp_down_ms,
            polarity=Polarity(r.polarity),
            waveform=Waveform(r.waveform),
            pulse_frequency_hz=r.pulse_frequency_hz,
            duty_percent=r.duty_percent,
            start_step=self.n,
        )
        self.polarity = Polarity(r.polarity)
        self.charge_sum = 0.0
        self.flags &= StatusFlags.EVENTS_OVERFLOWED | StatusFlags.CONTACT_OK
        self._emit(EventCode.SESSION_STARTED, r.target_current_ua)
        self._begin_contact_check(resume=False)
        return self._ack(r)

    def _on_set_current(self, r: SetCurrent) -> list[Message]:
        m = self.model
        if self.state not in OUTPUT_STATES:
            return self._state_nack(r)
        if not m.min_current_ua <= r.target_current_ua <= m.max_current_ua:
            return self._nack(
                r,
                ErrorCode.OUT_OF_RANGE,
                Field.TARGET_CURRENT_UA,
                r.target_current_ua,
                m.min_current_ua,
                m.max_current_ua,
            )
        if not m.min_ramp_ms <= r.ramp_ms <= m.max_ramp_ms:
            return self._nack(
                r, ErrorCode.OUT_OF_RANGE, Field.RAMP_MS, r.ramp_ms, m.min_ramp_ms, m.max_ramp_ms
            )
        sp = self.setpoint
        delta = abs(r.target_current_ua - sp)
        if delta * 1000.0 > m.slew_limit_ua_per_s * r.ramp_ms:
            fastest = math.ceil(delta * 1000.0 / m.slew_limit_ua_per_s)
            return self._nack(
                r, ErrorCode.SLEW_LIMIT, Field.RAMP_MS, r.ramp_ms, max(fastest, m.min_ramp_ms), m.max_ramp_ms
            )
        s = self.session
        assert s is not None
        s.target_ua = r.target_current_ua
        self.flags &= ~StatusFlags.RESISTANCE_LIMIT
        self.comp_run = 0
        self.clear_run = 0
        self._emit(EventCode.SETPOINT_CHANGED, r.target_current_ua)
        if delta == 0.0:
            self.ramp = Ramp(self.n, sp, sp, 0.0)
            self.ramp_done_at = None
            self._set_state(S.HOLD)
        else:
            self._start_ramp(float(r.target_current_ua), delta * 1000.0 / r.ramp_ms)
            self._set_state(S.ADJUST)
        return self._ack(r)

    def _on_pause(self, r: Pause) -> list[Message]:
        if self.state not in OUTPUT_STATES and self.state != S.CONTACT_CHECK:
            return self._state_nack(r)
        self._begin_pausing(self._pause_rate())
        return self._ack(r)

    def _on_resume(self, r: Resume) -> list[Message]:
        if self.state != S.PAUSED:
            return self._state_nack(r)
        assert self.session is not None
        nack = self._contact_nack(r, self.session.target_ua)
        if nack is not None:
            return nack
        self._begin_contact_check(resume=True)
        return self._ack(r)

    def _on_stop(self, r: Stop) -> list[Message]:
        if self.state == S.RAMP_DOWN:
            return self._ack(r)
        if self.state not in SESSION_STATES:
            return self._state_nack(r)
        self._emit(EventCode.STOPPED, int(self.charge))
        self._end_session(EndReason.STOP, None)
        return self._ack(r)

    def _on_abort(self, r: Abort) -> list[Message]:
        if self.state not in SESSION_STATES:
            return self._state_nack(r)
        self._emit(EventCode.ABORTED, int(self.charge))
        self._end_session(EndReason.ABORT, float(self.model.slew_limit_ua_per_s))
        return self._ack(r)

    def _on_heartbeat(self, r: Heartbeat) -> list[Message]:
        return self._ack(r)

    def _on_configure_telemetry(self, r: ConfigureTelemetry) -> list[Message]:
        if not 0 <= r.rate_hz <= self.model.max_telemetry_hz:
            return self._nack(
                r, ErrorCode.OUT_OF_RANGE, Field.RATE_HZ, r.rate_hz, 0, self.model.max_telemetry_hz
            )
        self.telemetry_hz = r.rate_hz
        self._tele_anchor = self.device_time_s
        self._tele_j = 1
        self._emit(EventCode.TELEMETRY_CHANGED, r.rate_hz)
        return self._ack(r)

    def _on_fetch_events(self, r: FetchEvents) -> list[Message]:
        if not 1 <= r.max_count <= 255:
            return self._nack(r, ErrorCode.OUT_OF_RANGE, Field.MAX_COUNT, r.max_count, 1, 255)
        first = self.events[0].event_no if self.events else 0
        start = max(r.from_event_no, first)
        chosen = [e for e in self.events if e.event_no >= start][: r.max_count]
        replies: list[Message] = [EventsReport(first, self.next_event_no & 0xFFFF_FFFF, len(chosen))]
        replies.extend(
            Event(e.event_no, e.device_time_ms, e.code, e.state, e.value, replayed=True) for e in chosen
        )
        if chosen:
            self.last_fetched_no = max(self.last_fetched_no, chosen[-1].event_no)
        if r.from_event_no <= first:  # the host has now seen where the ring starts: loss acknowledged
            self.flags &= ~StatusFlags.EVENTS_OVERFLOWED
            self.events_dropped = 0
        return replies

    def _on_set_watchdog(self, r: SetWatchdog) -> list[Message]:
        m = self.model
        if not m.min_watchdog_ms <= r.timeout_ms <= m.max_watchdog_ms:
            return self._nack(
                r,
                ErrorCode.OUT_OF_RANGE,
                Field.TIMEOUT_MS,
                r.timeout_ms,
                m.min_watchdog_ms,
                m.max_watchdog_ms,
            )
        self.watchdog_ms = r.timeout_ms
        self._emit(EventCode.WATCHDOG_CHANGED, r.timeout_ms)
        return self._ack(r)

    def _on_clear_fault(self, r: ClearFault) -> list[Message]:
        if self.state != S.FAULT:
            return self._nack(r, ErrorCode.BAD_STATE, Field.STATE, int(self.state))
        if not self._output_is_zero():
            return self._nack(r, ErrorCode.BAD_STATE, Field.STATE, int(self.state))
        if self.flags & StatusFlags.HARDWARE_TRIP:
            # the independent hardware latch is re-armed only by a restart (Reset or power cycle)
            return self._nack(r, ErrorCode.FAULT_LATCHED, Field.NONE)
        self.flags &= ~(
            StatusFlags.OVERCURRENT
            | StatusFlags.RESISTANCE_LIMIT
            | StatusFlags.TIME_EXTENDED
            | StatusFlags.ELECTRODE_LIFT
            | StatusFlags.LINK_LOST
        )
        self.session = None
        self.polarity = Polarity.NONE
        self._emit(EventCode.FAULT_CLEARED, 0)
        self._set_state(S.IDLE)
        self._reset_detectors()
        return self._ack(r)

    def _on_reset(self, r: Reset) -> list[Message]:
        if not self._output_is_zero():
            return self._nack(r, ErrorCode.BAD_STATE, Field.STATE, int(self.state))
        self.reboot_pending = True
        return self._ack(r)

    _HANDLERS: ClassVar[dict[type[Message], Callable[[Firmware, Any], list[Message]]]] = {
        Identify: _on_identify,
        GetStatus: _on_get_status,
        CheckContact: _on_check_contact,
        Start: _on_start,
        SetCurrent: _on_set_current,
        Pause: _on_pause,
        Resume: _on_resume,
        Stop: _on_stop,
        Abort: _on_abort,
        Heartbeat: _on_heartbeat,
        ConfigureTelemetry: _on_configure_telemetry,
        FetchEvents: _on_fetch_events,
        SetWatchdog: _on_set_watchdog,
        ClearFault: _on_clear_fault,
        Reset: _on_reset,
    }

    # ------------------------------------------------------------------------------------ transitions

    def _start_ramp(self, goal: float, rate: float, settle: bool = False) -> None:
        """Ramp from the present set-point to ``goal`` at ``rate`` µA/s, starting with the next step."""
        sp = self.setpoint
        self.ramp = Ramp(self.n, sp, goal, rate)
        done = self.ramp.end_step(self.dt) + 1
        if settle:
            done += self.settle_steps
        self.ramp_done_at = max(done, self.n)

    def _pause_rate(self) -> float:
        if self.state == S.CONTACT_CHECK or self.session is None:
            return float(self.model.slew_limit_ua_per_s)
        return self.session.rate_down(self.setpoint)

    def _begin_pausing(self, rate: float) -> None:
        self.contact = None
        self._start_ramp(0.0, rate, settle=True)
        self._set_state(S.PAUSING)

    def _end_session(self, reason: EndReason, rate: float | None) -> None:
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
        self._start_ramp(0.0, rate, settle=True)
        self._set_state(S.RAMP_DOWN)

    def _finish_session(self) -> None:
        s = self.session
        assert s is not None
        if s.end_reason in (EndReason.DOSE, EndReason.CAP):
            self._emit(EventCode.DOSE_COMPLETE, int(self.charge))
        self._emit(EventCode.SESSION_ENDED, int(self.charge))
        self.ramp = Ramp(self.n, 0.0, 0.0, 0.0)
        self.ramp_done_at = None
        self._set_state(S.DONE)

    def _begin_contact_check(self, resume: bool) -> None:
        slew = float(self.model.slew_limit_ua_per_s)
        probe = float(PROBE_MAX_UA)
        ramp_steps = max(1, math.ceil(probe / (slew * self.dt) - 1e-9))
        n0 = self.n
        window = max(1, round(CONTACT_WINDOW_S / self.dt))
        measure_start = n0 + ramp_steps + self.settle_steps
        min_measure = max(10, round(0.05 / self.dt))
        down_start = max(n0 + window - ramp_steps - self.settle_steps, measure_start + min_measure)
        assert self.session is not None
        _, high = self._contact_limits(self.session.target_ua)
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
        self.ramp = Ramp(self.n, 0.0, 0.0, 0.0)
        self.ramp_done_at = None
        if not verdict_ok:
            self.flags &= ~StatusFlags.CONTACT_OK
            self._emit(EventCode.CONTACT_FAILED, z_report)
            if c.resume:
                self._set_state(S.PAUSED)
            else:
                self.session = None
                self.polarity = Polarity.NONE
                self._set_state(S.IDLE)
            return
        self.flags |= StatusFlags.CONTACT_OK
        self.flags &= ~StatusFlags.ELECTRODE_LIFT
        self._emit(EventCode.CONTACT_OK, z_report)
        if c.resume:
            self._emit(EventCode.RESUMED, int(self.charge))
        self._reset_detectors()
        s.pulse_anchor = self.n
        self._start_ramp(float(s.target_ua), s.rate_up)
        self._set_state(S.RAMP_UP)

    def _watchdog_fire(self) -> None:
        self.watchdog_fired = True
        silent_ms = round((self.link_now - self.last_frame_link) * 1000.0)
        if self.state in OUTPUT_STATES or self.state == S.CONTACT_CHECK:
            self.flags |= StatusFlags.LINK_LOST
            self._emit(EventCode.LINK_LOST, max(silent_ms, self.watchdog_ms))
            self._begin_pausing(self._pause_rate())
        elif self.state in (S.PAUSING, S.RAMP_DOWN) or (self.state == S.FAULT and not self._output_is_zero()):
            self.flags |= StatusFlags.LINK_LOST
            self._emit(EventCode.LINK_LOST, max(silent_ms, self.watchdog_ms))

    def _ramp_complete(self) -> None:
        st = self.state
        if st == S.RAMP_UP or st == S.ADJUST:
            self.ramp = Ramp(self.n, self.ramp.goal, self.ramp.goal, 0.0)
            self.ramp_done_at = None
            self._set_state(S.HOLD)
        elif st == S.PAUSING:
            self.ramp = Ramp(self.n, 0.0, 0.0, 0.0)
            self.ramp_done_at = None
            self._emit(EventCode.PAUSED, int(self.charge))
            self._set_state(S.PAUSED)
        elif st == S.RAMP_DOWN:
            self._finish_session()
        elif st == S.FAULT:
            self.ramp = Ramp(self.n, 0.0, 0.0, 0.0)
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
        for _ in range(16):
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
                self._end_session(EndReason.MAX_DURATION if s.dose_based else EndReason.TIME, None)
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
        if self.telemetry_hz <= 0:
            return math.inf
        due = self._tele_anchor + self._tele_j * (1.0 / self.telemetry_hz)
        return max(0.0, due - self.device_time_s)

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
        self._t_acc += session_dt
        n_target = max(self.n, math.floor(self._t_acc / self.dt + 1e-9))
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
                self._block_small(self.n, end)
            else:
                self._block(self.n, end)
        self.link_now = link0 + link_dt

    # ------------------------------------------------------------------------------------------ blocks

    def _pulse_fraction(self, idx: np.ndarray) -> np.ndarray | None:
        s = self.session
        if s is None or s.waveform != Waveform.PULSED_DC or self.state == S.CONTACT_CHECK:
            return None
        period = 1.0 / s.pulse_frequency_hz
        on = s.duty * period

        def on_time(x: np.ndarray) -> np.ndarray:
            cycles = np.floor(x / period)
            return cycles * on + np.minimum(x - cycles * period, on)

        t0 = (idx - s.pulse_anchor) * self.dt
        return (on_time(t0 + self.dt) - on_time(t0)) / self.dt

    def _pulse_step_geometry(self, idx: Any) -> tuple[float, float, float, Any]:
        """Pulse period and on-time (s), the rounding margin, and the session time at the start of step(s)
        ``idx`` since the pulse anchor: what :meth:`_pulse_judged` and its scalar twin share."""
        s = self.session
        assert s is not None
        period = 1.0 / s.pulse_frequency_hz
        return period, s.duty * period, 1e-9 * self.dt, (idx - s.pulse_anchor) * self.dt

    def _pulse_judged(self, idx: np.ndarray, frac: np.ndarray) -> np.ndarray:
        """Steps whose voltage shows a pulse's settled on-phase: the last on-step of each pulse (S5).

        The skin capacitance charges during every pulse, so only the end of the on-phase shows the load's
        real voltage; judging the first steps of a pulse would keep the resistance limit from ever being
        declared. A step is judged when it is on (``frac > 0.05``) and either a pulse ends inside it (this
        covers pulses as short as one step) or the next step is off.
        """
        period, on, eps, t0 = self._pulse_step_geometry(idx)
        last_end = np.floor((t0 + self.dt - on + eps) / period) * period + on
        ends_inside = last_end > t0 + eps
        next_off = self._pulse_fraction(idx + 1) <= 0.05  # type: ignore[operator]
        return (frac > 0.05) & (ends_inside | next_off)

    def _pulse_judged_at(self, n: int, frac: float) -> bool:
        """Scalar twin of :meth:`_pulse_judged` for one global step (same arithmetic)."""
        if frac <= 0.05:
            return False
        period, on, eps, t0 = self._pulse_step_geometry(n)
        last_end = math.floor((t0 + self.dt - on + eps) / period) * period + on
        if last_end > t0 + eps:
            return True
        following = self._pulse_fraction_at(n + 1)
        return following is not None and following <= 0.05

    def _dose_aim(self, s: Session) -> float:
        cap = DOSE_AIM_CAP_FRACTION * self.model.dose_cap_uas
        return min(float(s.dose_uas), cap) if s.dose_based else cap

    def _ramp_charge_at(self, s: Session, sp: float) -> float:
        """Scalar twin of :meth:`_ramp_charge` (same arithmetic)."""
        rate = max(sp, s.target_ua) * 1000.0 / s.ramp_down_ms
        return s.duty * (sp * sp / (2.0 * rate) + sp * (self.model.output_tau_s - self.dt / 2.0))

    def _ramp_charge(self, s: Session, sp: np.ndarray | float) -> np.ndarray | float:
        """Charge (µA·s) a ramp-down from ``sp`` will deliver at the session's ramp-down rate (S11)."""
        rate = np.maximum(sp, s.target_ua) * 1000.0 / s.ramp_down_ms
        return s.duty * (sp * sp / (2.0 * rate) + sp * (self.model.output_tau_s - self.dt / 2.0))

    def _pulse_fraction_at(self, idx: int) -> float | None:
        """Scalar twin of :meth:`_pulse_fraction` for one global step (same arithmetic)."""
        s = self.session
        if s is None or s.waveform != Waveform.PULSED_DC or self.state == S.CONTACT_CHECK:
            return None
        period = 1.0 / s.pulse_frequency_hz
        on = s.duty * period
        t0 = (idx - s.pulse_anchor) * self.dt
        t1 = t0 + self.dt
        c0 = math.floor(t0 / period)
        c1 = math.floor(t1 / period)
        on0 = c0 * on + min(t0 - c0 * period, on)
        on1 = c1 * on + min(t1 - c1 * period, on)
        return (on1 - on0) / self.dt

    def _block_small(self, n0: int, n1: int) -> None:
        """Steps ``n0 .. n1-1`` one at a time with Python scalars: the fast path for tiny blocks.

        The same per-step rules as :meth:`_block` (plant, measurements, triggers, commit, telemetry, trace),
        evaluated step by step; it stops after the first step with a trigger and handles it, exactly as a
        block that commits up to its first trigger.
        """
        dt = self.dt
        m = self.model
        state = self.state
        s = self.session
        ramp = self.ramp
        stepper = self._stepper
        count = n1 - n0
        fxs = stepper.fault_inputs([(n0 + j + 1) * dt for j in range(count)])
        v_comp = float(m.compliance_mv)
        v_high_at = COMPLIANCE_HIGH * v_comp
        v_low_at = COMPLIANCE_CLEAR * v_comp
        slew = float(m.slew_limit_ua_per_s)
        hw_trip = (
            m.hardware_trip_ua if m.hardware_trip_ua and not self.flags & StatusFlags.HARDWARE_TRIP else 0
        )
        output_state = state in OUTPUT_STATES and s is not None
        protective = state in OUTPUT_STATES or (state in (S.RAMP_DOWN, S.PAUSING) and ramp.rate < slew)
        counts_charge = state in CHARGE_STATES and (state != S.FAULT or self.ramp_done_at is not None)
        clear_watch = (
            output_state
            and bool(self.flags & StatusFlags.RESISTANCE_LIMIT)
            and state == S.HOLD
            and self.setpoint < s.target_ua  # type: ignore[union-attr]
        )
        dose_aim = self._dose_aim(s) if output_state else 0.0  # type: ignore[arg-type]
        c = self.contact if state == S.CONTACT_CHECK else None
        hist_i = _floats(self.hist_i)
        hist_v = _floats(self.hist_v)
        hist_r = _floats(self.hist_r)
        hist_z = self.hist_z
        z_floor = float(hist_z.min()) if protective else math.inf  # min over the whole carried window
        new_z: list[float] = []
        width = float(MEAN_WINDOW_STEPS)
        i_valid = self.i_valid
        trace = self.trace
        rows: list[tuple[float, ...]] | None = [] if trace is not None else None
        base_flags = self._flags_now() if self.telemetry_hz > 0 else StatusFlags.NONE
        st = self.plant_state
        i_reg0, v_c0, skin0 = st.i_reg_ua, st.v_c_mv, st.skin
        charge_sum = self.charge_sum
        trigger: Trigger | None = None
        r = None
        zf = math.inf
        i10 = r10 = 0.0
        for j in range(count):
            n = n0 + j
            sp = ramp.value_at(n, dt)
            frac = self._pulse_fraction_at(n)
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
            open_now = v_meas >= v_high_at and r.i_reg >= 2.0 * i_valid and i_meas < 0.1 * r.i_reg
            # trigger conditions, in priority order (the lowest Trigger value wins within a step)
            trigger = None
            if hw_trip and r.i_true > hw_trip:
                trigger = Trigger.HARDWARE_TRIP
            elif state != S.FAULT and i_meas > min(
                OVERCURRENT_FRACTION * r.i_reg + self.trip_margin, m.trip_current_ua
            ):
                trigger = Trigger.OVERCURRENT
            short_run = self.short_run + 1 if protective and valid and zf < CONTACT_LOW_OHM else 0
            if trigger is None and short_run >= self.short_steps:
                trigger = Trigger.SHORT
            if trigger is None and protective and open_now:
                trigger = Trigger.OPEN
            if trigger is None and protective and valid:
                low = min(z_floor, zf, min(new_z) if new_z else math.inf)
                if zf > LIFT_RISE * low:  # check against the exact window (the oldest j samples left it)
                    window = float(hist_z[j:].min()) if j < hist_z.shape[0] else math.inf
                    low = min(window, zf, min(new_z) if new_z else math.inf)
                    if zf > LIFT_RISE * low:
                        trigger = Trigger.LIFT
            if counts_charge:
                charge_sum += i_meas
            charge = charge_sum * dt if counts_charge else self.charge_sum * dt
            comp_run = clear_run = 0
            if output_state:
                assert s is not None
                if frac is None:
                    v_high = v_meas >= v_high_at
                    v_low = v_meas < v_low_at
                elif frac > 0.05:
                    v_on = v_meas / frac
                    v_high = v_on >= v_high_at if self._pulse_judged_at(n, frac) else True
                    v_low = v_on < v_low_at
                else:  # off phase: neither starts nor breaks a run
                    v_high = v_low = True
                comp_run = self.comp_run + 1 if v_high else 0
                if clear_watch:
                    clear_run = self.clear_run + 1 if v_low else 0
                if trigger is None and charge + self._ramp_charge_at(s, sp) >= dose_aim:
                    trigger = Trigger.DOSE
                if trigger is None and comp_run >= self.compliance_steps:
                    trigger = Trigger.COMPLIANCE
                if trigger is None and clear_watch and clear_run >= self.compliance_steps:
                    trigger = Trigger.COMPLIANCE_CLEAR
            # ---- commit this step
            if counts_charge:
                self.charge_sum = charge_sum
            if output_state:
                s.on_steps += 1  # type: ignore[union-attr]
            new_z.append(zf)
            self.short_run = short_run
            self.comp_run = comp_run
            self.clear_run = clear_run
            if c is not None and c.measure_start <= n < c.down_start:
                c.samples_i.append([i_meas])
                c.samples_v.append([v_meas])
            if open_now:
                self.last_impedance = OPEN_CIRCUIT_OHM
            elif valid:
                self.last_impedance = min(round(zf), OPEN_CIRCUIT_OHM - 1)
            self.last_i_meas = i_meas
            self.last_v_meas = v_meas
            self.last_output = r.i_true
            if self.telemetry_hz > 0:
                for t_ms, _ in self._telemetry_due(n, 1):
                    self._emit_telemetry(
                        t_ms, base_flags, sp, i_meas, v_meas, self.last_impedance, charge, frac
                    )
            if rows is not None:
                rows.append((n, (n + 1) * dt, sp, r.i_true, r.v_true, r.z_true, charge, r.physical))
            self.n = n + 1
            if trigger is not None:
                break
        # ---- carried state
        self.plant_state = PlantState(i_reg0, v_c0, skin0)
        self.hist_i = hist_i
        self.hist_v = hist_v
        self.hist_r = hist_r
        self.hist_z = np.concatenate((hist_z, new_z))[-(self.lift_window - 1) :]
        if rows:
            self._write_trace_rows(rows, state)
        self._physical_next = False
        if trigger is not None:
            assert r is not None
            self._handle_trigger(trigger, r.i_true, r.i_meas, i10 / max(r10, 1e-9), zf)

    def _write_trace_rows(self, rows: list[tuple[float, ...]], state: DeviceState) -> None:
        assert self.trace is not None
        cols = list(zip(*rows, strict=True))
        k = len(rows)
        physical = np.array(cols[7], dtype=bool)
        if self._physical_next:
            physical[0] = True
        self.trace.write(
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
                polarity=np.full(k, int(self.polarity), dtype=np.int64),
                session=np.full(k, self.boot_count * 65_536 + self.session_id, dtype=np.int64),
            )
        )

    def _block(self, n0: int, n1: int) -> None:
        dt = self.dt
        count = n1 - n0
        idx = np.arange(n0, n1, dtype=np.int64)
        t = (idx + 1) * dt
        sp = self.ramp.values(idx, dt)
        frac = self._pulse_fraction(idx)
        u = sp if frac is None else sp * frac
        pb = self.plant.simulate(self.plant_state, n0, u, t)
        state = self.state
        s = self.session

        # measurements derived per step (with carry-over)
        i10, v10, r10 = detect.moving_means(
            np.stack((self.hist_i, self.hist_v, self.hist_r)), np.stack((pb.i_meas, pb.v_meas, pb.i_reg))
        )
        valid = i10 >= self.i_valid
        zf = np.divide(v10 * 1000.0, i10, out=np.full(count, np.inf), where=valid)
        v_comp = float(self.model.compliance_mv)
        # cheap whole-block pre-checks: most blocks never come near a threshold
        v_peak = float(pb.v_meas.max())
        any_valid = bool(valid.any())
        if v_peak >= COMPLIANCE_HIGH * v_comp:
            open_now = (
                (pb.i_reg >= 2.0 * self.i_valid)
                & (pb.i_meas < 0.1 * pb.i_reg)
                & (pb.v_meas >= COMPLIANCE_HIGH * v_comp)
            )
        else:
            open_now = None

        # trigger conditions
        candidates: list[tuple[int, Trigger]] = []
        if self.model.hardware_trip_ua and not self.flags & StatusFlags.HARDWARE_TRIP:
            k = detect.first_true(pb.i_true > self.model.hardware_trip_ua)
            if k is not None:
                candidates.append((k, Trigger.HARDWARE_TRIP))
        if state != S.FAULT:
            threshold = np.minimum(
                OVERCURRENT_FRACTION * pb.i_reg + self.trip_margin, self.model.trip_current_ua
            )
            k = detect.first_true(pb.i_meas > threshold)
            if k is not None:
                candidates.append((k, Trigger.OVERCURRENT))
        slew = float(self.model.slew_limit_ua_per_s)
        protective = state in OUTPUT_STATES or (state in (S.RAMP_DOWN, S.PAUSING) and self.ramp.rate < slew)
        short_runs = None
        if protective and any_valid:
            z_valid = zf[valid]
            z_low = min(float(z_valid.min()), float(self.hist_z.min()))
            if float(z_valid.max()) > LIFT_RISE * z_low:  # otherwise no step can rise 50 % above its window
                zmin = detect.sliding_min(self.hist_z, zf)
                k = detect.first_true(valid & (zf > LIFT_RISE * zmin))
                if k is not None:
                    candidates.append((k, Trigger.LIFT))
            if z_low < CONTACT_LOW_OHM:
                short_runs = detect.run_lengths(valid & (zf < CONTACT_LOW_OHM), self.short_run)
                k = detect.first_true(short_runs >= self.short_steps)
                if k is not None:
                    candidates.append((k, Trigger.SHORT))
        if protective and open_now is not None:
            k = detect.first_true(open_now)
            if k is not None:
                candidates.append((k, Trigger.OPEN))
        comp_runs = clear_runs = None
        charge = None
        if state in CHARGE_STATES and (state != S.FAULT or self.ramp_done_at is not None):
            charge_sums = self.charge_sum + np.cumsum(pb.i_meas)
            charge = charge_sums * dt
        if state in OUTPUT_STATES and s is not None:
            if frac is None:
                v_high = pb.v_meas >= COMPLIANCE_HIGH * v_comp if v_peak >= COMPLIANCE_HIGH * v_comp else None
                v_low = pb.v_meas < COMPLIANCE_CLEAR * v_comp
            else:  # pulsed: judge the on-phase voltage; off-phase steps neither start nor break a run
                pulse_on = frac > 0.05
                v_on = pb.v_meas / np.where(pulse_on, frac, 1.0)
                # compliance is judged at the settled end of each pulse only (see _pulse_judged)
                v_high = np.where(self._pulse_judged(idx, frac), v_on >= COMPLIANCE_HIGH * v_comp, True)
                v_low = np.where(pulse_on, v_on < COMPLIANCE_CLEAR * v_comp, True)
            if v_high is not None:
                comp_runs = detect.run_lengths(v_high, self.comp_run)
                k = detect.first_true(comp_runs >= self.compliance_steps)
                if k is not None:
                    candidates.append((k, Trigger.COMPLIANCE))
            if self.flags & StatusFlags.RESISTANCE_LIMIT and state == S.HOLD and self.setpoint < s.target_ua:
                clear_runs = detect.run_lengths(v_low, self.clear_run)
                k = detect.first_true(clear_runs >= self.compliance_steps)
                if k is not None:
                    candidates.append((k, Trigger.COMPLIANCE_CLEAR))
            assert charge is not None
            k = detect.first_true(charge + self._ramp_charge(s, sp) >= self._dose_aim(s))
            if k is not None:
                candidates.append((k, Trigger.DOSE))

        trigger: Trigger | None = None
        commit = count
        if candidates:
            k, trigger = min(candidates, key=lambda c: (c[0], c[1].value))
            commit = k + 1

        # ---- commit the first `commit` steps
        last = commit - 1
        self.plant_state = pb.state_after(commit)
        if charge is not None:
            self.charge_sum = float(charge_sums[last])
        if s is not None and state in OUTPUT_STATES:
            s.on_steps += commit
        self.hist_i = np.concatenate((self.hist_i, pb.i_meas[:commit]))[-(MEAN_WINDOW_STEPS - 1) :]
        self.hist_v = np.concatenate((self.hist_v, pb.v_meas[:commit]))[-(MEAN_WINDOW_STEPS - 1) :]
        self.hist_r = np.concatenate((self.hist_r, pb.i_reg[:commit]))[-(MEAN_WINDOW_STEPS - 1) :]
        self.hist_z = np.concatenate((self.hist_z, zf[:commit]))[-(self.lift_window - 1) :]
        self.short_run = int(short_runs[last]) if short_runs is not None else 0
        self.comp_run = int(comp_runs[last]) if comp_runs is not None else 0
        self.clear_run = int(clear_runs[last]) if clear_runs is not None else 0
        c = self.contact
        if c is not None and state == S.CONTACT_CHECK:
            lo = max(c.measure_start, n0)
            hi = min(c.down_start, n0 + commit)
            if hi > lo:
                c.samples_i.append(pb.i_meas[lo - n0 : hi - n0])
                c.samples_v.append(pb.v_meas[lo - n0 : hi - n0])
        # reported impedance: the 10-step estimate where valid, OPEN when open, else the last known value
        known = valid[:commit] if open_now is None else valid[:commit] | open_now[:commit]
        known_at = np.flatnonzero(known)
        previous_impedance = self.last_impedance

        def impedance_at(i: int) -> int:
            j = int(np.searchsorted(known_at, i, side="right")) - 1
            if j < 0:
                return previous_impedance
            k = int(known_at[j])
            if open_now is not None and open_now[k]:
                return OPEN_CIRCUIT_OHM
            return min(round(float(zf[k])), OPEN_CIRCUIT_OHM - 1)

        self.last_impedance = impedance_at(last)
        self.last_i_meas = float(pb.i_meas[last])
        self.last_v_meas = float(pb.v_meas[last])
        self.last_output = float(pb.i_true[last])
        charge_arr = charge[:commit] if charge is not None else np.full(commit, self.charge)
        due = self._telemetry_due(n0, commit)
        if due:
            base = self._flags_now()
            for t_ms, i in due:
                self._emit_telemetry(
                    t_ms,
                    base,
                    float(sp[i]),
                    float(pb.i_meas[i]),
                    float(pb.v_meas[i]),
                    impedance_at(i),
                    float(charge_arr[i]),
                    None if frac is None else float(frac[i]),
                )
        if self.trace is not None:
            physical = pb.physical[:commit].copy()
            if self._physical_next:
                physical[0] = True
            self.trace.write(
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
                    polarity=np.full(commit, int(self.polarity), dtype=np.int64),
                    session=np.full(commit, self.boot_count * 65_536 + self.session_id, dtype=np.int64),
                )
            )
        self._physical_next = False
        self.n = n0 + commit
        if trigger is not None:
            self._handle_trigger(
                trigger,
                float(pb.i_true[last]),
                float(pb.i_meas[last]),
                float(i10[last]) / max(float(r10[last]), 1e-9),
                float(zf[last]),
            )

    def _handle_trigger(
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
            self._emit(code, value)
            self._start_ramp(0.0, slew, settle=True)
            self._set_state(S.FAULT)
            return
        if trigger in (Trigger.SHORT, Trigger.LIFT, Trigger.OPEN):
            if trigger == Trigger.SHORT:
                self._emit(EventCode.SHORT_CIRCUIT, round(z))
            else:
                self.flags |= StatusFlags.ELECTRODE_LIFT
                self._emit(
                    EventCode.ELECTRODE_LIFT,
                    OPEN_CIRCUIT_OHM if trigger == Trigger.OPEN else min(round(z), OPEN_CIRCUIT_OHM - 1),
                )
            self._reset_lift_window()
            self.short_run = 0
            if self.state in OUTPUT_STATES:
                self._begin_pausing(slew)
            else:  # already ramping to zero: hurry up
                self._start_ramp(0.0, slew, settle=True)
            return
        assert s is not None
        if trigger == Trigger.DOSE:
            self._end_session(EndReason.DOSE if s.dose_based else EndReason.CAP, None)
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
                self._start_ramp(float(held), slew)
            else:
                self.ramp = Ramp(self.n, float(held), float(held), 0.0)
                self.ramp_done_at = None
            if first:
                self._emit(EventCode.RESISTANCE_LIMIT, held)
                if s.dose_based and not self.flags & StatusFlags.TIME_EXTENDED:
                    self.flags |= StatusFlags.TIME_EXTENDED
                    left = max(0.0, self._dose_aim(s) - self.charge)
                    extension = left / max(held * s.duty, 1.0) - left / (s.target_ua * s.duty)
                    self._emit(EventCode.TIME_EXTENDED, max(0, round(extension * 1000.0)))
            self._set_state(S.ADJUST if lowering else S.HOLD)
            return
        if trigger == Trigger.COMPLIANCE_CLEAR:
            self.clear_run = 0
            self.flags &= ~StatusFlags.RESISTANCE_LIMIT
            self._emit(EventCode.RESISTANCE_LIMIT_CLEARED, s.target_ua)
            self._start_ramp(float(s.target_ua), s.rate_up)
            self._set_state(S.ADJUST)
            return

    # -------------------------------------------------------------------------------------- telemetry

    def _telemetry_due(self, n0: int, count: int) -> list[tuple[int, int]]:
        """Samples due in steps ``n0 .. n0+count-1``: (device_time_ms, block index) for each, in order.

        Sample ``j`` is due at ``anchor + j/rate`` (device seconds) and is taken at the end of the physics
        step in which that time falls (the step ending at or after it), so several samples may come from
        one step when the rate is above the physics rate; each keeps its own time. The step of a sample
        depends only on its time, never on how steps are grouped into blocks.
        """
        rate = self.telemetry_hz
        if rate <= 0:
            return []
        period = 1.0 / rate
        dt = self.dt
        rel0 = n0 - self.boot_n
        rel_end = rel0 + count
        anchor = self._tele_anchor
        j = self._tele_j
        t = anchor + j * period
        if math.ceil(t / dt - 1e-6) > rel_end:  # the first due sample is beyond this block
            return []
        estimate = math.floor((rel_end * dt - t) * rate + 1e-9) + 2
        if estimate <= 64:
            out = []
            while True:
                step = math.ceil(t / dt - 1e-6) - 1  # relative index of the step that ends at or after t
                if step >= rel_end:
                    break
                out.append((round(t * 1000.0) & 0xFFFF_FFFF, max(step - rel0, 0)))
                j += 1
                t = anchor + j * period
        else:
            times = anchor + np.arange(j, j + estimate) * period
            steps = np.ceil(times / dt - 1e-6).astype(np.int64) - 1
            keep = int(np.searchsorted(steps, rel_end, side="left"))
            ms = (np.rint(times[:keep] * 1000.0).astype(np.int64) & 0xFFFF_FFFF).tolist()
            out = list(zip(ms, np.maximum(steps[:keep] - rel0, 0).tolist(), strict=True))
            j += keep
        self._tele_j = j
        return out

    def _emit_telemetry(
        self,
        t_ms: int,
        base: StatusFlags,
        sp: float,
        i_meas: float,
        v_meas: float,
        impedance: int,
        charge: float,
        frac: float | None,
    ) -> None:
        """Queue one telemetry sample with the values of the step it was taken in."""
        flags = base
        if sp > 0 or i_meas > self.output_on_threshold:
            flags |= StatusFlags.OUTPUT_ON
        if frac is not None and frac >= 0.5:
            flags |= StatusFlags.PULSE_ON
        self.sample_no += 1
        self.outbox.append(
            _new_telemetry(
                self.sample_no & 0xFFFF_FFFF,
                t_ms,
                self.state,
                flags,
                self.polarity,
                round(sp),
                int(i_meas),
                int(v_meas),
                impedance,
                min(int(charge), 0xFFFF_FFFF),
            )
        )
