"""Operator keys during ``iontodrive deliver`` on a terminal, as clinic devices give them.

============  ==========================================================================================
key           action
============  ==========================================================================================
``+`` / ↑     raise the current by one step, up to the prescribed current (a comfort control)
``-`` / ↓     lower the current by one step, down to one step above zero
``p``         pause: the device ramps the output to zero and keeps the dose delivered so far (S7)
``r``         resume: contact is checked again, then the device ramps back up to the set-point
``s``         stop: end the session with the prescription's ramp-down (the same as Ctrl-C)
============  ==========================================================================================

The step is 0.1 mA for a prescribed current up to 5 mA and 0.5 mA above. Every change goes through the session
handle's public ``set_current`` (the driver checks it against the device's limits and ramps it, never faster
than the model's slew limit, starting from the read-back set-point), ``pause``, ``resume`` and ``stop``. A
refusal (by the driver or the device) is shown as a notice and changes nothing. The current can never be
raised above the prescription's: that is the prescription's limit, not the device's.

Keys are read from the controlling terminal in cbreak mode (no echo, one key at a time, Ctrl-C still raises
SIGINT) on a daemon thread; the terminal's settings are restored when the session ends, whatever happens.
Only when stdin is a terminal and the live view is shown; otherwise there are no keys.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

#: How often the reader looks whether it should stop (s).
POLL_S = 0.1
SMALL_STEP_MA = 0.1
LARGE_STEP_MA = 0.5
LARGE_ABOVE_MA = 5.0

KEY_HELP = ("keys:", "+/↑ raise", "-/↓ lower", "p pause", "r resume", "s stop", "Ctrl-C stop")

_RAISE = {"+", "=", "\x1b[A", "\x1bOA"}
_LOWER = {"-", "_", "\x1b[B", "\x1bOB"}


def step_ma(prescribed_ma: float) -> float:
    """The comfort control's step for a prescribed current (mA)."""
    return SMALL_STEP_MA if prescribed_ma <= LARGE_ABOVE_MA else LARGE_STEP_MA


class ComfortControl:
    """Maps keys to actions on a session handle; the set-point stays within (0, prescribed current].

    ``session`` needs ``set_current(mA)``, ``pause()``, ``resume()`` and ``stop()``; ``notify`` prints a
    line for the operator. :meth:`press` is what the key reader calls; tests call it directly."""

    def __init__(self, session: Any, prescribed_ma: float, notify: Callable[[str], None]) -> None:
        self._session = session
        self._prescribed_ma = prescribed_ma
        self._step_ma = step_ma(prescribed_ma)
        self._target_ma = prescribed_ma
        self._notify = notify
        self._lock = threading.Lock()

    @property
    def target_ma(self) -> float:
        return self._target_ma

    def press(self, key: str) -> None:
        """Act on one key (unknown keys are ignored)."""
        with self._lock:
            if key in _RAISE:
                self._change(+1)
            elif key in _LOWER:
                self._change(-1)
            elif key in ("p", "P", " "):
                self._call(
                    "pause", self._session.pause, "pause: ramping the output to zero; the dose is kept"
                )
            elif key in ("r", "R"):
                self._call("resume", self._session.resume, "resume: contact checked, ramping back up")
            elif key in ("s", "S"):
                self._call("stop", self._session.stop, "stop: ramping the output down to 0 mA")

    def _change(self, direction: int) -> None:
        steps = round(self._target_ma / self._step_ma) + direction
        wanted = round(min(self._prescribed_ma, max(self._step_ma, steps * self._step_ma)), 3)
        if wanted == self._target_ma:
            limit = "the prescribed current" if direction > 0 else "the lowest step"
            self._notify(f"current already at {limit} ({wanted:g} mA)")
            return

        def change() -> None:
            self._session.set_current(wanted)

        verb = "raising" if wanted > self._target_ma else "lowering"
        if self._call("set current", change, f"{verb} the current to {wanted:g} mA (ramped)"):
            self._target_ma = wanted

    def _call(self, what: str, action: Callable[[], None], done: str) -> bool:
        from iontodrive.cli.messages import plain_message

        try:
            action()
        except Exception as exc:  # a refusal or a link error: tell the operator; the session decides
            self._notify(f"{what} not done: {plain_message(exc)}")
            return False
        self._notify(done)
        return True


def split_keys(data: str) -> list[str]:
    """Split what the terminal sent into keys: arrow escape sequences stay whole."""
    keys: list[str] = []
    index = 0
    while index < len(data):
        if data.startswith(("\x1b[", "\x1bO"), index) and index + 2 < len(data):
            keys.append(data[index : index + 3])
            index += 3
        else:
            keys.append(data[index])
            index += 1
    return keys


@contextlib.contextmanager
def operator_keys(control: ComfortControl, stdin: Any = None) -> Iterator[bool]:
    """Read keys from ``stdin`` (default ``sys.stdin``) for ``control`` while the block runs.

    Yields True when keys are being read (stdin is a terminal), else False and does nothing."""
    stream = sys.stdin if stdin is None else stdin
    try:
        fd = stream.fileno()
        interactive = os.isatty(fd)
    except (AttributeError, ValueError, OSError):
        interactive = False
    if not interactive:
        yield False
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                ready, _, _ = select.select([fd], [], [], POLL_S)
                if not ready:
                    continue
                data = os.read(fd, 32).decode("utf-8", errors="ignore")
            except OSError:
                return
            if not data:
                return
            for key in split_keys(data):
                if stop.is_set():
                    return
                control.press(key)

    tty.setcbreak(fd)
    thread = threading.Thread(target=reader, name="iontodrive-keys", daemon=True)
    thread.start()
    try:
        yield True
    finally:
        stop.set()
        thread.join(timeout=2 * POLL_S + 1.0)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def keys_while_running(session: Any, prescription: Any, display: Any) -> Iterator[None]:
    """The operator keys on ``session`` while the block runs (the ``while_running`` hook of the engine's
    ``deliver()``), with the key help on the display while keys are read (stdin a terminal)."""
    control = ComfortControl(session, float(prescription.current_ma), display.notice)
    with operator_keys(control) as reading:
        if reading:
            display.set_key_help(KEY_HELP)
        try:
            yield
        finally:
            display.set_key_help(())
