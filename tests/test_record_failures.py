"""A record that cannot be written never reaches the session's thread, and is never silent (issues 13, 18).

Issue 13, finding 4: the record write came first in each listener and its OSError skipped the safety
checks after it; on a full disk an over-current got no abort for 12 s. Issue 18: on a nearly full file system
nobody was told, and the record simply stopped. Here: a disk that fills after N bytes (a write that raises
ENOSPC part-way, as a real one does), a real small file system (tmpfs, where the machine lets us mount one),
a record whose directory is removed, a stalled disk (close is bounded) and a writer that falls too far
behind. Every time: the caller's calls return, ``on_error`` is called once from another thread, ``error``
keeps it, later lines are dropped and counted, ``close()`` raises, and the file reads back up to its last
whole line with ``truncated`` saying where it stops.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iontodrive import errors
from iontodrive.errors import IontodriveError
from iontodrive.protocol import DeviceState, Event, EventCode, Polarity, StatusFlags, Telemetry
from iontodrive.record import RecordWriter, SessionRecord


def writer_module() -> Any:
    """The writer's module (looked up at call time: on main at 4013fbb it does not exist)."""
    import iontodrive.records.writer as module

    return module


def sample(no: int) -> Telemetry:
    return Telemetry(
        no,
        2 * no,
        DeviceState.HOLD,
        StatusFlags.OUTPUT_ON,
        Polarity.CATHODE,
        4000,
        3998,
        20_000,
        5000,
        8 * no,
    )


def event(no: int) -> Event:
    return Event(no, 2 * no, EventCode.RESISTANCE_LIMIT, DeviceState.HOLD, 4000)


class ErrorSpy:
    """An ``on_error`` callback that records each call and the thread it ran on."""

    def __init__(self) -> None:
        self.errors: list[errors.RecordWriteError] = []
        self.threads: list[threading.Thread] = []
        self.called = threading.Event()

    def __call__(self, error: errors.RecordWriteError) -> None:
        self.errors.append(error)
        self.threads.append(threading.current_thread())
        self.called.set()


