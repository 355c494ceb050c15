"""The driver's exception tree. Small on purpose: catch :class:`IontodriveError` for everything.

::

    IontodriveError
    ├── LinkError                      the byte link failed
    │   ├── LinkClosedError            the port is closed (by us, or the device went away)
    │   │   └── PortInUseError         the port is open in another process: nothing was written
    │   ├── LinkTimeoutError           no answer before the deadline, retries included
    │   ├── LinkLostError              the link died during a session; the device's watchdog ramps down
    │   └── EventsLostError            device events could not all be delivered (reported, never silent)
    ├── ProtocolViolation              the two ends disagree about the protocol
    │   ├── LocalProtocolError         we tried to send something invalid (wraps EncodeError)
    │   └── RemoteProtocolError        the device sent something invalid or unexpected
    │       └── IncompatibleDeviceError  wrong protocol version
    │           └── ContradictoryIdentityError  limits that contradict the model family (S18)
    ├── DeviceRefusal                  the device answered NACK (code, field, value, range)
    ├── SafetyRefusal (ValueError)     the driver refused before sending anything (prescription, limits)
    ├── DeviceFault                    the device latched a fault or stopped a session on its own
    ├── SessionInterrupted             ended early by KeyboardInterrupt or a signal, after ramp-down
    └── RecordError                    a session record (iontodrive.record)
        ├── RecordFormatError (ValueError)     a file that is not a session record at all
        ├── RecordReadError (OSError)          a record file that cannot be read (path, OS reason)
        ├── RecordDataError (ValueError, TypeError)  data a record cannot carry (NaN, unknown type, bad kind)
        ├── RecordClosedError                  a note or summary after the record was finished
        └── RecordWriteError                   a record that could not be written (path, OS reason)
            └── RecordPathError                a record path refused before anything was written (option)

Every exception the public API raises is one of these: a caller can catch :class:`IontodriveError` alone.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Final

from iontodrive.protocol import ErrorCode, EventCode, Field, MessageType


class IontodriveError(Exception):
    """Base of every exception raised by the driver."""


class LinkError(IontodriveError):
    """The byte link failed."""


class LinkClosedError(LinkError):
    """The link is closed; no more requests can be sent."""


class LinkTimeoutError(LinkError):
    """A request got no answer within its deadline after all retries.

    Attributes: ``request`` (message class name), ``seq``, ``attempts``, ``deadline_s``.
    """

    def __init__(self, request: str, seq: int, attempts: int, deadline_s: float) -> None:
        self.request = request
        self.seq = seq
        self.attempts = attempts
        self.deadline_s = deadline_s
        super().__init__(
            f"{request} (seq {seq}) got no answer after {attempts} attempt(s) within {deadline_s:.3f} s"
        )


class LinkLostError(LinkError):
    """The link was lost while output was on. The device's watchdog (S10) ramps output down by itself."""


class PortInUseError(LinkClosedError):
    """The port is already open elsewhere (another process holds its lock); nothing was written to it."""


class EventsLostError(LinkError):
    """Device events in ``[first, last]`` (``count`` of them) could not be delivered to listeners: the
    device's ring no longer held them, a fetch failed, or a gap was absurdly large. Delivered to error
    listeners, never raised by a request."""

    def __init__(self, count: int, first: int, last: int, why: str) -> None:
        self.count = count
        self.first = first
        self.last = last
        super().__init__(f"{count} device event(s) between {first} and {last} lost: {why}")


class ProtocolViolation(IontodriveError):
    """The two ends disagree about the protocol."""


class LocalProtocolError(ProtocolViolation):
    """We tried to send something the protocol cannot carry (a driver bug or unchecked input)."""


class RemoteProtocolError(ProtocolViolation):
    """The device sent something invalid or unexpected (e.g. a reply of the wrong type)."""


class IncompatibleDeviceError(RemoteProtocolError):
    """The device speaks a protocol version this driver does not support."""

    def __init__(self, device_version: int, supported: tuple[int, ...]) -> None:
        self.device_version = device_version
        self.supported = supported
        super().__init__(
            f"device speaks protocol version {device_version}; this driver supports {list(supported)}"
        )


