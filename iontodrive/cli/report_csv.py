"""``report --csv``: a session record's telemetry as CSV, in user units, for lab work.

One header line, then one row per telemetry sample in the record's order. Columns (units in the names):
``t_s`` (s since the session started, device time - the same time axis as the figure and the event list),
``device_time_s``, ``sample_no``, ``state``, ``flags`` (bit field, ``docs/protocol.md``), ``polarity``,
``setpoint_ma``, ``current_ma`` (measured), ``voltage_v``, ``impedance_ohm`` (empty for an open circuit),
``dose_ma_min`` (delivered so far). Values are the record's integers converted exactly (µA -> mA with three
decimals, mV -> V with three, µA·s -> mA·min with six), so nothing is rounded away.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from iontodrive.plotting import OPEN_CIRCUIT_OHM, UAS_PER_MA_MIN, session_start_s
from iontodrive.record import SessionRecord

COLUMNS = (
    "t_s",
    "device_time_s",
    "sample_no",
    "state",
    "flags",
    "polarity",
    "setpoint_ma",
    "current_ma",
    "voltage_v",
    "impedance_ohm",
    "dose_ma_min",
)


def measurement_cells(
    setpoint_ua: int, measured_ua: int, voltage_mv: int, impedance_ohm: int, charge_uas: int
) -> list[Any]:
    """The cells ``setpoint_ma``, ``current_ma``, ``voltage_v``, ``impedance_ohm`` (empty for an open
    circuit), ``dose_ma_min`` of one telemetry sample: its integers in user units, converted exactly (µA ->
    mA with three decimals, mV -> V with three, µA·s -> mA·min with six). Used by ``report --csv`` and
    ``monitor --csv``."""
    return [
        f"{setpoint_ua / 1000:.3f}",
        f"{measured_ua / 1000:.3f}",
        f"{voltage_mv / 1000:.3f}",
        "" if impedance_ohm == OPEN_CIRCUIT_OHM else impedance_ohm,
        f"{charge_uas / UAS_PER_MA_MIN:.6f}",
    ]


_MEASURED = ("setpoint_ua", "measured_ua", "voltage_mv", "impedance_ohm", "charge_uas")


def telemetry_rows(record: SessionRecord) -> Iterator[list[Any]]:
    """The CSV rows (without the header) of ``record``'s telemetry."""
    t0_ms = round(session_start_s(record) * 1000)
    for row in record.telemetry:
        yield [
            f"{(row['device_time_ms'] - t0_ms) / 1000:.3f}",
            f"{row['device_time_ms'] / 1000:.3f}",
            row["sample_no"],
            row["state"],
            row["flags"],
            row.get("polarity", ""),
            *measurement_cells(
                row["setpoint_ua"],
                row["measured_ua"],
                row["voltage_mv"],
                row["impedance_ohm"],
                row["charge_uas"],
            ),
        ]


def write_csv(record: SessionRecord, out: TextIO) -> int:
    """Write the header and every row to ``out``; return the number of rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    for row in telemetry_rows(record):
        writer.writerow(row)
        count += 1
    return count


def export_csv(record: SessionRecord, path: str | Path) -> int:
    """Write the CSV to ``path`` (``-`` is stdout); return the number of rows. Raises OSError."""
    import sys

    if str(path) == "-":
        return write_csv(record, sys.stdout)
    target = Path(path)
    with target.open("w", encoding="utf-8", newline="") as out:
        return write_csv(record, out)
