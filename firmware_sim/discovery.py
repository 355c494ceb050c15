"""Announce running simulators so that ``iontodrive ports`` can list them.

A simulator that serves a port writes a small JSON file into a per-user runtime directory and removes it
when it exits. Readers prune the files of processes that are no longer alive, so a simulator killed with
SIGKILL disappears from the list on the next look.

Directory, first match wins:

1. ``$IONTODRIVE_SIM_DIR`` (tests use it to stay isolated);
2. ``$XDG_RUNTIME_DIR/iontodrive-sim``;
3. ``<tempdir>/iontodrive-sim-<uid>`` (``<uid>`` keeps users apart on a shared machine).

One file per simulator, ``<pid>-<port-hash>.json``::

    {"url": "socket://127.0.0.1:40123", "model": "clinic-4", "pid": 4242,
     "started": "2025-01-01T12:00:00+00:00"}

This module uses only the standard library (the simulator imports nothing of the driver but its protocol).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ENV_DIR = "IONTODRIVE_SIM_DIR"
SUFFIX = ".json"


def runtime_dir() -> Path:
    """The directory announcements live in (not created here)."""
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return Path(xdg) / "iontodrive-sim"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"iontodrive-sim-{uid}"


def announce(url: str, model: str, pid: int) -> Path:
    """Write an announcement for a simulator serving ``url``; return its path (give it to :func:`withdraw`).

    The file is written to a temporary name and renamed, so a reader never sees half of it.

    Raises:
        OSError: the runtime directory cannot be created or written.
    """
    directory = runtime_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest = hashlib.sha1(url.encode("utf-8"), usedforsecurity=False).hexdigest()[:10]
    path = directory / f"{pid}-{digest}{SUFFIX}"
    entry = {
        "url": url,
        "model": model,
        "pid": int(pid),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    handle, temp_name = tempfile.mkstemp(dir=directory, prefix=".announce-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(entry, file)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    return path


def withdraw(path: str | Path | None) -> None:
    """Remove an announcement. Never raises: a missing file (or ``None``) is already withdrawn."""
    if path is None:
        return
    with contextlib.suppress(OSError):
        Path(path).unlink()


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def list_running() -> list[dict[str, Any]]:
    """Announcements of simulators whose process is alive, oldest first.

    Files of dead processes, and files that cannot be parsed, are deleted as they are found. Each entry is
    the announced dict plus ``"path"`` (the announcement file).
    """
    directory = runtime_dir()
    if not directory.is_dir():
        return []
    running: list[dict[str, Any]] = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            pid = int(entry["pid"])
            str(entry["url"])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError):
            withdraw(path)
            continue
        if not pid_alive(pid):
            withdraw(path)
            continue
        entry["path"] = str(path)
        running.append(entry)
    running.sort(key=lambda e: (str(e.get("started", "")), e["pid"]))
    return running