class ContradictoryIdentityError(IncompatibleDeviceError):
    """The device's identity contradicts its model family (S18): e.g. a "clinic-4" claiming 1 A.

    Attributes: ``model``, ``field`` (the IdentityReport field), ``value`` (reported), ``bound`` (the
    driver's limit of plausibility for that family) and ``reason``. Raised before anything is sent.
    """

    def __init__(self, model: str, field: str, value: int, bound: int, reason: str) -> None:
        self.model = model
        self.field = field
        self.value = value
        self.bound = bound
        self.reason = reason
        self.device_version = -1
        self.supported = ()
        RemoteProtocolError.__init__(
            self, f"device {model!r} reports {field} = {value}: {reason}; refused (S18)"
        )


class DeviceRefusal(IontodriveError):
    """The device refused a request (NACK). Nothing about the session changed.

    Attributes: ``request`` (MessageType), ``code`` (ErrorCode), ``field`` (Field), ``value``,
    ``minimum``, ``maximum`` (0 when not applicable).
    """

    def __init__(
        self,
        request: MessageType | int,
        code: ErrorCode,
        field: Field = Field.NONE,
        value: int = 0,
        minimum: int = 0,
        maximum: int = 0,
    ) -> None:
        self.request = request
        self.code = code
        self.field = field
        self.value = value
        self.minimum = minimum
        self.maximum = maximum
        try:
            request_name = MessageType(request).name
        except ValueError:
            request_name = f"0x{int(request):02X}"
        text = f"device refused {request_name}: {code.name}"
        if field != Field.NONE:
            text += f" ({field.name.lower()} = {value}, allowed [{minimum}, {maximum}])"
        super().__init__(text)


# The unit a field's value is in, from its name's suffix (the project's names carry their units:
# ``current_ma``, ``ramp_up_s``). Longest suffix first. SafetyRefusal uses it so that a refusal states the
# value and its range in the unit the caller used.
_UNIT_SUFFIXES: Final = (
    ("_ua_per_s", "µA/s"),
    ("_ma_per_cm2", "mA/cm²"),
    ("_ma_min", "mA·min"),
    ("_percent", "%"),
    ("_cm2", "cm²"),
    ("_ohm", "Ω"),
    ("_uas", "µA·s"),
    ("_min", "min"),
    ("_ma", "mA"),
    ("_ua", "µA"),
    ("_mv", "mV"),
    ("_ms", "ms"),
    ("_hz", "Hz"),
    ("_v", "V"),
    ("_s", "s"),
)


def unit_of(field: str) -> str:
    """The unit named by ``field``'s suffix (``"current_ma"`` → ``"mA"``), or ``""`` when it names none."""
    for suffix, unit in _UNIT_SUFFIXES:
        if field.endswith(suffix):
            return unit
    return ""


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


class SafetyRefusal(IontodriveError, ValueError):
    """The driver refused a request before sending anything, because it is unsafe or out of range.

    Attributes: ``field`` (the user-facing name, e.g. ``"current_ma"``), ``value``, ``minimum``,
    ``maximum`` (inclusive; ``None`` when unbounded on that side), ``reason`` and ``unit``. ``value``,
    ``minimum`` and ``maximum`` are in the unit of ``field`` (the caller's unit), which the message states:
    ``current_ma = 1e+09 mA is out of range: allowed 0.001 to 4 mA (above the maximum current of clinic-4)``.
    ``unit`` defaults to the one ``field``'s suffix names (:func:`unit_of`); pass it for a field whose name
    carries none.
    """

    def __init__(
        self,
        field: str,
        value: object,
        minimum: float | None = None,
        maximum: float | None = None,
        reason: str = "",
        *,
        unit: str | None = None,
    ) -> None:
        self.field = field
        self.value = value
        self.minimum = minimum
        self.maximum = maximum
        self.reason = reason
        self.unit = unit_of(field) if unit is None else unit
        space_unit = f" {self.unit}" if self.unit else ""
        if minimum is not None and maximum is not None:
            allowed = f"allowed {minimum:g} to {maximum:g}{space_unit}"
        elif minimum is not None:
            allowed = f"allowed at least {minimum:g}{space_unit}"
        elif maximum is not None:
            allowed = f"allowed at most {maximum:g}{space_unit}"
        else:
            allowed = ""
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is None:
            text = f"{field} not given" + (f" ({allowed})" if allowed else "")
        elif is_number and allowed:
            text = f"{field} = {_shown(value)}{space_unit} is out of range: {allowed}"
        else:
            text = f"{field} = {_shown(value)}{space_unit if is_number else ''} refused"
            text += f" ({allowed})" if allowed else ""
        if reason:
            text += f" ({reason})" if is_number and allowed else f": {reason}"
        super().__init__(text)


