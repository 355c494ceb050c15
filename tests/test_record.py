"""Session records: round trip, kills mid-line, reopen/append, thread safety, malformed files."""

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

from iontodrive import record as record_module
from iontodrive.prescription import Prescription
from iontodrive.protocol import (
    DeviceState,
    Event,
    EventCode,
    Polarity,
    StatusFlags,
    Telemetry,
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


def test_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_session(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        new_writer(path)
    assert path.read_bytes() == before


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
    for call in (
        lambda: writer.event(event(9)),
        lambda: writer.telemetry(sample(1)),
        lambda: writer.note("operator"),
        lambda: writer.summary(delivered_uas=1, end_reason="again"),
    ):
        with pytest.raises(RecordClosedError):
            call()
    writer.close()
    writer.close()  # idempotent
    assert writer.closed
    assert SessionRecord.load(path).line_count == 2


def test_bad_data_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with new_writer(path) as writer:
        with pytest.raises(ValueError):
            writer.note("operator", value=float("nan"))
        with pytest.raises(TypeError):
            writer.note("operator", value=object())
        for kind in ("header", "event", "telemetry", "summary", "Bad Kind", "", "x" * 100):
            with pytest.raises(ValueError):
                writer.note(kind)
        with pytest.raises(ValueError):
            writer.summary(delivered_uas=-1, end_reason="x")
        with pytest.raises(ValueError):
            writer.summary(delivered_uas=True, end_reason="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
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


def test_fsync_at_header_summary_and_at_most_once_per_second(tmp_path: Path, monkeypatch) -> None:
    calls: list[float] = []
    clock = VirtualClock()
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(clock.t)
        real_fsync(fd)

    monkeypatch.setattr(record_module.os, "fsync", counting_fsync)
    path = tmp_path / "s.jsonl"
    writer = new_writer(path, clock=clock)
    assert calls == [1000.0]  # the header
    for no in range(40):
        writer.telemetry(sample(no))  # 4 Hz telemetry: writes at 1000.0, 1000.25, ... 1009.75
        clock.t += 0.25
    # One fsync on the first line of each new second, never more.
    assert calls == [1000.0 + k for k in range(10)]
    writer.summary(delivered_uas=5, end_reason="stopped")
    assert calls[-1] == clock.t and len(calls) == 11
    writer.close()


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
    assert rec.labels == LABELS


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    position=st.floats(min_value=0.0, max_value=1.0),
    junk=st.binary(min_size=1, max_size=40),
    replace=st.booleans(),
)
def test_corrupted_files_raise_only_record_format_error(
    tmp_path: Path, session_bytes: bytes, position: float, junk: bytes, replace: bool
) -> None:
    at = int(position * len(session_bytes))
    tail = session_bytes[at + len(junk) :] if replace else session_bytes[at:]
    path = tmp_path / "junk.jsonl"
    path.write_bytes(session_bytes[:at] + junk + tail)
    try:
        SessionRecord.load(path)
    except RecordFormatError as exc:
        assert exc.line_no >= 1


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


@pytest.mark.parametrize(
    ("lines", "line_no", "needle"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_records_name_the_line_and_the_problem(
    tmp_path: Path, lines: list[str], line_no: int, needle: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(RecordFormatError) as info:
        SessionRecord.load(path)
    assert info.value.line_no == line_no
    assert needle in str(info.value)
    assert f"{path}:{line_no}" in str(info.value)


def test_invalid_utf8_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(_header().encode() + b'\n{"kind": "note", "t": "\xff\xfe"}\n')
    with pytest.raises(RecordFormatError) as info:
        SessionRecord.load(path)
    assert info.value.line_no == 2


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
