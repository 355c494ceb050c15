"""Polarity (S8; ``docs/protocol.md`` §6 POLARITY_LOCKED): fixed while output is non-zero, as seen in
telemetry, and changed only by a new session."""

from __future__ import annotations

from iontodrive.protocol import DeviceState, ErrorCode, Field, Nack, Polarity, StatusFlags, Stop

from ..probe import Probe, describe, ramp_budget_s
from ..rule import Rule, RuleFailed, expect, rule
from .ramps import HOLD_OBSERVE_DEVICE_S, observe, samples

S = DeviceState


def _output_samples_with_other_polarity(probe: Probe, polarity: Polarity) -> list[str]:
    wrong = [
        f"{s.polarity.name} at {s.device_time_ms} ms ({s.state.name}, set-point {s.setpoint_ua} uA)"
        for s in samples(probe)
        if (s.setpoint_ua > 0 or s.flags & StatusFlags.OUTPUT_ON) and s.polarity != polarity
    ]
    return wrong


@rule(
    "POLARITY-LOCK",
    "S8, §6 POLARITY_LOCKED",
    "a Start with the other polarity during output is refused and the polarity in telemetry never changes",
    needs_load=True,
)
def polarity_lock(probe: Probe) -> str:
    observe(probe)
    start = probe.start()
    other = Polarity.ANODE if start.polarity == Polarity.CATHODE else Polarity.CATHODE
    flip = probe.session_request(polarity=other)
    reply = probe.request(flip)
    if not isinstance(reply, Nack):
        raise RuleFailed(
            f"a Start with polarity {other.name} during output was answered by {describe(reply)}"
        )
    expect(
        (reply.code, reply.field)
        in ((ErrorCode.POLARITY_LOCKED, Field.POLARITY), (ErrorCode.BAD_STATE, Field.STATE)),
        f"refused with {describe(reply)}; expected POLARITY_LOCKED (field POLARITY) or BAD_STATE (field "
        "STATE)",
    )
    probe.wait(probe.host_s(HOLD_OBSERVE_DEVICE_S))
    status = probe.status()
    expect(status.polarity == start.polarity, f"status polarity is {status.polarity.name} after the refusal")
    expect(status.state == S.HOLD, f"the refused Start moved the session to {status.state.name}")
    wrong = _output_samples_with_other_polarity(probe, start.polarity)
    expect(not wrong, f"telemetry shows the polarity change during output: {'; '.join(wrong[:3])}")
    return (
        f"refused with {reply.code.name}; all {len(samples(probe))} samples with output carry "
        f"{start.polarity.name}"
    )


@rule(
    "POLARITY-SESSION",
    "S8, §4.2 Start",
    "a new session from DONE takes its own polarity, and keeps it from ramp up to the end",
    needs_load=True,
)
def polarity_session(probe: Probe) -> str:
    observe(probe)
    first = probe.start(probe.session_request(polarity=Polarity.CATHODE))
    probe.ack(Stop())
    probe.wait_state((S.DONE,), ramp_budget_s(first.ramp_down_ms))
    wrong = _output_samples_with_other_polarity(probe, Polarity.CATHODE)
    expect(not wrong, f"first session (CATHODE): {'; '.join(wrong[:3])}")
    mark = len(probe.telemetry)
    probe.start(probe.session_request(polarity=Polarity.ANODE))
    probe.wait(probe.host_s(HOLD_OBSERVE_DEVICE_S))
    second = [s for _, s in probe.telemetry[mark:] if s.setpoint_ua > 0]
    expect(bool(second), "no telemetry with output in the second session")
    bad = [s for s in second if s.polarity != Polarity.ANODE]
    expect(not bad, f"second session (ANODE) shows {bad[0].polarity.name if bad else ''} during output")
    status = probe.status()
    expect(status.polarity == Polarity.ANODE, f"status polarity {status.polarity.name}, expected ANODE")
    return f"CATHODE then ANODE sessions; {len(second)} samples of the second all ANODE"


RULES: tuple[Rule, ...] = (polarity_lock, polarity_session)
