"""Bringing the device under test back to a safe idle state, before the first rule and after each one.

"Safe idle" is: no session, output at zero (state IDLE, ``setpoint_ua`` 0, ``OUTPUT_ON`` clear), and the
power-up settings (watchdog 2 s, telemetry 2 Hz, a fresh event ring and memory of answers), reached by a
``Reset`` (§4.2, S15) once output is at zero, followed by a new host session (``OpenSession``). The way
there only ever lowers the output, and always by the device's own ramps: ``Abort`` for any session state
(the fastest ramp the device allows, never a step), then ``ClearFault`` for a latched fault once its
trip ramp has ended, then ``Reset``.
"""

from __future__ import annotations

from iontodrive.protocol import (
    Abort,
    Ack,
    ClearFault,
    DeviceState,
    Nack,
    Reset,
    StatusFlags,
    StatusReport,
)
from iontodrive.protocol.rules import IDLE_STATES, SESSION_STATES

from .probe import Probe, describe
from .rule import RuleFailed

SETTLE_DEVICE_S = 1.0  # device time allowed on top of the ramp's own length
RESET_SETTLE_HOST_S = 0.05  # host time read after a Reset, for the restart's own frames


class UnsafeDevice(Exception):
    """The device could not be brought to a safe idle state; the message says what it did instead."""


def await_zero_output(probe: Probe) -> StatusReport:
    """Poll GetStatus until the output is at zero (set-point 0, ``OUTPUT_ON`` clear) and return that
    status; a device still ramping is given set-point / slew limit plus SETTLE_DEVICE_S of device time
    (+1 s of host slack).

    Raises:
        RuleFailed: the output is not at zero in that time (the evidence names the set-point and state).
    """
    status = probe.status()
    slew = max(1, probe.ident.slew_limit_ua_per_s)
    end = probe.clock() + probe.host_s(status.setpoint_ua / slew + SETTLE_DEVICE_S) + 1.0
    while status.setpoint_ua != 0 or status.flags & StatusFlags.OUTPUT_ON:
        if probe.clock() >= end:
            raise RuleFailed(
                f"the output did not reach zero: set-point {status.setpoint_ua} uA in {status.state.name}"
            )
        probe.wait(probe.host_s(0.05))
        status = probe.status()
    return status


def restore_safe_idle(probe: Probe) -> StatusReport:
    """Abort any session, clear a fault, Reset, and return the StatusReport that shows safe idle.

    Raises:
        UnsafeDevice: the device does not answer, refuses to stop, or is not idle with output at zero
            after the Reset. The suite stops running rules when this happens.
    """
    probe.heartbeats = True
    try:
        probe.write(b"\x00", request=False)  # end any torn frame a rule left in the device's receiver
        probe.decoder.reset()
        status = probe.status()
        if status.state in SESSION_STATES:
            probe.request(Abort())
            # Abort should take setpoint/slew; a slower device is still safe, so wait as long as the
            # longest ramp the identity allows before calling it stuck.
            slew = max(1, probe.ident.slew_limit_ua_per_s)
            budget = max(status.setpoint_ua / slew, probe.ident.max_ramp_ms / 1000) + SETTLE_DEVICE_S
            status = probe.wait_state(IDLE_STATES, budget)
        if status.state == DeviceState.FAULT:
            status = await_zero_output(probe)  # ClearFault is refused while the trip ramp runs (§7.5)
            reply = probe.request(ClearFault())
            if isinstance(reply, Ack):
                status = probe.wait_state((DeviceState.IDLE,), SETTLE_DEVICE_S)
        reply = probe.request(Reset())
        if not isinstance(reply, Ack):
            detail = describe(reply) if isinstance(reply, Nack) else repr(reply)
            raise UnsafeDevice(f"Reset was not acknowledged in {status.state.name}: {detail}")
        probe.drain(RESET_SETTLE_HOST_S)
        probe.decoder.reset()
        probe.open_session()  # a restart ends the host session (§7.3); the next rule starts a fresh one
        status = probe.status()
    except RuleFailed as exc:
        raise UnsafeDevice(f"could not bring the device to idle: {exc}") from exc
    if status.state != DeviceState.IDLE or status.setpoint_ua != 0 or status.flags & StatusFlags.OUTPUT_ON:
        raise UnsafeDevice(
            f"after Reset the device is in {status.state.name} with set-point {status.setpoint_ua} uA and "
            f"flags {status.flags!r}; expected IDLE with output at zero"
        )
    probe.watchdog_ms = status.watchdog_ms
    return status
