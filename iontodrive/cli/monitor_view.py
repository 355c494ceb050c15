"""What ``iontodrive monitor`` shows in text mode: one live status view on a terminal, rate-limited lines
otherwise.

On a terminal (see :func:`iontodrive.cli.display.live_wanted`) a rich ``Live`` view is redrawn in place with
the last sample - state, device time, measured current and set-point, voltage, impedance, delivered charge,
the samples received and their rate - folded to the terminal's width, with alarms (status flags in plain
words) on their own highlighted line; events are printed above it. Otherwise (a pipe, a log file,
``NO_COLOR``) one plain line is printed per ``interval_s`` seconds of wall time, and at once when the state
or the alarms change, so that a fast telemetry stream does not flood the log (``--every N`` thins it further
to every Nth sample). CSV mode (``--csv``) is not this module's: it keeps every sample.
"""

from __future__ import annotations

import threading
import time
from typing import Any, TextIO

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text

from iontodrive.cli import fmt
from iontodrive.cli.display import FIELD_GAP, REFRESH_PER_S, field_lines, state_name

DEFAULT_INTERVAL_S = 1.0


def sample_alarms(sample: Any) -> tuple[str, ...]:
    """The alarms a telemetry sample's status flags raise, in the engine's words (one table)."""
    from iontodrive.sessions.progress import FLAG_ALARMS

    return tuple(text for flag, text in FLAG_ALARMS if sample.flags & flag)


def sample_fields(sample: Any) -> list[tuple[str, str]]:
    """A telemetry sample as ``(text, style)`` fields in user units."""
    return [
        (state_name(sample.state), "bold"),
        (f"device {fmt.duration(sample.device_time_ms / 1000)}", ""),
        (f"I {sample.measured_ua / 1000:.3f} mA (set {sample.setpoint_ua / 1000:.3f})", ""),
        (f"U {sample.voltage_mv / 1000:.1f} V", ""),
        (f"Z {fmt.ohm(sample.impedance_ohm)}", ""),
        (f"dose {sample.charge_uas / 60000:.3f} mA·min", ""),
    ]


class MonitorView:
    """Shows telemetry samples and events for ``monitor`` (thread-safe: events arrive on the client's
    thread, samples on the main one)."""

    def __init__(
        self, stream: TextIO, *, live: bool, interval_s: float = DEFAULT_INTERVAL_S, every: int = 1
    ) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self._every = max(1, every)
        self._lock = threading.Lock()
        self._last: Any = None
        self._count = 0
        self._first_host_s: float | None = None
        self._last_line_s = float("-inf")
        self._last_key: tuple[str, tuple[str, ...]] | None = None
        self._live: Live | None = None
        if live:
            console = Console(file=stream, force_terminal=True, highlight=False, markup=False, emoji=False)
            self._live = Live(self, console=console, refresh_per_second=REFRESH_PER_S, transient=False)
            self._live.start()

    @property
    def count(self) -> int:
        return self._count

    def rate_hz(self) -> float | None:
        if self._first_host_s is None or self._count < 2:
            return None
        span = time.monotonic() - self._first_host_s
        return (self._count - 1) / span if span > 0 else None

    def sample(self, sample: Any) -> None:
        now = time.monotonic()
        with self._lock:
            self._count += 1
            if self._first_host_s is None:
                self._first_host_s = now
            self._last = sample
            if self._live is not None:
                return
            key = (state_name(sample.state), sample_alarms(sample))
            changed = key != self._last_key
            due = now - self._last_line_s >= self._interval_s and (self._count - 1) % self._every == 0
            if not (changed or due):
                return
            self._last_key = key
            self._last_line_s = now
            text = FIELD_GAP.join(t for t, _ in sample_fields(sample))
            if key[1]:
                text += FIELD_GAP + "ALARM: " + ", ".join(key[1])
            self._write(text)

    def event(self, event: Any) -> None:
        text = fmt.describe_event(event.code, event.value, event.state)
        self.message(f"[{fmt.duration(event.device_time_ms / 1000)}] event #{event.event_no}: {text}")

    def message(self, text: str) -> None:
        with self._lock:
            self._write(text)

    def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.refresh()
            live.stop()

    def _write(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(Text(text), soft_wrap=False)
        else:
            self._stream.write(text + "\n")
            self._stream.flush()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        sample = self._last
        width = max(20, options.max_width)
        if sample is None:
            yield Text("waiting for telemetry ...", style="dim")
            return
        rate = self.rate_hz()
        fields = sample_fields(sample)
        fields.append((f"{self._count} samples" + (f", {rate:.1f}/s" if rate else ""), "dim"))
        yield from field_lines(fields, width)
        for alarm in sample_alarms(sample):
            yield Text(f" ALARM: {alarm} ".ljust(width), style="bold white on red")
