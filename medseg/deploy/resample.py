"""Linear resizing in numpy, with PyTorch's weights (align_corners=False): a twin of
medseg/inference/resample.py and of MONAI's Zoom/Resize, because the deployed predictor may not import torch.

`linear_resize` resizes any axes of an array one axis at a time (linear interpolation is separable, so
this equals bi/trilinear interpolation up to float rounding). `AlongAxis` is the streaming blend along the
slice axis: it keeps the last two source slices and emits each target slice once its sources have arrived.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from medseg.deploy.spacing_inverse import NUMPY_OPS, SlicesAt, axis_positions, linear_pairs


def way_back(
    model_shape: Sequence[int], shape: Sequence[int], axis: int, transform: np.ndarray | None
) -> tuple[Any, Callable[[np.ndarray], np.ndarray]]:
    """medseg/inference/resample.py's `way_back` in numpy: the stage along the slice axis and the in-plane
    stage, from the model grid to the grid `shape`; `transform` None: a resize by shape."""
    target = (shape[axis], *(s for d, s in enumerate(shape) if d != axis))
    if transform is None:
        size = {2: target[1], 3: target[2]}
        return AlongAxis(model_shape[axis], target[0]), lambda chunk: linear_resize(chunk, size)
    positions = axis_positions(transform, shape)
    if positions is None:  # a sheared input affine
        return SlicesAt(transform, axis, shape, model_shape, NUMPY_OPS), lambda chunk: chunk
    plane = dict(zip((2, 3), (positions[d] for d in range(3) if d != axis)))
    return AlongAxis(model_shape[axis], target[0], positions[axis]), lambda chunk: linear_sample(chunk, plane)


def source_index(out_size: int, in_size: int, single: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's linear source positions for each output index: (i0, i1, weight of i1).

    `single`: in float32, as torch.nn.functional.interpolate computes them for float32 tensors; else in
    float64, as medseg/inference/resample.py's blend along the slice axis computes them in Python."""
    dtype = np.float32 if single else np.float64
    scale = dtype(in_size) / dtype(out_size)
    src = np.maximum((np.arange(out_size, dtype=dtype) + dtype(0.5)) * scale - dtype(0.5), dtype(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, np.clip(src - i0, 0, 1).astype(np.float32)


def linear_resize(array: np.ndarray, size: dict[int, int]) -> np.ndarray:
    """Resize `array` along the given axes ({axis: new length}) by linear interpolation, one axis at a
    time: each value is (1 - w) * a + w * b with PyTorch's float32 weights, so results agree with
    F.interpolate to float rounding (1 ulp)."""
    out = array.astype(np.float32, copy=False)
    for axis, new in sorted(size.items(), key=lambda item: item[1] / max(1, out.shape[item[0]])):
        old = out.shape[axis]
        if old == new:
            continue
        out = _blend(out, axis, *source_index(new, old, single=True))
    return np.ascontiguousarray(out)


def linear_sample(array: np.ndarray, positions: dict[int, np.ndarray]) -> np.ndarray:
    """Sample `array` linearly at positions along the given axes ({axis: positions}), clipped to the grid;
    axes in increasing order, with the float32 weights medseg/inference/resample.py's `sample_in_plane`
    uses, so both give the same values."""
    out = array.astype(np.float32, copy=False)
    for axis, p in sorted(positions.items()):
        i0, i1, w = linear_pairs(p, out.shape[axis])
        out = _blend(out, axis, i0, i1, w.astype(np.float32))
    return np.ascontiguousarray(out)


def _blend(array: np.ndarray, axis: int, i0: np.ndarray, i1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(1 - w) * array[i0] + w * array[i1] along `axis`, in float32, in that order of operations."""
    shape = [1] * array.ndim
    shape[axis] = len(w)
    w = w.reshape(shape)
    lo = np.take(array, i0, axis=axis)
    lo *= 1 - w
    hi = np.take(array, i1, axis=axis)
    hi *= w
    lo += hi
    return lo


class AlongAxis:
    """Linear interpolation along the slice axis from `source` to `target` slices, fed in order; with
    `positions` (the source position of each target slice, increasing), at those positions."""

    def __init__(self, source: int, target: int, positions: np.ndarray | None = None) -> None:
        self.source, self.target = source, target
        if positions is not None:
            self.pairs = [(int(a), int(b), float(c)) for a, b, c in zip(*linear_pairs(positions, source))]
        elif source == target:
            self.pairs = [(t, t, 0.0) for t in range(target)]
        else:
            i0, i1, w = source_index(target, source)
            self.pairs = [(int(a), int(b), float(c)) for a, b, c in zip(i0, i1, w)]
        self.next_target = 0
        self.held: dict[int, np.ndarray] = {}
        self.received = 0

    def feed(self, chunk: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Take the next source slices (K, n, A, B); yield (target index, (K, A, B)) that are ready."""
        for i in range(chunk.shape[1]):
            self.held[self.received] = chunk[:, i]
            self.received += 1
        while self.next_target < self.target:
            i0, i1, w = self.pairs[self.next_target]
            if i1 >= self.received:
                break
            if w == 0.0:
                yield self.next_target, self.held[i0]
            else:
                yield self.next_target, self.held[i0] * np.float32(1 - w) + self.held[i1] * np.float32(w)
            self.next_target += 1
        if self.next_target < self.target:
            oldest = self.pairs[self.next_target][0]
            self.held = {i: v.copy() for i, v in self.held.items() if i >= oldest}
        else:
            self.held = {}

    def done(self) -> bool:
        return self.next_target == self.target
