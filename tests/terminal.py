"""Run a command in a pseudo-terminal of a given size and read what a person would see.

The child gets the pty as stdin, stdout and stderr (and as its controlling terminal), with the window size
set, so ``isatty()`` is true and rich measures the width from the terminal. What it writes is fed to a
``pyte`` screen, which interprets the escape sequences as a terminal would; :class:`TerminalRun` keeps the
screen (what is visible at the end) and every line that was ever on it (what scrolled past or was redrawn).
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyte

QUIET_S = 0.01  # output quiet this long ends a redraw (rich redraws the live view a few times a second)
SNAPSHOT_EVERY_S = 0.5


@dataclass
class TerminalRun:
    columns: int
    rows: int
    screen: pyte.Screen
    raw: bytes = b""
    returncode: int | None = None
    #: Every distinct screen line seen while the command ran (snapshots taken after each read).
    seen: list[str] = field(default_factory=list)

    @property
    def display(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    @property
    def text(self) -> str:
        return "\n".join(self.display)


def _child_setup() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_in_terminal(
    argv: Sequence[str],
    *,
    columns: int,
    rows: int = 40,
    env: dict[str, str] | None = None,
    timeout_s: float = 90.0,
    on_output: Callable[[TerminalRun, Callable[[bytes], None]], None] | None = None,
) -> TerminalRun:
    """Run ``argv`` in a ``columns`` x ``rows`` terminal until it exits; return the screen.

    ``on_output(run, type_keys)`` is called after every chunk of output; ``type_keys(b"+")`` types into the
    terminal (as the operator would)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    child_env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    # PYTHONFAULTHANDLER: a child that hangs past the deadline gets SIGABRT and prints every thread's stack.
    child_env.update({"TERM": "xterm-256color", "PYTHONFAULTHANDLER": "1", **(env or {})})
    proc = subprocess.Popen(
        list(argv),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=child_env,
        preexec_fn=_child_setup,
        close_fds=True,
    )
    os.close(slave)
    screen = pyte.Screen(columns, rows)
    stream = pyte.ByteStream(screen)
    run = TerminalRun(columns, rows, screen)
    seen: set[str] = set()
    chunks: list[bytes] = []

    def snapshot() -> None:
        for line in screen.display:
            text = line.rstrip()
            if text and text not in seen:
                seen.add(text)
                run.seen.append(text)

    def type_keys(data: bytes) -> None:
        os.write(master, data)

    deadline = time.monotonic() + timeout_s
    last_snapshot = time.monotonic()
    hung = False
    try:
        while True:
            if not hung and time.monotonic() > deadline:
                hung = True  # dump the child's stacks (faulthandler), then read what it printed
                os.kill(proc.pid, signal.SIGABRT)
                deadline = time.monotonic() + 2.0
            elif hung and time.monotonic() > deadline:
                break
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
            stream.feed(data)
            # A redraw can reach us in several reads: read on while more follows at once, so a snapshot
            # shows whole frames, not a line half redrawn (but at least every SNAPSHOT_EVERY_S).
            more = select.select([master], [], [], QUIET_S)[0]
            if more and time.monotonic() - last_snapshot < SNAPSHOT_EVERY_S:
                continue
            last_snapshot = time.monotonic()
            snapshot()
            if on_output is not None and not hung:
                on_output(run, type_keys)
        snapshot()  # the last frame, if more seemed to follow it
        run.returncode = proc.wait(timeout=5.0)
    finally:
        os.close(master)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    if hung:
        tail = b"".join(chunks)[-6000:].decode("utf-8", errors="replace")
        raise AssertionError(f"{argv[3:5]} did not finish within {timeout_s:g} s; its last output:\n{tail}")
    run.raw = b"".join(chunks)
    return run
