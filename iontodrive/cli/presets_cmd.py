"""``iontodrive presets``: the named prescriptions, with their sources."""

from __future__ import annotations

import argparse
import json
from typing import Any

from iontodrive.cli import exitcodes


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "presets",
        help="list named prescriptions for common protocols (use with deliver --preset NAME)",
        description=(
            "List the named prescriptions shipped in iontodrive/presets.json (or the file named by "
            "$IONTODRIVE_PRESETS), each with the model it is meant for and the source of its numbers. "
            "Use one with `iontodrive deliver PORT --preset NAME`; any option given explicitly (e.g. "
            "--current-ma 3) overrides the preset's value. Units: mA, mA·min, s, Hz, %, cm²."
        ),
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="show only this preset")
    parser.add_argument("--json", action="store_true", help="print the presets as JSON")
    parser.set_defaults(func=run)


def _fields(values: dict[str, Any]) -> str:
    parts = [f"{values['current_ma']:g} mA"]
    if values.get("dose_ma_min") is not None:
        parts.append(f"{values['dose_ma_min']:g} mA·min")
    if values.get("duration_s") is not None:
        parts.append(f"{values['duration_s']:g} s")
    parts.append(str(values.get("polarity", "?")))
    wave = str(values.get("waveform", "dc"))
    if wave != "dc":
        wave += f" {values.get('pulse_frequency_hz')} Hz {values.get('duty_percent', 50)} %"
    parts.append(wave)
    parts.append(f"ramps {values.get('ramp_up_s', 30):g}/{values.get('ramp_down_s', 30):g} s")
    if values.get("electrode_area_cm2") is not None:
        parts.append(f"{values['electrode_area_cm2']:g} cm²")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    from iontodrive.presets import get_preset, load_presets

    presets = [get_preset(args.name)] if args.name else list(load_presets().values())
    if args.json:
        print(json.dumps([p.to_dict() for p in presets], indent=2, ensure_ascii=False))
        return exitcodes.OK
    for preset in presets:
        print(f"{preset.name}  ({preset.model or 'any model'})")
        print(f"    {preset.description}")
        print(f"    {_fields(preset.prescription)}")
        print(f"    source: {preset.source}")
    return exitcodes.OK
