"""The outcome decision: one rule for every source.

A source collects :class:`SessionFacts` while the session runs; :func:`decide_outcome` turns them into the
:class:`~iontodrive.sessions.types.SessionOutcome` written as the record's ``end_reason``. The first
matching line wins:

==========================================  ===============================================
the user interrupted (Ctrl-C, SIGTERM)       INTERRUPTED
a progress or event callback raised          CALLBACK_ERROR
the link or instrument was lost              LINK_LOST (FAULT if the output was brought to
                                             zero by the host after an error that was not a
                                             lost link)
a fault: electrode lift / anything else      ELECTRODE_LIFT / FAULT
an end was asked for (stop, abort, ...),     that request's outcome
unless the device ended the session itself
before it took effect (``ended_by_device``)
the device paused itself on a lost link      LINK_LOST
otherwise                                    COMPLETED
==========================================  ===============================================
"""

from __future__ import annotations

from dataclasses import dataclass

from iontodrive.protocol import EventCode
from iontodrive.sessions.types import SessionOutcome


@dataclass(frozen=True)
class SessionFacts:
    """What happened in a session, as the engine saw it."""

    interrupted: bool = False
    callback_error: bool = False
    link_lost: bool = False
    other_failure: bool = False
    fault_code: EventCode | None = None
    end_requested: SessionOutcome | None = None
    #: the device ended the session itself (SESSION_ENDED with no STOPPED or ABORTED): a requested end
    #: reached it too late to change anything, so it is not the session's end
    ended_by_device: bool = False
    paused_by: EventCode | None = None


def decide_outcome(facts: SessionFacts) -> SessionOutcome:
    """The session's outcome from ``facts`` (see the module docstring for the order)."""
    if facts.interrupted:
        return SessionOutcome.INTERRUPTED
    if facts.callback_error:
        return SessionOutcome.CALLBACK_ERROR
    if facts.link_lost:
        return SessionOutcome.LINK_LOST
    if facts.other_failure:
        return SessionOutcome.FAULT
    if facts.fault_code is not None:
        if facts.fault_code is EventCode.ELECTRODE_LIFT:
            return SessionOutcome.ELECTRODE_LIFT
        return SessionOutcome.FAULT
    if facts.end_requested is not None and not facts.ended_by_device:
        return facts.end_requested
    if facts.paused_by is EventCode.LINK_LOST:
        return SessionOutcome.LINK_LOST
    return SessionOutcome.COMPLETED
