"""Fast codecs derived from the ``construct`` layouts.

``construct`` is the single source of truth for every byte layout, but interpreting it per frame costs
~18 us. At import, this module walks each message's ``LAYOUT`` once and derives:

* a precompiled :class:`struct.Struct` covering header and payload,
* the field order and, per field, how to turn a wire value into the dataclass's type (enum lookup tables,
  string stripping) and how to range-check it on encode,
* a constructor that fills the frozen dataclass's slots directly (no per-field ``__setattr__`` detour).

Only fixed-size construct types are supported (unsigned/signed ints, ``Flag``, ``PaddedString``);
anything else raises :class:`TypeError` at import, so a layout can never silently fall off the fast path.
Equivalence with construct itself is asserted by the test suite for every message type.
"""

from __future__ import annotations

import struct
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import IntEnum, IntFlag
from typing import Any

import construct

from .constants import HEADER_BYTES
from .messages import MESSAGE_CLASSES, Message

HEADER_FORMAT = "<BBH"  # version, type, sequence
HEADER_VALUES = 3  # number of values HEADER_FORMAT unpacks to

_FORMAT_RANGES: dict[str, tuple[int, int]] = {
    "B": (0, 0xFF),
    "H": (0, 0xFFFF),
    "I": (0, 0xFFFF_FFFF),
    "L": (0, 0xFFFF_FFFF),
    "Q": (0, 0xFFFF_FFFF_FFFF_FFFF),
    "b": (-0x80, 0x7F),
    "h": (-0x8000, 0x7FFF),
    "i": (-0x8000_0000, 0x7FFF_FFFF),
    "l": (-0x8000_0000, 0x7FFF_FFFF),
    "q": (-0x8000_0000_0000_0000, 0x7FFF_FFFF_FFFF_FFFF),
}


@dataclass(frozen=True)
class FieldSpec:
    """How one field travels: its struct code, its allowed values and its Python type."""

    name: str
    code: str  # struct format code, e.g. "I" or "16s"
    minimum: int | None  # inclusive, for integers
    maximum: int | None
    python_type: type
    allowed: frozenset[int] | None  # members of an IntEnum, None otherwise
    flag_mask: int | None  # union of all bits of an IntFlag, None otherwise
    text_bytes: int | None  # length of a padded ASCII string field


@dataclass(frozen=True)
class CompiledLayout:
    """Everything the hot path needs for one message class."""

    cls: type[Message]
    frame_struct: struct.Struct  # header + payload
    payload_size: int
    specs: tuple[FieldSpec, ...]
    build: Callable[[tuple[Any, ...]], Message]  # unpacked header + payload values -> message
    getter: Callable[[Message], tuple[Any, ...]]  # message -> wire values in layout order (validating)


def _spec_for(name: str, subcon: construct.Construct, python_type: type) -> FieldSpec:
    allowed: frozenset[int] | None = None
    flag_mask: int | None = None
    if isinstance(python_type, type) and issubclass(python_type, IntFlag):
        flag_mask = 0
        for member in python_type:
            flag_mask |= int(member)
    elif isinstance(python_type, type) and issubclass(python_type, IntEnum):
        allowed = frozenset(int(m) for m in python_type)

    if isinstance(subcon, construct.FormatField):
        code = subcon.fmtstr[-1]
        lo, hi = _FORMAT_RANGES[code]
        return FieldSpec(name, code, lo, hi, python_type, allowed, flag_mask, None)
    if isinstance(subcon, type(construct.Flag)):
        return FieldSpec(name, "?", 0, 1, bool, None, None, None)
    if isinstance(subcon, construct.StringEncoded) and isinstance(subcon.subcon, construct.FixedSized):
        length = subcon.subcon.length
        if not isinstance(length, int):
            raise TypeError(f"field {name}: string length must be a constant")
        return FieldSpec(name, f"{length}s", None, None, str, None, None, length)
    raise TypeError(f"field {name}: construct type {type(subcon).__name__} has no fast path")


def _make_converter(spec: FieldSpec) -> Callable[[Any], Any] | None:
    """Return a function turning the raw struct value into the dataclass type, or None for identity."""
    if spec.allowed is not None:
        enum_type = typing.cast(type[IntEnum], spec.python_type)
        table = {int(m): m for m in enum_type}
        return table.__getitem__  # KeyError on an unknown value; the decoder reports BAD_VALUE
    if spec.flag_mask is not None:
        flag_type = typing.cast(type[IntFlag], spec.python_type)
        cache: dict[int, IntFlag] = {}
        mask = spec.flag_mask

        def to_flags(raw: int) -> IntFlag:
            member = cache.get(raw)
            if member is None:
                if raw & ~mask:
                    raise KeyError(raw)
                member = flag_type(raw)
                cache[raw] = member  # bounded: at most 2**16 distinct raw values
            return member

        return to_flags
    if spec.text_bytes is not None:
        return lambda raw: raw.rstrip(b"\x00").decode("ascii")
    return None


