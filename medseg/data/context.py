"""2.5D input (data.context_slices=k): a slice and its k neighbours on each side as input channels.

Edges are replicated (slice -1 is slice 0). Channel order is channel-major: for input channel c and
offset j in -k..k, output channel c * (2k + 1) + (j + k). Training (from the store), predict and
evaluate (from a volume in memory) use these same functions, so a model sees the same channels.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def slab_range(s: int, n: int, k: int) -> tuple[int, int, np.ndarray]:
    """(lo, hi, take): read slices lo..hi-1, then take[j] - the replicated neighbours in order."""
    wanted = np.clip(np.arange(s - k, s + k + 1), 0, n - 1)
    lo, hi = int(wanted[0]), int(wanted[-1]) + 1
    return lo, hi, wanted - lo


def to_channels(block: Any, axis: int, take: np.ndarray) -> Any:
    """(C, *spatial) block with the slab along spatial `axis` -> (C * (2k+1), *in-plane)."""
    arr = np.asarray(block)
    slab = np.take(arr, take, axis=axis + 1)  # (C, ..., 2k+1, ...)
    slab = np.moveaxis(slab, axis + 1, 1)  # (C, 2k+1, a, b)
    return slab.reshape(slab.shape[0] * slab.shape[1], *slab.shape[2:])


def context_slice(volume: Any, axis: int, s: int, k: int) -> np.ndarray:
    """Input channels for slice `s` of a (C, *spatial) volume in memory (predict, evaluate)."""
    arr = np.asarray(volume)
    if k == 0:
        return np.take(arr, s, axis=axis + 1)
    lo, hi, take = slab_range(s, arr.shape[axis + 1], k)
    block = np.take(arr, np.arange(lo, hi), axis=axis + 1)
    return to_channels(block, axis, take)


def context_channels(in_channels: int, k: int) -> int:
    return in_channels * (2 * k + 1)
