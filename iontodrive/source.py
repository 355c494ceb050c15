"""Opening a source: one factory, :func:`open_source`, over a table of backends.

Modelled on python-can's interface table: :data:`BACKENDS` maps a backend name to the module and class
that open it, imported only when that backend is asked for, so opening a VISA resource never loads
pyserial and opening a stimulator never loads pyvisa. :func:`iontodrive.resources.backend_for` (the one
resource grammar) picks the backend from the resource string:

============  ==========================================  ==========================================
backend       resources                                   class (``open(resource, **options)``)
============  ==========================================  ==========================================
``device``    serial paths, ptys, ``socket://``, bare     :class:`iontodrive.sessions.device.Stimulator`
              ``host:port``, ``sim://``, pyserial URLs
``visa``      VISA resource strings and aliases           :class:`iontodrive.visa.source.VisaSource`
============  ==========================================  ==========================================

Both backends import only what is below them (:mod:`iontodrive.sessions`, :mod:`iontodrive.resources`),
never this module: the import graph has no circle.
"""

from __future__ import annotations

import importlib
from typing import Any

from iontodrive.resources import (
    InvalidResourceError,
    backend_for,
    is_visa_resource,
    normalise_resource,
    validate_visa_resource,
)
from iontodrive.sessions.types import CurrentSource, SessionHandle

__all__ = [
    "BACKENDS",
    "CurrentSource",
    "InvalidResourceError",
    "SessionHandle",
    "is_visa_resource",
    "open_source",
    "validate_visa_resource",
]

#: backend name -> (module, class); the class has ``open(resource, **options)``.
BACKENDS: dict[str, tuple[str, str]] = {
    "device": ("iontodrive.sessions.device", "Stimulator"),
    "visa": ("iontodrive.visa.source", "VisaSource"),
}


def open_source(resource: str, **options: Any) -> CurrentSource:
    """Open ``resource`` and return a connected, identified :class:`CurrentSource`.

    VISA resource strings go to :meth:`VisaSource.open` (needs pyvisa: ``pip install iontodrive[visa]``);
    everything else to :meth:`Stimulator.open` (see :mod:`iontodrive.resources` for the grammar).
    ``options`` are passed on unchanged.

    Raises:
        InvalidResourceError: ``resource`` is not a string, is empty, or is a malformed VISA string.
        whatever the chosen opener raises (link errors, unsupported instrument, incompatible device).
    """
    backend = backend_for(resource)
    module_name, class_name = BACKENDS[backend]
    opener = getattr(importlib.import_module(module_name), class_name)
    source: CurrentSource = opener.open(normalise_resource(resource, for_backend=backend), **options)
    return source
