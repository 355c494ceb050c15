"""A one-shot flag that Ctrl-C cannot wedge: :class:`OneShot`.

:class:`threading.Event` waits through a :class:`threading.Condition`, whose ``__enter__`` is Python code:
a KeyboardInterrupt (or the SIGTERM a session turns into an exception) raised in the main thread just
after that ``__enter__`` took the Event's lock leaves the lock taken for good, and the next ``set()`` --
from a reader or worker thread -- then blocks for ever. Waits in the main thread that a session's
ramp-down depends on use this instead.
"""

from __future__ import annotations

import threading


class OneShot:
    """A flag set once, like :class:`threading.Event` without ``clear()``, on one pre-acquired lock.

    ``set()`` may be called from any number of threads, any number of times; ``wait()`` returns True once
    it is set. An interrupt at any point of ``wait()`` leaves it usable: the flag is set before the lock is
    released, so a waiter that took the lock and was interrupted before giving it back only leaves a lock
    that nobody needs any more (every later ``wait()`` sees the flag). Never blocks in ``set()``.
    """

    __slots__ = ("_flag", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._flag = False

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            try:  # noqa: SIM105 -- contextlib.suppress costs more than the rest of the call, on every reply
                self._lock.release()
            except RuntimeError:  # a concurrent set() released it first
                pass

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout_s: float) -> bool:
        """True once set; False if ``timeout_s`` seconds passed first."""
        if not self._flag and self._lock.acquire(timeout=timeout_s):
            try:  # noqa: SIM105 -- as in set()
                self._lock.release()  # keep it released so later waits return at once
            except RuntimeError:
                pass
        return self._flag
