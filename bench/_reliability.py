"""Helpers shared by the reliability benches (``bench/faults.py``, ``bench/soak.py``).

* :class:`CallWatchdog` -- a deadline around a blocking call: if the call is still running when the
  deadline passes it is counted as *hung*, every thread's stack is dumped to the log, and (optionally) the
  main thread is interrupted so that the run can go on (the session ramps down on KeyboardInterrupt).
* :func:`rss_kib` and :func:`open_fds` -- resident memory and open descriptors of this process, from
  ``/proc/self`` (Linux).
* :func:`trace_tools` -- the test suite's trace reader (``tests/trace_tools.py``), imported rather than
  duplicated.
"""

from __future__ import annotations

import _thread
import faulthandler
import importlib
import logging
import os
import sys
import threading
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, Self

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("bench.reliability")


def trace_tools() -> ModuleType:
    """``tests/trace_tools.py`` (the one trace reader of the project)."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("trace_tools")


def rss_kib() -> int:
    """Resident set size of this process in KiB (``VmRSS``), 0 where /proc is not available."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_fds() -> int:
    """Number of open file descriptors of this process (``/proc/self/fd``), -1 where not available."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the descriptor listdir itself holds
    except OSError:
        return -1


class CallWatchdog:
    """Count a call as hung if it has not returned ``deadline_s`` seconds after entry.

    Use as a context manager around the call. When the deadline passes, ``hung`` becomes True, the stacks
    of all threads go to ``dump`` (stderr by default), and with ``interrupt=True`` the main thread gets a
    KeyboardInterrupt (which a session answers by ramping down), so one hang cannot stop a whole campaign.
    """

    def __init__(
        self, deadline_s: float, what: str, *, interrupt: bool = False, dump: IO[str] | None = None
    ) -> None:
        self.deadline_s = deadline_s
        self.what = what
        self.interrupt = interrupt
        self.dump = dump
        self.hung = False
        self._timer: threading.Timer | None = None

    def _fire(self) -> None:
        self.hung = True
        log.error("%s still running after its %.1f s deadline: counted as hung", self.what, self.deadline_s)
        out = self.dump if self.dump is not None else sys.stderr
        try:
            out.write(f"--- hung call: {self.what} (deadline {self.deadline_s:.1f} s) ---\n")
            out.flush()
            faulthandler.dump_traceback(file=out, all_threads=True)
        except (OSError, ValueError, AttributeError):
            pass
        if self.interrupt:
            _thread.interrupt_main()

    def __enter__(self) -> Self:
        self._timer = threading.Timer(self.deadline_s, self._fire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
