"""Session records: append-only JSON Lines, written as the session happens, durable, private, readable
after any kill, disk failure or torn line.

File format (schema 1). UTF-8, one JSON object per line, each line ending in ``\\n``; every object has a
``kind`` (a lower-case identifier):

* ``header`` (first line, exactly once): ``schema``, ``driver``, ``started_at`` (ISO 8601), ``prescription``
  (dict, :meth:`Prescription.to_dict`), ``identity`` (dict of the device's IdentityReport), ``labels``
  (dict of str to str: patient or sample id, site, drug, notes).
* ``event``: ``event_no``, ``device_time_ms``, ``code`` (EventCode name), ``state`` (DeviceState name),
  ``value`` (int, meaning per code), ``replayed`` (bool), ``recovered`` (bool: fetched on a later
  connection), ``host_time`` (ISO 8601, when the host queued it).
* ``telemetry``: ``sample_no``, ``device_time_ms``, ``state`` (name), ``flags`` (int bit field),
  ``polarity`` (name), ``setpoint_ua``, ``measured_ua``, ``voltage_mv``, ``impedance_ohm``, ``charge_uas``.
* ``summary``: ``delivered_uas`` (int), ``end_reason`` (str), ``ended_at`` (ISO 8601), plus extra keys.
* ``recovery``: what the host learnt on a later connection about the time it was away (free-form keys).
* ``telemetry_dropped``: the writer's queue was full; ``count`` samples (``first_sample_no`` to
  ``last_sample_no``) are missing here.
* any other kind: a note (free-form keys, ``host_time`` added), e.g. ``started``, ``repair`` (written by
  :meth:`RecordWriter.reopen` when it drops a partial last line).

Enum values are written by **name** everywhere (``"CATHODE"``, ``"HOLD"``, ``"ELECTRODE_LIFT"``), bit fields
(``flags``) as integers; the prescription in the header keeps :meth:`Prescription.to_dict`'s lower-case
names, which :meth:`Prescription.from_dict` reads back. Records of earlier drivers that hold integers for
enums are read as names.

Commit rule: a line exists once its newline is written. The pieces, each with its own rules:
:mod:`~iontodrive.records.paths` (where records go, privacy, names that never collide),
:mod:`~iontodrive.records.writer` (the writer thread, durability, failures),
:mod:`~iontodrive.records.reader` (reading every intact line, problems and cuts),
:mod:`~iontodrive.records.encoding` (one value form, strict parsing).
"""

from __future__ import annotations

from typing import Any

from iontodrive.errors import (
    RecordClosedError,
    RecordDataError,
    RecordError,
    RecordFormatError,
    RecordPathError,
    RecordReadError,
    RecordWriteError,
)
from iontodrive.protocol import IdentityReport
from iontodrive.records.encoding import to_json_value
from iontodrive.records.paths import (
    RECORD_DIR_ENV,
    check_record_path,
    default_record_dir,
    default_record_path,
)
from iontodrive.records.reader import TELEMETRY_INT_FIELDS, RecordCut, RecordProblem, SessionRecord
from iontodrive.records.writer import (
    FSYNC_INTERVAL_S,
    RESERVED_KINDS,
    SCHEMA_VERSION,
    RecordWriter,
)

__all__ = [
    "FSYNC_INTERVAL_S",
    "RECORD_DIR_ENV",
    "RESERVED_KINDS",
    "SCHEMA_VERSION",
    "TELEMETRY_INT_FIELDS",
    "RecordClosedError",
    "RecordCut",
    "RecordDataError",
    "RecordError",
    "RecordFormatError",
    "RecordPathError",
    "RecordProblem",
    "RecordReadError",
    "RecordWriteError",
    "RecordWriter",
    "SessionRecord",
    "check_record_path",
    "default_record_dir",
    "default_record_path",
    "identity_to_dict",
]


def identity_to_dict(identity: IdentityReport) -> dict[str, Any]:
    """The device identity as a JSON-friendly dict (enums by name, ``waveforms`` as an int bit field)."""
    value = to_json_value(identity, "identity")
    assert isinstance(value, dict)
    return value
