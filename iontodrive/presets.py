"""Named prescriptions ("presets") stored as data in ``presets.json``, each with its source.

A preset is a dict of :class:`~iontodrive.prescription.Prescription` fields in user units (mA, mA·min, s, Hz,
%, cm²) plus a name, a description, the model it is meant for and where its numbers come from. Presets are
data, not code: add one by editing ``presets.json`` (or point ``$IONTODRIVE_PRESETS`` at a file of the
same format to use your own list instead).

Failure modes: an unknown preset name, an unknown field or a malformed file raise :class:`PresetError`
(an :class:`~iontodrive.errors.IontodriveError` and a ``ValueError``) naming the preset and the field. The
numbers themselves are checked by :class:`~iontodrive.prescription.Prescription` and against the device when
a session starts; :func:`check_preset_fits` words a refusal of a preset made for another model as that
(:class:`PresetModelError`), rather than as the field that happened to fail first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iontodrive.errors import IontodriveError, SafetyRefusal

if TYPE_CHECKING:
    from iontodrive.prescription import Prescription
    from iontodrive.protocol import IdentityReport

ENV_FILE = "IONTODRIVE_PRESETS"

#: The Prescription fields a preset may set (user units).
PRESCRIPTION_FIELDS: tuple[str, ...] = (
    "current_ma",
    "dose_ma_min",
    "duration_s",
    "ramp_up_s",
    "ramp_down_s",
    "polarity",
    "waveform",
    "pulse_frequency_hz",
    "duty_percent",
    "electrode_area_cm2",
)
_LENGTH_FIELDS = ("dose_ma_min", "duration_s")


class PresetError(IontodriveError, ValueError):
    """A preset is unknown or malformed. ``name`` and ``field`` say which (``""`` when not applicable)."""

    def __init__(self, message: str, name: str = "", field: str = "") -> None:
        self.name = name
        self.field = field
        super().__init__(message)


class PresetModelError(PresetError):
    """A preset made for one model was refused on another (``preset_model``, ``device_model``)."""

    def __init__(
        self, name: str, preset_model: str, device_model: str, refusal: SafetyRefusal, others: list[str]
    ) -> None:
        self.preset_model = preset_model
        self.device_model = device_model
        self.refusal = refusal
        self.others = others
        detail = str(refusal)
        choose = f"presets for {device_model}: {', '.join(others)}" if others else "see `iontodrive presets`"
        super().__init__(
            f"preset {name} is for {preset_model}, and this device is a {device_model} ({detail}); "
            f"choose a preset for {device_model} ({choose}) or give the prescription with options",
            name,
            "preset",
        )


@dataclass(frozen=True)
class Preset:
    """One named prescription. ``prescription`` holds Prescription keyword arguments in user units."""

    name: str
    description: str
    source: str
    model: str | None = None
    prescription: dict[str, Any] = field(default_factory=dict)

    def merged(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The preset's fields with ``overrides`` applied (``None`` values are ignored).

        Giving ``dose_ma_min`` removes the preset's ``duration_s`` and vice versa, so a dose-based preset
        can be run time-based by naming the other length.
        """
        values = dict(self.prescription)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        unknown = sorted(set(given) - set(PRESCRIPTION_FIELDS))
        if unknown:
            raise PresetError(f"unknown prescription field(s) {unknown}", self.name, unknown[0])
        if any(k in given for k in _LENGTH_FIELDS):
            for key in _LENGTH_FIELDS:
                values.pop(key, None)
        values.update(given)
        return values

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "source": self.source,
            "prescription": dict(self.prescription),
        }


