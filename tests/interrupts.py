"""Raising Ctrl-C at an exact line, to test code that must survive an interrupt anywhere in it.

Python delivers KeyboardInterrupt (and the exception a SIGTERM handler raises) in the main thread between
bytecodes; a trace function that raises at a chosen line reproduces one such moment deterministically.
"""

from __future__ import annotations

import types
from collections.abc import Callable


def interrupt_at(code: types.CodeType, line: int) -> Callable[..., object]:
    """A trace function (for ``sys.settrace``) raising KeyboardInterrupt once, when ``code`` is about to
    run ``line``."""
    fired: list[int] = []

    def tracer(frame: types.FrameType, event: str, arg: object) -> object:
        if frame.f_code is not code:
            return None
        if event == "line" and frame.f_lineno == line and not fired:
            fired.append(line)
            raise KeyboardInterrupt
        return tracer

    return tracer


def lines_of(code: types.CodeType) -> list[int]:
    """Every line number ``code`` has instructions for, in order."""
    return sorted({line for _, _, line in code.co_lines() if line is not None})
