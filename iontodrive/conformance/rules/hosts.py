"""Host sessions and safety commands (protocol version 2; ``docs/protocol.md`` §7.3, §8.1; S17).

A second host is simulated on the same link by opening a new host session with another nonce, exactly
as a second host process would after the first one went away, and by numbering its requests as the
first host did (the flaw of version 1: a new host numbering 1, 2, ... was answered from the first host's
memory). The same holds for a host that comes back after the transport saw it go (``HOST-CACHE-GONE``:
the probe closes and reopens the link and sends before opening a host session). The safety commands
(Stop, Abort, Pause) must take effect on every arrival, whatever their sequence number.
"""

from __future__ import annotations

from collections.abc import Callable

from iontodrive.protocol import (
    MAX_HOST_NONCE,
    SAFETY_REQUESTS,
    Abort,
    Ack,
    DeviceState,
    ErrorCode,
    EventCode,
    Field,
    GetStatus,
    Nack,
    OpenSession,
    Pause,
    SessionOpened,
    SetWatchdog,
    StatusReport,
    Stop,
)

from ..probe import Probe, describe, ramp_budget_s
from ..rule import NotApplicable, Rule, RuleFailed, expect, rule
from .ramps import observe

S = DeviceState


@rule(
    "HOST-SESSION-OPEN",
    "§7.3, §8.1",
    "OpenSession answers SessionOpened: nonce echoed, sessions counted, previous nonce named",
    min_version=2,
)
def host_session_open(probe: Probe) -> str:
    first_nonce = probe.nonce
    opened = probe.open_session()
    expect(
        opened.previous_nonce == first_nonce,
        f"SessionOpened names previous nonce {opened.previous_nonce}; the host session it replaced had "
        f"{first_nonce}",
    )
    seq = probe.next_seq()
    nonce = probe.new_nonce()
    second = probe.expect_reply(OpenSession(nonce), SessionOpened, seq)
    probe.nonce = nonce
    retried = probe.expect_reply(OpenSession(nonce), SessionOpened, seq)
    expect(
        retried == second,
        f"a retried OpenSession (same seq and nonce) was answered {describe(retried)}; the first time "
        f"{describe(second)} (§7.3: the same answer, nothing new opened)",
    )
    expect(
        second.host_session_no == (opened.host_session_no + 1) & 0xFFFF_FFFF,
        f"host_session_no {opened.host_session_no} then {second.host_session_no}; expected +1",
    )
    expect(
        second.previous_nonce == opened.host_nonce,
        f"previous_nonce {second.previous_nonce}, expected {opened.host_nonce}",
    )
    refused = probe.request(OpenSession(0))
    if not isinstance(refused, Nack):
        raise RuleFailed(
            f"OpenSession(0) was answered by {describe(refused)}; nonce 0 means no session (§7.3)"
        )
    expect(
        refused.code == ErrorCode.OUT_OF_RANGE and refused.field == Field.HOST_NONCE,
        f"OpenSession(0) refused with {describe(refused)}; expected OUT_OF_RANGE naming HOST_NONCE",
    )
    expect(
        (refused.minimum, refused.maximum) == (1, MAX_HOST_NONCE),
        f"OpenSession(0) refused with range {refused.minimum}..{refused.maximum}; expected "
        f"1..{MAX_HOST_NONCE}",
    )
    opened_events = [e for _, e in probe.events if e.code == EventCode.HOST_SESSION_OPENED and not e.replayed]
    expect(
        len(opened_events) >= 2, f"{len(opened_events)} HOST_SESSION_OPENED events for two sessions opened"
    )
    return (
        f"sessions {opened.host_session_no} and {second.host_session_no}, previous nonces named; nonce 0 "
        "refused naming HOST_NONCE"
    )


def second_host_reuses(probe: Probe, arrive: Callable[[], object], how: str) -> str:
    """The first host sends a SetWatchdog and a GetStatus, then leaves the watchdog elsewhere; ``arrive``
    brings the second host; it sends the very same frames (same seq, same bytes). Fail the rule unless
    both are executed afresh (§7.3: never answered from the first host's memory)."""
    ident = probe.ident
    first_value = ident.min_watchdog_ms
    seq_a, seq_b = probe.next_seq(), probe.next_seq()
    probe.ack(SetWatchdog(first_value), seq_a)
    stale = probe.expect_reply(GetStatus(), StatusReport, seq_b)
    probe.ack(SetWatchdog(ident.max_watchdog_ms))  # the first host leaves the watchdog elsewhere
    arrive()
    reply = probe.request(SetWatchdog(first_value), seq_a)  # the very same frame the first host sent
    expect(
        isinstance(reply, Ack),
        f"the second host's SetWatchdog({first_value}) ({how}) was answered {describe(reply)}",
    )
    again = probe.request(GetStatus(), seq_b)
    if not isinstance(again, StatusReport):
        raise RuleFailed(f"the second host's GetStatus ({how}) was answered {describe(again)}")
    expect(
        again != stale,
        f"the second host's GetStatus ({how}) got the first host's StatusReport again, byte for byte",
    )
    status = probe.status()
    expect(
        status.watchdog_ms == first_value,
        f"the second host's SetWatchdog({first_value}) (same seq and bytes as the first host's; {how}) was "
        f"answered from the first host's memory and not executed: watchdog {status.watchdog_ms} ms",
    )
    return (
        f"seq {seq_a} and {seq_b} reused by a second host ({how}): executed afresh (watchdog "
        f"{status.watchdog_ms} ms, fresh status)"
    )


