"""The interrupt-safe wait and SIGTERM handling shared by every session.

:func:`wait_interruptibly` calls a step function until it says the session is over. The first
KeyboardInterrupt or :class:`~iontodrive.sessions.types.Terminated` (SIGTERM, see
:func:`sigterm_as_exception`) calls ``on_interrupt`` once - a ramped stop - and a second one arriving
while that call runs makes it run again rather than escape; later interrupts are only logged, so nothing
can cut the ramp-down short.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from iontodrive.sessions.types import Terminated

logger = logging.getLogger("iontodrive.session")

INTERRUPT_MESSAGES = frozenset(
    {
        "%s: ramping down before exiting",
        "%s again: still ramping down, output is not cut",
    }
)
"""The log messages this module writes on an interrupt (the CLI replaces them with its own notices)."""


def _reason(exc: BaseException) -> str:
    return "SIGTERM" if isinstance(exc, Terminated) else "KeyboardInterrupt"


def wait_interruptibly(step: Callable[[], bool], on_interrupt: Callable[[str], None]) -> str | None:
    """Call ``step()`` until it returns True. Returns the first interrupt's reason, or None.

    ``step`` must return within a bounded time (it waits a little, then looks). ``on_interrupt(reason)``
    asks for the ramped stop; if it is itself interrupted it is called again until it returns.
    """
    interrupted: str | None = None
    while True:
        try:
            if step():
                return interrupted
        except (KeyboardInterrupt, Terminated) as exc:
            reason = _reason(exc)
            if interrupted is None:
                interrupted = reason
                logger.warning("%s: ramping down before exiting", reason)
                _call_until_done(on_interrupt, reason)
            else:
                logger.warning("%s again: still ramping down, output is not cut", reason)


def _call_until_done(action: Callable[[str], None], reason: str) -> None:
    while True:
        try:
            action(reason)
            return
        except (KeyboardInterrupt, Terminated):
            logger.warning("interrupt while asking for the ramp-down: asking again")


@contextlib.contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """In the main thread, turn SIGTERM into :class:`Terminated`, which sessions handle like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
