"""The one resource grammar: what a resource string names, and which backend opens it.

=================================================  =====================================================
``GPIB0::24::INSTR``, ``GPIB::24``                 VISA (GPIB board 0-99, primary address 0-30,
                                                   optional secondary address 0-30)
``USB0::0x05E6::0x2450::04096331::INSTR``          VISA (vendor and product id 0-0xFFFF, serial, optional
                                                   interface number)
``TCPIP0::10.0.0.5::inst0::INSTR``                 VISA (VXI-11 / HiSLIP device name optional)
``TCPIP0::10.0.0.5::5025::SOCKET``                 VISA (raw socket; port 1-65535)
``ASRL/dev/ttyUSB0::INSTR``, ``ASRL3::INSTR``      VISA (serial)
anything else ending in ``::INSTR``/``::SOCKET``   VISA (an alias such as ``myalias::INSTR``, VXI, PXI;
                                                   the VISA library resolves it)
``sim://MODEL?...``                                device: the in-process simulator (its pyserial URL
                                                   handler is registered on first use, see below)
bare ``host:port`` (not an existing path)          device: ``socket://host:port``
everything else                                    device: a serial path, ``socket://``, any pyserial URL
                                                   (``spy://``, ``rfc2217://``, ``loop://``...) as is
=================================================  =====================================================

A string that is recognisably VISA but malformed (``GPIB0::31::INSTR``, ``TCPIP0::host::0::SOCKET``,
``USB0::0x05E6::INSTR``) raises :class:`InvalidResourceError` (field ``resource``) before anything is
opened.

``sim://`` works as soon as :mod:`iontodrive` is imported, through a *lazy registration*: the first time a
``sim://`` resource is normalised here, ``firmware_sim.register_url_handler()`` is called (it appends the
simulator's handler package to pyserial's ``protocol_handler_packages``). Nothing imports
``firmware_sim`` before that, so the driver's layers never load the simulator at import time, and
``firmware_sim`` itself still imports nothing of the driver above :mod:`iontodrive.protocol`. (pyserial has
no entry-point mechanism for URL handlers, so an entry point could not do this without an import hook.)

This module imports nothing but :mod:`iontodrive.errors`: both backends and the factory use it, and none of
them imports another.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from iontodrive.errors import SafetyRefusal

__all__ = [
    "InvalidResourceError",
    "backend_for",
    "is_visa_resource",
    "normalise_resource",
    "validate_visa_resource",
]


class InvalidResourceError(SafetyRefusal):
    """A resource string is malformed; nothing was opened. ``field`` is ``"resource"``."""

    def __init__(self, value: object, reason: str) -> None:
        super().__init__("resource", value, reason=reason)


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
    if match is None and len(parts) == 2 and _VISA_SUFFIX.search(text):
        return text  # a VISA alias (``myalias::INSTR``): the VISA library resolves it
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


_HOST_PORT = re.compile(r"([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})")


def _require_text(resource: object) -> str:
    if not isinstance(resource, str):
        raise InvalidResourceError(resource, f"must be a string, not {type(resource).__name__}")
    text = resource.strip()
    if not text:
        raise InvalidResourceError(resource, "empty resource string")
    return text


def backend_for(resource: object) -> str:
    """The backend that opens ``resource``: ``"visa"`` or ``"device"``. Raises InvalidResourceError for a
    non-string, an empty string or a malformed VISA string."""
    text = _require_text(resource)
    if is_visa_resource(text):
        validate_visa_resource(text)
        return "visa"
    return "device"


def register_sim_handler() -> None:
    """Make ``sim://`` URLs open (the lazy registration described in the module docstring).

    Raises InvalidResourceError if the ``firmware_sim`` package cannot be imported."""
    try:
        firmware_sim = importlib.import_module("firmware_sim")
    except ImportError as exc:
        raise InvalidResourceError("sim://", f"sim:// needs the firmware_sim package ({exc})") from exc
    firmware_sim.register_url_handler()


def normalise_resource(resource: object, *, for_backend: str | None = None) -> str:
    """``resource`` as its backend takes it: bare ``host:port`` becomes ``socket://host:port``; a
    ``sim://`` URL registers the simulator's handler; everything else is returned stripped, unchanged.

    ``for_backend`` (``"device"`` or ``"visa"``) refuses a resource meant for the other backend.
    """
    text = _require_text(resource)
    backend = backend_for(text)
    if for_backend is not None and backend != for_backend:
        expected = (
            "a VISA resource string (e.g. GPIB0::24::INSTR)"
            if for_backend == "visa"
            else ("a device path or URL, not a VISA resource string (use open_source() for VISA)")
        )
        raise InvalidResourceError(resource, f"expected {expected}")
    if backend == "visa":
        return text
    if "://" not in text:
        if _HOST_PORT.fullmatch(text) and not Path(text).exists():
            return f"socket://{text}"
        return text
    if text.lower().startswith("sim://"):
        register_sim_handler()
    return text
