"""Every rule of the suite, one module per group, in the order they run (``docs/conformance.md`` §2)."""

from __future__ import annotations

from ..rule import Rule
from . import contact, device, framing, hosts, nacks, plant, polarity, ramps, sequencing, states, watchdog

ALL_RULES: tuple[Rule, ...] = (
    *framing.RULES,
    *nacks.RULES,
    *sequencing.RULES,
    *hosts.RULES,
    *device.RULES,
    *ramps.RULES,
    *polarity.RULES,
    *watchdog.RULES,
    *contact.RULES,
    *plant.RULES,
    *states.RULES,
)

__all__ = ["ALL_RULES"]
