"""Where records go (S21): a private per-user directory, names that never collide, paths checked first.

Issue 18 found records (patient labels included) in a world-readable ``/tmp/iontodrive-records``, a
directory another user had created there beforehand accepted, a second session in the same second failing
with a bare ``FileExistsError``, and a record path whose directory was missing refused only after the
session had started. We are root in the test machine, so ``os.chown`` makes "another user" for real.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from iontodrive import errors
from iontodrive import record as records
from iontodrive.errors import IontodriveError
from iontodrive.record import RecordWriter, SessionRecord

# Looked up at call time, so that on a driver without them (main at 4013fbb) each test fails by itself.
RECORD_DIR_ENV = "IONTODRIVE_RECORD_DIR"


def default_record_dir() -> Path:
    return records.default_record_dir()  # type: ignore[no-any-return]


def default_record_path(serial: object = "device") -> Path:
    return records.default_record_path(serial)  # type: ignore[no-any-return]


def check_record_path(path: Path, option: str = "record_path") -> Path:
    return records.check_record_path(path, option=option)  # type: ignore[no-any-return]


OTHER_UID = 65534  # nobody


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh home directory, with no XDG or iontodrive overrides: the platform's own default applies."""
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv(RECORD_DIR_ENV, raising=False)
    return home


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def write_record(path: Path) -> None:
    with RecordWriter(path, prescription={}, identity={}, labels={"patient": "Jane Doe"}) as writer:
        writer.summary(delivered_uas=0, end_reason="stopped")


# ---------------------------------------------------------------------------------- the default directory


def test_records_go_to_a_persistent_private_per_user_directory(home: Path) -> None:
    directory = default_record_dir()
    assert directory == home / ".local" / "share" / "iontodrive" / "records"
    assert Path(tempfile.gettempdir()) / "iontodrive-records" != directory
    assert mode(directory) == 0o700 and mode(directory.parent) == 0o700
    path = default_record_path("SN17")
    assert path.parent == directory and not path.exists()
    write_record(path)
    assert mode(path) == 0o600 and os.stat(path).st_uid == os.geteuid()


def test_a_directory_another_user_created_beforehand_is_refused(home: Path) -> None:
    directory = home / ".local" / "share" / "iontodrive" / "records"
    directory.mkdir(parents=True, mode=0o777)
    os.chmod(directory, 0o777)
    os.chown(directory, OTHER_UID, OTHER_UID)
    with pytest.raises(errors.RecordPathError) as info:
        default_record_path("SN17")
    assert isinstance(info.value, IontodriveError)
    assert "owned by" in str(info.value) and str(directory) in str(info.value)
    assert list(directory.iterdir()) == []


def test_an_application_directory_of_another_user_is_refused(home: Path) -> None:
    app_dir = home / ".local" / "share" / "iontodrive"
    app_dir.mkdir(parents=True)
    os.chown(app_dir, OTHER_UID, OTHER_UID)
    with pytest.raises(errors.RecordPathError, match="owned by"):
        default_record_dir()
    assert not (app_dir / "records").exists()


@pytest.mark.parametrize("owner", ["someone else", "this user"])
def test_a_link_planted_in_place_of_the_directory_is_refused(home: Path, tmp_path: Path, owner: str) -> None:
    trap = tmp_path / "trap"
    trap.mkdir(mode=0o777)
    app_dir = home / ".local" / "share" / "iontodrive"
    app_dir.mkdir(parents=True, mode=0o700)
    link = app_dir / "records"
    link.symlink_to(trap, target_is_directory=True)
    if owner == "someone else":
        os.chown(trap, OTHER_UID, OTHER_UID)
        os.lchown(link, OTHER_UID, OTHER_UID)
    with pytest.raises(errors.RecordPathError, match="symbolic link"):
        default_record_path("SN17")
    assert list(trap.iterdir()) == []


