"""Sequencing (``docs/protocol.md`` §7): one reply per request carrying its sequence number, of an allowed
type, and at-most-once execution of a retried request (S17)."""

from __future__ import annotations

from iontodrive.protocol import (
    REPLY_TYPES_FOR_REQUEST,
    Ack,
    CheckContact,
    ConfigureTelemetry,
    DeviceState,
    EventCode,
    EventsReport,
    FetchEvents,
    GetStatus,
    Heartbeat,
    Identify,
    Message,
    Nack,
    Pause,
    Reset,
    SetWatchdog,
    encode,
)

from ..probe import Probe, Received, describe
from ..rule import Rule, RuleFailed, expect, rule

S = DeviceState
DUPLICATE_WATCH_S = 0.1  # host time watched after each reply for a second, duplicate reply


def _one_reply(probe: Probe, message: Message, seq: int | None = None) -> Received:
    """Send once (no retry), require exactly one reply of an allowed type with the same seq."""
    number = probe.next_seq() if seq is None else seq
    mark = probe.mark()
    probe.write(encode(message, number))
    reply = probe.await_reply(number, probe.reply_timeout_s, mark)
    name = type(message).__name__
    if reply is None:
        raise RuleFailed(f"{name} (seq {number}) got no reply within {probe.reply_timeout_s * 1000:.0f} ms")
    probe.drain(DUPLICATE_WATCH_S)
    count = len(probe.replies_to(number, mark))
    expect(count == 1, f"{name} (seq {number}) got {count} replies; exactly one is allowed (§7.2)")
    allowed = REPLY_TYPES_FOR_REQUEST[message.TYPE]
    expect(
        reply.message.TYPE in allowed,
        f"{name} answered by {type(reply.message).__name__}; allowed {[t.name for t in allowed]}",
    )
    if isinstance(reply.message, Ack | Nack):
        expect(
            reply.message.request_type == message.TYPE,
            f"{name} answered by {describe(reply.message)} naming request type "
            f"0x{reply.message.request_type:02X}",
        )
    return reply


@rule("SEQ-ONE-REPLY", "§7.1, §7.2", "every request gets exactly one reply, with its seq, of an allowed type")
def seq_one_reply(probe: Probe) -> str:
    wd = probe.status().watchdog_ms
    messages: list[Message] = [
        Identify(),
        GetStatus(),
        Heartbeat(),
        CheckContact(10, probe.test_current_ua),
        ConfigureTelemetry(2),
        SetWatchdog(wd),
        FetchEvents(0, 8),
        Pause(),  # refused at idle: a NACK is a reply too
        SetWatchdog(0),
    ]
    for message in messages:
        _one_reply(probe, message)
    seqs = sorted({r.seq for r in probe.replies})
    expect(all(1 <= s <= 0xFFFF for s in seqs), f"reply sequence numbers {seqs}")
    return f"{len(messages)} requests, one reply each with its seq (incl. a NACK and a CheckContact)"


@rule(
    "SEQ-RETRY-ONCE",
    "§7.3, S17",
    "a retried request (same seq, same bytes) is executed once and answered the same",
)
def seq_retry_once(probe: Probe) -> str:
    ident = probe.ident
    target = (
        ident.min_watchdog_ms + 321
        if ident.min_watchdog_ms + 321 <= ident.max_watchdog_ms
        else ident.max_watchdog_ms
    )
    seq = probe.next_seq()
    first = _one_reply(probe, SetWatchdog(target), seq)
    probe.ack(SetWatchdog(ident.max_watchdog_ms))  # a change the retry must not undo
    second = _one_reply(probe, SetWatchdog(target), seq)
    expect(
        first.message == second.message,
        f"the retry was answered {describe(second.message)}, the first time {describe(first.message)}",
    )
    status = probe.status()
    expect(
        status.watchdog_ms == ident.max_watchdog_ms,
        f"the retried SetWatchdog({target}) was executed again: watchdog {status.watchdog_ms} ms, expected "
        f"{ident.max_watchdog_ms}",
    )
    fseq = probe.next_seq()
    report1 = _one_reply(probe, FetchEvents(0, 16), fseq)
    report2 = _one_reply(probe, FetchEvents(0, 16), fseq)
    expect(
        report1.message == report2.message,
        f"a repeated FetchEvents got {describe(report2.message)} then {describe(report1.message)}",
    )
    changes = [e for _, e in probe.events if e.code == EventCode.WATCHDOG_CHANGED and not e.replayed]
    expect(
        len(changes) == 2,
        f"{len(changes)} live WATCHDOG_CHANGED events for two executed SetWatchdog; expected 2",
    )
    return (
        f"SetWatchdog retried after another change: same {type(first.message).__name__}, not re-executed; "
        "FetchEvents repeated: same report"
    )


