"""What a conformance rule is, and what checking one yields.

A :class:`Rule` is a small value: an id (``FRAME-CRC-ORDER``), the section of ``docs/protocol.md`` it
checks (``§2.3``), a one-line description, whether it needs an electrical load on the output, and a check
function. The check function gets a :class:`~iontodrive.conformance.probe.Probe` (the link to the device
under test) and returns the *evidence* for a pass, a short sentence with the figures it measured. It
reports a failure by raising :class:`RuleFailed` (usually through :func:`expect`), with the evidence that
shows the device breaking the rule, and a rule that does not apply to this device (pulsed DC on a DC-only
model, a limit no request can reach) raises :class:`NotApplicable` with the reason.

The runner (:mod:`iontodrive.conformance.runner`) turns these into :class:`RuleResult` rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .probe import Probe


class Outcome(Enum):
    """The result of one rule. Only PASS and NOT_APPLICABLE let the suite exit with status 0."""

    PASS = "pass"
    FAIL = "fail"
    NOT_APPLICABLE = "n/a"  # the device's identity says the feature is absent, or no request can reach it
    ERROR = "error"  # the check could not be completed (no answer, link lost): counts as a failure
    NOT_RUN = "not run"  # no load or fixture for it, or the device could not be made safe before it


class RuleFailed(Exception):
    """Raised by a check function: the device broke the rule; the message is the evidence."""


class NotApplicable(Exception):
    """Raised by a check function: the rule does not apply to this device; the message says why."""


def expect(condition: bool, evidence: str) -> None:
    """Raise :class:`RuleFailed` with ``evidence`` unless ``condition`` holds."""
    if not condition:
        raise RuleFailed(evidence)


CheckFunction = Callable[["Probe"], str]


@dataclass(frozen=True, slots=True)
class Rule:
    """One checkable statement of the specification.

    Attributes:
        id: stable identifier, upper case with dashes (``WATCHDOG-FIRES``); JSON reports use it.
        section: the section of ``docs/protocol.md`` the rule checks (``§8.2``), or of the field guide's
            safety requirements (``S2``) where the protocol refers to them.
        description: one line saying what must hold.
        check: the check function (see the module docstring).
        needs_load: True if the rule starts output, so that a load must be connected (the simulator's
            plant provides one; on a bench board, the resistor of ``docs/conformance.md`` §3).
        min_version: the protocol version that introduced what the rule checks (2 for host sessions, the
            version refusal and the request x state table); ``--list`` shows it.
        needs_identity: False for the few rules that only read what the device sends, so that they still
            run (and explain why) when the device's replies cannot even be decoded.
        needs_fixture: True if the rule changes the load (:mod:`iontodrive.conformance.fixture`): without
            a fixture (``--fixture``) it is reported NOT_RUN.
    """

    id: str
    section: str
    description: str
    check: CheckFunction
    needs_load: bool = False
    min_version: int = 1
    needs_identity: bool = True
    needs_fixture: bool = False


@dataclass(frozen=True, slots=True)
class RuleResult:
    """The outcome of one rule against one device, with its evidence and how long it took (host s)."""

    rule_id: str
    section: str
    description: str
    outcome: Outcome
    evidence: str
    needs_load: bool
    duration_s: float
    needs_fixture: bool = False

    @property
    def ok(self) -> bool:
        """True for PASS and NOT_APPLICABLE."""
        return self.outcome in (Outcome.PASS, Outcome.NOT_APPLICABLE)


def rule(
    rule_id: str,
    section: str,
    description: str,
    *,
    needs_load: bool = False,
    min_version: int = 1,
    needs_identity: bool = True,
    needs_fixture: bool = False,
) -> Callable[[CheckFunction], Rule]:
    """Decorator: turn a check function into a :class:`Rule`."""

    def make(check: CheckFunction) -> Rule:
        return Rule(
            rule_id, section, description, check, needs_load, min_version, needs_identity, needs_fixture
        )

    return make
