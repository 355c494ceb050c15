"""What the C generator reads from :mod:`iontodrive.protocol`: a neutral description of the protocol.

Everything here is derived from the Python definitions, never restated: messages and their fields come
from the compiled layouts (:data:`iontodrive.protocol.fastpath.COMPILED`, themselves derived from each
message's ``construct`` ``LAYOUT``), enumerations and bit sets from the ``IntEnum``/``IntFlag`` classes of
:mod:`iontodrive.protocol.enums` (and any other one a field uses), constants from
:mod:`iontodrive.protocol.constants`, the decode error kinds from :class:`DecodeErrorKind`.

A layout the C side cannot represent (a construct type without a fast path is already refused at import; a
signed enumeration or a name that is a C keyword here) raises :class:`UnsupportedLayout` naming the message
and field, so the generator never emits C that silently differs from Python.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import re
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from types import ModuleType

from .. import constants as constants_module
from .. import crc as crc_module
from .. import enums as enums_module
from ..errors import DecodeErrorKind
from ..fastpath import COMPILED, HEADER_FORMAT, FieldSpec

# struct code -> (wire bytes, signed)
_INTEGER_CODES: dict[str, tuple[int, bool]] = {
    "B": (1, False),
    "H": (2, False),
    "I": (4, False),
    "L": (4, False),
    "Q": (8, False),
    "b": (1, True),
    "h": (2, True),
    "i": (4, True),
    "l": (4, True),
    "q": (8, True),
}

C_KEYWORDS = frozenset(
    [
        "auto",
        "break",
        "case",
        "char",
        "const",
        "continue",
        "default",
        "do",
        "double",
        "else",
        "enum",
        "extern",
        "float",
        "for",
        "goto",
        "if",
        "inline",
        "int",
        "long",
        "register",
        "restrict",
        "return",
        "short",
        "signed",
        "sizeof",
        "static",
        "struct",
        "switch",
        "typedef",
        "union",
        "unsigned",
        "void",
        "volatile",
        "while",
        "_Bool",
        "_Complex",
        "_Imaginary",
        "bool",
        "true",
        "false",
        "type",
        "seq",
        "msg",
    ]
)
"""C99 keywords, the ``stdbool.h`` macros, and the member names of ``ionto_frame_t`` that a field "
"would shadow."""


class UnsupportedLayout(TypeError):
    """A protocol definition the C generator cannot represent exactly."""


@dataclass(frozen=True)
class EnumDef:
    """An enumeration or bit set. ``members`` are (name, value) in declaration order, aliases included."""

    name: str  # Python class name, e.g. "DeviceState"
    members: tuple[tuple[str, int], ...]
    is_flags: bool
    doc: str

    @property
    def mask(self) -> int:
        """Union of every defined bit (bit sets only)."""
        result = 0
        for _, value in self.members:
            result |= value
        return result


@dataclass(frozen=True)
class FieldDef:
    """One payload field as C sees it."""

    name: str
    kind: str  # "int", "enum", "flags", "bool", "text"
    wire_bytes: int
    signed: bool
    enum: EnumDef | None
    text_bytes: int | None

    @property
    def c_type(self) -> str:
        if self.kind == "bool":
            return "bool"
        if self.kind == "text":
            return "char"
        return f"{'int' if self.signed else 'uint'}{self.wire_bytes * 8}_t"


@dataclass(frozen=True)
class MessageDef:
    name: str  # Python class name
    type_id: int
    kind: str  # MessageKind name: "REQUEST", "REPLY", "UNSOLICITED"
    fields: tuple[FieldDef, ...]
    payload_bytes: int
    doc: str
    reply: str | None = None  # requests: the class name of the data reply (``REPLY``), if declared
    safety: bool = False  # requests: ``SAFETY`` (only lowers the output)

    @property
    def unsolicited(self) -> bool:
        return self.kind == "UNSOLICITED"


