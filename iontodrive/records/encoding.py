"""How a record's values become JSON, and back: one value form for every enum, strict parsing.

Writing: :func:`to_json_value` turns a Python value into plain JSON types. Every :class:`enum.Enum` member
becomes its **name** (``Polarity.CATHODE`` → ``"CATHODE"``), an :class:`enum.IntFlag` bit field an
``int`` (a set of bits has no single name), datetimes ISO 8601, dataclasses dicts, tuples lists. A plain
integer under a key that always holds an enum (:data:`ENUM_KEYS`: ``polarity``, ``waveform``, ``state``)
is written as that enum's name too, so a caller that hands over ``int(Polarity.CATHODE)`` still writes
``"CATHODE"``: whatever the source (device or VISA), a record holds one form.

Reading: :func:`parse_line` parses one line with NaN/Infinity refused, duplicate keys refused and integers
bounded to ±2⁶⁴; :func:`normalise_enums` maps the integer form of older records (e.g. ``"polarity": 2``) to
the names, leaving an integer that no member has as it is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from enum import Enum, IntFlag
from typing import Any, Final

import numpy as np

from iontodrive.errors import RecordDataError
from iontodrive.protocol import DeviceState, EventCode, Polarity, Waveform

__all__ = [
    "ENUM_KEYS",
    "EVENT_ENUM_KEYS",
    "KIND_RE",
    "dumps_line",
    "enum_name",
    "normalise_enums",
    "parse_line",
    "to_json_value",
]

# Keys that hold an enum wherever they appear in a record (notes and their nested dicts included).
ENUM_KEYS: Final[Mapping[str, type[Enum]]] = {
    "polarity": Polarity,
    "waveform": Waveform,
    "state": DeviceState,
}
# An event line's keys: ``code`` is an EventCode there (elsewhere ``code`` may be another enum's).
EVENT_ENUM_KEYS: Final[Mapping[str, type[Enum]]] = {"code": EventCode, "state": DeviceState}

# A line's ``kind``: a lower-case identifier.
KIND_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")

_INT_BOUND: Final = 1 << 64
_MAX_INT_DIGITS: Final = 25
_MAX_DEPTH: Final = 32


def enum_name(enum_cls: type[Enum], value: object) -> object:
    """``value`` as the name of its ``enum_cls`` member; an integer no member has, or any other value, is
    returned unchanged (a record states what it was given, it does not invent)."""
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return enum_cls(value).name
        except ValueError:
            return value
    return value


def to_json_value(value: object, where: str = "value", *, _depth: int = 0) -> Any:
    """``value`` in plain JSON types (see the module docstring). Raises :class:`RecordDataError` (naming
    ``where``) for NaN/infinity, a non-str mapping key, a structure nested deeper than 32, or a type JSON
    cannot carry faithfully."""
    if _depth > _MAX_DEPTH:
        raise RecordDataError(f"{where}: nested more than {_MAX_DEPTH} deep")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, IntFlag):
        return int(value)
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RecordDataError(f"{where}: {value!r} cannot be recorded (not finite)")
        return float(value)
    if isinstance(value, np.generic):
        return to_json_value(value.item(), where, _depth=_depth + 1)
    if isinstance(value, datetime):
        return value.isoformat()
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, type):
        return to_json_value(to_dict(), where, _depth=_depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _mapping(
            {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, where, _depth + 1
        )
    if isinstance(value, Mapping):
        return _mapping(value, where, _depth + 1)
    if isinstance(value, list | tuple):
        return [to_json_value(item, f"{where}[{i}]", _depth=_depth + 1) for i, item in enumerate(value)]
    raise RecordDataError(f"{where}: {type(value).__name__} cannot be recorded")


def _mapping(value: Mapping[Any, Any], where: str, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise RecordDataError(f"{where}: keys must be str, not {type(key).__name__}")
        enum_cls = ENUM_KEYS.get(key)
        if enum_cls is not None and not isinstance(item, IntFlag):
            item = enum_name(enum_cls, item)
        out[key] = to_json_value(item, f"{where}.{key}", _depth=depth)
    return out


_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dumps_line(obj: Mapping[str, Any]) -> bytes:
    """One record line: compact JSON of plain types (as :func:`to_json_value` returns) and ``\\n``."""
    return (_ENCODER.encode(obj) + "\n").encode("utf-8")


def encode_str(text: str) -> str:
    """``text`` as a JSON string literal (quotes included)."""
    return _ENCODER.encode(text)


# ---------------------------------------------------------------------------------------------- reading


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _parse_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise ValueError(f"integer {text[:_MAX_INT_DIGITS]}... is too large")
    value = int(text)
    if abs(value) >= _INT_BOUND:
        raise ValueError(f"integer {text} is too large")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


_DECODER: Final = json.JSONDecoder(
    parse_float=_parse_float,
    parse_int=_parse_int,
    parse_constant=_reject_constant,
    object_pairs_hook=_no_duplicates,
)


def parse_line(blob: bytes) -> Any:
    """Parse one line's bytes (no newline). Raises ValueError (UnicodeDecodeError and JSON errors are
    ValueErrors) with the reason, RecursionError for absurd nesting."""
    return _DECODER.decode(blob.decode("utf-8"))


def normalise_enums(obj: dict[str, Any], *, event: bool = False) -> dict[str, Any]:
    """Map the integer form of enum values in ``obj`` (and its nested dicts and lists) to their names, in
    place; returns ``obj``. ``event`` also maps an event line's ``code``."""
    keys = EVENT_ENUM_KEYS if event else ENUM_KEYS
    for key, value in obj.items():
        enum_cls = keys.get(key) or ENUM_KEYS.get(key)
        if enum_cls is not None and isinstance(value, int) and not isinstance(value, bool):
            obj[key] = enum_name(enum_cls, value)
        elif isinstance(value, dict):
            normalise_enums(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    normalise_enums(item)
    return obj
