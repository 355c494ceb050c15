"""The driver's check of a telemetry rate against the link budget of the port it talks through.

Only a port whose bytes are paced by a UART has a budget: a real serial device opened with pyserial at a
baud rate (a USB adapter, an on-board UART). A pty (the simulator's own, or one end of a socat pair), a
``socket://`` or ``sim://`` URL carries bytes as fast as the machine does, so no check is made there (the
simulator models a line only when asked, with ``--baud``). The budget itself is
:func:`iontodrive.protocol.budget.link_budget`, shared with the simulator's wire model.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from iontodrive.errors import SafetyRefusal
from iontodrive.protocol.budget import link_budget

logger = logging.getLogger(__name__)

_PTY_SLAVE_MAJORS = range(136, 144)  # Linux UNIX98 pty slaves (/dev/pts/N)


def paced_baud(port: Any) -> int | None:
    """The baud rate of ``port`` (a pyserial object) if a UART paces its bytes, else None (pty, URL)."""
    fd = getattr(port, "fd", None)
    baud = getattr(port, "baudrate", None)
    if not isinstance(fd, int) or fd < 0 or not isinstance(baud, int) or baud <= 0:
        return None
    try:
        if os.major(os.fstat(fd).st_rdev) in _PTY_SLAVE_MAJORS:
            return None
    except OSError:
        return None
    try:
        if os.ttyname(fd).startswith("/dev/pts/"):
            return None
    except OSError:
        pass  # not a terminal name we know: judged by its device number alone
    return baud


def check_telemetry_rate(rate_hz: int, baud: int | None) -> None:
    """Refuse a telemetry rate the line cannot carry; warn about one that leaves no room for replies.

    Raises:
        SafetyRefusal: ``rate_hz`` above what ``baud`` (8N1) carries at all; names ``rate_hz`` and the
            largest rate that fits with the reserve for replies and events.
    """
    if baud is None or rate_hz <= 0:
        return
    budget = link_budget(baud)
    verdict = budget.verdict(rate_hz)
    if verdict == "too_fast":
        raise SafetyRefusal(
            "rate_hz",
            rate_hz,
            0,
            budget.max_telemetry_hz,
            f"a {baud:,}-baud 8N1 line carries at most {budget.full_telemetry_hz} telemetry frames a second "
            f"({budget.telemetry_frame_bytes} bytes each); the device would shed the rest",
        )
    if verdict == "tight":
        logger.warning(
            "telemetry at %d Hz leaves less than %.0f %% of a %d-baud line for replies and events "
            "(up to %d Hz fits with room to spare)",
            rate_hz,
            budget.reserve * 100,
            baud,
            budget.max_telemetry_hz,
        )
