"""Session records: round trip, kills mid-line, reopen/append, thread safety, torn and malformed lines,
one value form for enums, the writer's batching and fsync policy.

Paths and privacy are in test_record_paths.py; disk failures in test_record_failures.py."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from devices import CLINIC
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iontodrive import errors
from iontodrive.errors import IontodriveError
from iontodrive.prescription import Prescription
from iontodrive.protocol import (
    DeviceState,
    Event,
    EventCode,
    Polarity,
    Start,
    StatusFlags,
    Telemetry,
    Waveform,
    WaveformSet,
)
from iontodrive.record import (
    SCHEMA_VERSION,
    RecordClosedError,
    RecordFormatError,
    RecordWriter,
    SessionRecord,
    identity_to_dict,
)

IDENTITY = dataclasses.replace(CLINIC, serial_number=42, firmware_minor=2, firmware_patch=3)
PRESCRIPTION = Prescription(4, dose_ma_min=40, polarity="cathode", electrode_area_cm2=10)
LABELS = {"patient": "P-0017", "site": "left lateral epicondyle", "drug": "dexamethasone 4 mg/ml"}
T0 = datetime(2024, 5, 6, 9, 30, 0, tzinfo=UTC)


class VirtualClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def event(
    no: int, code: EventCode = EventCode.STATE_CHANGED, value: int = 0, replayed: bool = False
) -> Event:
    return Event(
        event_no=no,
        device_time_ms=100 * no,
        code=code,
        state=DeviceState.HOLD,
        value=value,
        replayed=replayed,
    )


def sample(no: int) -> Telemetry:
    return Telemetry(
        sample_no=no,
        device_time_ms=500 * no,
        state=DeviceState.RAMP_UP if no < 10 else DeviceState.HOLD,
        flags=StatusFlags.OUTPUT_ON | StatusFlags.SESSION_ACTIVE | StatusFlags.DOSE_BASED,
        polarity=Polarity.CATHODE,
        setpoint_ua=min(4000, 400 * no),
        measured_ua=min(4000, 400 * no) - 3,
        voltage_mv=20_000 + no,
        impedance_ohm=5000 - no,
        charge_uas=1000 * no,
    )


def new_writer(path: Path, **kwargs) -> RecordWriter:
    return RecordWriter(
        path,
        prescription=PRESCRIPTION.to_dict(),
        identity=identity_to_dict(IDENTITY),
        labels=LABELS,
        started_at=T0,
        **kwargs,
    )


def write_session(path: Path, *, summary: bool = True, samples: int = 30) -> None:
    with new_writer(path) as writer:
        writer.event(event(1, EventCode.SESSION_STARTED, 4000))
        for no in range(samples):
            writer.telemetry(sample(no))
            if no == 12:
                writer.event(event(2, EventCode.STATE_CHANGED, int(DeviceState.RAMP_UP)))
        writer.note("operator", text="patient reports tingling", level=2)
        if summary:
            writer.event(event(3, EventCode.DOSE_COMPLETE, 2_400_000))
            writer.summary(
                delivered_uas=2_400_000, end_reason="dose_complete", ended_at=T0 + timedelta(minutes=11)
            )


# ------------------------------------------------------------------------------------------ round trip


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_session(path)
    rec = SessionRecord.load(path)
    assert rec.complete and not rec.truncated_last_line
    assert rec.problems == [] and rec.truncated is None
    assert rec.header["schema"] == SCHEMA_VERSION
    assert Prescription.from_dict(rec.prescription) == PRESCRIPTION
    assert rec.identity["model"] == "clinic-4" and rec.identity["waveforms"] == int(WaveformSet.DC)
    assert rec.labels == LABELS
    assert rec.started_at == T0
    assert rec.ended_at == T0 + timedelta(minutes=11)
    assert [e["event_no"] for e in rec.events] == [1, 2, 3]
    assert rec.events[0]["code"] == "SESSION_STARTED" and rec.events[0]["value"] == 4000
    assert rec.events[0]["state"] == "HOLD"
    assert rec.last_event_no == 3
    assert rec.delivered_uas == 2_400_000
    assert rec.summary is not None and rec.summary["end_reason"] == "dose_complete"
    assert [n["kind"] for n in rec.notes] == ["operator"]
    assert rec.notes[0]["text"] == "patient reports tingling" and rec.notes[0]["level"] == 2
    assert rec.line_count == 1 + 3 + 30 + 1 + 1

    first = rec.telemetry[0]
    assert set(first) >= {
        "device_time_ms",
        "setpoint_ua",
        "measured_ua",
        "voltage_mv",
        "impedance_ohm",
        "charge_uas",
        "state",
        "flags",
    }
    arrays = rec.telemetry_arrays()
    expected = [sample(no) for no in range(30)]
    for key in ("sample_no", "device_time_ms", "setpoint_ua", "measured_ua", "voltage_mv", "charge_uas"):
        assert arrays[key].dtype == np.int64
        assert arrays[key].tolist() == [getattr(s, key) for s in expected]
    assert arrays["flags"].tolist() == [int(s.flags) for s in expected]
    assert arrays["state"].tolist() == [int(s.state) for s in expected]
    assert np.allclose(arrays["t_s"], [s.device_time_ms / 1000 for s in expected])


def test_header_is_on_disk_before_anything_else(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    writer = new_writer(path)
    try:
        rec = SessionRecord.load(path)  # read while the writer is still open
        assert not rec.complete and rec.delivered_uas is None and rec.last_event_no == 0
        assert rec.telemetry_arrays()["charge_uas"].shape == (0,)
    finally:
        writer.close()


def test_incomplete_record_reports_last_telemetry_charge(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_session(path, summary=False, samples=17)
    rec = SessionRecord.load(path)
    assert not rec.complete and rec.summary is None
    assert rec.delivered_uas == sample(16).charge_uas
    assert rec.truncated is not None and rec.truncated.partial_bytes == 0
    assert rec.truncated.after_line == rec.line_count and "no summary" in rec.truncated.reason
    assert rec.truncated.device_time_ms == sample(16).device_time_ms


def test_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_session(path)
    before = path.read_bytes()
    with pytest.raises(errors.RecordPathError) as info:
        new_writer(path, option="--record")
    assert isinstance(info.value, IontodriveError) and not isinstance(info.value, FileExistsError)
    assert info.value.option == "--record" and str(info.value).startswith(f"--record {path}: exists")
    assert path.read_bytes() == before


def test_a_link_planted_at_the_record_path_is_refused_and_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(b"not yours\n")
    link = tmp_path / "s.jsonl"
    link.symlink_to(target)
    with pytest.raises(errors.RecordPathError):
        new_writer(link)
    assert target.read_bytes() == b"not yours\n" and link.is_symlink()
    dangling = tmp_path / "d.jsonl"
    dangling.symlink_to(tmp_path / "created-through-the-link.jsonl")
    with pytest.raises(errors.RecordPathError):
        new_writer(dangling)
    assert not (tmp_path / "created-through-the-link.jsonl").exists()


def test_record_files_are_private_to_their_user(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    old = os.umask(0)  # even with a permissive umask
    try:
        write_session(path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600


def test_dataclasses_are_accepted_for_prescription_and_identity(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    RecordWriter(path, prescription=PRESCRIPTION, identity=IDENTITY, labels=None).close()
    rec = SessionRecord.load(path)
    assert Prescription.from_dict(rec.prescription) == PRESCRIPTION
    assert rec.identity == identity_to_dict(IDENTITY)
    assert rec.labels == {}
    assert abs(rec.started_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_writes_after_summary_or_close_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    writer = new_writer(path)
    writer.summary(delivered_uas=0, end_reason="stopped")
    # A listener racing the session's end is never raised into: its line is dropped and counted.
    assert writer.event(event(9)) is False
    assert writer.telemetry(sample(1)) is False
    assert writer.late_lines == 2
    for call in (
        lambda: writer.note("operator"),
        lambda: writer.summary(delivered_uas=1, end_reason="again"),
    ):
        with pytest.raises(RecordClosedError):
            call()
    writer.close()
    writer.close()  # idempotent
    assert writer.closed and writer.error is None
    assert SessionRecord.load(path).line_count == 2


def test_bad_data_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with new_writer(path) as writer:
        with pytest.raises(errors.RecordDataError):
            writer.note("operator", value=float("nan"))
        with pytest.raises(errors.RecordDataError):
            writer.note("operator", value=object())
        for kind in ("header", "event", "telemetry", "summary", "Bad Kind", "", "x" * 100):
            with pytest.raises(errors.RecordDataError):
                writer.note(kind)
        with pytest.raises(errors.RecordDataError):
            writer.summary(delivered_uas=-1, end_reason="x")
        with pytest.raises(errors.RecordDataError):
            writer.summary(delivered_uas=True, end_reason="x")  # type: ignore[arg-type]
    # Still a ValueError and a TypeError for callers that caught those.
    assert issubclass(errors.RecordDataError, ValueError) and issubclass(errors.RecordDataError, TypeError)
    assert issubclass(errors.RecordDataError, IontodriveError)
    with pytest.raises(errors.RecordDataError):
        RecordWriter(tmp_path / "t.jsonl", prescription={}, identity={}, labels={"id": 17})  # type: ignore[dict-item]
    assert not (tmp_path / "t.jsonl").exists()
    assert SessionRecord.load(path).line_count == 1


def test_content_is_data_never_code(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    payload = "__import__('os').system('touch pwned')"
    with new_writer(path) as writer:
        writer.note("operator", text=payload, newline="a\nb\u2028c")
    rec = SessionRecord.load(path)
    assert rec.notes[0]["text"] == payload and rec.notes[0]["newline"] == "a\nb\u2028c"
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    assert rec.line_count == 2


# --------------------------------------------------------------------------------------------- fsync


@pytest.fixture
def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every os.fsync the test makes, by descriptor."""
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    return calls


