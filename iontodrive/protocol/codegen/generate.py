"""Render every generated C file, write them, or check that the written ones are current."""

from __future__ import annotations

import difflib
from pathlib import Path

from .emit_c import HEADER_NAME, SOURCE_NAME, render_header, render_source
from .emit_shim import SHIM_NAME, render_shim
from .model import Schema, load_schema

REPO_ROOT = Path(__file__).resolve().parents[3]
GENERATED_DIR = REPO_ROOT / "firmware" / "c"
"""Where the generated files live in the repository."""


def render_all(schema: Schema | None = None) -> dict[str, str]:
    """Relative path -> text of every generated file, for ``schema`` (default: the definitions now)."""
    schema = schema if schema is not None else load_schema()
    return {
        HEADER_NAME: render_header(schema),
        SOURCE_NAME: render_source(schema),
        SHIM_NAME: render_shim(schema),
    }


def generate(out_dir: Path = GENERATED_DIR) -> list[Path]:
    """Write the generated files under ``out_dir``; returns the paths written (unchanged files too)."""
    written = []
    for name, text in render_all().items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def check(out_dir: Path = GENERATED_DIR) -> list[str]:
    """Return one problem per stale or missing file under ``out_dir`` (empty when all are current)."""
    problems = []
    for name, text in render_all().items():
        path = out_dir / name
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        current = path.read_text(encoding="utf-8")
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(),
                text.splitlines(),
                f"{name} (in the repository)",
                f"{name} (generated)",
                n=1,
                lineterm="",
            )
            shown = list(diff)[:12]
            problems.append(f"{path}: stale\n" + "\n".join(shown))
    return problems
