"""Vectorised detectors with carry-over between blocks.

The firmware checks its trigger conditions at every physics step; to do that over a block of steps at
once, each detector here takes the block's samples plus the state carried from the previous block and
returns per-step results that are identical to a step-by-step evaluation.
"""

from __future__ import annotations

import numpy as np


def moving_mean(history: np.ndarray, block: np.ndarray) -> np.ndarray:
    """Mean over a window of ``len(history) + 1`` samples ending at each block sample.

    ``history`` holds the samples just before the block (oldest first).
    """
    width = history.shape[0] + 1
    data = np.concatenate((history, block))
    csum = np.concatenate(([0.0], np.cumsum(data)))
    means: np.ndarray = (csum[width:] - csum[:-width]) / width
    return means


def moving_means(history: np.ndarray, block: np.ndarray) -> np.ndarray:
    """Row-wise :func:`moving_mean` of 2-D ``history`` (rows × W-1) and ``block`` (rows × N)."""
    width = history.shape[1] + 1
    data = np.concatenate((history, block), axis=1)
    csum = np.zeros((data.shape[0], data.shape[1] + 1))
    np.cumsum(data, axis=1, out=csum[:, 1:])
    means: np.ndarray = (csum[:, width:] - csum[:, :-width]) / width
    return means


def sliding_min(history: np.ndarray, block: np.ndarray) -> np.ndarray:
    """Minimum over a window of ``len(history) + 1`` samples ending at each block sample.

    Van Herk / Gil-Werman: prefix and suffix minima over segments of the window's length, O(N).
    """
    width = history.shape[0] + 1
    data = np.concatenate((history, block))
    n_out = block.shape[0]
    if width == 1:
        return block.copy()
    total = data.shape[0]
    segments = -(-total // width)
    padded = np.full(segments * width, np.inf)
    padded[:total] = data
    seg = padded.reshape(segments, width)
    prefix = np.minimum.accumulate(seg, axis=1).ravel()
    suffix = np.minimum.accumulate(seg[:, ::-1], axis=1)[:, ::-1].ravel()
    starts = np.arange(n_out)
    minima: np.ndarray = np.minimum(suffix[starts], prefix[starts + width - 1])
    return minima


def run_lengths(cond: np.ndarray, carry: int) -> np.ndarray:
    """Length of the run of True ending at each step (0 where False); ``carry`` = run before the block."""
    n = cond.shape[0]
    idx = np.arange(n)
    last_false = np.maximum.accumulate(np.where(cond, -1, idx))
    return np.where(last_false >= 0, idx - last_false, carry + idx + 1)


def first_true(cond: np.ndarray) -> int | None:
    """Index of the first True, or None."""
    if cond.shape[0] == 0:
        return None
    k = int(np.argmax(cond))
    return k if cond[k] else None