def test_our_own_directory_open_to_others_is_made_private(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = home / ".local" / "share" / "iontodrive" / "records"
    directory.mkdir(parents=True)
    os.chmod(directory, 0o755)
    assert default_record_dir() == directory
    assert mode(directory) == 0o700 and "tightened" in caplog.text


def test_the_environment_can_name_the_directory_under_the_same_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = tmp_path / "clinic-records"
    monkeypatch.setenv(RECORD_DIR_ENV, str(chosen))
    assert default_record_dir() == chosen and mode(chosen) == 0o700
    os.chown(chosen, OTHER_UID, OTHER_UID)
    with pytest.raises(errors.RecordPathError) as info:
        default_record_dir()
    assert info.value.option == RECORD_DIR_ENV


# -------------------------------------------------------------------------------------------- names


def test_a_devices_serial_number_cannot_steer_the_path(home: Path) -> None:
    path = default_record_path("../../etc/passwd\x00\n")
    assert path.parent == default_record_dir() and "/" not in path.name and "\x00" not in path.name


def test_two_records_in_the_same_second_without_a_path(home: Path) -> None:
    """Issue 18: the second of two sessions in one second raised FileExistsError (names to the second)."""
    paths = [default_record_path("SN17") for _ in range(200)]
    assert len(set(paths)) == 200
    for path in paths[:2]:
        write_record(path)
    assert all(SessionRecord.load(path).complete for path in paths[:2])
    stamps = [p.name[:23] for p in paths]  # 20261202T031502.123456Z: names sort by time
    assert stamps == sorted(stamps)


def _burst(directory: str, count: int, queue: multiprocessing.Queue[object]) -> None:
    os.environ[RECORD_DIR_ENV] = directory
    made = []
    try:
        for _ in range(count):
            path = default_record_path("SN17")
            RecordWriter(path, prescription={}, identity={}, durable=False).close()
            made.append(str(path))
        queue.put(made)
    except BaseException as exc:  # reported to the parent
        queue.put(repr(exc))


def test_hundreds_of_sessions_a_second_from_several_processes_never_collide(tmp_path: Path) -> None:
    directory = tmp_path / "burst"
    processes_n, per_process = 4, 150
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[object] = context.Queue()
    workers = [
        context.Process(target=_burst, args=(str(directory), per_process, queue)) for _ in range(processes_n)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert all(isinstance(r, list) for r in results), results
    made = [path for r in results for path in r]  # type: ignore[union-attr]
    assert len(made) == len(set(made)) == processes_n * per_process
    assert len(list(directory.iterdir())) == processes_n * per_process


# ------------------------------------------------------------------------------------ a given path


def test_a_record_path_whose_directory_is_missing_is_refused_naming_the_option(tmp_path: Path) -> None:
    target = tmp_path / "tiny" / "full.jsonl"
    with pytest.raises(errors.RecordPathError) as info:
        check_record_path(target, option="--record")
    assert str(info.value) == f"--record {target}: the directory {target.parent} does not exist"
    assert info.value.option == "--record" and not target.parent.exists()


def test_an_existing_file_or_a_file_as_directory_is_refused(tmp_path: Path) -> None:
    existing = tmp_path / "old.jsonl"
    existing.write_text("x")
    with pytest.raises(errors.RecordPathError, match="exists"):
        check_record_path(existing)
    with pytest.raises(errors.RecordPathError, match="not a directory"):
        check_record_path(existing / "r.jsonl")
    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(errors.RecordPathError, match="symbolic link"):
        check_record_path(link)
    assert check_record_path(tmp_path / "new.jsonl") == tmp_path / "new.jsonl"


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only file system (a tmpfs remounted ro), where the machine lets us mount one."""
    point = tmp_path / "ro"
    point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(point)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here to make a read-only file system")
    try:
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(point)], check=False)
        if remounted.returncode != 0:
            pytest.skip("cannot remount a tmpfs read-only here")
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_read_only_directory_is_refused_before_anything_is_written(read_only_dir: Path) -> None:
    target = read_only_dir / "r.jsonl"
    with pytest.raises(errors.RecordPathError) as info:
        check_record_path(target, option="--record")
    assert "read-only" in str(info.value) and str(info.value).startswith("--record ")
    with pytest.raises(errors.RecordPathError):
        RecordWriter(target, prescription={}, identity={})