def test_header_events_notes_and_summary_are_fsynced_telemetry_at_most_once_a_second(
    tmp_path: Path, fsync_calls: list[int]
) -> None:
    clock = VirtualClock()
    path = tmp_path / "s.jsonl"
    writer = new_writer(path, clock=clock)
    after_header = len(fsync_calls)
    assert after_header == 2  # the directory (the new name) and the header
    for no in range(40):
        writer.telemetry(sample(no))
    assert writer.flush(sync=False)  # written, not fsync'd: telemetry waits for the next fsync
    assert len(fsync_calls) == after_header
    clock.t += 0.5
    writer.telemetry(sample(40))
    assert writer.flush(sync=False) and len(fsync_calls) == after_header  # less than 1 s: still none
    clock.t += 0.5
    writer.telemetry(sample(41))
    assert writer.flush(sync=False) and len(fsync_calls) == after_header + 1  # 1 s after the first: one
    for make_line in (
        lambda: writer.event(event(1)),
        lambda: writer.note("operator", text="tingling"),
    ):
        make_line()
        assert writer.flush(sync=False)  # a durable line: fsync'd as soon as written
        assert len(fsync_calls) == after_header + 2
        after_header += 1
    writer.summary(delivered_uas=5, end_reason="stopped")
    writer.close()
    assert len(fsync_calls) == after_header + 2
    assert SessionRecord.load(path).complete


