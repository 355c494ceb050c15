"""The conformance suite (``iontodrive conformance``; docs/conformance.md).

* It passes 100 % against both simulator models, in-process on a virtual clock (no wall time waited).
* Each deliberately broken variant of the simulator (tests/conformance_variants.py) is caught: the
  parametrised test runs the rules the variant must fail plus a fixed set of others, and asserts that
  exactly the expected rules fail. The slow twin runs the whole suite against every variant.
* The command line: rows, ``--json``, ``--list``, exit codes; and (slow) a run over a pty against
  ``python -m firmware_sim --pty --speed 50``, as a firmware team would point it at a board.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import conformance_variants as cv
import pytest

from firmware_sim import Device
from firmware_sim.control import DeviceControl
from iontodrive.cli import main
from iontodrive.conformance import (
    ALL_RULES,
    Outcome,
    Probe,
    Rule,
    SimFixture,
    SuiteReport,
    run_suite,
    select_rules,
)
from iontodrive.conformance.frames import crc16_reference, frame, split_raw
from iontodrive.conformance.observe import worst_jump
from iontodrive.conformance.runner import run_rule
from iontodrive.protocol import PROTOCOL_VERSION, DeviceState, Telemetry

MODELS = ("clinic-4", "hydro-30")
# Rules that do not apply to the simulator's models (their evidence says why; docs/conformance.md §2).
NOT_APPLICABLE = frozenset({"LIMIT-SLEW"})
NOT_APPLICABLE_ON = {"clinic-4": NOT_APPLICABLE | {"PULSE-READINGS"}, "hydro-30": NOT_APPLICABLE}
FIXTURE_RULES = frozenset(r.id for r in ALL_RULES if r.needs_fixture)
# Cheap rules run next to each variant's own, to show the rest of the device still conforms.
SMOKE = ("FRAME-CRC", "FRAME-BAD-CRC", "LIMIT-SETTINGS", "SEQ-ONE-REPLY", "HOST-SESSION-OPEN", "RAMP-UP")

# variant -> the rules it must fail (whole suite; the fast test checks the part of it in its selection).
VARIANTS: dict[str, tuple[type[Device], frozenset[str]]] = {
    "crc-little-endian": (cv.CrcLittleEndian, frozenset({"FRAME-CRC", "FRAME-HEADER"})),
    "max-current-not-enforced": (
        cv.IdentityUnderReports,
        frozenset({"LIMIT-START", "LIMIT-SETTINGS", "LIMIT-SETCURRENT"}),
    ),
    "dose-cap-not-enforced": (cv.DoseCapUnderReported, frozenset({"LIMIT-START"})),
    "slew-limit-not-enforced": (
        cv.SlewUnderReported,
        frozenset({"LIMIT-SLEW", "RAMP-ABORT", "ELECTRODE-LIFT", "RESISTANCE-LIMIT"}),
    ),
    "min-current-not-enforced": (cv.MinCurrentOverReported, frozenset({"LIMIT-START", "LIMIT-SETCURRENT"})),
    "nack-without-field": (
        cv.NackWithoutField,
        frozenset(
            {
                "LIMIT-START",
                "LIMIT-PULSE",
                "LIMIT-SETTINGS",
                "NACK-INCONSISTENT",
                "NACK-DECODE",
                "LIMIT-SETCURRENT",
                "HOST-SESSION-OPEN",
                "POLARITY-LOCK",
                "STATE-TABLE",
                "CONTACT-HIGH",
                "CONTACT-LOW",
                "CONTACT-OPEN",
                "STATE-TABLE-FAULT",
            }
        ),
    ),
    "duplicate-replies": (
        cv.DuplicateReplies,
        frozenset({"FRAME-CHUNKS", "SEQ-ONE-REPLY", "SEQ-RETRY-ONCE", "SEQ-RETRY-START"}),
    ),
    "event-numbers-skip": (cv.EventNumbersSkip, frozenset({"EVENTS-NUMBERING"})),
    "events-carry-state-before": (
        cv.EventStateBefore,
        frozenset(
            {
                "EVENTS-STATE-AFTER",
                "WATCHDOG-FIRES",
                "WATCHDOG-BAD-FRAMES",
                "ELECTRODE-LIFT",
                "STATE-TABLE-FAULT",
            }
        ),
    ),
    "polarity-applied-during-output": (cv.PolarityAppliedDuringOutput, frozenset({"POLARITY-LOCK"})),
    "abort-ramps-like-stop": (cv.AbortIsStop, frozenset({"RAMP-ABORT"})),
    "step-instead-of-ramp": (
        cv.StepInsteadOfRamp,
        frozenset(
            {
                "RAMP-UP",
                "RAMP-STOP",
                "RAMP-ABORT",
                "RAMP-SETCURRENT",
                "RAMP-PAUSE-RESUME",
                "DOSE-SMALL",
                "RESISTANCE-LIMIT",
            }
        ),
    ),
    "stop-steps-to-zero": (
        cv.StopStepsToZero,
        frozenset({"RAMP-STOP", "RAMP-ABORT", "DOSE-LANDS", "DOSE-SMALL"}),
    ),
    "watchdog-never-fires": (cv.WatchdogNeverFires, frozenset({"WATCHDOG-FIRES", "WATCHDOG-BAD-FRAMES"})),
    "cache-by-seq-only": (
        cv.CacheBySeqOnly,
        frozenset(
            {
                "SEQ-RETRY-ONCE",
                "SEQ-NEW-CONTENT",
                "SEQ-RESET-CLEARS",
                "SEQ-RETRY-START",
                "HOST-CACHE-SCOPE",
                "HOST-CACHE-START",
                "SAFETY-ALWAYS",
                "HOST-CACHE-GONE",
            }
        ),
    ),
    "no-reply-cache": (
        cv.NoReplyCache,
        frozenset({"SEQ-RETRY-ONCE", "SEQ-RETRY-START", "HOST-SESSION-OPEN"}),
    ),
    "cache-shared-across-hosts": (
        cv.SharedCacheAcrossHosts,
        frozenset({"HOST-CACHE-SCOPE", "HOST-CACHE-START", "HOST-SESSION-OPEN"}),
    ),
    "safety-commands-from-cache": (cv.SafetyFromCache, frozenset({"SAFETY-ALWAYS"})),
    "no-version-refusal": (cv.NoVersionRefusal, frozenset({"VERSION-REFUSAL"})),
    "refusal-changes-watchdog": (cv.RefusalChangesWatchdog, frozenset({"LIMIT-SETTINGS"})),
    "reset-keeps-watchdog": (cv.ResetKeepsWatchdog, frozenset({"SEQ-RESET-CLEARS", "RESET-POWER-UP"})),
    "telemetry-at-half-rate": (cv.TelemetryAtHalfRate, frozenset({"TELEMETRY-RATE", "LIMIT-SETTINGS"})),
    "contact-check-during-output": (cv.ContactCheckDuringOutput, frozenset({"STATE-TABLE"})),
    "offset-read-at-zero-output": (cv.OffsetAtZeroOutput, frozenset({"RAMP-STOP"})),
    # variants only the rules with a load fixture (or a reconnecting link) can catch
    "set-current-in-fault": (cv.SetCurrentInFault, frozenset({"STATE-TABLE-FAULT"})),
    "contact-nack-names-target": (
        cv.ContactNackNamesTarget,
        frozenset({"CONTACT-HIGH", "CONTACT-LOW", "CONTACT-OPEN"}),
    ),
    "resume-skips-contact-spot": (
        cv.ResumeSkipsContactSpot,
        frozenset({"CONTACT-HIGH", "CONTACT-LOW", "CONTACT-OPEN"}),
    ),
    "ignores-resistance-limit": (cv.IgnoresResistanceLimit, frozenset({"RESISTANCE-LIMIT"})),
    "lift-ramps-like-pause": (cv.LiftRampsLikePause, frozenset({"ELECTRODE-LIFT"})),
    "cache-survives-disconnect": (cv.CacheSurvivesDisconnect, frozenset({"HOST-CACHE-GONE"})),
    "pulse-reads-average": (cv.PulseReadsAverage, frozenset({"PULSE-READINGS"})),
}
# The model a variant runs on where clinic-4 lacks what it breaks.
VARIANT_MODEL = {"pulse-reads-average": "hydro-30"}


def run(
    device: Device, rules: tuple[Rule, ...] | list[Rule] = ALL_RULES, *, fixture: bool = True
) -> SuiteReport:
    """The suite against ``device`` on a virtual clock, with the simulator's load fixture and a link that
    can make its host go away (the device is told, as its transport would tell it)."""
    link = cv.VirtualLink(device)

    def reconnect() -> cv.VirtualLink:
        device.end_host_session()
        return link

    probe = Probe(
        link,
        link.clock.now,
        seed=1,
        fixture=SimFixture(DeviceControl(device)) if fixture else None,
        reconnect=reconnect,
    )
    return run_suite(probe, rules, port="virtual")


def failing(report: SuiteReport) -> set[str]:
    return {r.rule_id for r in report.results if not r.ok and r.outcome is not Outcome.NOT_RUN}


@pytest.mark.parametrize("model", MODELS)
def test_the_suite_passes_against_both_simulator_models(model: str) -> None:
    report = run(Device(model, seed=1))
    bad = [
        (r.rule_id, r.outcome.value, r.evidence)
        for r in report.results
        if r.outcome is not Outcome.PASS
        and not (r.rule_id in NOT_APPLICABLE_ON[model] and r.outcome is Outcome.NOT_APPLICABLE)
    ]
    assert report.fatal is None
    assert not bad
    assert report.ok and len(report.results) == len(ALL_RULES)
    assert report.identity is not None and report.identity.protocol_version == PROTOCOL_VERSION


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_broken_variant_is_caught_by_its_rules_and_only_those(name: str) -> None:
    cls, must_fail = VARIANTS[name]
    rules = select_rules(ALL_RULES, sorted(must_fail | set(SMOKE)))
    report = run(cls(VARIANT_MODEL.get(name, "clinic-4"), seed=1), rules)
    assert failing(report) == must_fail & {r.id for r in rules}, [
        (r.rule_id, r.outcome.value, r.evidence) for r in report.results if not r.ok
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_broken_variant_against_the_whole_suite(name: str) -> None:
    cls, must_fail = VARIANTS[name]
    report = run(cls(VARIANT_MODEL.get(name, "clinic-4"), seed=1))
    assert failing(report) == must_fail, [(r.rule_id, r.evidence) for r in report.results if not r.ok]


def test_a_device_whose_replies_cannot_be_decoded_still_gets_the_reason() -> None:
    report = run(cv.CrcLittleEndian("clinic-4"))
    assert report.fatal is not None and "little-endian" in report.fatal
    crc = next(r for r in report.results if r.rule_id == "FRAME-CRC")
    assert crc.outcome is Outcome.FAIL and "little-endian" in crc.evidence
    readers = {r.id for r in ALL_RULES if not r.needs_identity}
    assert {r.rule_id for r in report.results if r.outcome is not Outcome.NOT_RUN} == readers
    assert not report.ok


class _TooMuchCurrent(cv.OutputRewriter):
    """Reports a measured current far above its maximum once output is on (the probe's guard must act)."""

    def rewrite(self, body: bytes) -> list[bytes]:
        frame_ = self.decoded(body)
        if frame_ is not None and isinstance(frame_.message, Telemetry) and frame_.message.setpoint_ua > 500:
            from dataclasses import replace

            from iontodrive.protocol import encode

            return [encode(replace(frame_.message, measured_ua=20 * self.model.max_current_ua))]
        return super().rewrite(body)


def test_the_probe_aborts_when_the_device_drives_more_than_its_ceiling() -> None:
    device = _TooMuchCurrent("clinic-4", seed=1)
    report = run(device, select_rules(ALL_RULES, ["RAMP-UP", "FRAME-CRC"]))
    ramp = next(r for r in report.results if r.rule_id == "RAMP-UP")
    assert (
        ramp.outcome is Outcome.FAIL and ramp.evidence.startswith("SAFETY:") and "Abort sent" in ramp.evidence
    )
    assert device.state in (DeviceState.IDLE, DeviceState.DONE)  # safe idle restored afterwards
    assert next(r for r in report.results if r.rule_id == "FRAME-CRC").outcome is Outcome.PASS


class _ResetRefused(cv.RequestInterceptor):
    def intercept(self, frame_: object) -> bytes | None:
        from iontodrive.protocol import ErrorCode, Field, MessageType, Nack, Reset, encode

        if isinstance(frame_.message, Reset):  # type: ignore[attr-defined]
            nack = Nack(int(MessageType.RESET), ErrorCode.BAD_STATE, Field.STATE, 0)
            return encode(nack, frame_.seq)  # type: ignore[attr-defined]
        return None


def test_rules_are_not_run_once_the_device_cannot_be_made_safe() -> None:
    report = run(_ResetRefused("clinic-4"), select_rules(ALL_RULES, ["FRAME-"]))
    assert report.fatal is not None and "Reset was not acknowledged" in report.fatal
    assert {r.outcome for r in report.results if r.rule_id != "FRAME-CRC"} <= {
        Outcome.NOT_RUN,
        Outcome.PASS,
        Outcome.FAIL,
    }
    assert not report.ok


def test_the_suite_drives_within_the_drivers_own_ceilings() -> None:
    ceilings = pytest.importorskip("iontodrive.ceilings", reason="needs issue 13's iontodrive.ceilings (S18)")
    link = cv.VirtualLink(cv.IdentityUnderReports("hydro-30"))
    probe = Probe(link, link.clock.now, seed=3)
    ident = probe.identify()
    assert probe.drive == ceilings.effective_identity(ident)
    assert probe.test_current_ua <= probe.ceiling_ua <= probe.drive.max_current_ua


def test_rule_outcomes_from_check_functions() -> None:
    from iontodrive.conformance import NotApplicable, RuleFailed, rule

    @rule("T-PASS", "§0", "passes")
    def passing(probe: Probe) -> str:
        return "fine"

    @rule("T-FAIL", "§0", "fails")
    def failing_rule(probe: Probe) -> str:
        raise RuleFailed("broken")

    @rule("T-NA", "§0", "does not apply")
    def not_applicable(probe: Probe) -> str:
        raise NotApplicable("no such feature")

    link = cv.VirtualLink(Device("clinic-4"))
    probe = Probe(link, link.clock.now, seed=2)
    probe.identify()
    results = [run_rule(probe, r) for r in (passing, failing_rule, not_applicable)]
    assert [(r.outcome, r.evidence) for r in results] == [
        (Outcome.PASS, "fine"),
        (Outcome.FAIL, "broken"),
        (Outcome.NOT_APPLICABLE, "no such feature"),
    ]
    assert [r.ok for r in results] == [True, False, True]


def test_reference_crc_and_raw_frames() -> None:
    assert crc16_reference(b"123456789") == 0x29B1
    good = frame(0x02, 7)
    swapped = frame(0x02, 7, crc_order="little")
    [one, two] = split_raw(good + b"\x00" + swapped)
    assert one.crc_ok and not one.crc_swapped and one.cobs_canonical
    assert not two.crc_ok and two.crc_swapped


def test_worst_jump_finds_a_step_and_allows_a_ramp() -> None:
    def sample(ms: int, ua: int) -> Telemetry:
        return Telemetry(ms, ms, DeviceState.RAMP_UP, 0, 0, ua, ua, 0, 0, 0)  # type: ignore[arg-type]

    ramp = [sample(10 * k, 50 * k) for k in range(20)]  # 5000 uA/s
    jump = worst_jump(ramp, lambda s: s.measured_ua, 5000, 2)
    assert jump is not None and jump.ok
    step = [*ramp[:5], sample(60, 1000), *ramp[7:]]
    jump = worst_jump(step, lambda s: s.measured_ua, 5000, 2)
    assert jump is not None and not jump.ok and jump.delta_ua == 1000 - 200  # 40 ms -> 60 ms


# ------------------------------------------------------------------------------------------- command


def test_cli_rows_json_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    url = "sim://hydro-30?clock=virtual"
    assert main(["conformance", url, "--rule", "FRAME-", "--rule", "SEQ-ONE"]) == 0
    text = capsys.readouterr().out
    assert "hydro-30" in text and "FRAME-CRC" in text and "PASS" in text and "CONFORMS" in text
    assert (
        main(["conformance", url, "--json", "--rule", "LIMIT-SETTINGS", "--rule", "RAMP-UP", "--no-load"])
        == 1
    )
    report = json.loads(capsys.readouterr().out)
    assert report["suite"] == "iontodrive-conformance" and report["format"] == 1
    assert report["device"]["model"] == "hydro-30" and report["ok"] is False
    by_id = {r["id"]: r for r in report["rules"]}
    assert by_id["LIMIT-SETTINGS"]["result"] == "pass"
    assert by_id["RAMP-UP"]["result"] == "not run" and by_id["RAMP-UP"]["needs_load"] is True
    assert report["counts"]["pass"] == 1 and report["counts"]["not run"] == 1


def test_cli_fails_when_the_load_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    # 50 kohm of skin: every contact check refuses, so the rules that need a load fail and say why.
    assert main(["conformance", "sim://clinic-4?clock=virtual&skin_kohm=50", "--rule", "RAMP-UP"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "load" in out


def test_cli_lists_every_rule_and_refuses_unknown_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == [r.id for r in ALL_RULES]
    assert main(["conformance", "sim://clinic-4?clock=virtual", "--rule", "NO-SUCH"]) == 2
    assert "NO-SUCH" in capsys.readouterr().err


def test_rule_ids_are_unique_and_every_rule_names_its_section() -> None:
    ids = [r.id for r in ALL_RULES]
    assert len(ids) == len(set(ids))
    assert all(r.section and r.description and r.id.upper() == r.id for r in ALL_RULES)


def test_the_manual_documents_every_rule() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "conformance.md").read_text(encoding="utf-8")
    assert [rule_id for rule_id in (r.id for r in ALL_RULES) if f"| `{rule_id}` |" not in text] == []


@pytest.fixture
def sim_pty() -> Iterator[tuple[str, str]]:
    """``python -m firmware_sim --pty --speed 50 --control 127.0.0.1:0``: (pty path, control API URL)."""
    if not hasattr(os, "openpty"):
        pytest.skip("needs a pty (POSIX)")
    pytest.importorskip("aiohttp", reason="the control API needs aiohttp (pip install '.[sim]')")
    command = [sys.executable, "-m", "firmware_sim", "--pty", "--speed", "50", "--run-for", "300"]
    proc = subprocess.Popen(
        [*command, "--control", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line and line[0] == "PORT", line
        control = proc.stdout.readline().split()
        assert control and control[0] == "CONTROL", control
        yield line[1], control[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.mark.slow
def test_the_whole_suite_over_a_pty_against_the_simulator_at_speed_50(
    sim_pty: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    port, control = sim_pty  # the fixture is the simulator's HTTP control API; the pty reopens for real
    code = main(["conformance", port, "--json", "--fixture", control])
    report = json.loads(capsys.readouterr().out)
    odd = [
        (r["id"], r["evidence"])
        for r in report["rules"]
        if r["result"] != "pass" and not (r["id"] in NOT_APPLICABLE_ON["clinic-4"] and r["result"] == "n/a")
    ]
    assert odd == []
    assert code == 0 and report["device_speed"] > 10