def _parse(data: Any, origin: str) -> dict[str, Preset]:
    if not isinstance(data, dict) or not isinstance(data.get("presets"), list):
        raise PresetError(f"{origin}: expected an object with a 'presets' list")
    presets: dict[str, Preset] = {}
    for index, item in enumerate(data["presets"]):
        if not isinstance(item, dict):
            raise PresetError(f"{origin}: preset #{index} is not an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise PresetError(f"{origin}: preset #{index} has no name", field="name")
        for key in ("description", "source"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise PresetError(f"{origin}: preset {name!r} needs a non-empty {key!r}", name, key)
        fields = item.get("prescription")
        if not isinstance(fields, dict):
            raise PresetError(f"{origin}: preset {name!r} has no 'prescription' object", name, "prescription")
        unknown = sorted(set(fields) - set(PRESCRIPTION_FIELDS))
        if unknown:
            raise PresetError(f"{origin}: preset {name!r} has unknown field(s) {unknown}", name, unknown[0])
        if "current_ma" not in fields or sum(k in fields for k in _LENGTH_FIELDS) != 1:
            raise PresetError(
                f"{origin}: preset {name!r} needs current_ma and exactly one of dose_ma_min, duration_s",
                name,
                "current_ma",
            )
        if name in presets:
            raise PresetError(f"{origin}: preset {name!r} is defined twice", name, "name")
        model = item.get("model")
        presets[name] = Preset(
            name=name,
            description=item["description"],
            source=item["source"],
            model=model if isinstance(model, str) else None,
            prescription=dict(fields),
        )
    return presets


def load_presets(path: str | Path | None = None) -> dict[str, Preset]:
    """All presets by name, in file order.

    Reads ``path``, else ``$IONTODRIVE_PRESETS``, else the ``presets.json`` shipped with the package.

    Raises:
        PresetError: the file is malformed.
        OSError: the file cannot be read.
    """
    chosen = path if path is not None else os.environ.get(ENV_FILE) or None
    if chosen is not None:
        text = Path(chosen).read_text(encoding="utf-8")
        origin = str(chosen)
    else:
        text = resources.files("iontodrive").joinpath("presets.json").read_text(encoding="utf-8")
        origin = "presets.json"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PresetError(f"{origin}: not valid JSON ({exc})") from exc
    return _parse(data, origin)


def get_preset(name: str, path: str | Path | None = None) -> Preset:
    """The preset called ``name``. Raises :class:`PresetError` listing the known names if there is none."""
    presets = load_presets(path)
    try:
        return presets[name]
    except KeyError:
        known = ", ".join(presets)
        raise PresetError(f"unknown preset {name!r}; known presets: {known}", name, "preset") from None


def build_prescription(
    name: str | None, overrides: dict[str, Any] | None = None, path: str | Path | None = None
) -> Prescription:
    """A :class:`Prescription` from preset ``name`` (or from ``overrides`` alone when ``name`` is None).

    Raises:
        PresetError: unknown preset or field.
        SafetyRefusal: the resulting prescription is invalid (names the field and its allowed range).
    """
    from iontodrive.prescription import Prescription

    if name is None:
        values = {k: v for k, v in (overrides or {}).items() if v is not None}
        unknown = sorted(set(values) - set(PRESCRIPTION_FIELDS))
        if unknown:
            raise PresetError(f"unknown prescription field(s) {unknown}", field=unknown[0])
    else:
        values = get_preset(name, path).merged(overrides)
    return Prescription(**values)


def check_preset_fits(
    name: str | None, prescription: Prescription, identity: IdentityReport, path: str | Path | None = None
) -> list[str]:
    """``prescription.check_against(identity)`` (returns its warnings), for a prescription built from preset
    ``name``.

    Raises:
        PresetModelError: the check refused, and the preset is meant for another model than
            ``identity.model`` (the message says so, with the refusal's detail).
        SafetyRefusal: the check refused otherwise (a preset for this model, no preset, or overrides).
    """
    try:
        return prescription.check_against(identity)
    except SafetyRefusal as exc:
        if name is None:
            raise
        presets = load_presets(path)
        preset = presets.get(name)
        if preset is None or preset.model is None or preset.model == identity.model:
            raise
        others = [p.name for p in presets.values() if p.model == identity.model]
        raise PresetModelError(name, preset.model, identity.model, exc, others) from exc
