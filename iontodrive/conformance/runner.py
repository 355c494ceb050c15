"""Running rules against a device: one :class:`RuleResult` per rule, the device made safe after each.

Order of work: connect (flush, ``Identify``, measure the device's speed), bring the device to safe idle
(:func:`~iontodrive.conformance.idle.restore_safe_idle`), then for each rule: clear the probe's record,
run the check, judge any safety violation the probe saw while it ran (a current above the ceiling fails
the rule whatever the check said), and restore safe idle. If safe idle cannot be restored, the remaining
rules are reported NOT_RUN and the suite ends: nothing more is sent to a device in an unknown state.
If the device cannot even be identified (its replies do not decode, or it is silent), only the rules
that read what it sends without needing an answer run (``needs_identity=False``: they say what is wrong
with its frames); the others are NOT_RUN.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from iontodrive.errors import IontodriveError
from iontodrive.protocol import IdentityReport

from . import frames
from .fixture import FixtureError, FixtureUnsupported
from .idle import UnsafeDevice, restore_safe_idle
from .probe import Probe, SuiteError
from .rule import NotApplicable, Outcome, Rule, RuleFailed, RuleResult

log = logging.getLogger(__name__)

SUITE_NAME = "iontodrive-conformance"
#: Bumped when the JSON report's layout changes (docs/conformance.md §5).
REPORT_FORMAT = 1
NO_LOAD = "needs a load; run without --no-load to check it"
NO_FIXTURE = "needs a load fixture: --fixture sim|http://HOST:PORT/|MODULE:NAME (docs/conformance.md §3.1)"


@dataclass
class SuiteReport:
    """Everything one run found: the device, the rows, and how long it took."""

    port: str
    identity: IdentityReport | None
    speed: float
    started_utc: str
    duration_s: float = 0.0
    results: list[RuleResult] = field(default_factory=list)
    fatal: str | None = None  # why the run could not start or had to stop early
    fixture: str | None = None  # the load fixture's name, None without one

    @property
    def ok(self) -> bool:
        """True when every rule passed or does not apply, and the run was not cut short."""
        return self.fatal is None and bool(self.results) and all(r.ok for r in self.results)

    def counts(self) -> dict[str, int]:
        """Number of rows per outcome value (every outcome present, zero included)."""
        tally = {outcome.value: 0 for outcome in Outcome}
        for result in self.results:
            tally[result.outcome.value] += 1
        return tally


def select_rules(rules: Sequence[Rule], patterns: Iterable[str] = ()) -> list[Rule]:
    """The rules whose id equals or starts with one of ``patterns`` (all if none); unknown patterns raise
    ValueError naming them."""
    wanted = [p.upper() for p in patterns]
    unknown = [p for p in wanted if not any(r.id == p or r.id.startswith(p) for r in rules)]
    if unknown:
        raise ValueError(f"no rule matches {', '.join(unknown)}; `--list` shows the rule ids")
    return [r for r in rules if not wanted or any(r.id == p or r.id.startswith(p) for p in wanted)]


def run_suite(
    probe: Probe,
    rules: Sequence[Rule],
    *,
    port: str = "",
    with_load: bool = True,
    on_connect: Callable[[SuiteReport], None] | None = None,
    on_result: Callable[[RuleResult], None] | None = None,
) -> SuiteReport:
    """Run ``rules`` in order against the device behind ``probe`` and return the report.

    ``with_load=False`` reports the rules that need a load as NOT_RUN instead of running them (no load
    connected); so are the rules that need a fixture when ``probe.fixture`` is None. After each rule
    that used the fixture it is restored (:meth:`~iontodrive.conformance.fixture.Fixture.restore`);
    a fixture that fails stops the run like a device that cannot be made safe. ``on_connect`` is called
    once the device is identified (or could not be);
    ``on_result`` is called with each row as soon as it is known (for live printing).
    Never raises for what the device does; a failure of the suite itself (:class:`SuiteError`)
    propagates.
    """
    started = time.monotonic()
    report = SuiteReport(port, None, 1.0, datetime.now(UTC).isoformat(timespec="seconds"))
    report.fixture = probe.fixture.name if probe.fixture is not None else None

    def emit(result: RuleResult) -> None:
        report.results.append(result)
        if on_result is not None:
            on_result(result)

    try:
        report.identity = probe.identify()
        report.speed = probe.measure_speed()
        restore_safe_idle(probe)
    except (RuleFailed, UnsafeDevice, IontodriveError) as exc:
        report.fatal = f"cannot start: {exc}{diagnose_undecodable(probe)}"
    if on_connect is not None:
        on_connect(report)
    if report.fatal is not None:
        # The device cannot be talked to: the rules that only read what it sends still say why.
        for rule in rules:
            if rule.needs_identity:
                emit(_row(rule, Outcome.NOT_RUN, report.fatal, 0.0))
            else:
                emit(run_rule(probe, rule))
        report.duration_s = time.monotonic() - started
        return report
    for index, rule in enumerate(rules):
        if rule.needs_load and not with_load:
            emit(_row(rule, Outcome.NOT_RUN, NO_LOAD, 0.0))
            continue
        if rule.needs_fixture and probe.fixture is None:
            emit(_row(rule, Outcome.NOT_RUN, NO_FIXTURE, 0.0))
            continue
        emit(run_rule(probe, rule))
        try:
            if rule.needs_fixture and probe.fixture is not None:
                probe.fixture.restore()
            restore_safe_idle(probe)
        except (UnsafeDevice, IontodriveError, FixtureError) as exc:
            report.fatal = f"stopped after {rule.id}: {exc}"
            log.error("conformance run stopped after %s: %s", rule.id, exc)
            for later in rules[index + 1 :]:
                emit(_row(later, Outcome.NOT_RUN, report.fatal, 0.0))
            break
    report.duration_s = time.monotonic() - started
    return report


def diagnose_undecodable(probe: Probe) -> str:
    """A hint for a device that sends bytes the probe cannot decode ("" if it sent nothing or all was "
    "well)."""
    seen = frames.split_raw(bytes(probe.raw))
    if not seen or not probe.decode_errors:
        return "" if seen else " (nothing at all came back)"
    swapped = sum(1 for f in seen if f.crc_swapped)
    kinds = sorted({error.kind.value for _, error in probe.decode_errors})
    hint = f"; {swapped} carry their CRC little-endian" if swapped else ""
    return (
        f" ({len(seen)} frames came back, {len(probe.decode_errors)} failed to decode: "
        f"{', '.join(kinds)}{hint})"
    )


def run_rule(probe: Probe, rule: Rule) -> RuleResult:
    """Run one rule's check on a probe whose device is at safe idle; never raises for the device's doing."""
    probe.telemetry.clear()
    probe.events.clear()
    probe.replies.clear()
    probe.decode_errors.clear()
    probe.raw.clear()
    probe.reply_times_s.clear()
    probe.safety_violations.clear()
    t0 = probe.clock()
    wall0 = time.monotonic()
    try:
        evidence = rule.check(probe)
        outcome = Outcome.PASS
    except NotApplicable as exc:
        outcome, evidence = Outcome.NOT_APPLICABLE, str(exc)
    except FixtureUnsupported as exc:
        outcome, evidence = Outcome.NOT_RUN, f"the fixture cannot do what this rule needs: {exc}"
    except FixtureError as exc:
        outcome, evidence = Outcome.ERROR, f"the fixture failed: {exc}"
    except RuleFailed as exc:
        outcome, evidence = Outcome.FAIL, str(exc)
    except SuiteError:
        raise
    except IontodriveError as exc:
        outcome, evidence = Outcome.ERROR, f"{type(exc).__name__}: {exc}"
    if probe.safety_violations:
        outcome = Outcome.FAIL
        evidence = "SAFETY: " + "; ".join(probe.safety_violations[:3]) + f" (check said: {evidence})"
    log.info(
        "%s %s in %.3f s (host clock %.3f s)",
        rule.id,
        outcome.value,
        time.monotonic() - wall0,
        probe.clock() - t0,
    )
    return _row(rule, outcome, evidence, time.monotonic() - wall0)


def _row(rule: Rule, outcome: Outcome, evidence: str, duration_s: float) -> RuleResult:
    return RuleResult(
        rule.id,
        rule.section,
        rule.description,
        outcome,
        evidence,
        rule.needs_load,
        duration_s,
        rule.needs_fixture,
    )
