"""Fast codecs derived from the ``construct`` layouts.

``construct`` is the single source of truth for every byte layout, but interpreting it per frame costs
~18 us. At import, this module walks each message's ``LAYOUT`` once and derives:

* a precompiled :class:`struct.Struct` covering header and payload,
* the field order and, per field, how to turn a wire value into the dataclass's type (enum lookup tables,
  string stripping) and how to check it on encode,
* a generated constructor that fills the frozen dataclass's slots directly (no per-field ``__setattr__``
  detour), and a generated packer that reads, checks and packs the fields in one function.

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

from .constants import HEADER_BYTES, PROTOCOL_VERSION
from .enums import MessageKind
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
    pack: Callable[[Message, int], bytes]  # (message, seq) -> header + payload bytes (validating), no CRC
    unsolicited: bool  # type 0xC0-0xFF: sequence number 0


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
        if code not in _FORMAT_RANGES:
            raise TypeError(f"field {name}: format {subcon.fmtstr!r} is not an integer")
        if subcon.fmtstr[0] != "<" and subcon.length > 1:
            raise TypeError(f"field {name}: multi-byte integers must be little-endian, not {subcon.fmtstr!r}")
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


class _FlagTable(dict[int, IntFlag]):
    """Raw wire value -> flag member, filled on first use; ``KeyError`` for bits outside the enumeration.

    Bounded: only valid values are stored, at most ``2 ** (number of defined bits)`` entries.
    """

    __slots__ = ("_flag_type", "_mask")

    def __init__(self, flag_type: type[IntFlag], mask: int) -> None:
        super().__init__()
        self._flag_type = flag_type
        self._mask = mask

    def __missing__(self, raw: int) -> IntFlag:
        if raw & ~self._mask:
            raise KeyError(raw)
        member = self._flag_type(raw)
        self[raw] = member
        return member


def _conversion(spec: FieldSpec, index: int, namespace: dict[str, Any], value: str) -> str:
    """Return the expression turning raw struct value ``value`` into the dataclass type.

    Unknown enumeration values, undefined flag bits and boolean bytes other than 0 and 1 raise ``KeyError``;
    non-ASCII text raises ``UnicodeDecodeError`` and text with an interior NUL ``ValueError``. The codec
    reports all of them as ``BAD_VALUE``, so that every frame it accepts is the exact encoding of the
    message it returns.
    """
    if spec.allowed is not None:
        enum_type = typing.cast(type[IntEnum], spec.python_type)
        namespace[f"_table_{index}"] = {int(m): m for m in enum_type}
        return f"_table_{index}[{value}]"
    if spec.flag_mask is not None:
        flag_type = typing.cast(type[IntFlag], spec.python_type)
        namespace[f"_table_{index}"] = _FlagTable(flag_type, spec.flag_mask)
        return f"_table_{index}[{value}]"
    if spec.text_bytes is not None:
        namespace["_text"] = _decode_text
        return f"_text({value})"
    if spec.code == "?":
        namespace["_bools"] = _BOOLS
        return f"_bools[{value}]"
    return value


_BOOLS: dict[int, bool] = {0: False, 1: True}


def _decode_text(raw: bytes) -> str:
    """NUL-padded ASCII to str; ``ValueError`` (or ``UnicodeDecodeError``) for NUL inside or non-ASCII."""
    text = raw.rstrip(b"\x00")
    if b"\x00" in text:
        raise ValueError("NUL inside a text field")
    return text.decode("ascii")


_TWIN_MIN_FIELDS = 3


def _mutable_twin(cls: type[Message]) -> type | None:
    """Return a mutable class with the same slots as ``cls``, or None if its instances cannot become ``cls``.

    Filling a frozen, slotted dataclass costs one member-descriptor call per field (~60 ns each). Instead
    the builder fills an instance of this twin with plain, specialised attribute stores (~10 ns each) and
    then assigns ``__class__``, which Python allows between classes of identical layout. Instances of
    the twin never leave the builder.
    """
    slots: tuple[str, ...] = tuple(getattr(cls, "__slots__", ()))
    if len(slots) < _TWIN_MIN_FIELDS:
        return None  # the __class__ assignment costs about as much as two descriptor calls
    base = cls.__base__
    assert base is not None
    twin = type(
        f"_Mutable{cls.__name__}",
        (base,),
        {
            "__slots__": slots,
            "__setattr__": object.__setattr__,  # the base's frozen hooks would route every store via Python
            "__delattr__": object.__delattr__,
            "__module__": __name__,
        },
    )
    try:
        probe: Any = object.__new__(twin)
        probe.__class__ = cls
    except TypeError:
        return None
    return twin


def _make_builder(cls: type[Message], specs: list[FieldSpec], offset: int | None) -> Callable[..., Message]:
    """Generate a constructor that fills slots directly; frozen dataclasses forbid normal assignment.

    With an ``offset``, the generated function takes the whole unpacked frame tuple, whose payload values
    start at ``offset``; with ``offset=None`` it takes the field values as positional arguments.
    It bypasses ``__init__``, so message classes must not rely on ``__post_init__``.
    """
    twin = _mutable_twin(cls)
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_twin": twin}
    params = "values" if offset is not None else ", ".join(f"a{index}" for index in range(len(specs)))
    lines = [f"def build({params}):", f"    obj = _new({'_cls' if twin is None else '_twin'})"]
    for index, spec in enumerate(specs):
        if offset is None and spec.text_bytes is not None:
            value = f"a{index}"  # a sender's text is already str
        else:
            source = f"values[{index + offset}]" if offset is not None else f"a{index}"
            value = _conversion(spec, index, namespace, source)
        if twin is None:
            namespace[f"_set_{index}"] = getattr(cls, spec.name).__set__
            lines.append(f"    _set_{index}(obj, {value})")
        else:
            lines.append(f"    obj.{spec.name} = {value}")
    if twin is not None:
        lines.append("    obj.__class__ = _cls")
    lines.append("    return obj")
    exec("\n".join(lines), namespace)  # generated from trusted, import-time layout data only
    return typing.cast(Callable[..., Message], namespace["build"])


class InvalidFieldValue(ValueError):
    """Raised by a generated wire getter; the codec turns it into a precise FieldRangeError."""


def _check_lines(spec: FieldSpec, index: int, namespace: dict[str, Any]) -> list[str]:
    """Source lines validating ``v{index}`` for encoding (the rules of ``docs/protocol.md`` §3.4).

    * enumerations: a member of the field's enumeration, or a plain ``int`` that is a member's value;
    * flag sets: a value of the field's flag type or a plain ``int``, with no bit outside the defined bits;
    * plain integers: any integer except ``bool``; the range is left to :mod:`struct`, which raises;
    * booleans (``Flag``): exactly ``True`` or ``False``;
    * text: ASCII without NUL, at most ``text_bytes`` bytes.
    """
    v = f"v{index}"
    if spec.allowed is not None:
        namespace[f"_enum_{index}"] = spec.python_type
        namespace[f"_allowed_{index}"] = spec.allowed
        return [
            f"    if {v}.__class__ is not _enum_{index} and ({v}.__class__ is not int"
            f" or {v} not in _allowed_{index}): raise _Invalid({index})"
        ]
    if spec.flag_mask is not None:
        namespace[f"_enum_{index}"] = spec.python_type
        mask = spec.flag_mask
        # Bits 0..k-1 only: a range check says it all, and is C-fast on IntFlag (``&`` is not).
        contiguous = mask & (mask + 1) == 0
        bits_ok = f"0 <= {v} <= {mask}" if contiguous else f"not _int_and({v}, {~mask})"
        return [
            f"    if ({v}.__class__ is not _enum_{index} and {v}.__class__ is not int)"
            f" or not ({bits_ok}): raise _Invalid({index})"
        ]
    if spec.text_bytes is not None:
        return [
            f"    {v} = {v}.encode('ascii')",
            f"    if len({v}) > {spec.text_bytes} or b'\\x00' in {v}: raise _Invalid({index})",
        ]
    if spec.code == "?":
        return [f"    if {v}.__class__ is not bool: raise _Invalid({index})"]
    return [f"    if {v}.__class__ is bool: raise _Invalid({index})"]


def _make_encoders(
    cls: type[Message], specs: list[FieldSpec], frame_struct: struct.Struct
) -> tuple[Callable[[Message], tuple[Any, ...]], Callable[[Message, int], bytes]]:
    """Generate ``m -> payload values`` and ``(m, seq) -> header + payload bytes``, both validating.

    Integer ranges are left to :mod:`struct`, which raises ``struct.error`` on overflow; every other rule
    raises :class:`InvalidFieldValue`, ``TypeError``, ``AttributeError`` or ``UnicodeError``. The codec
    turns any of these into a precise :class:`~iontodrive.protocol.FieldRangeError`.
    """
    namespace: dict[str, Any] = {
        "_Invalid": InvalidFieldValue,
        "_int_and": int.__and__,
        "_pack": frame_struct.pack,
    }
    body: list[str] = []
    for index, spec in enumerate(specs):
        body.append(f"    v{index} = m.{spec.name}")
        body.extend(_check_lines(spec, index, namespace))
    names = "".join(f", v{index}" for index in range(len(specs)))
    source = "\n".join(
        [
            "def get(m):",
            *body,
            f"    return ({names[2:]}{',' if specs else ''})",
            "def pack(m, seq):",
            *body,
            f"    return _pack({PROTOCOL_VERSION}, {int(cls.TYPE)}, seq{names})",
        ]
    )
    exec(source, namespace)  # generated from trusted, import-time layout data only
    return (
        typing.cast(Callable[[Message], tuple[Any, ...]], namespace["get"]),
        typing.cast(Callable[[Message, int], bytes], namespace["pack"]),
    )


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
    # Booleans travel as a u8 that must be 0 or 1 (struct's "?" would accept any non-zero byte).
    payload_format = "".join("B" if spec.code == "?" else spec.code for spec in specs)
    frame_struct = struct.Struct(HEADER_FORMAT + payload_format)
    payload_size = frame_struct.size - HEADER_BYTES
    if payload_size != cls.LAYOUT.sizeof():
        expected = cls.LAYOUT.sizeof()
        raise TypeError(f"{cls.__name__}: derived size {payload_size} != construct size {expected}")
    getter, pack = _make_encoders(cls, specs, frame_struct)
    return CompiledLayout(
        cls=cls,
        frame_struct=frame_struct,
        payload_size=payload_size,
        specs=tuple(specs),
        build=_make_builder(cls, specs, offset=HEADER_VALUES),
        getter=getter,
        pack=pack,
        unsolicited=cls.TYPE.kind is MessageKind.UNSOLICITED,
    )


COMPILED: dict[int, CompiledLayout] = {int(cls.TYPE): compile_layout(cls) for cls in MESSAGE_CLASSES}
COMPILED_BY_CLASS: dict[type[Message], CompiledLayout] = {c.cls: c for c in COMPILED.values()}


def minimal_message(cls: type[Message]) -> Message:
    """An instance of ``cls`` with every field at the low end of its wire range: 0 (or the least value),
    the first member of an enumeration, no flag bits, ``False``, empty text. For tools and tests that
    need one valid frame of every message type without knowing the type (vectors, the state table)."""
    values: list[Any] = []
    for spec in COMPILED_BY_CLASS[cls].specs:
        if spec.text_bytes is not None:
            values.append("")
        elif spec.code == "?":
            values.append(False)
        elif spec.allowed is not None:
            values.append(typing.cast(type[IntEnum], spec.python_type)(min(spec.allowed)))
        elif spec.flag_mask is not None:
            values.append(spec.python_type(0))
        else:
            values.append(max(spec.minimum or 0, 0))
    return cls(*values)


def trusted_constructor(cls: type[Message]) -> Callable[..., Message]:
    """``cls(*values)`` without the dataclass constructor: a generated slot builder taking the fields as
    positional arguments, with the same conversions as decoding (plain ints become enumeration members).

    For a sender's own well-formed values at high rates (a device's status replies and telemetry). It does
    not validate: :func:`~iontodrive.protocol.encode` still checks every field when the message is sent.
    """
    return _make_builder(cls, list(COMPILED_BY_CLASS[cls].specs), offset=None)
