"""Where records go, and how their files are made: private to their user, never overwritten (S21).

Records can carry patient identifiers (labels such as a name or a record number), so:

* **The default directory** (:func:`default_record_dir`) is a persistent per-user data directory,
  ``platformdirs.user_data_path("iontodrive") / "records"`` (on Linux ``~/.local/share/iontodrive/records``,
  following ``XDG_DATA_HOME``), or the directory named by the environment variable
  ``IONTODRIVE_RECORD_DIR``. It is created mode 0700. It is refused (:class:`RecordPathError`) when it
  is a symbolic link, not a directory, or owned by another user; one of ours that others can enter or read
  is tightened to 0700 (with a warning). (On Windows, without POSIX owners and modes, the per-user data
  directory's own access list keeps other users out; the link and exclusive-create rules still apply.)
* **Default names** (:func:`default_record_path`) never collide: UTC time to the microsecond, the device's
  serial number (reduced to ``[A-Za-z0-9._-]``, at most 32 characters: a device's word is not trusted
  with a path), the process id and 48 random bits, e.g.
  ``20261202T031502.123456Z-SN00017-p4711-3f9a1c0b22de.jsonl``; they sort by time.
* **Every record file** (default or given) is created by :func:`create_record_file` with
  ``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600: an existing file or a planted link is refused, never
  followed or overwritten, and the directory is fsync'd so that the new name survives a power loss.
* **A given path** is checked by :func:`check_record_path` before a session sends anything: its directory
  must exist, be a directory and be writable, and the file must not exist. Errors name the option the
  caller knows the path by (``record_path`` in the API, ``--record`` on the command line).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import platformdirs

from iontodrive.errors import RecordPathError, RecordWriteError

__all__ = [
    "RECORD_DIR_ENV",
    "check_record_path",
    "create_record_file",
    "default_record_dir",
    "default_record_path",
    "fsync_directory",
]

log = logging.getLogger(__name__)

RECORD_DIR_ENV: Final = "IONTODRIVE_RECORD_DIR"
APP_NAME: Final = "iontodrive"
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
_SERIAL_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")
_SERIAL_MAX: Final = 32
# O_NOFOLLOW and O_CLOEXEC are POSIX; O_BINARY is Windows'.
NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_CREATE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _private_dir(path: Path, *, option: str) -> None:
    """Make sure ``path`` is a directory of ours that nobody else can use: create it 0700 if missing;
    refuse a link, a non-directory, or another user's; tighten our own if group or others have access."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RecordPathError.from_os_error_for(
            path, exc, option=option, what="cannot create the directory"
        ) from exc
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise RecordPathError.from_os_error_for(path, exc, option=option) from exc
    if stat.S_ISLNK(info.st_mode):
        raise RecordPathError(
            path, "is a symbolic link; records go only into a real directory of their own", option=option
        )
    if not stat.S_ISDIR(info.st_mode):
        raise RecordPathError(path, "is not a directory", option=option)
    if not hasattr(os, "geteuid"):  # Windows: the per-user data directory's ACL keeps others out
        return
    if info.st_uid != os.geteuid():
        raise RecordPathError(
            path,
            f"is owned by {_owner_name(info.st_uid)}, not by this user: records would be readable "
            "or replaceable by another user",
            option=option,
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        log.warning(
            "record directory %s had mode %o: tightened to %o (records are private, S21)",
            path,
            stat.S_IMODE(info.st_mode),
            DIR_MODE,
        )
        try:
            os.chmod(path, DIR_MODE, follow_symlinks=False)
        except OSError as exc:
            raise RecordPathError.from_os_error_for(
                path, exc, option=option, what="cannot make it private"
            ) from exc


def default_record_dir() -> Path:
    """The default record directory (see the module docstring), created 0700 and checked.

    Raises :class:`RecordPathError` (option ``IONTODRIVE_RECORD_DIR`` or ``record_path``) when it cannot be
    created, is a link, is not a directory or belongs to another user.
    """
    override = os.environ.get(RECORD_DIR_ENV)
    if override:
        directory = Path(override).expanduser()
        option = RECORD_DIR_ENV
        if not directory.parent.is_dir():
            raise RecordPathError(
                directory, f"the directory {directory.parent} does not exist", option=option
            )
        _private_dir(directory, option=option)
        return directory
    option = "record_path"
    app_dir = platformdirs.user_data_path(APP_NAME)
    try:
        app_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecordPathError.from_os_error_for(
            app_dir.parent, exc, option=option, what="cannot create the data directory"
        ) from exc
    _private_dir(app_dir, option=option)
    directory = app_dir / "records"
    _private_dir(directory, option=option)
    return directory


def safe_serial(serial: object) -> str:
    """``serial`` reduced to a file-name fragment: ``[A-Za-z0-9._-]``, at most 32 characters, never empty,
    never starting with a dot."""
    text = _SERIAL_UNSAFE.sub("_", str(serial)).strip("._")[:_SERIAL_MAX]
    return text or "device"


def default_record_path(serial: object = "device", *, suffix: str = "") -> Path:
    """A fresh record path in :func:`default_record_dir` whose name no other session takes, however many
    sessions start in the same microsecond, in however many processes (time, serial, pid, 48 random bits).

    ``suffix`` (e.g. ``"visa"``) is added to the name before ``.jsonl``. The file itself is not created
    here: :class:`RecordWriter` creates it exclusively. Raises :class:`RecordPathError` as
    :func:`default_record_dir` does.
    """
    directory = default_record_dir()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    extra = f"-{safe_serial(suffix)}" if suffix else ""
    return directory / f"{stamp}-{safe_serial(serial)}{extra}-p{os.getpid()}-{secrets.token_hex(6)}.jsonl"


def check_record_path(path: str | os.PathLike[str], option: str = "record_path") -> Path:
    """Refuse a record path that cannot be written, before a session sends anything; return it as a Path.

    Raises :class:`RecordPathError` naming ``option`` (e.g. ``"--record"``) when the path's directory is
    missing, is not a directory, or is not writable (permissions or a read-only file system), or when the
    path exists already (a record is never overwritten) or is a link. Creates nothing.
    """
    target = Path(path)
    parent = target.parent
    try:
        parent_info = os.stat(parent)
    except FileNotFoundError:
        raise RecordPathError(target, f"the directory {parent} does not exist", option=option) from None
    except OSError as exc:
        raise RecordPathError.from_os_error_for(
            target, exc, option=option, what=f"cannot use {parent}"
        ) from exc
    if not stat.S_ISDIR(parent_info.st_mode):
        raise RecordPathError(target, f"{parent} is not a directory", option=option)
    if _read_only_fs(parent):
        raise RecordPathError(target, f"the directory {parent} is on a read-only file system", option=option)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RecordPathError(target, f"the directory {parent} is not writable by this user", option=option)
    if os.path.lexists(target):
        what = "a symbolic link" if os.path.islink(target) else "exists"
        raise RecordPathError(
            target, f"{what}; a record is never overwritten: give a new file name", option=option
        )
    return target


def _read_only_fs(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): os.access decides
        return False


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """fsync a directory, so that a file created or renamed in it survives a power loss. Raises OSError.
    A no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (PermissionError, IsADirectoryError):  # Windows cannot open a directory: nothing to sync
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_record_file(path: str | os.PathLike[str], *, option: str = "record_path") -> int:
    """Create the record file at ``path`` exclusively (``O_EXCL | O_NOFOLLOW``, mode 0600), fsync its
    directory, and return the open descriptor (write only; the caller closes it).

    Raises :class:`RecordPathError` (naming ``option``) when the file or a link exists there or the
    directory is missing or not writable, :class:`RecordWriteError` for any other OS failure (e.g. ENOSPC).
    """
    target = Path(path)
    try:
        fd = os.open(target, _CREATE_FLAGS, FILE_MODE)
    except FileExistsError:
        raise RecordPathError(
            target, "exists; a record is never overwritten: give a new file name", option=option
        ) from None
    except OSError as exc:
        if exc.errno in _PATH_ERRNOS:
            raise RecordPathError.from_os_error_for(
                target, exc, option=option, what="cannot create the file"
            ) from exc
        raise RecordWriteError.from_os_error(target, exc) from exc
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, FILE_MODE)  # exactly 0600, whatever the umask
        fsync_directory(target.parent)
    except OSError as exc:
        os.close(fd)
        raise RecordWriteError.from_os_error(target, exc) from exc
    return fd


def _path_errnos() -> frozenset[int]:
    import errno

    return frozenset({errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.ELOOP})


_PATH_ERRNOS: Final = _path_errnos()