def test_a_plain_writer_never_fsyncs(tmp_path: Path, fsync_calls: list[int]) -> None:
    path = tmp_path / "s.jsonl"
    with new_writer(path, durable=False) as writer:
        writer.event(event(1))
        writer.telemetry(sample(1))
        writer.summary(delivered_uas=1, end_reason="stopped")
    assert len(fsync_calls) == 1  # only the directory, for the new name
    assert SessionRecord.load(path).complete


def test_telemetry_is_batched_into_few_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    path = tmp_path / "s.jsonl"
    writer = new_writer(path, clock=VirtualClock())  # the batching delay never expires on its own
    monkeypatch.setattr(os, "write", counting_write)
    for no in range(2000):
        writer.telemetry(sample(no))
    assert writer.flush()
    writer.close()
    monkeypatch.undo()
    assert sum(writes) == path.stat().st_size - len(path.read_bytes().split(b"\n")[0]) - 1
    assert len(writes) <= 2000 // 512 + 2  # whole batches, not a write per line
    assert len(SessionRecord.load(path).telemetry) == 2000


def test_a_full_queue_drops_telemetry_only_counted_and_noted_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import iontodrive.records.writer as writer_module

    gate = threading.Event()
    real_write_all = writer_module._write_all

    def slow_write_all(fd: int, data: bytes) -> None:
        gate.wait(30)  # the disk is stuck until the test lets it go
        real_write_all(fd, data)

    path = tmp_path / "s.jsonl"
    writer = new_writer(path, max_queued_telemetry=10)
    monkeypatch.setattr(writer_module, "_write_all", slow_write_all)
    results = [writer.telemetry(sample(no)) for no in range(25)]
    assert writer.event(event(1))  # never dropped for room
    writer.note("operator", text="still here")
    results.append(writer.telemetry(sample(25)))  # still full: dropped, after the event and the note
    gate.set()
    writer.summary(delivered_uas=1, end_reason="stopped")
    writer.close()
    assert writer.error is None
    dropped = results.count(False)
    assert dropped == writer.telemetry_overflow > 0
    rec = SessionRecord.load(path)
    kept = [row["sample_no"] for row in rec.telemetry]
    assert len(kept) + dropped == 26 and kept == sorted(kept)
    assert rec.telemetry_dropped == dropped
    notes = [n for n in rec.notes if n["kind"] == "telemetry_dropped"]
    missing = sorted(set(range(26)) - set(kept))
    assert notes and notes[0]["first_sample_no"] == missing[0] and notes[-1]["last_sample_no"] == missing[-1]
    assert [e["event_no"] for e in rec.events] == [1] and rec.complete


