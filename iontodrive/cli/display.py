"""Live session display: one redrawn status line on a terminal, plain periodic lines otherwise.

Thread-safe: progress and events arrive on the driver's dispatcher thread, messages (Ctrl-C notices, log
records) on the main thread. Every write holds one lock, so lines never interleave.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from typing import TYPE_CHECKING, TextIO

import numpy as np

from iontodrive.cli import fmt
from iontodrive.protocol import DeviceState, StatusFlags

if TYPE_CHECKING:
    from iontodrive.ramp import SessionPlan
    from iontodrive.session import Progress

BAR_WIDTH = 24
TTY_REDRAW_S = 0.1
_FLAG_NOTES = (
    (StatusFlags.RESISTANCE_LIMIT, "RESISTANCE LIMIT"),
    (StatusFlags.TIME_EXTENDED, "time extended"),
    (StatusFlags.ELECTRODE_LIFT, "ELECTRODE LIFT"),
    (StatusFlags.LINK_LOST, "LINK LOST"),
    (StatusFlags.OVERCURRENT, "OVER-CURRENT"),
    (StatusFlags.HARDWARE_TRIP, "HARDWARE TRIP"),
)


def status_fields(p: Progress, time_left_s: float | None = None) -> dict[str, str]:
    """The parts of a status line, formatted in user units (shared by both display modes).

    ``time_left_s`` replaces the driver's estimate when given (see :meth:`LiveDisplay.set_plan`)."""
    if p.target_ma_min is not None:
        dose = f"{p.delivered_ma_min:6.2f}/{p.target_ma_min:.2f} mA·min"
    else:
        dose = f"{p.delivered_ma_min:6.2f} mA·min"
    notes = [text for flag, text in _FLAG_NOTES if p.flags & flag]
    return {
        "percent": f"{100.0 * p.fraction:5.1f}%",
        "dose": dose,
        "left": f"left {fmt.duration(p.time_left_s if time_left_s is None else time_left_s)}",
        "current": f"I {p.current_ma:6.3f} mA (set {p.setpoint_ma:.3f})",
        "voltage": f"U {p.voltage_v:5.1f} V",
        "impedance": f"Z {fmt.ohm(p.impedance_ohm)}",
        "state": p.state.name + (" " + ", ".join(notes) if notes else ""),
    }


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


class LiveDisplay:
    """Shows session progress on ``stream``.

    ``tty=True``: a single status line (dose bar, %, dose, time left, current, voltage, impedance, state)
    redrawn at most every 0.1 s; events and messages are printed above it. ``tty=False``: one plain line
    every ``interval_s`` seconds of wall time and whenever the state changes, plus a line per event.
    """

    def __init__(
        self, stream: TextIO, *, tty: bool, interval_s: float = 1.0, notice_stream: TextIO | None = None
    ) -> None:
        self._stream = stream
        self._notice_stream = notice_stream
        self._tty = tty
        self._interval_s = interval_s
        self._lock = threading.RLock()  # re-entrant: a Ctrl-C handler may print while the main thread does
        self._status = ""
        self._last_draw = 0.0
        self._last_state: DeviceState | None = None
        self._plan: tuple[np.ndarray, np.ndarray, float] | None = None
        self.plan: SessionPlan | None = None
        self.last: Progress | None = None

    def set_plan(self, plan: SessionPlan) -> None:
        """Estimate the time left of a dose-based session from the driver's plan (ramps included).

        The driver's own estimate divides the remaining dose by the present current, which is far off while
        the output ramps. With a plan, the time left is the plan's total minus the plan time at which the
        delivered dose is reached. It falls back to the driver's estimate once the device reports a
        resistance limit or a time extension (the plan no longer holds then).
        """
        self.plan = plan
        if not plan.dose_based or plan.total_s <= 0:
            self._plan = None
            return
        grid = np.linspace(0.0, plan.total_s, 4001)
        self._plan = (plan.charge_at(grid), grid, plan.total_s)

    def time_left_s(self, p: Progress) -> float | None:
        """Time left (s of device time) shown for ``p``."""
        if p.state is DeviceState.DONE:
            return 0.0
        if self._plan is None or p.flags & (StatusFlags.RESISTANCE_LIMIT | StatusFlags.TIME_EXTENDED):
            return p.time_left_s
        charge, grid, total = self._plan
        return max(0.0, total - float(np.interp(p.delivered_uas, charge, grid)))

    @property
    def tty(self) -> bool:
        return self._tty

    def progress(self, p: Progress) -> None:
        """Take a progress sample (called on the driver's dispatcher thread)."""
        now = time.monotonic()
        with self._lock:
            self.last = p
            state_changed = p.state is not self._last_state
            self._last_state = p.state
            if self._tty:
                if state_changed or now - self._last_draw >= TTY_REDRAW_S:
                    self._last_draw = now
                    self._status = self._tty_line(p)
                    self._redraw()
            elif state_changed or now - self._last_draw >= self._interval_s:
                self._last_draw = now
                self._write_line(self._plain_line(p))

    def event(self, text: str, device_time_s: float | None = None) -> None:
        """Print an event as it happens."""
        stamp = f"[{fmt.duration(device_time_s)}] " if device_time_s is not None else ""
        self.message(f"{stamp}event: {text}")

    def message(self, text: str) -> None:
        """Print a line (above the status line on a terminal)."""
        with self._lock:
            self._write_line(text)

    def notice(self, text: str) -> None:
        """A diagnostic (warning, Ctrl-C notice): through the display on a terminal, else on the notice
        stream (stderr), so that a piped display keeps only progress and events."""
        if self._tty or self._notice_stream is None:
            self.message(text)
            return
        with self._lock:
            self._notice_stream.write(text + "\n")
            self._notice_stream.flush()

    def close(self) -> None:
        """Leave the last status line on screen and end it with a newline."""
        with self._lock:
            if self._tty and self._status:
                self._stream.write("\r\x1b[2K" + self._status + "\n")
                self._stream.flush()
                self._status = ""

    # ------------------------------------------------------------------------------------------ lines

    def _tty_line(self, p: Progress) -> str:
        f = status_fields(p, self.time_left_s(p))
        line = "  ".join(
            (
                bar(p.fraction),
                f["percent"],
                f["dose"],
                f["left"],
                f["current"],
                f["voltage"],
                f["impedance"],
                f["state"],
            )
        )
        width = shutil.get_terminal_size((120, 24)).columns
        return line[: max(20, width - 1)]

    def _plain_line(self, p: Progress) -> str:
        f = status_fields(p, self.time_left_s(p))
        return (
            f"[{fmt.duration(p.device_time_s)}] {f['state']:<10} {f['percent']} {f['dose']}  {f['left']}  "
            f"{f['current']}  {f['voltage']}  {f['impedance']}"
        )

    def _redraw(self) -> None:
        self._stream.write("\r\x1b[2K" + self._status)
        self._stream.flush()

    def _write_line(self, text: str) -> None:
        if self._tty:
            self._stream.write("\r\x1b[2K" + text + "\n")
            if self._status:
                self._stream.write(self._status)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()


class DisplayLogHandler(logging.Handler):
    """Routes log records through a :class:`LiveDisplay` so they do not tear its status line."""

    def __init__(self, display: LiveDisplay, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self._display = display

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._display.notice(self.format(record))
        except Exception:
            self.handleError(record)
