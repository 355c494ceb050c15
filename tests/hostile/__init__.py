"""The hostile-device test kit: a scriptable fake stimulator on a real pty (issue 13).

README
======

``HostileDevice`` speaks the real protocol (:mod:`iontodrive.protocol`) on the master side of a pty, so
the driver under test opens ``device.url`` (the slave's path) and goes through the real
:class:`~iontodrive.link.SerialLink` and its caller-reads path. By default it is an *honest minimal device*:
it answers every request of the protocol, runs a simple session model (ramps at the rates ``Start`` asks
for, dose and time ends, pause, stop, abort) and keeps an event ring of 256 like the firmware. Every
hostile behaviour is a switch:

==============================================  ======================================================
``HostileDevice(identity=lying_identity(...))``  lying identity: any limits, any family (``model``)
``drop_replies(for_s=None)``                     answer no request (for ``for_s`` s, or for ever);
                                                 telemetry keeps flowing. ``answer_again()`` ends it
``silence_after(Start, for_s=2.6)``              answer that request, then drop replies for ``for_s``
``delay_replies(FetchEvents, 0.8)``              answer that kind late (acting at once), others on time
``self_raise(100_000)``                          the output steps itself: set-point = measured = 100 mA
``ignore(Abort, Stop, answer=True)``             ack (or, with ``answer=False``, drop) and do nothing
``ack_as(Stop, Heartbeat)``                      answer a Stop with an Ack naming Heartbeat
``flood_telemetry(n)`` / ``flood_events(n)``     write n frames back to back
``jump_event_numbers(4_000_000_000)``            the next event carries that number
``emit_event(code, value, live=False)``          an event kept in the ring but lost on the wire
``bottomless_ring()``                            FetchEvents always answered with made-up events
``script(Abort, lambda seq: [frames])``          answer a request kind with any frames (``None``: undo)
``lose_bytes(0.002, seed=1)``                    drop that fraction of the output bytes
``start_telemetry(hz)`` / ``stop_telemetry()``   a real-time telemetry ticker (device time follows it)
``tick(n)``                                      advance device time by n telemetry periods, sending n
                                                 samples: the test drives time, no ticker needed
==============================================  ======================================================

Time: device time is virtual (``device_time_ms``), advanced only by ticks, so a test that drives ``tick``
is deterministic. Durations the *host* experiences (``drop_replies(for_s=...)``) are measured on
``clock`` (``time.monotonic`` unless the test passes its own), because the driver's deadlines are real.

Observation: ``received`` lists every (seq, request) in arrival order; ``requests_of(kind)`` filters it;
``wait_for(kind, count, timeout_s)`` waits on a condition (never a sleep) until that many arrived.
``state``, ``setpoint_ua``, ``measured_ua``, ``charge_uas`` and ``events`` are the device's own truth.

Use it as a context manager or call ``close()``. Import it from a test as ``from hostile import
HostileDevice`` (pytest puts ``tests/`` on the path, as for ``devices`` and ``peer``). POSIX only (a pty).
The API is stable: new switches are added, none renamed.
"""

from __future__ import annotations

from hostile.device import (
    EVENT_RING_SIZE,
    HostileDevice,
    lying_identity,
    wait_for,
    wait_until,
)

__all__ = ["EVENT_RING_SIZE", "HostileDevice", "lying_identity", "wait_for", "wait_until"]