# --------------------------------------------------------------------------------------- events & reopen


def test_duplicate_events_are_skipped_but_renumbered_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with new_writer(path) as writer:
        assert writer.event(event(5, value=1))
        assert not writer.event(event(5, value=1, replayed=True))  # replayed copy of a live event
        reset_event = Event(event_no=5, device_time_ms=20, code=EventCode.POWER_ON, state=DeviceState.IDLE)
        assert writer.event(reset_event)  # numbering restarted after a device reset
    rec = SessionRecord.load(path)
    assert [(e["event_no"], e["code"]) for e in rec.events] == [(5, "STATE_CHANGED"), (5, "POWER_ON")]


def test_reopen_appends_recovery_and_summary_after_a_host_death(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_session(path, summary=False)
    assert not SessionRecord.load(path).complete

    writer = RecordWriter.reopen(path)
    assert writer.started_at == T0
    assert not writer.event(
        event(2, EventCode.STATE_CHANGED, int(DeviceState.RAMP_UP), replayed=True), recovered=True
    )
    assert writer.event(event(3, EventCode.LINK_LOST, 2000, replayed=True), recovered=True)
    assert writer.event(event(4, EventCode.SESSION_ENDED, 1_234_567, replayed=True), recovered=True)
    writer.recovery(reason="host restarted", device_charge_uas=1_234_567, fetched_events=3)
    writer.summary(delivered_uas=1_234_567, end_reason="link_lost")
    writer.close()

    rec = SessionRecord.load(path)
    assert rec.complete and rec.delivered_uas == 1_234_567
    assert [e["event_no"] for e in rec.events] == [1, 2, 3, 4]
    assert [e["recovered"] for e in rec.events] == [False, False, True, True]
    assert rec.recoveries == [
        {
            "kind": "recovery",
            "host_time": rec.recoveries[0]["host_time"],
            "reason": "host restarted",
            "device_charge_uas": 1_234_567,
            "fetched_events": 3,
        }
    ]
    assert rec.last_event_no == 4
    assert rec.labels == LABELS and rec.started_at == T0


def test_reopen_makes_an_older_world_readable_record_private(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_session(path, summary=False)
    os.chmod(path, 0o644)  # as the driver before S21 left them
    writer = RecordWriter.reopen(path)
    writer.summary(delivered_uas=7, end_reason="recovered_after_host_loss")
    writer.close()
    assert path.stat().st_mode & 0o777 == 0o600 and SessionRecord.load(path).complete


def test_reopen_repairs_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_session(path, summary=False)
    data = path.read_bytes()
    cut = len(data) - 25  # inside the last line
    path.write_bytes(data[:cut])
    before = SessionRecord.load(path)
    assert before.truncated_last_line

    writer = RecordWriter.reopen(path)
    writer.summary(delivered_uas=7, end_reason="link_lost")
    writer.close()
    rec = SessionRecord.load(path)
    assert not rec.truncated_last_line and rec.complete
    repair = [n for n in rec.notes if n["kind"] == "repair"]
    assert len(repair) == 1
    dropped = data[before.valid_bytes : cut]
    assert repair[0]["dropped_bytes"] == len(dropped)
    assert repair[0]["dropped_text"] == dropped.decode("utf-8", errors="replace")
    assert len(rec.telemetry) == len(before.telemetry)


def test_reopen_refuses_a_malformed_record(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"kind": "event"}\n')
    with pytest.raises(RecordFormatError):
        RecordWriter.reopen(path)
    assert path.read_bytes() == b'{"kind": "event"}\n'


# -------------------------------------------------------------------------------------- kills and cuts


@pytest.fixture(scope="module")
def session_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("rec") / "s.jsonl"
    with new_writer(path) as writer:
        writer.event(event(1, EventCode.SESSION_STARTED, 4000))
        writer.note("operator", text="naïve µ text ✓")  # multi-byte UTF-8 to cut through
        for no in range(8):
            writer.telemetry(sample(no))
        writer.summary(delivered_uas=8000, end_reason="dose_complete")
    return path.read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(min_value=0.0, max_value=1.0))
def test_a_writer_killed_at_any_byte_leaves_a_loadable_prefix(
    tmp_path: Path, session_bytes: bytes, fraction: float
) -> None:
    cut = int(fraction * len(session_bytes))
    prefix = session_bytes[:cut]
    path = tmp_path / "cut.jsonl"
    path.write_bytes(prefix)
    header_end = session_bytes.index(b"\n") + 1
    if cut < header_end:
        with pytest.raises(RecordFormatError) as info:
            SessionRecord.load(path)
        assert info.value.line_no == 1
        return
    rec = SessionRecord.load(path)
    complete_lines = prefix.count(b"\n")
    assert rec.line_count == complete_lines
    assert rec.truncated_last_line == (not prefix.endswith(b"\n"))
    assert rec.valid_bytes == prefix.rfind(b"\n") + 1
    assert rec.complete == (cut == len(session_bytes))
    assert (rec.truncated is None) == rec.complete and rec.problems == []
    if rec.truncated is not None:
        assert rec.truncated.offset == rec.valid_bytes and rec.truncated.after_line == complete_lines
        assert rec.truncated.partial_bytes == len(prefix) - rec.valid_bytes
    assert rec.labels == LABELS


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    line_index=st.integers(min_value=0),
    how=st.sampled_from(["torn", "garbled", "replaced", "prefixed"]),
    where=st.floats(min_value=0.0, max_value=1.0),
    junk=st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\n", b"?")),
)
def test_any_single_torn_or_garbled_line_leaves_every_other_line_readable(
    tmp_path: Path, session_bytes: bytes, line_index: int, how: str, where: float, junk: bytes
) -> None:
    lines = session_bytes.split(b"\n")[:-1]
    index = line_index % len(lines)
    line = lines[index]
    at = int(where * len(line))
    if how == "torn":  # a write cut short, then the next line written after it
        bad = line[:at]
    elif how == "garbled":
        bad = line[:at] + junk + line[at:]
    elif how == "replaced":
        bad = line[:at] + junk + line[at + len(junk) :]
    else:  # the torn start of a line, then this whole line (an append after a failed write)
        bad = line[: max(1, at)] + line if index else junk + line
    path = tmp_path / "junk.jsonl"
    path.write_bytes(b"".join(x + b"\n" for x in (*lines[:index], bad, *lines[index + 1 :])))
    whole = tmp_path / "whole.jsonl"
    whole.write_bytes(session_bytes)
    expected = SessionRecord.load(whole)
    try:
        rec = SessionRecord.load(path)
    except RecordFormatError:
        pytest.fail("a record with one bad line must still load")
    assert {p.line_no for p in rec.problems} <= {index + 1, 1}
    assert all(p.reason for p in rec.problems)

    # Every line other than the damaged one is read exactly as it was written.
    damaged = json.loads(line)
    for kind, rows, got in (
        ("event", expected.events, rec.events),
        ("telemetry", expected.telemetry, rec.telemetry),
        ("note", expected.notes, rec.notes),
    ):
        want = [row for row in rows if row != damaged]
        assert [row for row in got if row in want] == want, kind
    if damaged["kind"] != "header":
        assert rec.header == expected.header and rec.labels == LABELS
    if damaged["kind"] != "summary":
        assert rec.summary == expected.summary
    if how == "prefixed":  # the whole line after the torn part is read too
        assert rec.line_count == len(lines)
        assert rec.events == expected.events and rec.telemetry == expected.telemetry
        assert rec.summary == expected.summary and rec.notes == expected.notes


