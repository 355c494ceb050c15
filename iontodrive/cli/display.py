"""Live session display on ``rich``: a status view redrawn in place on a terminal, plain lines otherwise.

On a terminal (``live`` mode) a :class:`rich.live.Live` view shows, folded to the terminal's width (from 60
columns up; a field that does not fit moves to the next line, it is never cut):

* a progress bar with the percentage of the dose (or of the time, for a time-based session);
* the state, the delivered and target dose, the elapsed time, the time left (or, during a ramp-down after a
  stop or the end, the ramp-down's own countdown) and the wall-clock finish time;
* measured current and set-point (for pulsed DC: pulse amplitude and average current), voltage against the
  compliance limit, impedance;
* alarms (``ELECTRODE LIFT``, ``RECORD NOT WRITTEN: ...``) on their own highlighted line;
* the keys the operator may press (see :mod:`iontodrive.cli.keys`).

Events and messages are printed above the view as they happen, stamped with the time since the session
started (device time, as ``report`` shows them). Otherwise (a pipe, ``--json``, ``NO_COLOR`` or
``TERM=dumb``) the same fields go out as plain lines every ``interval_s`` seconds of wall time, on every state
change and on every change of the alarms; no escape sequences, no colour.

The wall-clock finish time is the host's clock now plus the time left divided by the rate at which device
time advances against the host's clock (measured over the last few seconds), so it is right when the
simulator runs faster than real time too.

Thread-safe: progress and events arrive on the driver's threads, notices (Ctrl-C, keys, log records) on
others. Rich's ``Live`` serialises its own output; the state the view draws is swapped under one lock, which
is never held while printing through rich (rich's refresh thread takes it while holding its own: the other
order would deadlock).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.text import Text

from iontodrive.cli import fmt

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from iontodrive.ramp import SessionPlan
    from iontodrive.sessions.types import Progress

#: Redraws of the live view per second.
REFRESH_PER_S = 10
#: Device/host clock pairs kept to measure the rate at which device time advances (the last few seconds).
RATE_WINDOW_S = 5.0
MIN_WIDTH = 60
FIELD_GAP = "  "

_STATE_STYLE = {
    "RAMP_UP": "bold yellow",
    "HOLD": "bold green",
    "RAMP_DOWN": "bold yellow",
    "PAUSING": "bold cyan",
    "PAUSED": "bold cyan",
    "DONE": "bold",
    "FAULT": "bold white on red",
}


class EventLike(Protocol):
    """The fields of a protocol :class:`~iontodrive.protocol.Event` the display reads."""

    @property
    def device_time_ms(self) -> int: ...
    @property
    def code(self) -> Any: ...
    @property
    def value(self) -> int: ...
    @property
    def state(self) -> Any: ...


def live_wanted(stream: TextIO, *, plain: bool = False) -> bool:
    """True when ``stream`` should get the live view: a terminal, not ``plain`` (e.g. ``--json``), no
    ``NO_COLOR`` (https://no-color.org) and not ``TERM=dumb``."""
    if plain or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def state_name(state: Any) -> str:
    return str(getattr(state, "name", state))


class DeviceRate:
    """How fast device time advances against the host's monotonic clock (1.0 = real time).

    Fed with ``(host_s, device_s)`` pairs; the rate is measured over the last :data:`RATE_WINDOW_S` seconds
    of host time. ``None`` until two pairs at least 0.2 s of host time apart are known."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self._window_s = window_s
        self._pairs: deque[tuple[float, float]] = deque()

    def add(self, host_s: float, device_s: float) -> None:
        if self._pairs and device_s < self._pairs[-1][1]:
            self._pairs.clear()  # the device restarted or another session: start over
        self._pairs.append((host_s, device_s))
        while len(self._pairs) > 2 and host_s - self._pairs[1][0] >= self._window_s:
            self._pairs.popleft()

    @property
    def rate(self) -> float | None:
        if len(self._pairs) < 2:
            return None
        (h0, d0), (h1, d1) = self._pairs[0], self._pairs[-1]
        if h1 - h0 < 0.2 or d1 <= d0:
            return None
        return (d1 - d0) / (h1 - h0)

    def wall_time_after(self, device_s: float | None, now: datetime | None = None) -> datetime | None:
        """The wall-clock time at which ``device_s`` more seconds of device time will have passed."""
        rate = self.rate
        if device_s is None or rate is None:
            return None
        return (now or datetime.now().astimezone()) + timedelta(seconds=device_s / rate)


# ---------------------------------------------------------------------------------------------- fields


def _current_text(p: Progress) -> str:
    if p.pulse_amplitude_ma is not None:
        average = "" if p.average_current_ma is None else f", average {p.average_current_ma:.3f} mA"
        return f"I pulse {p.pulse_amplitude_ma:.3f} mA{average} (set {p.setpoint_ma:.3f})"
    return f"I {p.current_ma:.3f} mA (set {p.setpoint_ma:.3f})"


def _voltage_text(p: Progress) -> str:
    if p.compliance_v:
        return f"U {p.voltage_v:.1f} V of {p.compliance_v:g} V"
    return f"U {p.voltage_v:.1f} V"


def status_fields(
    p: Progress, rate: DeviceRate | None = None, *, percent: bool = True
) -> list[tuple[str, str]]:
    """The status as ``(text, style)`` fields in user units, in display order (shared by both modes).

    The time left becomes ``ramp-down 0:12`` while the output ramps down after a stop or the end, and
    ``ends HH:MM:SS`` is the wall-clock time that countdown (or the time left) reaches zero."""
    state = state_name(p.state)
    if p.target_ma_min is not None:
        dose = f"{p.delivered_ma_min:.2f}/{p.target_ma_min:.2f} mA·min"
    else:
        dose = f"{p.delivered_ma_min:.2f} mA·min"
    fields = [(state, _STATE_STYLE.get(state, "bold"))]
    if percent:
        fields.append((f"{100.0 * p.fraction:.1f} %", ""))
    fields += [(dose, ""), (f"elapsed {fmt.duration(p.elapsed_s)}", "")]
    if p.target_s is not None and p.target_ma_min is None:
        fields.append((f"of {fmt.duration(p.target_s)}", ""))
    if p.ramp_down_left_s is not None:
        fields.append((f"ramp-down {fmt.duration(p.ramp_down_left_s)} left", "bold yellow"))
        countdown: float | None = p.ramp_down_left_s
    else:
        fields.append((f"left {fmt.duration(p.time_left_s)}", ""))
        countdown = p.time_left_s
    finish = None if rate is None else rate.wall_time_after(countdown)
    if finish is not None and state != "DONE":
        fields.append((f"ends {finish:%H:%M:%S}", ""))
    fields += [
        (_current_text(p), ""),
        (_voltage_text(p), ""),
        (f"Z {fmt.ohm(p.impedance_ohm)}", ""),
    ]
    return fields


def fold(fields: Iterable[tuple[str, str]], width: int, gap: str = FIELD_GAP) -> list[list[tuple[str, str]]]:
    """Pack fields into lines of at most ``width`` characters, in order; a field is never split (one wider
    than ``width`` gets a line of its own)."""
    lines: list[list[tuple[str, str]]] = [[]]
    used = 0
    for text, style in fields:
        need = len(text) if not lines[-1] else used + len(gap) + len(text)
        if lines[-1] and need > width:
            lines.append([])
            need = len(text)
        lines[-1].append((text, style))
        used = need
    return [line for line in lines if line]


def field_lines(fields: Iterable[tuple[str, str]], width: int) -> Iterator[Text]:
    """The ``(text, style)`` fields as styled lines of at most ``width`` characters (:func:`fold`), the
    fields of a line joined by :data:`FIELD_GAP`: the live session view's and the monitor's layout."""
    for line in fold(fields, width):
        out = Text(no_wrap=True, overflow="fold")
        for index, (text, style) in enumerate(line):
            if index:
                out.append(FIELD_GAP)
            out.append(text, style=style)
        yield out


def plain_line(stamp: str, p: Progress, rate: DeviceRate | None = None) -> str:
    """One plain progress line: session time, the fields, then any alarm."""
    text = f"[{stamp}] " + FIELD_GAP.join(t for t, _ in status_fields(p, rate))
    if p.alarms:
        text += FIELD_GAP + "ALARM: " + ", ".join(p.alarms)
    return text


class StatusView:
    """The rich renderable of the live view; lays itself out for the width it is given."""

    def __init__(self, display: LiveDisplay) -> None:
        self._display = display

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        p, key_help, rate = self._display.snapshot()
        width = max(20, options.max_width)
        if p is None:
            yield Text("starting ...", style="dim")
            return
        yield _BarLine(p.fraction, width, f" {100.0 * p.fraction:5.1f} %")
        yield from field_lines(status_fields(p, rate, percent=False), width)
        for alarm in p.alarms:
            yield Text(f" ALARM: {alarm} ".ljust(width), style="bold white on red", overflow="fold")
        if key_help:
            for line in fold(((k, "dim") for k in key_help), width):
                yield Text(FIELD_GAP.join(t for t, _ in line), style="dim", overflow="fold")


class _BarLine:
    """A progress bar as wide as the line allows, followed by the percentage."""

    def __init__(self, fraction: float, width: int, suffix: str) -> None:
        self._fraction = max(0.0, min(1.0, fraction))
        self._width = width
        self._suffix = suffix

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        bar_width = max(10, self._width - len(self._suffix))
        bar = ProgressBar(total=1.0, completed=self._fraction, width=bar_width)
        segments = list(console.render(bar, options.update(width=bar_width, height=1)))
        yield from (s for s in segments if s.text != "\n")
        yield Text(self._suffix)


class LiveDisplay:
    """Shows session progress on ``stream``: the live view (``tty=True``, see :func:`live_wanted`) or plain
    lines (``tty=False``), events above it, notices (warnings, Ctrl-C and key messages) through it.

    ``notice_stream``: where notices go in plain mode (stderr), so that a piped display keeps only progress
    and events. Call :meth:`close` at the end (leaves the last view on screen)."""

    def __init__(
        self, stream: TextIO, *, tty: bool, interval_s: float = 1.0, notice_stream: TextIO | None = None
    ) -> None:
        self._stream = stream
        self._notice_stream = notice_stream
        self._tty = tty
        self._interval_s = interval_s
        self._lock = threading.RLock()  # re-entrant: a Ctrl-C handler may print while the main thread does
        self._rate = DeviceRate()
        self._last_plain = 0.0
        self._last_state: str | None = None
        self._last_alarms: tuple[str, ...] = ()
        self._session_start_s: float | None = None
        self._key_help: tuple[str, ...] = ()
        self._faulted = False
        self.plan: SessionPlan | None = None
        self.last: Progress | None = None
        self._console = Console(
            file=stream,
            force_terminal=tty,
            no_color=not tty or None,
            highlight=False,
            markup=False,
            emoji=False,
            soft_wrap=not tty,
            width=None if tty else 10_000,
        )
        self._live: Live | None = None
        if tty:
            self._live = Live(
                StatusView(self),
                console=self._console,
                refresh_per_second=REFRESH_PER_S,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()

    # ------------------------------------------------------------------------------------ inputs

    @property
    def tty(self) -> bool:
        return self._tty

    def set_plan(self, plan: SessionPlan) -> None:
        """Keep the driver's plan (shown as the expected duration and charge before the start)."""
        self.plan = plan

    def set_key_help(self, keys: Iterable[str]) -> None:
        """The key descriptions shown under the live view (empty: none)."""
        with self._lock:
            self._key_help = tuple(keys)

    def snapshot(self) -> tuple[Progress | None, tuple[str, ...], DeviceRate]:
        with self._lock:
            return self.last, self._key_help, self._rate

    def progress(self, p: Progress) -> None:
        """Take a progress sample (called on the driver's thread). Never raises: a display fault must not
        end a session (the driver treats a raising callback as a reason to stop); it is logged once."""
        try:
            self._progress(p)
        except Exception:
            if not self._faulted:
                self._faulted = True
                logger.debug("live display failed; progress is no longer shown", exc_info=True)

    def _progress(self, p: Progress) -> None:
        now = time.monotonic()
        with self._lock:
            self.last = p
            self._session_start_s = p.device_time_s - p.elapsed_s
            self._rate.add(now, p.device_time_s)
            state = state_name(p.state)
            changed = state != self._last_state or p.alarms != self._last_alarms
            self._last_state = state
            self._last_alarms = p.alarms
            if self._tty:
                return  # the live view redraws itself from self.last
            if changed or now - self._last_plain >= self._interval_s:
                self._last_plain = now
                self._write(plain_line(fmt.duration(p.elapsed_s), p, self._rate))

    def session_time_s(self, device_time_s: float) -> float | None:
        """Seconds since the session started, for a device time (None before the session is known)."""
        with self._lock:
            return None if self._session_start_s is None else device_time_s - self._session_start_s

    def event(self, event: EventLike) -> None:
        """Print a device event, stamped with the time since the session started. Never raises."""
        try:
            self._event(event)
        except Exception:
            logger.debug("live display failed to show an event", exc_info=True)

    def _event(self, event: EventLike) -> None:
        device_s = event.device_time_ms / 1000.0
        text = fmt.describe_event(event.code, event.value, event.state)
        with self._lock:
            if self._session_start_s is None and fmt.event_name(event.code) == "SESSION_STARTED":
                self._session_start_s = device_s
            since = self.session_time_s(device_s)
        stamp = fmt.duration(since) if since is not None else "-:--"
        self.message(f"[{stamp}] {text}")

    def message(self, text: str) -> None:
        """Print a line (above the live view on a terminal)."""
        self._write(text)

    def notice(self, text: str) -> None:
        """A diagnostic (warning, Ctrl-C or key notice): above the live view on a terminal, else on the
        notice stream (stderr), so that a piped display keeps only progress and events."""
        if self._tty or self._notice_stream is None:
            self.message(text)
            return
        with self._lock:
            self._notice_stream.write(text + "\n")
            self._notice_stream.flush()

    def close(self) -> None:
        """Stop redrawing; the last view stays on screen."""
        with self._lock:
            live, self._live = self._live, None
        if live is not None:
            self.set_key_help(())
            live.refresh()
            live.stop()

    # ------------------------------------------------------------------------------------ output

    def _write(self, text: str) -> None:
        """Write a line. Never called with ``self._lock`` held towards rich: the live view's refresh thread
        holds rich's lock while it renders and then takes ``self._lock`` (in :meth:`snapshot`), so holding
        ours while waiting for rich's would deadlock. Rich's ``Live`` serialises its own output; plain lines
        are serialised by ``self._lock``."""
        live = self._live
        if live is not None:
            live.console.print(Text(text), soft_wrap=False)
            return
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()


class DisplayLogHandler(logging.Handler):
    """Routes log records through a :class:`LiveDisplay` so they do not tear its view."""

    def __init__(self, display: LiveDisplay, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self._display = display

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._display.notice(self.format(record))
        except Exception:
            self.handleError(record)