@rule(
    "SEQ-RESET-CLEARS",
    "§7.3, S15",
    "Reset clears the memory of answers: a number used before it is executed anew",
)
def seq_reset_clears(probe: Probe) -> str:
    ident = probe.ident
    value = ident.min_watchdog_ms
    seq = probe.next_seq()
    probe.ack(SetWatchdog(value), seq)
    probe.ack(Reset())
    probe.drain(0.05)
    probe.decoder.reset()
    expect(probe.status().watchdog_ms != value or value == 2000, "Reset did not restore the watchdog")
    probe.ack(SetWatchdog(value), seq)
    got = probe.status().watchdog_ms
    expect(
        got == value,
        f"SetWatchdog({value}) re-sent with its old seq after Reset was not executed: watchdog {got} ms",
    )
    return f"SetWatchdog({value}) with seq {seq} executed again after Reset"


@rule("SEQ-RETRY-START", "§7.3, S17", "a retried Start starts one session, not two", needs_load=True)
def seq_retry_start(probe: Probe) -> str:
    start = probe.session_request()
    seq = probe.next_seq()
    before = probe.status().session_id
    first = _one_reply(probe, start, seq)
    expect(isinstance(first.message, Ack), f"Start answered by {describe(first.message)}")
    second = _one_reply(probe, start, seq)
    expect(first.message == second.message, f"the retried Start was answered {describe(second.message)}")
    probe.drain(0.05)
    status = probe.status()
    expect(
        status.session_id == (before + 1) & 0xFFFF,
        f"session_id went from {before} to {status.session_id} for one Start retried",
    )
    started = [e for _, e in probe.events if e.code == EventCode.SESSION_STARTED and not e.replayed]
    expect(len(started) == 1, f"{len(started)} SESSION_STARTED events for one Start retried")
    report = probe.request(FetchEvents(0, 255))
    expect(isinstance(report, EventsReport), f"FetchEvents answered {describe(report)}")
    return f"one session (id {status.session_id}), one SESSION_STARTED for a Start sent twice with seq {seq}"


@rule("SEQ-NEW-CONTENT", "§7.3", "a remembered seq reused with different content is a new request: executed")
def seq_new_content(probe: Probe) -> str:
    ident = probe.ident
    seq = probe.next_seq()
    probe.ack(SetWatchdog(ident.min_watchdog_ms), seq)
    reply = probe.request(SetWatchdog(ident.max_watchdog_ms), seq)
    expect(
        isinstance(reply, Ack),
        f"SetWatchdog({ident.max_watchdog_ms}) with a reused seq answered {describe(reply)}",
    )
    got = probe.status().watchdog_ms
    expect(
        got == ident.max_watchdog_ms,
        f"the new request with a reused seq was answered from memory, not executed: watchdog {got} ms",
    )
    again = probe.request(GetStatus(), seq)
    expect(type(again).__name__ == "StatusReport", f"GetStatus with the same seq answered {describe(again)}")
    return (
        f"seq {seq}: SetWatchdog({ident.min_watchdog_ms}), then SetWatchdog({ident.max_watchdog_ms}) and "
        "GetStatus, each executed"
    )


RULES: tuple[Rule, ...] = (seq_one_reply, seq_retry_once, seq_new_content, seq_reset_clears, seq_retry_start)