@rule(
    "HOST-CACHE-SCOPE",
    "§7.3, S17",
    "a second host numbering its requests as the first did is never answered from the first host's memory",
    min_version=2,
)
def host_cache_scope(probe: Probe) -> str:
    return second_host_reuses(probe, probe.open_session, "after its OpenSession")


@rule(
    "HOST-CACHE-GONE",
    "§7.3, S17",
    "after the host disconnects, a request with a remembered seq and bytes is executed afresh: the memory "
    "of answers does not outlive its host",
    min_version=2,
)
def host_cache_gone(probe: Probe) -> str:
    if not probe.can_reconnect:
        raise NotApplicable("this link cannot make its host go away as the device's transport would see it")
    return second_host_reuses(probe, probe.reconnect, "after the first host disconnected, no OpenSession")


@rule(
    "HOST-CACHE-START",
    "§7.3, S17",
    "a second host's Start with the first host's seq and bytes starts a session; its Stop stops it",
    needs_load=True,
    min_version=2,
)
def host_cache_start(probe: Probe) -> str:
    observe(probe)
    start = probe.session_request()
    seq_start, seq_stop = probe.next_seq(), probe.next_seq()
    up, down = ramp_budget_s(start.ramp_up_ms), ramp_budget_s(start.ramp_down_ms)
    reply = probe.request(start, seq_start)
    expect(isinstance(reply, Ack), f"Start answered {describe(reply)}")
    probe.await_telemetry_state((S.HOLD,), up)
    probe.ack(Stop(), seq_stop)
    probe.await_telemetry_state((S.DONE,), down)
    first_id = probe.status().session_id
    probe.open_session()  # the second host
    reply = probe.request(start, seq_start)
    expect(isinstance(reply, Ack), f"the second host's Start answered {describe(reply)}")
    status = probe.status()
    expect(
        status.session_id == (first_id + 1) & 0xFFFF and status.state in (S.CONTACT_CHECK, S.RAMP_UP, S.HOLD),
        f"the second host's Start was acknowledged from memory and started nothing: {status.state.name}, "
        f"session {status.session_id}",
    )
    probe.await_telemetry_state((S.HOLD,), up)
    probe.ack(Stop(), seq_stop)
    after = probe.status()
    expect(
        after.state in (S.RAMP_DOWN, S.DONE),
        "the second host's Stop (same seq as the first host's Stop) was acknowledged but not executed: "
        f"{after.state.name}, set-point {after.setpoint_ua} uA",
    )
    return (
        f"second host: Start seq {seq_start} started session {status.session_id}; Stop seq {seq_stop} "
        "stopped it"
    )


@rule(
    "SAFETY-ALWAYS",
    "§7.3, S17, S16",
    "Stop, Abort and Pause take effect on every arrival, even repeated with a remembered seq and bytes",
    needs_load=True,
    min_version=2,
)
def safety_always(probe: Probe) -> str:
    observe(probe)
    start = probe.session_request()
    up, down = ramp_budget_s(start.ramp_up_ms), ramp_budget_s(start.ramp_down_ms)
    notes = []
    for command in sorted(SAFETY_REQUESTS, key=lambda cls: cls.TYPE):
        message = command()
        seq = probe.next_seq()
        # Between the two arrivals only heartbeats and a few requests go out, so that a device that
        # (wrongly) remembers safety commands still remembers this one (§7.3: at least 64 answers).
        probe.ack(start)
        probe.await_telemetry_state((S.HOLD,), up)
        probe.ack(message, seq)
        if isinstance(message, Pause):
            probe.await_telemetry_state((S.PAUSED,), down)
            probe.ack(Stop())
        probe.await_telemetry_state((S.DONE,), down)
        probe.ack(start)
        probe.await_telemetry_state((S.HOLD,), up)
        reply = probe.request(message, seq)  # the same frame again
        expect(
            isinstance(reply, Ack),
            f"{type(message).__name__} repeated with seq {seq} answered {describe(reply)}",
        )
        status = probe.status()
        expect(
            status.state in (S.RAMP_DOWN, S.PAUSING, S.DONE, S.PAUSED),
            f"{type(message).__name__} repeated with its remembered seq {seq} was acknowledged but not "
            "executed: "
            f"{status.state.name}, set-point {status.setpoint_ua} uA",
        )
        probe.request(Abort())
        probe.wait_state((S.DONE,), probe.ident.max_ramp_ms / 1000 + 1)
        notes.append(f"{type(message).__name__} -> {status.state.name}")
    return "repeated with a remembered seq, each executed: " + ", ".join(notes)


RULES: tuple[Rule, ...] = (
    host_session_open,
    host_cache_scope,
    host_cache_gone,
    host_cache_start,
    safety_always,
)
