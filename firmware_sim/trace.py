"""Ground-truth trace of the simulated device.

:class:`TraceWriter` writes CSV with the header ``t_s,state,setpoint_ua,output_ua,voltage_mv,
impedance_ohm,charge_uas``: one row per physics step, or decimated to ``rate_hz`` rows per second of device
time. ``t_s`` is the simulator time (s) at the end of the step, ``state`` the firmware state's name,
``setpoint_ua`` the firmware's set-point envelope, ``output_ua`` the *true* current through the load
(mean over the step), ``voltage_mv`` the true terminal voltage, ``impedance_ohm`` the true load impedance
(4294967295 when the circuit is open) and ``charge_uas`` the session's delivered charge as the firmware
counts it (integral of measured current). Rows are formatted with vectorised numpy and the file is flushed
after every block, so it is complete up to any kill of the simulator.

:class:`TraceRecorder` keeps the same columns in memory, plus ``physical`` (output shaped by physics, not
by the firmware: compliance clamp, open circuit, regulator fault, power cut), ``polarity`` and
``session`` (restart count × 65536 + session id), for tests.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from iontodrive.protocol import OPEN_CIRCUIT_OHM, DeviceState

log = logging.getLogger(__name__)

HEADER = "t_s,state,setpoint_ua,output_ua,voltage_mv,impedance_ohm,charge_uas"


@dataclass(frozen=True, slots=True)
class TraceBlock:
    """Rows for consecutive physics steps (arrays of equal length)."""

    step: np.ndarray  # global step index (int64), 0-based; the row's time is (step + 1) * dt
    t_s: np.ndarray
    state: np.ndarray  # DeviceState values (int)
    setpoint_ua: np.ndarray
    output_ua: np.ndarray
    voltage_mv: np.ndarray
    impedance_ohm: np.ndarray  # inf when open
    charge_uas: np.ndarray
    physical: np.ndarray  # bool
    polarity: np.ndarray  # Polarity values (int)
    session: np.ndarray  # boot number × 65536 + session id: charge is monotonic within one value


class TraceSink(Protocol):
    """Anything that accepts trace blocks."""

    def write(self, block: TraceBlock) -> None: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------ formatting
# Rows are built as a fixed-width byte matrix (one row per step) in which unused leading positions hold
# spaces; the matrix is written out with the spaces removed. The CSV itself never contains spaces.

_PAD = 32  # b" "
_STATE_NAMES = [s.name.encode() for s in sorted(DeviceState, key=int)]
_STATE_WIDTH = max(len(n) for n in _STATE_NAMES)
_STATE_TABLE = np.full((len(_STATE_NAMES), _STATE_WIDTH), _PAD, dtype=np.uint8)
for _i, _name in enumerate(_STATE_NAMES):
    _STATE_TABLE[_i, : len(_name)] = np.frombuffer(_name, dtype=np.uint8)
_DIGITS4 = np.frombuffer(
    "".join(f"{i:04d}" for i in range(10_000)).encode(), dtype="<u4"
)  # 4 ASCII digits each


def _digits(v: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded decimal digits (ASCII, N×width) of non-negative integers ``v`` (int64, < 1e15)."""
    groups = -(-width // 4)
    out = np.empty((v.shape[0], groups), dtype="<u4")
    rest = v
    for g in range(groups - 1, -1, -1):
        q = (rest * 1e-4).astype(np.int64)  # truncation = floor for v >= 0; fixed up below
        r = rest - q * 10_000
        if g and (r.min() < 0 or r.max() >= 10_000):
            q += (r >= 10_000).astype(np.int64) - (r < 0)
            r = rest - q * 10_000
        out[:, g] = np.take(_DIGITS4, r)
        rest = q
    return out.view(np.uint8).reshape(v.shape[0], groups * 4)[:, groups * 4 - width :]


def _fixed_width(x: np.ndarray, decimals: int) -> tuple[int, int]:
    """(integer digits, total width) needed to print non-negative ``x`` with ``decimals`` places.

    The width is taken from the largest value *after* rounding to ``decimals`` places, exactly as
    :func:`_put_fixed` rounds it: 999.9996 prints as ``1000.000`` and needs four integer digits.
    """
    scale = 10**decimals
    top = int(np.rint(np.max(x) * scale)) // scale if x.size else 0
    int_width = max(1, len(str(top)))
    return int_width, int_width + (decimals + 1 if decimals else 0)


def _put_fixed(dest: np.ndarray, x: np.ndarray, decimals: int, int_width: int) -> None:
    """Write ``x`` (>= 0) right-aligned into ``dest`` (N×width view) with ``decimals`` places."""
    scale = 10**decimals
    v = np.rint(x * scale).astype(np.int64)
    int_part = v // scale if decimals else v
    dest[:, :int_width] = _digits(int_part, int_width)
    if int_width > 1:
        pad = int_part[:, None] < (10 ** np.arange(int_width - 1, 0, -1, dtype=np.int64))[None, :]
        np.copyto(dest[:, : int_width - 1], _PAD, where=pad)
    if decimals:
        dest[:, int_width] = ord(".")
        dest[:, int_width + 1 :] = _digits(v - int_part * scale, decimals)


_SMALL_BLOCK = 48  # below this many rows, per-row formatting is cheaper than the array set-up
_ROW_FORMAT = "%.6f,%s,%.3f,%.3f,%.2f,%.1f,%.3f\n"
_STATE_STR = [s.name for s in sorted(DeviceState, key=int)]


def _format_small(block: TraceBlock, impedance: np.ndarray) -> bytes:
    rows = zip(
        np.maximum(block.t_s, 0.0).tolist(),
        [_STATE_STR[int(s)] for s in block.state],
        np.maximum(block.setpoint_ua, 0.0).tolist(),
        np.maximum(block.output_ua, 0.0).tolist(),
        np.maximum(block.voltage_mv, 0.0).tolist(),
        impedance.tolist(),
        np.maximum(block.charge_uas, 0.0).tolist(),
        strict=True,
    )
    return "".join([_ROW_FORMAT % row for row in rows]).encode()


def format_rows(block: TraceBlock) -> bytes:
    """CSV rows (no header) for ``block``, built without a Python loop over rows (except tiny blocks)."""
    n = block.t_s.shape[0]
    if n == 0:
        return b""
    impedance = np.where(np.isfinite(block.impedance_ohm), block.impedance_ohm, float(OPEN_CIRCUIT_OHM))
    impedance = np.clip(impedance, 0.0, float(OPEN_CIRCUIT_OHM))
    if n < _SMALL_BLOCK:
        return _format_small(block, impedance)
    columns = [
        (np.maximum(block.t_s, 0.0), 6),
        None,  # state
        (np.maximum(block.setpoint_ua, 0.0), 3),
        (np.maximum(block.output_ua, 0.0), 3),
        (np.maximum(block.voltage_mv, 0.0), 2),
        (impedance, 1),
        (np.maximum(block.charge_uas, 0.0), 3),
    ]
    layout: list[tuple[int, int]] = []
    total = 0
    for col in columns:
        if col is None:
            layout.append((0, _STATE_WIDTH))
            total += _STATE_WIDTH + 1
        else:
            int_width, width = _fixed_width(*col)
            layout.append((int_width, width))
            total += width + 1
    mat = np.empty((n, total), dtype=np.uint8)
    pos = 0
    for col, (int_width, width) in zip(columns, layout, strict=True):
        dest = mat[:, pos : pos + width]
        if col is None:
            dest[:] = _STATE_TABLE[block.state.astype(np.intp)]
        else:
            _put_fixed(dest, col[0], col[1], int_width)
        pos += width
        mat[:, pos] = ord(",")
        pos += 1
    mat[:, -1] = ord("\n")
    return mat.tobytes().replace(b" ", b"")


# ---------------------------------------------------------------------------------------------- sinks


class TraceWriter:
    """CSV trace file. ``rate_hz`` None = every physics step; otherwise rows at that device-time rate
    (every ``round(1 / (rate_hz * dt))``-th step, at least every step).

    Raises:
        ValueError: ``rate_hz`` is not positive.
        OSError: the file cannot be created.
    """

    def __init__(self, path: str | Path | IO[bytes], rate_hz: float | None = None) -> None:
        if rate_hz is not None and not rate_hz > 0:
            raise ValueError(f"rate_hz = {rate_hz!r} is out of range: must be > 0 or None")
        self.rate_hz = rate_hz
        self._stride = 1
        self._dt: float | None = None
        if isinstance(path, str | Path):
            self.path: Path | None = Path(path)
            self._file: IO[bytes] = open(self.path, "wb")  # noqa: SIM115 - closed in close()
            self._owns = True
        else:
            self.path = None
            self._file = path
            self._owns = False
        self._file.write(HEADER.encode() + b"\n")
        self._file.flush()
        self.rows = 0

    def bind(self, dt: float) -> None:
        """Called by the device with its physics step (s), to derive the decimation stride."""
        self._dt = dt
        if self.rate_hz is not None:
            self._stride = max(1, round(1.0 / (self.rate_hz * dt)))

    def write(self, block: TraceBlock) -> None:
        if self._file.closed:
            return
        if self._stride > 1:
            sel = np.nonzero((block.step + 1) % self._stride == 0)[0]
            if sel.size == 0:
                return
            block = TraceBlock(*(getattr(block, f)[sel] for f in TraceBlock.__slots__))
        data = format_rows(block)
        self._file.write(data)
        self._file.flush()
        self.rows += block.t_s.shape[0]

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        if self._owns:
            with contextlib.suppress(OSError):  # e.g. a pipe
                os.fsync(self._file.fileno())
            self._file.close()


class TraceRecorder:
    """In-memory trace for tests: :attr:`columns` concatenates every block written (lazy)."""

    def __init__(self) -> None:
        self._blocks: list[TraceBlock] = []
        self._cache: dict[str, np.ndarray] | None = None
        self._fresh: list[TraceBlock] = []

    def bind(self, dt: float) -> None:
        self.dt = dt

    def write(self, block: TraceBlock) -> None:
        self._blocks.append(block)
        self._fresh.append(block)
        self._cache = None

    def new_rows(self) -> dict[str, np.ndarray]:
        """The columns written since the previous call (each row is returned once)."""
        fresh, self._fresh = self._fresh, []
        if not fresh:
            return {f: np.zeros(0) for f in TraceBlock.__slots__}
        return {f: np.concatenate([getattr(b, f) for b in fresh]) for f in TraceBlock.__slots__}

    def close(self) -> None:
        pass

    @property
    def columns(self) -> dict[str, np.ndarray]:
        """Every column (TraceBlock field names) over the whole run."""
        if self._cache is None:
            if not self._blocks:
                self._cache = {f: np.zeros(0) for f in TraceBlock.__slots__}
            else:
                self._cache = {
                    f: np.concatenate([getattr(b, f) for b in self._blocks]) for f in TraceBlock.__slots__
                }
            self._blocks = [TraceBlock(**self._cache)] if self._blocks else []
        return self._cache

    def __len__(self) -> int:
        return int(sum(b.t_s.shape[0] for b in self._blocks))


def open_trace(trace: TraceWriter | TraceRecorder | TraceSink | str | Path | None) -> TraceSink | None:
    """Turn the ``trace`` argument of :class:`~firmware_sim.Device` into a sink (a path opens a CSV)."""
    if trace is None:
        return None
    if isinstance(trace, str | Path):
        return TraceWriter(trace)
    return trace
