"""Hypothesis strategies for protocol messages, derived from the compiled field specs.

Deriving them from :data:`iontodrive.protocol.fastpath.COMPILED` means a new message type or field is
covered by every property test without touching the tests.
"""

from __future__ import annotations

import functools
import operator
from enum import IntEnum, IntFlag
from typing import Any

from hypothesis import strategies as st

from iontodrive.protocol import MESSAGE_CLASSES, Message, MessageKind
from iontodrive.protocol.fastpath import COMPILED_BY_CLASS, FieldSpec

ASCII_NO_NUL = st.characters(min_codepoint=1, max_codepoint=0x7F)


def field_values(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Every valid value of one field, in the dataclass's type."""
    if spec.text_bytes is not None:
        return st.text(alphabet=ASCII_NO_NUL, max_size=spec.text_bytes)
    if spec.code == "?":
        return st.booleans()
    if spec.allowed is not None:
        enum_type: type[IntEnum] = spec.python_type  # type: ignore[assignment]
        return st.sampled_from(list(enum_type))
    if spec.flag_mask is not None:
        flag_type: type[IntFlag] = spec.python_type  # type: ignore[assignment]
        single_bits = [m for m in flag_type if int(m) and int(m) & (int(m) - 1) == 0]
        return st.sets(st.sampled_from(single_bits)).map(
            lambda bits: functools.reduce(operator.or_, bits, flag_type(0))
        )
    assert spec.minimum is not None and spec.maximum is not None
    edges = st.sampled_from(sorted({spec.minimum, spec.minimum + 1, 0, spec.maximum - 1, spec.maximum}))
    return st.one_of(edges, st.integers(spec.minimum, spec.maximum))


@functools.cache
def messages_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    """Valid messages of one class."""
    specs = COMPILED_BY_CLASS[cls].specs
    return st.builds(cls, **{spec.name: field_values(spec) for spec in specs})


def seqs_for(cls: type[Message]) -> st.SearchStrategy[int]:
    """Valid sequence numbers for a message class (0 for unsolicited, else 1-65535)."""
    if cls.TYPE.kind is MessageKind.UNSOLICITED:
        return st.just(0)
    return st.one_of(st.sampled_from([1, 255, 256, 0xFF00, 0xFFFF]), st.integers(1, 0xFFFF))


@functools.cache
def frames_of(cls: type[Message]) -> st.SearchStrategy[tuple[int, Message]]:
    """(seq, message) pairs of one class."""
    return st.tuples(seqs_for(cls), messages_of(cls))


ANY_FRAME: st.SearchStrategy[tuple[int, Message]] = st.sampled_from(MESSAGE_CLASSES).flatmap(frames_of)


def wire_value(value: Any) -> Any:
    """A field value as construct and JSON see it: enums and flags as int, bool and str unchanged."""
    if isinstance(value, bool | str):
        return value
    return int(value)