def _make_builder(
    cls: type[Message], converters: list[Callable[[Any], Any] | None], offset: int
) -> Callable[..., Message]:
    """Generate a constructor that fills slots directly; frozen dataclasses forbid normal assignment.

    The generated function takes the whole unpacked frame tuple; payload values start at ``offset``.
    """
    names = [f.name for f in fields(cls)]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = ["def build(values):", "    obj = _new(_cls)"]
    for index, (name, convert) in enumerate(zip(names, converters, strict=True)):
        namespace[f"_set_{index}"] = getattr(cls, name).__set__
        value = f"values[{index + offset}]"
        if convert is not None:
            namespace[f"_conv_{index}"] = convert
            value = f"_conv_{index}({value})"
        lines.append(f"    _set_{index}(obj, {value})")
    lines.append("    return obj")
    exec("\n".join(lines), namespace)  # generated from trusted, import-time layout data only
    return typing.cast(Callable[..., Message], namespace["build"])


class InvalidFieldValue(ValueError):
    """Raised by a generated wire getter; the codec turns it into a precise FieldRangeError."""


def _make_wire_getter(cls: type[Message], specs: list[FieldSpec]) -> Callable[[Message], tuple[Any, ...]]:
    """Generate ``m -> payload values`` that rejects bad enum members, flag bits and strings.

    Integer ranges are left to :mod:`struct`, which raises on overflow, so the common case costs one
    attribute read per field and one set lookup per enumerated field.
    """
    if not specs:
        return lambda _message: ()
    namespace: dict[str, Any] = {"_Invalid": InvalidFieldValue}
    lines = ["def get(m):"]
    items = []
    for index, spec in enumerate(specs):
        lines.append(f"    v{index} = m.{spec.name}")
        if spec.allowed is not None:
            namespace[f"_allowed_{index}"] = spec.allowed
            lines.append(f"    if v{index} not in _allowed_{index}: raise _Invalid({index})")
        elif spec.flag_mask is not None:
            lines.append(f"    if v{index} & {~spec.flag_mask}: raise _Invalid({index})")
        elif spec.text_bytes is not None:
            lines.append(f"    v{index} = v{index}.encode('ascii')")
            lines.append(f"    if len(v{index}) > {spec.text_bytes}: raise _Invalid({index})")
        items.append(f"v{index}")
    lines.append(f"    return ({', '.join(items)},)")
    exec("\n".join(lines), namespace)  # generated from trusted, import-time layout data only
    return typing.cast(Callable[[Message], tuple[Any, ...]], namespace["get"])


def compile_layout(cls: type[Message]) -> CompiledLayout:
    """Derive the fast codec of one message class from its construct layout.

    Raises:
        TypeError: the layout uses a construct type without a fast path, or its field names do not match
            the dataclass fields in order.
    """
    hints = typing.get_type_hints(cls)
    dataclass_names = [f.name for f in fields(cls)]
    layout_names = [sc.name for sc in cls.LAYOUT.subcons]
    if dataclass_names != layout_names:
        raise TypeError(f"{cls.__name__}: dataclass fields {dataclass_names} != layout {layout_names}")
    specs: list[FieldSpec] = []
    for subcon in cls.LAYOUT.subcons:
        inner = subcon.subcon if isinstance(subcon, construct.Renamed) else subcon
        specs.append(_spec_for(subcon.name, inner, hints[subcon.name]))
    payload_format = "".join(spec.code for spec in specs)
    frame_struct = struct.Struct(HEADER_FORMAT + payload_format)
    payload_size = frame_struct.size - HEADER_BYTES
    if payload_size != cls.LAYOUT.sizeof():
        raise TypeError(f"{cls.__name__}: derived size {payload_size} != construct size {cls.LAYOUT.sizeof()}")
    converters = [_make_converter(spec) for spec in specs]
    return CompiledLayout(
        cls=cls,
        frame_struct=frame_struct,
        payload_size=payload_size,
        specs=tuple(specs),
        build=_make_builder(cls, converters, offset=HEADER_VALUES),
        getter=_make_wire_getter(cls, specs),
    )


COMPILED: dict[int, CompiledLayout] = {int(cls.TYPE): compile_layout(cls) for cls in MESSAGE_CLASSES}
COMPILED_BY_CLASS: dict[type[Message], CompiledLayout] = {c.cls: c for c in COMPILED.values()}
