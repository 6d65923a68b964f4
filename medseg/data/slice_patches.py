"""2D training patches: crops of slices (data.patch_size with data.dims=2), a share centred on foreground.

nnU-Net trains its 2D configuration on patches cut from slices and forces a third of them to hold
foreground (oversample_foreground_percent 0.33). Here item i of an epoch is forced when
floor((i + 1) p) > floor(i p) for p = data.fg_oversample, so exactly floor(N p) of the N items of an epoch
are, whatever the order, the workers or the batch size. A forced item takes a class present in its case
(uniformly), one of the store's sampled voxels of that class (data.store.fg_samples: no label is scanned),
and the slice through it; the patch is centred there. The other items keep their slice and a random
centre. Patches are moved inside the slice where they can be and zero-padded where the slice is smaller,
as data=... 3D patches are (medseg/data/datasets.py PatchDataset). The read size may exceed the patch
(room for rotation and scaling, see medseg/data/batch_augment.py read_size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medseg.data.datasets import SliceDataset, _as_item, without_meta


def forced_foreground(i: int, share: float) -> bool:
    """Whether item i of an epoch is centred on foreground, so that floor(N * share) of N items are."""
    return share > 0 and math.floor((i + 1) * share) > math.floor(i * share)


def crop_plan(shape: Sequence[int], centre: Sequence[int], size: Sequence[int]) -> tuple[tuple, tuple]:
    """(source, destination) slices of the `size` region centred at `centre` in an array of spatial
    `shape`: moved inside the array where it fits, zero-padded symmetrically where the array is smaller."""
    padded = [max(s, p) for s, p in zip(shape, size)]
    before = [(q - s) // 2 for q, s in zip(padded, shape)]
    start = [min(max(c + b - p // 2, 0), q - p) for c, b, p, q in zip(centre, before, size, padded)]
    lo = [max(0, st - b) for st, b in zip(start, before)]
    hi = [min(s, st - b + p) for st, b, p, s in zip(start, before, size, shape)]
    src = tuple(slice(a, z) for a, z in zip(lo, hi))
    dst = tuple(slice(a - st + b, z - st + b) for a, z, st, b in zip(lo, hi, start, before))
    return src, dst


def crop_around(array: np.ndarray, centre: list[int], size: list[int]) -> np.ndarray:
    """The (C, *size) region of array (C, *spatial) centred at `centre` (see crop_plan)."""
    src, dst = crop_plan(array.shape[1:], centre, size)
    out = np.zeros((array.shape[0], *size), dtype=array.dtype)
    out[(slice(None), *dst)] = array[(slice(None), *src)]
    return out


class SlicePatchDataset(SliceDataset):
    """SliceDataset whose items are `size`-crops of their slice; a `fg_oversample` share centred on foreground."""

    def __init__(self, volumes: Any, axis: int, transform: Any, size: list[int], fg_oversample: float, **kw: Any):
        super().__init__(volumes, axis, transform, **kw)
        self.size = [int(v) for v in size]
        self.fg_oversample = float(fg_oversample or 0.0)
        self._rng = torch.Generator().manual_seed(0)
        self._locations: dict[int, dict[int, np.ndarray]] = {}

    read_sizes: tuple[list[int], list[int]] | None = None  # (patch, larger region) with batched augmentation

    def set_read_large(self, large: bool) -> None:
        """Batched augmentation: the next item reads the larger region only when it will be resampled."""
        if self.read_sizes:
            self.size = list(self.read_sizes[int(large)])

    def seed_item(self, seed: int) -> None:
        """Seed the centre draws of the next item (make_loader's SeededItems calls it per item)."""
        self._rng.manual_seed(int(seed))

    def spatial_shape(self, i: int) -> tuple[int, ...]:
        return tuple(self.size)

    def locations(self, v: int) -> dict[int, np.ndarray]:
        if v not in self._locations:
            if len(self._locations) >= 8:  # bounded: a few cases' samples per process
                self._locations.pop(next(iter(self._locations)))
            self._locations[v] = self.volumes.store.foreground_locations(self.volumes.case_ids[v])
        return self._locations[v]

    def _draw(self, n: int) -> int:
        return int(torch.randint(n, (), generator=self._rng))

    def foreground_point(self, v: int, s: int) -> tuple[int, list[int]] | None:
        """(slice, in-plane centre) through a sampled voxel of a class present in case v, or None."""
        locs = self.locations(v)
        if not locs:
            return None
        classes = sorted(locs)
        points = locs[classes[self._draw(len(classes))]]
        point = [int(x) for x in points[self._draw(len(points))]]
        if s < 0:  # native 2D image: the point is in-plane already
            return s, point
        return point[self.axis], point[: self.axis] + point[self.axis + 1 :]

    def in_plane_shape(self, v: int, s: int) -> list[int]:
        shape = list(self.volumes.spatial_shape(v))
        return shape if s < 0 else shape[: self.axis] + shape[self.axis + 1 :]

    def __getitem__(self, i: int) -> dict:
        v, s = self.epoch_index()[i]
        centre = None
        if forced_foreground(i, self.fg_oversample):
            hit = self.foreground_point(v, s)
            if hit is not None:
                s, centre = hit
        if centre is None:
            centre = [self._draw(n) for n in self.in_plane_shape(v, s)]
        image, label = self.crop(v, s, centre)
        if self.transform is None:  # batched augmentation: the batch step converts and copies once
            return {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}
        with without_meta():
            return _as_item(self.transform({"image": torch.from_numpy(image), "label": torch.from_numpy(label)}))

    def crop(self, v: int, s: int, centre: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Image and label patch of slice s of case v around `centre`; only the region under the patch is
        read from the store (whole slices with data.context_slices)."""
        if self.context or s < 0:
            return crop_around(self.image_at(v, s), centre, self.size), crop_around(
                self.label_at(v, s), centre, self.size
            )
        src, dst = crop_plan(self.in_plane_shape(v, s), centre, self.size)
        region = list(src)
        region.insert(self.axis, s)  # type: ignore[arg-type]
        index = (slice(None), *region)
        out = []
        for part in ("image", "label"):
            read = self.volumes.read(v, part, index)
            # the slice covers the patch: nothing to pad. Only for the batched augmentation, which reads
            # items without writing to them (a view of a case held in RAM must stay untouched)
            if self.transform is None and list(read.shape[1:]) == self.size:
                out.append(read)
                continue
            patch = np.zeros((read.shape[0], *self.size), dtype=read.dtype)
            patch[(slice(None), *dst)] = read
            out.append(patch)
        return out[0], out[1]
