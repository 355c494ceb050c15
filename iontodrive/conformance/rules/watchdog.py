"""The host watchdog (S10; ``docs/protocol.md`` §8.2): fed by every request that decodes, never by frames
that fail to decode, and when it expires with output on, it ramps the output to zero (never a step),
records LINK_LOST and pauses the session with its dose kept; it never resumes by itself.

Timing is judged on the host clock, because the watchdog runs on link time: a simulator running faster
than real time (``--speed``) still waits ``watchdog_ms`` of wall time. The allowances (judgement,
``docs/conformance.md`` §4): the expiry may be seen no earlier than ``watchdog_ms`` - 20 ms after the last
request the host sent (clock granularity) and no later than ``watchdog_ms`` + max(200 ms, 20 %).
"""

from __future__ import annotations

from iontodrive.protocol import DeviceState, EventCode, SetWatchdog, StatusFlags

from .. import frames
from ..probe import Probe, ramp_budget_s
from ..rule import Rule, expect, rule
from .ramps import check_ramp, observe, samples

S = DeviceState
EARLY_S = 0.02
LATE_FRACTION = 0.2
LATE_MIN_S = 0.2
FEED_PERIODS = 3  # the fed watchdog is watched for this many timeouts
BAD_FRAME_GAP_S = 0.1  # during the silence of WATCHDOG-BAD-FRAMES, a spoiled frame this often (host s)


def _short_watchdog(probe: Probe) -> int:
    timeout = probe.ident.min_watchdog_ms
    probe.ack(SetWatchdog(timeout))
    probe.watchdog_ms = timeout
    return timeout


def _link_lost(probe: Probe) -> list[float]:
    return [t for t, e in probe.events if e.code == EventCode.LINK_LOST and not e.replayed]


def _silence_and_judge(probe: Probe, timeout_ms: int, *, spoil: bool) -> str:
    start_req = probe.session_request()
    last = probe.last_request_t
    late = max(LATE_MIN_S, LATE_FRACTION * timeout_ms / 1000)
    end = last + timeout_ms / 1000 + late + 0.5
    next_spoil = last + BAD_FRAME_GAP_S
    while probe.clock() < end and not _link_lost(probe):
        if spoil and probe.clock() >= next_spoil:
            bad = frames.frame(0x0A, probe.next_seq(), crc_xor=0x8000)  # a Heartbeat with a wrong CRC
            probe.write(bad, request=False)
            next_spoil += BAD_FRAME_GAP_S
        probe.poll(0.01)
    fired = _link_lost(probe)
    lost = [e for _, e in probe.events if e.code == EventCode.LINK_LOST and not e.replayed]
    if lost:
        expect(
            lost[0].state == S.PAUSING,
            f"the LINK_LOST event carries state {lost[0].state.name}; §8.2: PAUSING",
        )
    expect(
        bool(fired),
        f"no LINK_LOST event within {(end - last):.2f} s of host silence (watchdog {timeout_ms} ms)",
    )
    after = fired[0] - last
    expect(
        after >= timeout_ms / 1000 - EARLY_S,
        f"LINK_LOST {after * 1000:.0f} ms after the last request: before the {timeout_ms} ms timeout",
    )
    expect(
        after <= timeout_ms / 1000 + late,
        f"LINK_LOST {after * 1000:.0f} ms after the last request; timeout {timeout_ms} ms "
        f"(+{late * 1000:.0f} ms allowed)",
    )
    status = probe.wait_state((S.PAUSED,), ramp_budget_s(start_req.ramp_down_ms))
    expect(bool(status.flags & StatusFlags.LINK_LOST), f"PAUSED without the LINK_LOST flag: {status.flags!r}")
    expect(status.charge_uas > 0, "the dose was not kept after the watchdog paused the session")
    seen = samples(probe)
    rate = start_req.target_current_ua * 1000 / start_req.ramp_down_ms
    note = check_ramp(seen, S.PAUSING, rate, start_req.ramp_down_ms / 1000, "watchdog ramp")
    probe.heartbeats = False
    probe.wait(probe.host_s(1.0) + timeout_ms / 1000, heartbeat=False)
    probe.heartbeats = True
    again = probe.status()
    expect(
        again.state == S.PAUSED and again.setpoint_ua == 0,
        f"after the watchdog the device went on to {again.state.name} with set-point {again.setpoint_ua} uA "
        "by itself",
    )
    return (
        f"LINK_LOST {after * 1000:.0f} ms after the last request (timeout {timeout_ms} ms); {note}; PAUSED, "
        f"dose {status.charge_uas} uA*s kept, did not resume"
    )


@rule(
    "WATCHDOG-FIRES",
    "§8.2, S10",
    "host silence for watchdog_ms ramps output to zero, LINK_LOST, PAUSED, never resumes",
    needs_load=True,
)
def watchdog_fires(probe: Probe) -> str:
    timeout = _short_watchdog(probe)
    observe(probe)
    probe.start()
    return _silence_and_judge(probe, timeout, spoil=False)


@rule(
    "WATCHDOG-BAD-FRAMES",
    "§8.2, §3.5",
    "frames that fail to decode (bad CRC) do not feed the watchdog",
    needs_load=True,
)
def watchdog_bad_frames(probe: Probe) -> str:
    timeout = _short_watchdog(probe)
    observe(probe)
    probe.start()
    return "spoiled heartbeats every 100 ms during the silence; " + _silence_and_judge(
        probe, timeout, spoil=True
    )


@rule(
    "WATCHDOG-FED", "§8.2", "requests every watchdog/4 keep a session running: no LINK_LOST", needs_load=True
)
def watchdog_fed(probe: Probe) -> str:
    timeout = _short_watchdog(probe)
    probe.start()
    probe.wait(FEED_PERIODS * timeout / 1000)
    status = probe.status()
    expect(not _link_lost(probe), "LINK_LOST although a request went out every watchdog/4")
    expect(status.state == S.HOLD, f"the fed session is in {status.state.name}, expected HOLD")
    return f"{FEED_PERIODS} x {timeout} ms with a request every {timeout // 4} ms: still HOLD"


RULES: tuple[Rule, ...] = (watchdog_fed, watchdog_fires, watchdog_bad_frames)
