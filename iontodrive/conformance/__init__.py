"""Conformance suite: checks a device against every rule of ``docs/protocol.md``.

``iontodrive conformance PORT`` runs it (``docs/conformance.md`` is the manual). From Python::

    from iontodrive.conformance import ALL_RULES, Probe, run_suite
    report = run_suite(Probe(link, clock), ALL_RULES)

Each rule is a small :class:`Rule` value (id, spec section, one-line description, check function); the
rules live one module per group in :mod:`iontodrive.conformance.rules`. The suite talks to the device
through the protocol core and the byte link only (:class:`Probe`), and brings the device back to a safe
idle state after every rule (:mod:`iontodrive.conformance.idle`).
"""

from __future__ import annotations

from .fixture import Fixture, FixtureError, FixtureUnsupported, SimFixture, open_fixture
from .idle import UnsafeDevice, restore_safe_idle
from .probe import Probe, SuiteError
from .rule import NotApplicable, Outcome, Rule, RuleFailed, RuleResult, expect, rule
from .rules import ALL_RULES
from .runner import SuiteReport, run_rule, run_suite, select_rules

__all__ = [
    "ALL_RULES",
    "Fixture",
    "FixtureError",
    "FixtureUnsupported",
    "NotApplicable",
    "Outcome",
    "Probe",
    "Rule",
    "RuleFailed",
    "RuleResult",
    "SimFixture",
    "SuiteError",
    "SuiteReport",
    "UnsafeDevice",
    "expect",
    "open_fixture",
    "restore_safe_idle",
    "rule",
    "run_rule",
    "run_suite",
    "select_rules",
]
