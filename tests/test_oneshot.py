"""OneShot: the flag the client and the VISA session wait on in the caller's thread, where Ctrl-C and
SIGTERM strike. An interrupt anywhere inside ``wait()`` must leave it usable, and ``set()`` must never block
(a ``threading.Event`` can be left with its lock taken by such an interrupt: ``iontodrive.oneshot``)."""

from __future__ import annotations

import inspect
import sys
import threading
import time

from interrupts import interrupt_at, lines_of

from iontodrive.oneshot import OneShot


def test_set_wakes_a_waiter_and_later_waits_return_at_once() -> None:
    flag = OneShot()
    assert not flag.is_set() and flag.wait(0.01) is False
    threading.Timer(0.02, flag.set).start()
    started = time.monotonic()
    assert flag.wait(5.0) is True
    assert time.monotonic() - started < 1.0
    flag.set()  # again: no error, no effect
    assert flag.is_set() and flag.wait(0.0) is True


def test_an_interrupt_anywhere_in_wait_leaves_it_usable_and_set_never_blocks() -> None:
    code = OneShot.wait.__code__
    for line in lines_of(code):
        flag = OneShot()
        setter = threading.Timer(0.02, flag.set)
        setter.start()
        sys.settrace(interrupt_at(code, line))
        try:
            flag.wait(2.0)
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        setter.join(2.0)
        assert not setter.is_alive(), f"set() blocked after an interrupt at line {line}"
        started = time.monotonic()
        assert flag.wait(2.0) is True, f"line {line}"
        assert time.monotonic() - started < 0.5, f"a later wait was slow (interrupt at line {line})"


def wait_until_blocked_in_wait(threads: list[threading.Thread]) -> None:
    """Wait (up to 5 s) until every one of ``threads`` is blocked on the flag's lock inside ``wait()``."""
    code = OneShot.wait.__code__
    source = inspect.getsource(OneShot.wait).splitlines()
    acquire_line = code.co_firstlineno + next(
        i for i, text in enumerate(source) if "lock.acquire(timeout" in text
    )
    deadline = time.monotonic() + 5.0
    while True:
        frames = sys._current_frames()
        if all(
            (frame := frames.get(thread.ident)) is not None  # type: ignore[arg-type]
            and frame.f_code is code
            and frame.f_lineno == acquire_line
            for thread in threads
        ):
            return
        assert time.monotonic() < deadline, "the waiters never blocked in wait()"
        time.sleep(0.001)


def test_one_set_wakes_every_thread_waiting_at_once() -> None:
    """The lock a waiter sleeps on is made by the first wait(): waiters arriving together must share it."""

    def wait_on(flag: OneShot, woke: list[bool]) -> None:
        woke.append(flag.wait(5.0))

    for _ in range(20):
        flag = OneShot()
        woke: list[bool] = []
        waiters = [threading.Thread(target=wait_on, args=(flag, woke)) for _ in range(4)]
        for waiter in waiters:
            waiter.start()
        wait_until_blocked_in_wait(waiters)
        started = time.monotonic()
        flag.set()
        for waiter in waiters:
            waiter.join(5.0)
        assert woke == [True] * 4
        assert time.monotonic() - started < 1.0


def test_a_flag_set_before_anyone_waits_is_never_waited_for() -> None:
    flag = OneShot()
    flag.set()
    started = time.monotonic()
    assert flag.wait(5.0) is True and flag.is_set()
    assert time.monotonic() - started < 0.5
