"""``python -m iontodrive.cli``: the same as the ``iontodrive`` command."""

from __future__ import annotations

import sys

from iontodrive.cli import main

if __name__ == "__main__":
    sys.exit(main())
