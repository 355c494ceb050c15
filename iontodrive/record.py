"""Session records (the public name of :mod:`iontodrive.records`, where the format, the writer, the
reader and the path rules are documented). Everything here is re-exported from there."""

from __future__ import annotations

from iontodrive.records import *  # noqa: F403
from iontodrive.records import __all__ as __all__
