"""The contact refusals (``docs/protocol.md`` §6 ``CONTACT_HIGH``, ``CONTACT_LOW``, ``CONTACT_OPEN``; §4.3
contact checks; S3), provoked with the load fixture (:mod:`iontodrive.conformance.fixture`).

For each of the three, the fixture connects a load beyond the limit the device itself reports (four times
its high limit, a quarter of its low limit, or no load at all), and the rule checks the three requests
that measure the contact:

* ``CheckContact`` in IDLE answers a ContactReport with the verdict HIGH, LOW or OPEN, the same limits as
  on the nominal load, an impedance beyond them, records ``CONTACT_FAILED`` (value = the impedance) and
  clears the ``CONTACT_OK`` flag; the state stays IDLE;
* ``Start`` in IDLE is refused with the code, field ``IMPEDANCE_OHM``, the impedance as value and the
  limit as ``maximum`` (HIGH) or ``minimum`` (LOW), or the value ``OPEN_CIRCUIT_OHM`` (OPEN), and
  changes nothing (no session, no event);
* ``Resume`` of a paused session is refused the same way, and the session stays PAUSED with its dose.
"""

from __future__ import annotations

from collections.abc import Callable

from iontodrive.protocol import (
    MAX_PROBE_CURRENT_UA,
    OPEN_CIRCUIT_OHM,
    CheckContact,
    ContactReport,
    ContactVerdict,
    DeviceState,
    ErrorCode,
    Event,
    EventCode,
    Field,
    Message,
    Nack,
    Pause,
    Resume,
    StatusFlags,
)

from ..fixture import Fixture
from ..probe import Probe, describe, ramp_budget_s
from ..rule import Rule, RuleFailed, expect, rule
from .device import verdict_for
from .nacks import stable_status

S = DeviceState
#: Device seconds the load is left to settle after the fixture changed it, before anything is measured.
SETTLE_DEVICE_S = 0.1
#: Host seconds the CONTACT_FAILED event of a CheckContact is waited for (it is sent after the reply).
EVENT_WAIT_HOST_S = 0.25
#: The loads the rules ask for, against the device's own limits: beyond them by this factor.
BEYOND_LIMIT = 4


def _contact(probe: Probe) -> ContactReport:
    message = CheckContact(MAX_PROBE_CURRENT_UA, probe.test_current_ua)
    reply = probe.request(message)
    if not isinstance(reply, ContactReport):
        raise RuleFailed(f"{describe(message)} was answered by {describe(reply)}, expected ContactReport")
    return reply


def _settle(probe: Probe) -> None:
    probe.wait(probe.host_s(SETTLE_DEVICE_S))


def _judge_report(report: ContactReport, nominal: ContactReport, verdict: ContactVerdict, where: str) -> None:
    expect(
        report.verdict == verdict,
        f"CheckContact in {where} on the fixture's {verdict.name} load reports {report.verdict.name} at "
        f"{report.impedance_ohm} ohm (limits {report.low_limit_ohm}..{report.high_limit_ohm})",
    )
    expect(
        verdict_for(report) == verdict,
        f"CheckContact in {where}: verdict {verdict.name} but {report.impedance_ohm} ohm within "
        f"{report.low_limit_ohm}..{report.high_limit_ohm} does not earn it",
    )
    expect(
        (report.low_limit_ohm, report.high_limit_ohm) == (nominal.low_limit_ohm, nominal.high_limit_ohm),
        f"CheckContact in {where}: limits {report.low_limit_ohm}..{report.high_limit_ohm} ohm, on the "
        f"nominal load {nominal.low_limit_ohm}..{nominal.high_limit_ohm} (S3: set by the target)",
    )


def _judge_refusal(
    probe: Probe, message: Message, code: ErrorCode, report: ContactReport, where: str
) -> Nack:
    """Send ``message``; fail the rule unless it is refused with ``code`` as §6 says and changes nothing."""
    before = probe.status()
    reply = probe.request(message)
    name = f"{type(message).__name__} in {where}"
    if not isinstance(reply, Nack):
        probe.request(Pause())  # it must not have started output: take it back to zero at once
        raise RuleFailed(
            f"{name} on a {code.name.removeprefix('CONTACT_')} contact was answered by {describe(reply)}; "
            f"§4.3 says refused {code.name}"
        )
    got = describe(reply)
    expect(reply.code == code, f"{name}: refused with {got}; expected {code.name} (§6)")
    expect(reply.field == Field.IMPEDANCE_OHM, f"{name}: the Nack names field {reply.field.name}: {got}")
    if code == ErrorCode.CONTACT_OPEN:
        expect(reply.value == OPEN_CIRCUIT_OHM, f"{name}: value {reply.value}, expected {OPEN_CIRCUIT_OHM}")
    elif code == ErrorCode.CONTACT_HIGH:
        expect(
            reply.maximum == report.high_limit_ohm,
            f"{name}: maximum {reply.maximum}; the high limit is {report.high_limit_ohm} ohm: {got}",
        )
        expect(reply.value > reply.maximum, f"{name}: the impedance {reply.value} is not above the limit")
    else:
        expect(
            reply.minimum == report.low_limit_ohm,
            f"{name}: minimum {reply.minimum}; the low limit is {report.low_limit_ohm} ohm: {got}",
        )
        expect(
            0 <= reply.value < reply.minimum, f"{name}: the impedance {reply.value} is not below the limit"
        )
    after = probe.status()
    changed = {
        k: (v, stable_status(after)[k])
        for k, v in stable_status(before).items()
        if stable_status(after)[k] != v
    }
    expect(not changed, f"{name} was refused but changed {changed} (a refusal changes nothing, §6)")
    expect(
        after.charge_uas == before.charge_uas,
        f"{name} was refused but the dose moved from {before.charge_uas} to {after.charge_uas} uA*s",
    )
    return reply