def test_a_real_writer_killed_with_sigkill_leaves_a_readable_record(tmp_path: Path) -> None:
    path = tmp_path / "killed.jsonl"
    script = textwrap.dedent(
        f"""
        import sys
        from iontodrive.protocol import DeviceState, Polarity, StatusFlags, Telemetry
        from iontodrive.record import RecordWriter
        w = RecordWriter({str(path)!r}, prescription={{"current_ma": 4.0}}, identity={{}}, labels=None)
        no = 0
        while True:
            w.telemetry(Telemetry(no, no, DeviceState.HOLD, StatusFlags.OUTPUT_ON, Polarity.CATHODE,
                                  4000, 3999, 20000, 5000, 4 * no))
            no += 1
            if no == 200:
                assert w.flush(10)  # what was flushed must survive the kill
                print("ready", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rec = SessionRecord.load(path)
    assert not rec.complete
    assert len(rec.telemetry) >= 200
    arrays = rec.telemetry_arrays()
    assert arrays["sample_no"].tolist() == list(range(len(rec.telemetry)))  # nothing lost before the kill
    assert rec.delivered_uas == 4 * (len(rec.telemetry) - 1)


# ------------------------------------------------------------------------------------------- threads


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    threads_n, per_thread = 8, 250
    writer = new_writer(path)
    barrier = threading.Barrier(threads_n)

    def work(index: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            no = index * per_thread + i + 1
            writer.event(event(no, EventCode.SETPOINT_CHANGED, value=no))
            writer.telemetry(sample(no))
            writer.note("operator", text="x" * (i % 300), thread=index)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    writer.summary(delivered_uas=1, end_reason="stopped")
    writer.close()

    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    parsed = [json.loads(line) for line in lines[:-1]]  # every line is one whole JSON object
    assert len(parsed) == 2 + 3 * threads_n * per_thread
    rec = SessionRecord.load(path)
    assert sorted(e["event_no"] for e in rec.events) == list(range(1, threads_n * per_thread + 1))
    assert len(rec.telemetry) == threads_n * per_thread


# --------------------------------------------------------------------------------------- malformed files


def _header(**overrides: object) -> str:
    header = {
        "kind": "header",
        "schema": SCHEMA_VERSION,
        "driver": "iontodrive test",
        "started_at": T0.isoformat(),
        "prescription": PRESCRIPTION.to_dict(),
        "identity": identity_to_dict(IDENTITY),
        "labels": {},
    }
    header.update(overrides)
    return json.dumps(header)


GOOD_EVENT = json.dumps(
    {"kind": "event", "event_no": 1, "device_time_ms": 5, "code": "POWER_ON", "state": "IDLE", "value": 0}
)
GOOD_SAMPLE = json.dumps(
    {
        "kind": "telemetry",
        "sample_no": 0,
        "device_time_ms": 0,
        "state": "HOLD",
        "flags": 1,
        "polarity": "CATHODE",
        "setpoint_ua": 1,
        "measured_ua": 1,
        "voltage_mv": 1,
        "impedance_ohm": 1,
        "charge_uas": 1,
    }
)


def _replace(line: str, key: str, raw_value: str) -> str:
    obj = json.loads(line)
    obj[key] = "@@"
    return json.dumps(obj).replace('"@@"', raw_value)


MALFORMED = [
    ("missing header", [GOOD_EVENT], 1, "header"),
    ("second header", [_header(), _header()], 2, "second header"),
    ("wrong type event_no", [_header(), _replace(GOOD_EVENT, "event_no", '"1"')], 2, "event_no"),
    ("bool as int", [_header(), _replace(GOOD_EVENT, "value", "true")], 2, "value"),
    ("float as int", [_header(), _replace(GOOD_SAMPLE, "charge_uas", "1.5")], 2, "charge_uas"),
    ("missing field", [_header(), GOOD_SAMPLE.replace('"voltage_mv": 1, ', "")], 2, "voltage_mv"),
    ("NaN", [_header(), _replace(GOOD_SAMPLE, "charge_uas", "NaN")], 2, "NaN"),
    ("Infinity", [_header(), GOOD_EVENT, _replace(GOOD_EVENT, "value", "-Infinity")], 3, "Infinity"),
    ("float overflow", [_header(), _replace(GOOD_EVENT, "value", "1e999")], 2, "out of range"),
    ("huge integer", [_header(), _replace(GOOD_EVENT, "value", "9" * 30)], 2, "too large"),
    ("integer past 2**64", [_header(), _replace(GOOD_EVENT, "value", str(2**64))], 2, "too large"),
    ("array line", [_header(), "[1, 2, 3]"], 2, "JSON object"),
    ("no kind", [_header(), '{"event_no": 1}'], 2, "kind"),
    ("bad kind", [_header(), '{"kind": "DROP TABLE"}'], 2, "kind"),
    ("blank line", [_header(), "", GOOD_EVENT], 2, "JSON"),
    ("not json", [_header(), "hello"], 2, "JSON"),
    ("duplicate key", [_header(), '{"kind": "note", "a": 1, "a": 2}'], 2, "duplicate"),
    ("schema from the future", [_header(schema=SCHEMA_VERSION + 1)], 1, "schema"),
    ("bad start time", [_header(started_at="yesterday")], 1, "yesterday"),
    ("labels not strings", [_header(labels={"id": 5})], 1, "labels"),
    (
        "summary negative dose",
        [
            _header(),
            '{"kind": "summary", "delivered_uas": -5, "end_reason": "x", "ended_at": "2024-01-01T00:00:00"}',
        ],
        2,
        "delivered_uas",
    ),
    (
        "summary bad time",
        [_header(), '{"kind": "summary", "delivered_uas": 5, "end_reason": "x", "ended_at": 12}'],
        2,
        "ended_at",
    ),
    ("deep nesting", [_header(), '{"kind": "note", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"], 2, "JSON"),
]


LATER_EVENT = json.dumps(
    {"kind": "event", "event_no": 7, "device_time_ms": 9, "code": "PAUSED", "state": "PAUSED", "value": 3}
)


@pytest.mark.parametrize(
    ("lines", "line_no", "needle"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_a_malformed_line_is_reported_with_its_number_and_why_and_the_rest_read(
    tmp_path: Path, lines: list[str], line_no: int, needle: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([*lines, LATER_EVENT]) + "\n", encoding="utf-8")
    rec = SessionRecord.load(path)
    problem = next(p for p in rec.problems if p.line_no == line_no)
    assert needle in problem.reason, rec.problems
    assert str(problem).startswith(f"line {line_no}: ")
    assert {p.line_no for p in rec.problems} == {line_no}
    assert rec.events[-1]["event_no"] == 7  # the line after the bad one is read
    if line_no != 1:
        assert rec.header["driver"] == "iontodrive test" and rec.prescription == PRESCRIPTION.to_dict()
    else:
        assert rec.header == {} and rec.started_at is None


def test_invalid_utf8_is_reported_and_the_rest_read(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        _header().encode() + b'\n{"kind": "note", "t": "\xff\xfe"}\n' + GOOD_EVENT.encode() + b"\n"
    )
    rec = SessionRecord.load(path)
    assert [(p.line_no, "UTF-8" in p.reason) for p in rec.problems] == [(2, True)]
    assert len(rec.events) == 1 and rec.header["driver"] == "iontodrive test"


def test_a_file_with_no_record_line_at_all_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"hello\n[1, 2]\n")
    with pytest.raises(RecordFormatError) as info:
        SessionRecord.load(path)
    assert info.value.line_no == 1 and "not a session record" in str(info.value)


def test_a_missing_record_is_a_typed_read_error(tmp_path: Path) -> None:
    with pytest.raises(errors.RecordReadError) as info:
        SessionRecord.load(tmp_path / "nothing.jsonl")
    assert isinstance(info.value, IontodriveError) and info.value.errno == 2
    assert isinstance(info.value, OSError)  # what callers caught before


@pytest.mark.parametrize("content", [b"", b'{"kind": "header", "sche'])
def test_empty_or_headerless_file_is_a_format_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(RecordFormatError) as info:
        SessionRecord.load(path)
    assert info.value.line_no == 1


def test_unknown_event_codes_and_states_load_as_given(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    sample_line = json.loads(GOOD_SAMPLE)
    sample_line["state"] = "WARP_DRIVE"
    path.write_text(
        "\n".join([_header(), _replace(GOOD_EVENT, "code", "99"), json.dumps(sample_line)]) + "\n",
        encoding="utf-8",
    )
    rec = SessionRecord.load(path)
    assert rec.events[0]["code"] == 99
    assert rec.telemetry_arrays()["state"].tolist() == [-1]


def test_load_time_is_reasonable_for_a_long_record(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    with new_writer(path) as writer:
        for no in range(20_000):
            writer.telemetry(sample(no))
        writer.summary(delivered_uas=1, end_reason="stopped")
    start = time.perf_counter()
    rec = SessionRecord.load(path)
    elapsed = time.perf_counter() - start
    assert len(rec.telemetry) == 20_000
    assert elapsed < 5.0  # generous: a few hundred ms on this machine


# ------------------------------------------------------------------------------- one form for enums


START = Start(
    target_current_ua=4000,
    dose_uas=2_400_000,
    duration_ms=0,
    ramp_up_ms=30_000,
    ramp_down_ms=30_000,
    polarity=Polarity.CATHODE,
    waveform=Waveform.DC,
)


def test_enums_are_written_by_name_whatever_form_the_caller_hands_over(tmp_path: Path) -> None:
    """Issue 18: the device session wrote polarity 2, the VISA session "CATHODE". One form now."""
    path = tmp_path / "s.jsonl"
    as_ints = {
        f.name: int(getattr(START, f.name)) if f.name in ("polarity", "waveform") else getattr(START, f.name)
        for f in dataclasses.fields(START)
    }
    as_names = {**as_ints, "polarity": "CATHODE", "waveform": "DC"}
    with new_writer(path) as writer:
        writer.note("started", session_id=1, start=as_ints)  # the device session's old form
        writer.note("started", session_id=2, start=as_names)  # the VISA session's form
        writer.note("started", session_id=3, start=START)  # the message itself
        writer.note("state", state=int(DeviceState.PAUSED), nested=[{"polarity": 1}])
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    starts = [line["start"] for line in lines[:3]]
    assert starts[0] == starts[1] == starts[2]
    assert starts[0]["polarity"] == "CATHODE" and starts[0]["waveform"] == "DC"
    assert lines[3]["state"] == "PAUSED" and lines[3]["nested"] == [{"polarity": "ANODE"}]


def test_the_integer_form_of_older_records_reads_as_names(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    event_line = _replace(_replace(GOOD_EVENT, "code", str(int(EventCode.ELECTRODE_LIFT))), "state", "7")
    sample_line = _replace(_replace(GOOD_SAMPLE, "state", "3"), "polarity", "2")
    started = json.dumps({"kind": "started", "session_id": 4, "start": {"polarity": 2, "waveform": 1}})
    path.write_text("\n".join([_header(), event_line, sample_line, started]) + "\n", encoding="utf-8")
    rec = SessionRecord.load(path)
    assert rec.problems == []
    assert (rec.events[0]["code"], rec.events[0]["state"]) == ("ELECTRODE_LIFT", "PAUSED")
    assert (rec.telemetry[0]["state"], rec.telemetry[0]["polarity"]) == ("HOLD", "CATHODE")
    assert rec.notes[0]["start"] == {"polarity": "CATHODE", "waveform": "PULSED_DC"}
    assert rec.telemetry_arrays()["state"].tolist() == [int(DeviceState.HOLD)]


def test_unknown_enum_integers_are_kept_as_given(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with new_writer(path) as writer:
        writer.note("started", start={"polarity": 9})
    assert SessionRecord.load(path).notes[0]["start"] == {"polarity": 9}


def test_a_program_that_forgets_close_still_leaves_every_line_it_queued(tmp_path: Path) -> None:
    path = tmp_path / "forgotten.jsonl"
    script = textwrap.dedent(
        f"""
        from iontodrive.protocol import DeviceState, Event, EventCode, Polarity, StatusFlags, Telemetry
        from iontodrive.record import RecordWriter
        w = RecordWriter({str(path)!r}, prescription={{}}, identity={{}})
        for no in range(3000):
            w.telemetry(Telemetry(no, no, DeviceState.HOLD, StatusFlags.OUTPUT_ON, Polarity.CATHODE,
                                  4000, 3999, 20000, 5000, 4 * no))
        w.event(Event(1, 3000, EventCode.DOSE_COMPLETE, DeviceState.RAMP_DOWN, 12000))
        print("queued", flush=True)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "queued", result.stderr
    rec = SessionRecord.load(path)
    assert len(rec.telemetry) == 3000 and [e["code"] for e in rec.events] == ["DOSE_COMPLETE"]
