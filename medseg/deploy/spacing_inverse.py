"""The way back from data.spacing: a prediction on Spacingd's grid onto the input's own grid, in numpy.

It is the geometric inverse of the resampling (medseg/deploy/spacing.py), as MONAI's Spacingd inverse
(SpatialResample) does it: each voxel of the input's grid samples the model-grid probabilities linearly where
that voxel's centre lies on the model grid (both affines), coordinates clipped to the grid (border padding).
A resize by shape (align_corners=False centring) would assume that the two grids share their outer edges,
which Spacingd's grid (anchored at the corner voxel centres, its length rounded) does not: predictions came
back shifted by up to about a voxel at the far end (medseg/benchmarks/spacing_backmap.py measures it).

Shared by the PyTorch predictor (medseg/inference/predictor.py) and the deployed one, so both sample at the
very same positions with the very same weights:
- `back_transform`: input voxel index -> model-grid coordinate (4x4), data.scale / data.image_size included;
- `axis_positions`: for an input affine with orthogonal axes (every DICOM series, NIfTI without shear) that
  map is a scale and shift per axis: the positions along each axis, sampled one axis at a time;
- `SlicesAt`: a sheared affine mixes axes; each target slice is sampled trilinearly from the few model slices
  its voxels fall between, streamed along the slice axis like the rest (array operations passed in, so the
  same code serves numpy and torch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.deploy.spacing import border_weights, grid_unchanged, target_grid


def back_transform(
    affine: np.ndarray, shape: Sequence[int], pixdim: Sequence[float], model_shape: Sequence[int]
) -> np.ndarray | None:
    """4x4 map from a voxel index of the input's grid (`affine`, `shape`) to the model-grid coordinate of that
    voxel's centre: the inverse of resampling to `pixdim`, then of the in-plane scale or size (a resize from
    the spacing grid to `model_shape`, align_corners=False: centres at (i + 0.5) * model / grid - 0.5).
    None when Spacingd leaves the image as it is: a resize by shape is then already exact."""
    affine = np.asarray(affine, dtype=np.float64)
    new, xform, out_shape = target_grid(affine, shape, pixdim)
    if grid_unchanged(new, affine, xform, out_shape, shape):
        return None
    ratio = np.asarray(model_shape, dtype=np.float64) / np.asarray(out_shape, dtype=np.float64)
    resize = np.eye(4)
    resize[:3, :3] = np.diag(ratio)
    resize[:3, 3] = 0.5 * ratio - 0.5
    return resize @ np.linalg.inv(xform)


def axis_positions(transform: np.ndarray, shape: Sequence[int]) -> list[np.ndarray] | None:
    """Per axis, the model-grid coordinate of each input voxel along it; None when the map mixes axes."""
    linear = transform[:3, :3]
    if np.abs(linear - np.diag(np.diag(linear))).max() * max(shape) >= 1e-10:  # below float64 rounding: none
        return None
    return [transform[d, d] * np.arange(n, dtype=np.float64) + transform[d, 3] for d, n in enumerate(shape)]


def linear_pairs(positions: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear sampling of an axis of length `size` at `positions`, clipped to the grid (border padding):
    (lower index, upper index, float64 weight of the upper)."""
    return border_weights(np.asarray(positions, dtype=np.float64), int(size))


@dataclass(frozen=True)
class ArrayOps:
    """What `SlicesAt` needs of an array library: stack slices (K, a, b) into a window (K, n*a*b), multiply the
    window's columns `index` by float32 `weights`, copy a slice."""

    window: Callable[[list[Any]], Any]
    weighted: Callable[[Any, np.ndarray, np.ndarray], Any]
    copy: Callable[[Any], Any]


class SlicesAt:
    """Trilinear sampling of the model grid at `transform`'s positions for each target slice along `axis`, fed
    the model slices (K, n, a, b) in order; each target slice (K, u, v) is emitted once the model slices its
    voxels fall between have arrived, and only those are held."""

    def __init__(
        self, transform: np.ndarray, axis: int, shape: Sequence[int], model_shape: Sequence[int], ops: ArrayOps
    ) -> None:
        self.transform, self.axis, self.ops = transform, axis, ops
        self.shape, self.model = [int(s) for s in shape], [int(s) for s in model_shape]
        self.rest = [d for d in range(3) if d != axis]
        self.target = self.shape[axis]
        self.next_target, self.received = 0, 0
        self.held: dict[int, Any] = {}
        self._plans: dict[int, tuple[int, int, list[tuple[np.ndarray, np.ndarray]]]] = {}

    def _plan(self, t: int) -> tuple[int, int, list[tuple[np.ndarray, np.ndarray]]]:
        """(first model slice, one past the last, [(window column, float32 weight)] for the 8 corners)."""
        if t not in self._plans:
            u, v = (self.shape[d] for d in self.rest)
            index = np.zeros((3, u * v))
            index[self.axis] = t
            grid = np.meshgrid(np.arange(u), np.arange(v), indexing="ij")
            index[self.rest[0]], index[self.rest[1]] = grid[0].ravel(), grid[1].ravel()
            coords = self.transform[:3, :3] @ index + self.transform[:3, 3:]
            (s0, s1, ws), (a0, a1, wa), (b0, b1, wb) = (
                border_weights(coords[d], self.model[d]) for d in (self.axis, *self.rest)
            )
            lo, hi = int(s0.min()), int(s1.max()) + 1
            a, b = (self.model[d] for d in self.rest)
            corners = []
            for si, sw in ((s0, 1.0 - ws), (s1, ws)):
                for ai, aw in ((a0, 1.0 - wa), (a1, wa)):
                    for bi, bw in ((b0, 1.0 - wb), (b1, wb)):
                        corners.append((((si - lo) * a + ai) * b + bi, (sw * aw * bw).astype(np.float32)))
            self._plans = {t: (lo, hi, corners)}  # one plan at a time: it is the size of a slice
        return self._plans[t]

    def feed(self, chunk: Any) -> Iterator[tuple[int, Any]]:
        """Take the next model slices (K, n, a, b); yield (target index, (K, u, v)) that are ready."""
        for i in range(chunk.shape[1]):
            self.held[self.received] = chunk[:, i]
            self.received += 1
        while self.next_target < self.target:
            lo, hi, corners = self._plan(self.next_target)
            if hi > self.received:
                break
            window = self.ops.window([self.held[s] for s in range(lo, hi)])
            total = None
            for index, weights in corners:
                part = self.ops.weighted(window, index, weights)
                total = part if total is None else total + part
            yield self.next_target, total.reshape(window.shape[0], *(self.shape[d] for d in self.rest))
            self.next_target += 1
        oldest = self._plan(self.next_target)[0] if self.next_target < self.target else self.received
        self.held = {i: self.ops.copy(v) for i, v in self.held.items() if i >= oldest}

    def done(self) -> bool:
        return self.next_target == self.target


NUMPY_OPS = ArrayOps(
    window=lambda slices: np.stack(slices, axis=1).reshape(slices[0].shape[0], -1),
    weighted=lambda window, index, weights: np.take(window, index, axis=1) * weights,
    copy=lambda a: a.copy(),
)
