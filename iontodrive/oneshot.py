"""A one-shot flag that Ctrl-C cannot wedge: :class:`OneShot`.

:class:`threading.Event` waits through a :class:`threading.Condition`, whose ``__enter__`` is Python code:
a KeyboardInterrupt (or the SIGTERM a session turns into an exception) raised in the main thread just
after that ``__enter__`` took the Event's lock leaves the lock taken for good, and the next ``set()`` --
from a reader or worker thread -- then blocks for ever. Waits in the main thread that a session's
ramp-down depends on use this instead.
"""

from __future__ import annotations

import threading

# Guards only the moment a OneShot gets its lock (below); held for a few bytecodes, never across a wait.
# Taken by a C-level ``with``, which an interrupt cannot leave taken.
_MAKING_LOCK = threading.Lock()


class OneShot:
    """A flag set once, like :class:`threading.Event` without ``clear()``.

    ``set()`` may be called from any number of threads, any number of times; ``wait()`` returns True once
    it is set. An interrupt at any point of ``wait()`` leaves it usable: the flag is set before the lock is
    released, so a waiter that took the lock and was interrupted before giving it back only leaves a lock
    that nobody needs any more (every later ``wait()`` sees the flag). Never blocks in ``set()``.

    The lock a waiter sleeps on is made, already taken, by the first ``wait()`` that has to block: most
    flags (a request whose caller reads its own reply) are only ever tested with ``is_set()``, and making a
    lock for each would cost more than the rest of the flag. ``wait()`` publishes the lock before it looks
    at the flag a last time, and ``set()`` sets the flag before it looks for a lock, so one of the two
    always sees the other.
    """

    __slots__ = ("_flag", "_lock")

    def __init__(self) -> None:
        self._flag = False
        self._lock: threading.Lock | None = None

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            lock = self._lock
            if lock is not None:
                try:  # noqa: SIM105 -- contextlib.suppress costs more than the rest of the call, on every reply
                    lock.release()
                except RuntimeError:  # a concurrent set() released it first
                    pass

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout_s: float) -> bool:
        """True once set; False if ``timeout_s`` seconds passed first."""
        if self._flag:
            return True
        lock = self._lock
        if lock is None:
            with _MAKING_LOCK:  # two first waiters must share one lock
                lock = self._lock
                if lock is None:
                    lock = threading.Lock()
                    lock.acquire()
                    self._lock = lock
        if not self._flag and lock.acquire(timeout=timeout_s):
            try:  # noqa: SIM105 -- as in set()
                lock.release()  # keep it released so later waits return at once
            except RuntimeError:
                pass
        return self._flag