@dataclass(frozen=True)
class ConstantDef:
    name: str
    value: int
    comment: str


@dataclass(frozen=True)
class RulesDef:
    """The request x state table of :mod:`iontodrive.protocol.rules`, as numbers.

    ``cells[(request type, state)] = (refusal, needs_zero_output)``; refusal 0 means accepted, else it is
    the ``ErrorCode`` value the Nack carries.
    """

    state_enum: str
    request_types: tuple[int, ...]
    states: tuple[int, ...]
    cells: tuple[tuple[int, int, int, bool], ...]  # (request type, state, refusal, needs_zero_output)


@dataclass(frozen=True)
class Schema:
    """The whole protocol, as the C generator needs it."""

    version: int
    messages: tuple[MessageDef, ...]
    enums: tuple[EnumDef, ...]
    constants: tuple[ConstantDef, ...]
    decode_kinds: tuple[str, ...]  # DecodeErrorKind member names, declaration order
    crc_init: int
    header_format: str
    rules: RulesDef | None = None

    def message(self, name: str) -> MessageDef | None:
        return next((m for m in self.messages if m.name == name), None)

    def enum(self, name: str) -> EnumDef | None:
        return next((e for e in self.enums if e.name == name), None)

    def constant(self, name: str) -> int | None:
        return next((c.value for c in self.constants if c.name == name), None)

    @property
    def fingerprint(self) -> int:
        """32 bits of SHA-256 over everything that shapes the wire format and the C API (not the docs)."""
        wire = (
            self.version,
            [(m.name, m.type_id, m.kind, [_field_key(f) for f in m.fields]) for m in self.messages],
            [(e.name, e.members, e.is_flags) for e in self.enums],
            [(c.name, c.value) for c in self.constants],
            self.decode_kinds,
            self.crc_init,
            self.header_format,
            [(m.name, m.reply, m.safety) for m in self.messages],
            self.rules,
        )
        return int(hashlib.sha256(repr(wire).encode("utf-8")).hexdigest()[:8], 16)

    @property
    def max_text_bytes(self) -> int:
        sizes = [f.text_bytes for m in self.messages for f in m.fields if f.text_bytes is not None]
        return max(sizes, default=0)


def _field_key(field: FieldDef) -> tuple[object, ...]:
    enum = field.enum.name if field.enum is not None else None
    return (field.name, field.kind, field.wire_bytes, field.signed, enum, field.text_bytes)


def snake(name: str) -> str:
    """``IdentityReport`` -> ``identity_report``; ``GetStatus`` -> ``get_status``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _first_paragraph(obj: object) -> str:
    """The first paragraph of the object's own docstring (not an inherited one), on one line."""
    doc = inspect.cleandoc(vars(obj).get("__doc__") or "") if isinstance(obj, type) else ""
    return " ".join(doc.split("\n\n")[0].split())


def _enum_def(cls: type[IntEnum] | type[IntFlag]) -> EnumDef:
    members = tuple((name, int(member)) for name, member in cls.__members__.items())
    for name, value in members:
        if value < 0:
            raise UnsupportedLayout(f"{cls.__name__}.{name} = {value}: negative enumeration values")
    return EnumDef(cls.__name__, members, issubclass(cls, IntFlag), _first_paragraph(cls))


def _field_def(message: str, spec: FieldSpec, enums: dict[type, EnumDef]) -> FieldDef:
    if spec.name in C_KEYWORDS:
        raise UnsupportedLayout(f"{message}.{spec.name}: the field name is reserved in C")
    if spec.text_bytes is not None:
        return FieldDef(spec.name, "text", spec.text_bytes, False, None, spec.text_bytes)
    if spec.code == "?":
        return FieldDef(spec.name, "bool", 1, False, None, None)
    if spec.code not in _INTEGER_CODES:
        raise UnsupportedLayout(f"{message}.{spec.name}: struct code {spec.code!r}")
    size, signed = _INTEGER_CODES[spec.code]
    if spec.allowed is None and spec.flag_mask is None:
        return FieldDef(spec.name, "int", size, signed, None, None)
    if signed or size > 4:
        raise UnsupportedLayout(f"{message}.{spec.name}: an enumeration or bit set wider than u32 or signed")
    enum_cls = spec.python_type
    if enum_cls not in enums:
        enums[enum_cls] = _enum_def(enum_cls)
    kind = "flags" if spec.flag_mask is not None else "enum"
    return FieldDef(spec.name, kind, size, False, enums[enum_cls], None)