def contact_refusal(
    probe: Probe, code: ErrorCode, verdict: ContactVerdict, spoil: Callable[[Fixture, ContactReport], None]
) -> str:
    """The check of one contact refusal (see the module docstring); ``spoil`` sets the fixture's load."""
    fixture = probe.load_fixture
    nominal = _contact(probe)
    expect(
        nominal.verdict == ContactVerdict.OK,
        f"on the fixture's nominal load ({fixture.nominal_ohm} ohm) the contact check says "
        f"{nominal.verdict.name} at {nominal.impedance_ohm} ohm: the fixture's load must pass (§3)",
    )
    spoil(fixture, nominal)
    _settle(probe)
    mark = len(probe.events)
    report = _contact(probe)
    _judge_report(report, nominal, verdict, "IDLE")

    def failed_events() -> list[Event]:
        return [e for _, e in probe.events[mark:] if e.code == EventCode.CONTACT_FAILED and not e.replayed]

    probe.wait_until(lambda: bool(failed_events()), EVENT_WAIT_HOST_S)  # it follows the reply
    failed = failed_events()
    expect(bool(failed), "CheckContact on a failing contact recorded no CONTACT_FAILED event (§4.3)")
    expect(
        failed[0].value == report.impedance_ohm,
        f"CONTACT_FAILED carries {failed[0].value}; the report said {report.impedance_ohm} ohm",
    )
    status = probe.status()
    expect(status.state == S.IDLE, f"CheckContact moved the device to {status.state.name} (§4.3)")
    expect(
        not status.flags & StatusFlags.CONTACT_OK,
        "the CONTACT_OK flag is still set after a failed contact check (§4.3)",
    )
    start_nack = _judge_refusal(probe, probe.session_request(), code, report, "IDLE")
    fixture.restore()
    _settle(probe)
    start = probe.start(until=(S.RAMP_UP, S.HOLD))  # paused early in the ramp: a short ramp down
    probe.ack(Pause())
    probe.wait_state((S.PAUSED,), ramp_budget_s(start.ramp_down_ms))
    spoil(fixture, nominal)
    _settle(probe)
    paused = _contact(probe)
    _judge_report(paused, nominal, verdict, "PAUSED")
    resume_nack = _judge_refusal(probe, Resume(), code, paused, "PAUSED")
    return (
        f"{verdict.name} load: CheckContact {report.impedance_ohm} ohm (limits {report.low_limit_ohm}.."
        f"{report.high_limit_ohm}), CONTACT_FAILED recorded; Start refused {code.name} value "
        f"{start_nack.value}, Resume of the paused session refused value {resume_nack.value}; nothing changed"
    )


def _high(fixture: Fixture, nominal: ContactReport) -> None:
    fixture.set_load_ohm(BEYOND_LIMIT * nominal.high_limit_ohm)


def _low(fixture: Fixture, nominal: ContactReport) -> None:
    fixture.set_load_ohm(max(1, nominal.low_limit_ohm // BEYOND_LIMIT))


def _open(fixture: Fixture, nominal: ContactReport) -> None:
    fixture.open_circuit()


@rule(
    "CONTACT-HIGH",
    "§6 CONTACT_HIGH, §4.3, S3",
    "above the high limit: CheckContact says HIGH; Start and Resume are refused CONTACT_HIGH naming the "
    "impedance and the limit, and change nothing",
    needs_load=True,
    needs_fixture=True,
)
def contact_high(probe: Probe) -> str:
    return contact_refusal(probe, ErrorCode.CONTACT_HIGH, ContactVerdict.HIGH, _high)


@rule(
    "CONTACT-LOW",
    "§6 CONTACT_LOW, §4.3, S3",
    "below the short-circuit limit: CheckContact says LOW; Start and Resume are refused CONTACT_LOW naming "
    "the impedance and the limit, and change nothing",
    needs_load=True,
    needs_fixture=True,
)
def contact_low(probe: Probe) -> str:
    return contact_refusal(probe, ErrorCode.CONTACT_LOW, ContactVerdict.LOW, _low)


@rule(
    "CONTACT-OPEN",
    "§6 CONTACT_OPEN, §4.3, S3",
    "no contact: CheckContact says OPEN; Start and Resume are refused CONTACT_OPEN with the open-circuit "
    "value, and change nothing",
    needs_load=True,
    needs_fixture=True,
)
def contact_open(probe: Probe) -> str:
    return contact_refusal(probe, ErrorCode.CONTACT_OPEN, ContactVerdict.OPEN, _open)


RULES: tuple[Rule, ...] = (contact_high, contact_low, contact_open)
