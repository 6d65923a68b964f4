"""Split a 3D sliding-window pass into slabs along one axis, with the same result as one pass.

MONAI's `sliding_window_inference` accumulates a float output of shape (K, *spatial) for the whole
input. With 118 classes on a 224x224x160 CT that is 3.8 GB before any resizing. Here the padded volume
is cut along one axis into slabs; each slab runs MONAI's own sliding window on a sub-volume that holds
exactly the windows covering its voxels, at the same positions as in one whole-volume pass
(`dense_patch_slices`: starts at multiples of the scan interval, the last one moved back to fit).
Each voxel is therefore blended from the same windows with the same Gaussian weights as in one pass,
and only a slab's (K, slab, *rest) output is held at a time. The price is that windows on a slab
border run twice; `plan_slabs` makes slabs as large as the memory budget allows to keep that rare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Slab:
    keep: tuple[int, int]  # voxels [start, stop) along the axis this slab produces
    read: tuple[int, int]  # the sub-volume [start, stop) its windows cover


def window_starts(length: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis, as MONAI's sliding window places them."""
    if length <= roi:
        return [0]
    interval = max(1, int(roi * (1 - overlap)))
    starts = []
    for d in range(int(math.ceil(length / interval))):
        starts.append(min(d * interval, length - roi))
        if d * interval + roi >= length:
            break
    return starts


def plan_slabs(length: int, roi: int, overlap: float, max_windows: int) -> list[Slab]:
    """Slabs along an axis of `length` voxels, each reading at most `max_windows` window positions
    (more when fewer cannot cover one voxel)."""
    starts = window_starts(length, roi, overlap)
    if length <= roi or len(starts) <= max_windows:
        return [Slab((0, length), (0, length))]
    # first and last window covering each voxel
    first = [next(j for j, s in enumerate(starts) if s <= v < s + roi) for v in range(length)]
    last = [max(j for j, s in enumerate(starts) if s <= v < s + roi) for v in range(length)]
    slabs: list[Slab] = []
    v0 = 0
    while v0 < length:
        v1 = v0 + 1
        while v1 < length and last[v1] - first[v0] + 1 <= max(max_windows, last[v0] - first[v0] + 1):
            v1 += 1
        lo, hi = first[v0], last[v1 - 1]
        slabs.append(Slab((v0, v1), (starts[lo], starts[hi] + roi)))
        v0 = v1
    return slabs


def windows_within(budget_bytes: int, classes: int, other_voxels: int, roi: int, overlap: float) -> int:
    """How many window positions along the slab axis fit a float32 (K, slab, *rest) output in the budget."""
    interval = max(1, int(roi * (1 - overlap)))
    slab_len = budget_bytes // max(1, 4 * classes * other_voxels)
    return max(1, (slab_len - roi) // interval + 1)