def _constants(module: ModuleType, extra: dict[str, int]) -> tuple[ConstantDef, ...]:
    """Module-level integer constants (and one-byte ``bytes`` such as the delimiter), in source order,
    with the trailing comment of their line."""
    source = inspect.getsource(module)
    lines = source.splitlines()
    result: list[ConstantDef] = []
    for node in ast.parse(source).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if not isinstance(target, ast.Name) or not target.id.isupper():
            continue
        value = getattr(module, target.id)
        if isinstance(value, bytes) and len(value) == 1:
            value = value[0]
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        line = lines[node.lineno - 1]
        comment = line.split("#", 1)[1].strip() if "#" in line else ""
        result.append(ConstantDef(target.id, value, comment))
    result.extend(ConstantDef(name, value, "") for name, value in extra.items())
    return tuple(result)


def _rules() -> RulesDef | None:
    """The request x state table, where the protocol declares one (``iontodrive.protocol.rules.RULES``)."""
    if importlib.util.find_spec(f"{__package__.rsplit('.', 1)[0]}.rules") is None:
        return None
    from .. import rules as rules_module

    table = getattr(rules_module, "RULES", None)
    if not table:
        return None
    states = sorted({int(state) for row in table.values() for state in row})
    state_enum = type(next(iter(next(iter(table.values())))))
    cells = tuple(
        (
            int(request),
            int(state),
            int(cell.refusal) if cell.refusal is not None else 0,
            cell.needs_zero_output,
        )
        for request, row in sorted(table.items())
        for state, cell in sorted(row.items())
    )
    return RulesDef(state_enum.__name__, tuple(sorted(int(r) for r in table)), tuple(states), cells)


def load_schema() -> Schema:
    """Read the protocol as :mod:`iontodrive.protocol` declares it now."""
    if HEADER_FORMAT != "<BBH":
        raise UnsupportedLayout(f"frame header {HEADER_FORMAT!r}: the C template knows version, type, seq")
    enums: dict[type, EnumDef] = {}
    for value in vars(enums_module).values():
        if (
            isinstance(value, type)
            and issubclass(value, IntEnum | IntFlag)
            and value.__module__ == enums_module.__name__
        ):
            enums[value] = _enum_def(value)
    messages = []
    for type_id, layout in sorted(COMPILED.items()):
        cls = layout.cls
        fields = tuple(_field_def(cls.__name__, spec, enums) for spec in layout.specs)
        messages.append(
            MessageDef(
                cls.__name__,
                type_id,
                cls.TYPE.kind.name,
                fields,
                layout.payload_size,
                _first_paragraph(cls),
                reply.__name__ if (reply := getattr(cls, "REPLY", None)) is not None else None,
                bool(getattr(cls, "SAFETY", False)),
            )
        )
    consts = _constants(constants_module, {"CRC_INIT": crc_module.CRC_INIT})
    version = next(c.value for c in consts if c.name == "PROTOCOL_VERSION")
    return Schema(
        rules=_rules(),
        version=version,
        messages=tuple(messages),
        enums=tuple(enums.values()),
        constants=consts,
        decode_kinds=tuple(kind.name for kind in DecodeErrorKind),
        crc_init=crc_module.CRC_INIT,
        header_format=HEADER_FORMAT,
    )