def new_writer(path: Path, spy: ErrorSpy, **kwargs: object) -> RecordWriter:
    return RecordWriter(
        path,
        prescription={"current_ma": 4.0, "polarity": "cathode"},
        identity={"model": "clinic-4"},
        labels={"patient": "P-0017"},
        on_error=spy,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def disk_fills_after(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The writer's disk takes ``budget[0]`` more bytes, then fails with ENOSPC part-way through a write."""
    budget = [0]
    real_write_all = writer_module()._write_all

    def filling_write_all(fd: int, data: bytes) -> None:
        room = budget[0]
        if len(data) <= room:
            budget[0] -= len(data)
            real_write_all(fd, data)
            return
        real_write_all(fd, data[:room])  # a real disk writes what fits, then refuses
        budget[0] = 0
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer_module(), "_write_all", filling_write_all)
    yield budget


def test_a_full_disk_is_an_error_callback_never_an_exception_in_the_callers_thread(
    tmp_path: Path, disk_fills_after: list[int]
) -> None:
    spy = ErrorSpy()
    path = tmp_path / "full.jsonl"
    disk_fills_after[0] = 10**9
    writer = new_writer(path, spy)
    for no in range(50):
        assert writer.telemetry(sample(no))
    assert writer.event(event(1))
    assert writer.flush(5)  # all of it on disk
    disk_fills_after[0] = 700  # then the disk fills, part-way through a later batch
    results = []
    for no in range(50, 2000):  # the session's listener keeps going: nothing may raise here
        results.append(writer.telemetry(sample(no)))
        if no % 100 == 0:
            results.append(writer.event(event(no)))
    writer.note("operator", text="still no exception")
    assert spy.called.wait(10)
    results += [writer.telemetry(sample(5000)), writer.event(event(5000))]
    writer.summary(delivered_uas=1, end_reason="completed")  # queued: no exception here either
    assert results[-2:] == [False, False]

    with pytest.raises(errors.RecordWriteError) as info:
        writer.close()
    error = info.value
    assert isinstance(error, IontodriveError)
    assert spy.errors == [error] and writer.error is error  # once, and kept
    assert spy.threads[0] is not threading.current_thread()
    assert (
        error.errno == errno.ENOSPC and "No space left on device" in error.reason and error.path == str(path)
    )
    assert writer.lines_dropped > 0
    with pytest.raises(errors.RecordWriteError):
        writer.close()  # every close says so

    record = SessionRecord.load(path)
    assert record.problems == []  # the partial line was cut back: the file ends on a whole line
    assert not record.complete and record.truncated is not None
    assert record.truncated.partial_bytes == 0 and record.truncated.after_line == record.line_count
    kept = [row["sample_no"] for row in record.telemetry]
    assert kept == list(range(len(kept))) and len(kept) >= 50  # a prefix, nothing in the middle missing
    assert record.truncated.device_time_ms == max(
        [2 * kept[-1], *(e["device_time_ms"] for e in record.events)]
    )
    # header, 50 samples, an event; 1,950 samples and 19 events; the note, 2 more lines, the summary
    assert writer.lines_written + writer.lines_dropped == 1 + 50 + 1 + 1950 + 19 + 1 + 2 + 1


def test_the_header_on_a_full_disk_refuses_the_session_and_leaves_no_file(
    tmp_path: Path, disk_fills_after: list[int]
) -> None:
    disk_fills_after[0] = 20
    with pytest.raises(errors.RecordWriteError) as info:
        new_writer(tmp_path / "never.jsonl", ErrorSpy())
    assert info.value.errno == errno.ENOSPC
    assert not (tmp_path / "never.jsonl").exists()


def test_a_removed_directory_is_a_failure_not_a_record_that_vanishes(tmp_path: Path) -> None:
    spy = ErrorSpy()
    directory = tmp_path / "records"
    directory.mkdir()
    writer = new_writer(directory / "gone.jsonl", spy)
    writer.event(event(1))
    assert writer.flush(5)
    shutil.rmtree(directory)  # someone cleans up during the session
    writer.event(event(2))
    assert spy.called.wait(10)
    assert spy.errors[0].errno == errno.ENOENT and "removed" in spy.errors[0].reason
    assert writer.event(event(3)) is False
    with pytest.raises(errors.RecordWriteError):
        writer.close()


def test_close_is_bounded_when_the_disk_stalls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = ErrorSpy()
    writer = new_writer(tmp_path / "stalled.jsonl", spy)
    stuck = threading.Event()
    release = threading.Event()
    real_write_all = writer_module()._write_all

    def stalled_write_all(fd: int, data: bytes) -> None:
        stuck.set()
        release.wait(30)
        real_write_all(fd, data)

    monkeypatch.setattr(writer_module(), "_write_all", stalled_write_all)
    try:
        writer.event(event(1))
        assert stuck.wait(5)
        assert writer.backlog_s >= 0.0
        writer.summary(delivered_uas=0, end_reason="stopped")
        started = time.monotonic()
        with pytest.raises(errors.RecordWriteError) as info:
            writer.close(timeout_s=0.3)
        took = time.monotonic() - started
        assert took < 3.0
        assert "timed out" in info.value.reason and info.value.lines_lost == 2
        assert spy.called.wait(5) and spy.errors == [info.value]
    finally:
        release.set()


def test_a_writer_that_falls_too_far_behind_fails_loudly_rather_than_dropping_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = ErrorSpy()
    writer = new_writer(tmp_path / "flood.jsonl", spy)
    release = threading.Event()
    real_write_all = writer_module()._write_all

    def stalled_write_all(fd: int, data: bytes) -> None:
        release.wait(30)
        real_write_all(fd, data)

    monkeypatch.setattr(writer_module(), "_write_all", stalled_write_all)
    monkeypatch.setattr(writer_module(), "MAX_QUEUED_LINES", 100)
    try:
        accepted = [writer.event(event(no)) for no in range(1, 300)]  # an event flood on a stalled disk
        assert spy.called.wait(5)  # from a thread of its own: this thread is the session's
        assert spy.threads[0] is not threading.current_thread()
        assert "behind" in spy.errors[0].reason
        assert accepted.count(False) > 0 and writer.error is spy.errors[0]
    finally:
        release.set()
    with pytest.raises(errors.RecordWriteError):
        writer.close()
    assert len(spy.errors) == 1


def test_an_on_error_callback_that_raises_is_logged_and_changes_nothing(
    tmp_path: Path, disk_fills_after: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    def bad_callback(error: errors.RecordWriteError) -> None:
        raise RuntimeError("the UI crashed")

    disk_fills_after[0] = 10**9
    writer = RecordWriter(tmp_path / "r.jsonl", prescription={}, identity={}, on_error=bad_callback)
    disk_fills_after[0] = 0
    writer.event(event(1))
    with pytest.raises(errors.RecordWriteError):
        writer.close()
    assert "on_error callback failed" in caplog.text


# ------------------------------------------------------------------------------ a real small filesystem


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, where the machine lets us mount one (root in a container usually may)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_real_full_filesystem(tiny_filesystem: Path) -> None:
    spy = ErrorSpy()
    path = tiny_filesystem / "full.jsonl"
    writer = new_writer(path, spy)
    sent = 0
    while not spy.called.is_set() and sent < 20_000:  # 20,000 lines are far more than 64 KiB
        writer.telemetry(sample(sent))
        sent += 1
        if sent % 200 == 0:
            writer.event(event(sent))  # a durable line: written and fsync'd at once
            writer.flush(5, sync=False)
    assert spy.called.wait(10), "a 64 KiB file system never filled"
    assert spy.errors[0].errno == errno.ENOSPC
    with pytest.raises(errors.RecordWriteError):
        writer.close()
    record = SessionRecord.load(path)
    assert record.problems == [] and record.truncated is not None and not record.complete
    kept = [row["sample_no"] for row in record.telemetry]
    assert kept == list(range(len(kept))) and len(kept) > 100
