"""Class probabilities back onto the label's grid, a few slices at a time.

Linear (bi/trilinear, align_corners=False) interpolation is separable, so resizing a (K, S, A, B)
probability volume to (K, T, A', B') equals resizing each slice in-plane to (A', B') and then
blending, for each target slice t, the two source slices around it along the slice axis. Both steps
need only the slices at hand: `InPlane` resizes a chunk of slices, and `AlongAxis` keeps the last two
source slices and emits each target slice as soon as the source slices it needs have arrived. Nothing
holds a (K, *volume) float array, whatever the scale or spacing. The weights are those of
`torch.nn.functional.interpolate`, so the result equals resizing the whole volume at once (up to
float rounding).

A model trained with data.spacing predicts on Spacingd's grid, which is not a resize of the input's grid
(it is anchored at the corner voxel centres, its length rounded). There the back-mapping is the geometric
inverse instead (medseg/deploy/spacing_inverse.py, shared with the deployed predictor): per axis, where
each input voxel's centre lies on the model grid; `sample_in_plane` samples a chunk at those positions
and `AlongAxis` blends the slices around each position along the slice axis; both stream the same way.
A sheared input affine mixes the axes: `SlicesAt` samples each target slice trilinearly from the model
slices it falls between. `way_back` picks the stages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseg.deploy.spacing_inverse import ArrayOps, SlicesAt, axis_positions, linear_pairs

TORCH_OPS = ArrayOps(
    window=lambda slices: torch.stack(slices, 1).reshape(slices[0].shape[0], -1),
    weighted=lambda window, index, weights: window.index_select(1, torch.from_numpy(index)) * torch.from_numpy(weights),
    copy=lambda t: t.clone(),
)


def way_back(
    model_shape: Sequence[int], shape: Sequence[int], axis: int, transform: np.ndarray | None
) -> tuple[Any, Callable[[torch.Tensor], torch.Tensor]]:
    """The two streaming stages from the model grid (`model_shape`) to the grid `shape` along `axis`: the
    stage along the slice axis (`feed`, `done`) and the in-plane stage applied to each chunk first.
    `transform` (input voxel -> model coordinate, spacing_inverse.back_transform) or None: a resize by shape."""
    target = (shape[axis], *(s for d, s in enumerate(shape) if d != axis))
    if transform is None:
        return AlongAxis(model_shape[axis], target[0]), lambda chunk: resize_in_plane(chunk, target[1:])
    positions = axis_positions(transform, shape)
    if positions is None:  # a sheared input affine
        return SlicesAt(transform, axis, shape, model_shape, TORCH_OPS), lambda chunk: chunk
    plane = tuple(positions[d] for d in range(3) if d != axis)
    return AlongAxis(model_shape[axis], target[0], positions[axis]), lambda chunk: sample_in_plane(chunk, plane)


def resize_in_plane(chunk: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, n, a, b) probabilities -> (K, n, *size), bilinear; a no-op when the size already fits."""
    if tuple(chunk.shape[2:]) == tuple(size):
        return chunk
    out = F.interpolate(chunk.movedim(1, 0), size=tuple(size), mode="bilinear", align_corners=False)
    return out.movedim(0, 1)


def sample_in_plane(chunk: torch.Tensor, positions: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """(K, n, a, b) probabilities sampled linearly at model-grid positions (p_a, p_b) of the in-plane axes
    -> (K, n, len(p_a), len(p_b)); one axis at a time, as the numpy twin does, so both round alike."""
    out = chunk
    for dim, p in zip((2, 3), positions):
        i0, i1, w = linear_pairs(p, out.shape[dim])
        shape = [1] * out.ndim
        shape[dim] = len(w)
        w = torch.from_numpy(w.astype(np.float32)).reshape(shape)
        lo = out.index_select(dim, torch.from_numpy(i0))
        lo.mul_(1 - w)
        hi = out.index_select(dim, torch.from_numpy(i1))
        hi.mul_(w)
        out = lo.add_(hi)
    return out


class AlongAxis:
    """Linear interpolation along the slice axis from `source` to `target` slices, fed in order; with
    `positions` (the model-grid position of each target slice, increasing), at those positions."""

    def __init__(self, source: int, target: int, positions: np.ndarray | None = None) -> None:
        self.source, self.target = source, target
        if positions is None:
            self.pairs = [_source_pair(t, source, target) for t in range(target)]
        else:
            self.pairs = [(int(a), int(b), float(c)) for a, b, c in zip(*linear_pairs(positions, source))]
        self.next_target = 0
        self.held: dict[int, torch.Tensor] = {}  # source index -> (K, A, B)
        self.received = 0

    def feed(self, chunk: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
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
                yield self.next_target, self.held[i0] * (1 - w) + self.held[i1] * w
            self.next_target += 1
        if self.next_target < self.target:  # keep only what later target slices still need
            oldest = self.pairs[self.next_target][0]
            # copies, so that the chunk these slices are views of can be freed
            self.held = {i: v.clone() for i, v in self.held.items() if i >= oldest}
        else:
            self.held = {}

    def done(self) -> bool:
        return self.next_target == self.target


def _source_pair(t: int, source: int, target: int) -> tuple[int, int, float]:
    """PyTorch's linear source index for target slice t (align_corners=False): (i0, i1, weight of i1)."""
    if source == target:
        return t, t, 0.0
    src = max((t + 0.5) * (source / target) - 0.5, 0.0)
    i0 = min(int(src), source - 1)
    i1 = min(i0 + 1, source - 1)
    return i0, i1, src - i0
