"""Run the firmware simulator as a child process and learn its port (used by ``demo``, examples and tests).

The simulator prints ``PORT <path-or-url>`` as its first line of output; this waits for that line (with a
deadline), then keeps draining the child's output into a log file (or discards it) so that the child can
never block on a full pipe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import IO, Self

STARTUP_TIMEOUT_S = 20.0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """On Linux, ask the kernel to SIGTERM the simulator when the process that started it dies, so a
    killed test run or demo never leaves an orphan simulator running (and writing its trace)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


class SimulatorError(RuntimeError):
    """The simulator did not start (it exited, or printed no PORT line in time)."""


def port_url(announced: str) -> str:
    """The simulator's announced port as a PORT argument: a path stays a path; ``host:port`` gets
    ``socket://``."""
    if "://" in announced or announced.startswith("/") or announced.upper().startswith("COM"):
        return announced
    return f"socket://{announced}"


class SimulatorProcess:
    """``python -m firmware_sim ARGS...`` as a context manager; ``url`` is the port it serves.

    Example::

        with SimulatorProcess("--tcp", "127.0.0.1:0", "--speed", "100") as sim:
            print(sim.url)  # socket://127.0.0.1:NNNNN
    """

    def __init__(
        self,
        *args: str,
        log_path: str | Path | None = None,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        python: str = sys.executable,
    ) -> None:
        self.args = [python, "-m", "firmware_sim", *args]
        self.log_path = Path(log_path) if log_path is not None else None
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.control_url: str | None = None  # the control API, when started with --control
        self._log: IO[str] | None = None
        self._drain: threading.Thread | None = None

    def start(self) -> str:
        """Start the child and return its port URL. Raises SimulatorError if it fails to announce one."""
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in stop())
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=self._log if self._log is not None else subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,  # a Ctrl-C in our terminal is ours to handle, not the child's
            preexec_fn=_die_with_parent,
        )
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(self._readline()), daemon=True)
        reader.start()
        reader.join(self.startup_timeout_s)
        line = first[0].strip() if first else ""
        if not line.startswith("PORT "):
            self.stop()
            detail = (
                f"printed {line!r}" if line else f"printed no PORT line within {self.startup_timeout_s:g} s"
            )
            where = f"; see {self.log_path}" if self.log_path else ""
            raise SimulatorError(f"simulator {' '.join(self.args[1:])!r} {detail}{where}")
        self.url = port_url(line.split(" ", 1)[1].strip())
        if "--control" in self.args:  # the simulator prints `CONTROL <url>` as its second line
            second: list[str] = []
            reader = threading.Thread(target=lambda: second.append(self._readline()), daemon=True)
            reader.start()
            reader.join(self.startup_timeout_s)
            line = second[0].strip() if second else ""
            if not line.startswith("CONTROL "):
                self.stop()
                raise SimulatorError(
                    f"simulator {' '.join(self.args[1:])!r} printed no CONTROL line: {line!r}"
                )
            self.control_url = line.split(" ", 1)[1].strip()
        self._drain = threading.Thread(target=self._drain_output, name="sim-drain", daemon=True)
        self._drain.start()
        return self.url

    def _readline(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.readline()

    def _drain_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if self._log is not None and not self._log.closed:
                with contextlib.suppress(ValueError, OSError):
                    self._log.write(line)
                    self._log.flush()

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Send SIGINT (as Ctrl-C would), kill after ``timeout_s``; return the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._drain is not None:
            self._drain.join(2.0)
        if proc.stdout is not None:
            proc.stdout.close()
        if self._log is not None:
            self._log.close()
        return proc.returncode

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