class DeviceFault(IontodriveError):
    """The device latched a fault or ended a session on its own (over-current, hardware trip).

    Attributes: ``code`` (the EventCode that reported it) and ``value`` (its event value).
    """

    def __init__(self, code: EventCode, value: int = 0, detail: str = "") -> None:
        self.code = code
        self.value = value
        super().__init__(f"device fault {code.name} (value {value}){': ' + detail if detail else ''}")


class SessionWaitTimeout(IontodriveError, TimeoutError):
    """``wait(timeout_s)`` returned control before the session ended: the session goes on (the device keeps
    delivering under the driver's checks); call ``wait()`` again, or ``stop()``."""


class SessionInterrupted(IontodriveError):
    """The session was interrupted (KeyboardInterrupt, SIGTERM) and ramped down; the record is complete."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"session interrupted by {reason}; output ramped down")


# ------------------------------------------------------------------------------------------- records


class RecordError(IontodriveError):
    """Base of the errors about session records (:mod:`iontodrive.record`)."""


class RecordFormatError(RecordError, ValueError):
    """A file that is not a session record at all (empty, or not one line of it is a record line).

    A record with some torn or malformed lines is *not* this error: :meth:`SessionRecord.load` reads every
    intact line and lists the others in ``record.problems``.
    Attributes: ``path``, ``line_no`` (1-based; 0 when the problem is not tied to a line), ``problem``.
    """

    def __init__(self, path: str | os.PathLike[str], line_no: int, problem: str) -> None:
        self.path = str(path)
        self.line_no = line_no
        self.problem = problem
        where = f"{self.path}:{line_no}" if line_no else self.path
        super().__init__(f"{where}: {problem}")


class RecordReadError(RecordError, OSError):
    """A record file that cannot be read (missing, not permitted, I/O error). Also an OSError, which is
    what reading one raised before.

    Attributes: ``path``, ``reason`` (the operating system's words) and ``errno``.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, errno: int | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read the record {self.path}: {reason}")
        self.errno = errno


class RecordDataError(RecordError, ValueError, TypeError):
    """Data a record cannot carry faithfully (NaN or infinity, a type JSON cannot hold, a bad note kind or
    label); nothing was written. Also a ValueError and a TypeError, which is what such errors were before."""


class RecordClosedError(RecordError):
    """A note or summary written to a :class:`RecordWriter` after its summary or its ``close()``."""


def _os_reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno is not None and exc.errno in _errno.errorcode:
        reason = f"{reason} ({_errno.errorcode[exc.errno]})"
    return reason


class RecordWriteError(RecordError):
    """A session record that could not be written: full disk (ENOSPC), I/O error (EIO), directory removed, a
    writer that fell too far behind, or a close that timed out.

    Attributes: ``path``, ``reason`` (the operating system's words, e.g. ``"No space left on device
    (ENOSPC)"``), ``errno`` (``errno.ENOSPC`` ...; None when the failure is not an OS error) and
    ``lines_lost`` (lines queued but never written, as far as known when the error was made).
    """

    def __init__(
        self, path: str | os.PathLike[str], reason: str, errno: int | None = None, *, lines_lost: int = 0
    ) -> None:
        self.path = str(path)
        self.reason = reason
        self.errno = errno
        self.lines_lost = lines_lost
        super().__init__(f"record {self.path} not written: {reason}")

    @classmethod
    def from_os_error(cls, path: str | os.PathLike[str], exc: OSError) -> RecordWriteError:
        """The error for ``exc``, with its strerror and errno name as the reason."""
        return cls(path, _os_reason(exc), exc.errno)


class RecordPathError(RecordWriteError):
    """A record path refused before anything was written or sent: its directory is missing, not a
    directory, read-only or not private; the file exists already (a record is never overwritten); a link, or
    a directory owned by another user, stands in its place.

    Attributes: those of :class:`RecordWriteError`, plus ``option`` (the name the caller knows the path by,
    e.g. ``"record_path"`` or ``"--record"``), which the message starts with.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        reason: str,
        *,
        option: str = "record_path",
        errno: int | None = None,
    ) -> None:
        super().__init__(path, reason, errno)
        self.option = option
        self.args = (f"{option} {self.path}: {reason}",)

    @classmethod
    def from_os_error_for(
        cls, path: str | os.PathLike[str], exc: OSError, *, option: str, what: str = ""
    ) -> RecordPathError:
        """The refusal for ``exc`` (``what`` says what was being done, e.g. "cannot create the file")."""
        reason = _os_reason(exc)
        return cls(path, f"{what}: {reason}" if what else reason, option=option, errno=exc.errno)
