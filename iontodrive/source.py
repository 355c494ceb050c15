"""The current-source interface shared by the framed-protocol stimulator and VISA source-meters.

:class:`CurrentSource` is what a lab script or clinic program needs from *any* source: its
:class:`~iontodrive.protocol.IdentityReport` (hard limits, so :meth:`Prescription.check_against` works the
same on both), ``deliver()``, ``start()`` returning a :class:`SessionHandle`, ``close()``, and the context
manager. :class:`iontodrive.session.Stimulator` (the device ramps by itself) and
:class:`iontodrive.visa.source.VisaSource` (the host ramps a bench source-meter) both satisfy it
structurally; ``isinstance(x, CurrentSource)`` checks the members are present.

:func:`open_source` picks the implementation from the resource string:

=================================================  =====================================================
``GPIB0::24::INSTR``, ``GPIB::24``                 VISA (GPIB board 0-99, primary address 0-30,
                                                   optional secondary address 0-30)
``USB0::0x05E6::0x2450::04096331::INSTR``          VISA (vendor and product id 0-0xFFFF, serial, optional
                                                   interface number)
``TCPIP0::10.0.0.5::inst0::INSTR``                 VISA (VXI-11 / HiSLIP device name optional)
``TCPIP0::10.0.0.5::5025::SOCKET``                 VISA (raw socket; port 1-65535)
``ASRL/dev/ttyUSB0::INSTR``, ``ASRL3::INSTR``      VISA (serial)
anything else ending in ``::INSTR``/``::SOCKET``   VISA (VXI, PXI, ...; checked by the VISA library)
everything else                                    :meth:`Stimulator.open` (a serial path, ``socket://``,
                                                   ``sim://``, any pyserial URL)
=================================================  =====================================================

A string that is recognisably VISA but malformed (``GPIB0::31::INSTR``, ``TCPIP0::host::0::SOCKET``,
``USB0::0x05E6::INSTR``) raises :class:`InvalidResourceError` (field ``resource``) before anything is
opened. ``**options`` go to the chosen opener unchanged (see :meth:`VisaSource.open` and
:meth:`Stimulator.open` for what each accepts).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from iontodrive.errors import SafetyRefusal

if TYPE_CHECKING:
    from iontodrive.prescription import Prescription
    from iontodrive.protocol import DeviceState, Event, IdentityReport
    from iontodrive.record import SessionRecord
    from iontodrive.session import Progress, SessionOutcome

__all__ = [
    "CurrentSource",
    "InvalidResourceError",
    "SessionHandle",
    "is_visa_resource",
    "open_source",
    "validate_visa_resource",
]


class InvalidResourceError(SafetyRefusal):
    """A resource string is malformed; nothing was opened. ``field`` is ``"resource"``."""

    def __init__(self, value: object, reason: str) -> None:
        super().__init__("resource", value, reason=reason)


@runtime_checkable
class SessionHandle(Protocol):
    """A running session, as returned by ``start()``. Methods are thread-safe.

    ``wait()`` returns the completed :class:`~iontodrive.record.SessionRecord` once the output is back at
    zero, or raises why the session ended early (after ramping down).
    """

    record_path: Path
    warnings: list[str]

    @property
    def state(self) -> DeviceState: ...

    @property
    def progress(self) -> Progress | None: ...

    @property
    def finished(self) -> bool: ...

    @property
    def outcome(self) -> SessionOutcome | None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def set_current(self, current_ma: float) -> None: ...

    def stop(self) -> None: ...

    def abort(self) -> None: ...

    def wait(self, timeout_s: float | None = None) -> SessionRecord: ...


@runtime_checkable
class CurrentSource(Protocol):
    """A constant-current source that runs dose sessions. Every exit path ramps the output down (S16).

    ``identity`` carries the hard limits prescriptions are checked against (for a VISA source-meter they
    are synthesized from ``*IDN?`` and the configured limits). ``deliver()`` runs a whole session and
    returns its record; Ctrl-C and SIGTERM ramp down before it raises ``SessionInterrupted``.
    """

    identity: IdentityReport

    def deliver(
        self,
        prescription: Prescription,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        record_path: str | Path | None = None,
        labels: dict[str, str] | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> SessionRecord: ...

    def start(
        self,
        prescription: Prescription,
        *,
        record_path: str | Path | None = None,
        labels: dict[str, str] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> SessionHandle: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


# ------------------------------------------------------------------------------------- resource strings

_VISA_PREFIX = re.compile(r"^(GPIB-VXI|GPIB|USB|TCPIP|ASRL|VXI|PXI|VICP)(\d*)(::|/)", re.IGNORECASE)
_VISA_SUFFIX = re.compile(r"::(INSTR|SOCKET|INTFC|BACKPLANE|RAW|SERVANT|MEMACC)$", re.IGNORECASE)
_NUMBER = re.compile(r"^(0x[0-9A-Fa-f]+|\d+)$")


def is_visa_resource(resource: str) -> bool:
    """True if ``resource`` is meant for VISA: it names a VISA interface (``GPIB0::``, ``TCPIP::``,
    ``ASRL/dev/...``) or ends in a VISA resource class such as ``::INSTR`` or ``::SOCKET``."""
    text = resource.strip()
    if "://" in text:
        return False
    return bool(_VISA_PREFIX.match(text) or _VISA_SUFFIX.search(text))


def _int_in(part: str, low: int, high: int) -> int | None:
    if not _NUMBER.match(part):
        return None
    value = int(part, 0) if part.lower().startswith("0x") else int(part)
    return value if low <= value <= high else None


def validate_visa_resource(resource: str) -> str:
    """Check the grammar of a VISA resource string; return it stripped.

    Raises InvalidResourceError naming the offending part and its allowed values. Interfaces other than
    GPIB, USB, TCPIP and ASRL are only checked for shape (the VISA library checks the rest when opening).
    """
    text = resource.strip()
    if not text:
        raise InvalidResourceError(resource, "empty resource string")
    if any(ch.isspace() for ch in text):
        raise InvalidResourceError(resource, "VISA resource strings contain no spaces")
    parts = text.split("::")
    if any(part == "" for part in parts):
        raise InvalidResourceError(resource, "empty field between '::' separators")
    match = _VISA_PREFIX.match(text)
    if match is None:
        raise InvalidResourceError(
            resource, "unknown VISA interface; expected GPIB, USB, TCPIP, ASRL, VXI, PXI or VICP"
        )
    interface = match.group(1).upper()
    board = match.group(2)
    if board and _int_in(board, 0, 99) is None:
        raise InvalidResourceError(resource, "board number must be 0-99")
    resource_class = parts[-1].upper() if _VISA_SUFFIX.search(text) else "INSTR"
    fields = parts[1:-1] if _VISA_SUFFIX.search(text) else parts[1:]

    if interface == "GPIB":
        if resource_class != "INSTR" and resource_class != "INTFC":
            raise InvalidResourceError(resource, f"GPIB resources are INSTR or INTFC, not {resource_class}")
        if resource_class == "INSTR":
            if not 1 <= len(fields) <= 2:
                raise InvalidResourceError(
                    resource, "GPIB syntax is GPIB[board]::primary[::secondary][::INSTR]"
                )
            if _int_in(fields[0], 0, 30) is None:
                raise InvalidResourceError(resource, f"GPIB primary address {fields[0]!r} must be 0-30")
            if len(fields) == 2 and _int_in(fields[1], 0, 30) is None:
                raise InvalidResourceError(resource, f"GPIB secondary address {fields[1]!r} must be 0-30")
    elif interface == "USB":
        if not 3 <= len(fields) <= 4:
            raise InvalidResourceError(
                resource, "USB syntax is USB[board]::vendor_id::product_id::serial[::interface][::INSTR]"
            )
        for name, part in (("vendor id", fields[0]), ("product id", fields[1])):
            if _int_in(part, 0, 0xFFFF) is None:
                raise InvalidResourceError(resource, f"USB {name} {part!r} must be 0-0xFFFF")
        if len(fields) == 4 and _int_in(fields[3], 0, 255) is None:
            raise InvalidResourceError(resource, f"USB interface number {fields[3]!r} must be 0-255")
    elif interface == "TCPIP":
        if not fields:
            raise InvalidResourceError(resource, "TCPIP resources need a host address")
        if resource_class == "SOCKET":
            if len(fields) != 2 or _int_in(fields[1], 1, 65535) is None:
                raise InvalidResourceError(
                    resource, "TCPIP socket syntax is TCPIP[board]::host::port::SOCKET, port 1-65535"
                )
        elif resource_class == "INSTR" and len(fields) > 2:
            raise InvalidResourceError(resource, "TCPIP syntax is TCPIP[board]::host[::device][::INSTR]")
    elif interface == "ASRL" and (resource_class != "INSTR" or fields):
        raise InvalidResourceError(resource, "serial syntax is ASRL<board or device path>::INSTR")
    return text


def open_source(resource: str, **options: Any) -> CurrentSource:
    """Open ``resource`` and return a connected, identified :class:`CurrentSource`.

    VISA resource strings (see the module docstring) go to :meth:`VisaSource.open` (needs pyvisa:
    ``pip install iontodrive[visa]``); everything else to :meth:`Stimulator.open`. ``options`` are passed
    on unchanged.

    Raises:
        InvalidResourceError: ``resource`` is not a string, is empty, or is a malformed VISA string.
        whatever the chosen opener raises (link errors, unsupported instrument, incompatible device).
    """
    if not isinstance(resource, str):
        raise InvalidResourceError(resource, f"must be a string, not {type(resource).__name__}")
    text = resource.strip()
    if not text:
        raise InvalidResourceError(resource, "empty resource string")
    if is_visa_resource(text):
        validate_visa_resource(text)
        from iontodrive.visa.source import VisaSource

        return VisaSource.open(text, **options)
    from iontodrive.session import Stimulator

    return Stimulator.open(text, **options)
