"""Datasets over the case store: 2D slices (or 2.5D slabs) of 3D volumes, random 3D patches, whole volumes.

Cases pass the deterministic transform chain once, into the case store (medseg/data/store/); a read
error is stored as a marker so that the data check can name every bad case at once. Items read only
what they need from the memory-mapped store: one slice, a slab of 2k+1 slices, or the chunks under a
patch. Which slices hold foreground and where each class lies come from the stored metadata, so no
label is scanned at run time. The process keeps its index, not the volumes (unless data.cache_rate asks
to hold small datasets in RAM).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from monai.transforms import Transform
from torch.utils.data import Dataset

from medseg.data.image_loading import load_image


class GuardedChain(Transform):
    """Run a transform chain; on failure return {'id', '_error'} instead of raising.

    A MONAI Transform (deterministic): CacheDataset and PersistentDataset cache only up to the first
    step that is random or not a Transform, so a plain callable here would be re-run on every item.
    """

    def __init__(self, chain: Any) -> None:
        self.chain = chain

    def __call__(self, case: dict) -> dict:
        try:
            out = self.chain(dict(case), end=1)  # loading: the original geometry is still in the metadata
            geometry = image_geometry(out["image"])
            out = self.chain(out, start=1)
        except Exception as exc:  # noqa: BLE001 - reported per case by the data check
            return {"id": case["id"], "_error": describe_failure(case, exc)}
        out["id"] = case["id"]
        out["_geometry"] = geometry
        out["image"] = plain(out["image"]).float()
        if "label" in out:
            label = plain(out["label"])
            if not torch.isfinite(label).all():
                return {"id": case["id"], "_error": f"label has NaN/Inf values ({case.get('label')}); fix the mask"}
            out["label"] = label.round().to(torch.int16)
        return out


def image_geometry(image: Any) -> dict[str, Any]:
    """Shape, affine and voxel spacing (mm) of an image as read from its file (predict/evaluate map back to it)."""
    meta = getattr(image, "meta", {}) or {}
    affine = meta.get("original_affine", meta.get("affine"))
    affine = np.asarray(affine, dtype=np.float64) if affine is not None else np.eye(image.ndim)
    spatial = [int(s) for s in np.asarray(meta.get("spatial_shape", image.shape[1:])).ravel()]
    spacing = np.sqrt((affine[:-1, :-1] ** 2).sum(axis=0))
    return {"shape": spatial, "affine": affine.tolist(), "spacing": [float(s) for s in spacing]}


def describe_failure(case: dict, exc: Exception) -> str:
    """'cannot read <file>: <reason>' naming the first file of the case that does not load."""
    from medseg.data.checks import case_paths

    while exc.__cause__ is not None:  # MONAI wraps errors as "applying transform ..."
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    reason = text[-1] if text else type(exc).__name__
    culprit = _first_unreadable(case_paths(case))
    if culprit is None:  # every file loads: the content is wrong
        label = case.get("label")
        label = f"{len(label)} structure files" if isinstance(label, (list, tuple)) else label
        return f"{reason[:200]} (label {label})"
    path, why = culprit
    return f"cannot read {path} ({why[:160]})"


def _first_unreadable(paths: list[str]) -> tuple[str, str] | None:
    loader = load_image(image_only=True)
    for path in paths:
        try:
            loader(path)
        except Exception as exc:  # noqa: BLE001
            text = str(exc).strip().splitlines()
            return path, f"{type(exc).__name__}: {text[-1] if text else ''}"
    return None


class StoreVolumes:
    """The cases of one split in the store, in case order. `volumes[i]` reads case i whole.

    With data.cache_rate > 0 the first share of cases is read into RAM once (small data: per-item
    reads then cost nothing); with 0 every read goes to the memory-mapped store. None (automatic): native
    2D images are held (an item is the whole image), volumes are read from the store, whatever the layout.
    """

    def __init__(self, store: Any, cases: list[dict], cache_rate: float | None = 0.0) -> None:
        self.store, self.data = store, cases
        self.case_ids = [c["id"] for c in cases]
        self._ram: dict[int, dict[str, np.ndarray]] = {}
        if cache_rate is None:
            held = [i for i in range(len(cases)) if len(self.meta(i).get("spatial_shape", ())) == 2]
        else:
            held = list(range(int(len(cases) * float(cache_rate))))
        for i in held:
            if "error" not in self.meta(i):
                self._ram[i] = {
                    part: np.asarray(store.array(self.case_ids[i], part)[...]) for part in ("image", "label")
                }

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def held_cases(self) -> int:
        """How many cases this process holds decompressed in RAM (the rest are read from the store)."""
        return len(self._ram)

    def meta(self, i: int) -> dict:
        return self.store.meta(self.case_ids[i])

    def spatial_shape(self, i: int) -> list[int]:
        return self.require(i)["spatial_shape"]

    def require(self, i: int) -> dict:
        """Case i's metadata, or a DataError when it could not be read (reached only with data.check=false)."""
        meta = self.meta(i)
        if "error" in meta:
            from medseg.errors import DataError

            raise DataError(f"case {meta['id']}: {meta['error']}; fix it (data.check=true lists every bad case)")
        return meta

    def read(self, i: int, part: str, index: tuple = (Ellipsis,)) -> np.ndarray:
        """A region of case i's `image` (float32) or `label` (int16/int32), indexed like a numpy array."""
        held = self._ram.get(i)
        arr = held[part][index] if held is not None else self.store.array(self.case_ids[i], part)[index]
        arr = np.asarray(arr)
        if part == "image":
            return arr.astype(np.float32, copy=False)
        return arr.astype(np.int16 if arr.dtype == np.uint8 else np.int32, copy=False)

    def __getitem__(self, i: int) -> dict:
        self.require(i)
        return {
            "id": self.case_ids[i],
            "image": torch.from_numpy(self.read(i, "image")),
            "label": torch.from_numpy(self.read(i, "label")),
        }


def _at(axis: int, index: Any) -> tuple:
    """Index along spatial `axis` of a (C, *spatial) array."""
    return (slice(None),) * (axis + 1) + (index,)


class SliceDataset(Dataset):
    """2D items: slices along `axis` of each volume (a native 2D image is one slice), in case order.

    context=k gives each item the 2k+1 neighbouring slices as channels (edges replicated). With
    `foreground_ratio` every foreground slice is used each epoch plus background slices drawn anew
    each epoch from (seed, epoch) — `set_epoch` is called by the trainer before each epoch; the epoch
    lives in shared memory so that persistent DataLoader workers see it.
    """

    def __init__(
        self,
        volumes: StoreVolumes,
        axis: int,
        transform: Any,
        drop_empty: bool = False,
        foreground_ratio: float | None = None,
        seed: int = 0,
        context: int = 0,
    ) -> None:
        self.volumes, self.axis, self.transform, self.context = volumes, axis, transform, int(context)
        self.seed = int(seed)
        index: list[tuple[int, int]] = []
        fg: list[bool] = []
        for v in range(len(volumes)):
            meta = volumes.require(v)
            if len(meta["spatial_shape"]) == 2:  # native 2D: (C, H, W)
                index.append((v, -1))
                fg.append(any(meta["class_voxels"][1:]))
                continue
            flags = meta["foreground_slices"][axis]
            index += [(v, s) for s in range(len(flags))]
            fg += [bool(f) for f in flags]
        self.pos = [ix for ix, f in zip(index, fg) if f]
        self.neg = [ix for ix, f in zip(index, fg) if not f]
        self.n_neg = len(self.neg)
        if drop_empty and self.pos:
            self.n_neg = 0
        elif foreground_ratio is not None and self.pos and 0 < float(foreground_ratio) <= 1:
            ratio = float(foreground_ratio)
            self.n_neg = min(len(self.neg), int(round(len(self.pos) * (1 - ratio) / ratio)))
        self._redraw = 0 < self.n_neg < len(self.neg)
        self.index = index if self.n_neg == len(self.neg) else sorted(self.pos + self.neg[: self.n_neg])
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._drawn_epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    def epoch_index(self) -> list[tuple[int, int]]:
        """This epoch's items: all foreground slices plus this epoch's draw of background ones."""
        if not self._redraw:
            return self.index
        epoch = int(self._epoch[0])
        if epoch != self._drawn_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            chosen = np.sort(rng.choice(len(self.neg), size=self.n_neg, replace=False))
            self.index = sorted(self.pos + [self.neg[j] for j in chosen])
            self._drawn_epoch = epoch
        return self.index

    @property
    def case_ids(self) -> list[str]:
        return self.volumes.case_ids

    def case_index(self, i: int) -> int:
        return self.epoch_index()[i][0]

    def spatial_shape(self, i: int) -> tuple[int, ...]:
        """Spatial size of item i before the item transforms pad it."""
        v, s = self.epoch_index()[i]
        shape = tuple(self.volumes.spatial_shape(v))
        return shape if s < 0 else shape[: self.axis] + shape[self.axis + 1 :]

    def __len__(self) -> int:
        return len(self.pos) + self.n_neg

    def __getitem__(self, i: int) -> dict:
        v, s = self.epoch_index()[i]
        item = {"image": torch.from_numpy(self.image_at(v, s)), "label": torch.from_numpy(self.label_at(v, s))}
        with without_meta():
            return _as_item(self.transform(item))

    def image_at(self, v: int, s: int) -> np.ndarray:
        """The input channels of slice s of case v: (C, H, W), or (C * (2k+1), H, W) with context."""
        from medseg.data.context import slab_range, to_channels

        k = self.context
        if s < 0:  # native 2D image: its neighbours are itself
            image = self.volumes.read(v, "image")
            return np.repeat(image, 2 * k + 1, axis=0) if k else image
        if k == 0:
            return self.volumes.read(v, "image", _at(self.axis, s))
        n = self.volumes.spatial_shape(v)[self.axis]
        lo, hi, take = slab_range(s, n, k)
        return to_channels(self.volumes.read(v, "image", _at(self.axis, slice(lo, hi))), self.axis, take)

    def label_at(self, v: int, s: int) -> np.ndarray:
        return self.volumes.read(v, "label") if s < 0 else self.volumes.read(v, "label", _at(self.axis, s))


class PatchDataset(Dataset):
    """3D training items: `samples` random patches per case, read from the chunks they touch.

    A patch centre is a stored foreground location with probability pos/(pos+1) (data.pos_neg_ratio:
    a class present in the case is picked uniformly, then one of its sampled voxels), otherwise any voxel.
    Volumes smaller than the patch are zero-padded symmetrically, as MONAI's SpatialPad + RandCropByPosNeg
    did on whole volumes. Centres come from the dataset's own generator: make_loader's SeededItems seeds it
    per item from (seed, epoch, rank, index) through `seed_item`, so a resumed run with persistent workers
    draws the same patches.
    """

    def __init__(
        self, volumes: StoreVolumes, patch_size: list[int], samples: int, pos_neg_ratio: float, transform: Any
    ) -> None:
        self.volumes, self.transform = volumes, transform
        self.patch = [int(p) for p in patch_size]
        self.items_per_index = int(samples)
        pos = float(pos_neg_ratio)
        self.pos_prob = pos / (pos + 1.0) if pos >= 0 else 0.5
        self._locations: dict[int, dict[int, np.ndarray]] = {}
        self._rng = torch.Generator().manual_seed(0)
        for v in range(len(volumes)):
            volumes.require(v)

    def seed_item(self, seed: int) -> None:
        """Seed the patch-centre draws of the next item."""
        self._rng.manual_seed(int(seed))

    read_sizes: tuple[list[int], list[int]] | None = None  # (patch, larger region) with batched augmentation

    def set_read_large(self, large: bool) -> None:
        """Batched augmentation: the next item reads the larger region only when it will be resampled."""
        if self.read_sizes:
            self.patch = list(self.read_sizes[int(large)])

    @property
    def case_ids(self) -> list[str]:
        return self.volumes.case_ids

    def case_index(self, i: int) -> int:
        return i

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> list[dict]:
        out = []
        for _ in range(self.items_per_index):
            image, label = self.patch_at(i, self.draw_centre(i))
            if self.transform is None:  # batched augmentation: the batch step converts and copies once
                out.append({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
                continue
            with without_meta():
                out.append(
                    _as_item(self.transform({"image": torch.from_numpy(image), "label": torch.from_numpy(label)}))
                )
        return out

    def locations(self, v: int) -> dict[int, np.ndarray]:
        if v not in self._locations:
            if len(self._locations) >= 8:  # bounded: a few cases' samples per process
                self._locations.pop(next(iter(self._locations)))
            self._locations[v] = self.volumes.store.foreground_locations(self.volumes.case_ids[v])
        return self._locations[v]

    def draw_centre(self, v: int) -> list[int]:
        shape = self.volumes.spatial_shape(v)
        g = self._rng
        if float(torch.rand((), generator=g)) < self.pos_prob:
            locs = self.locations(v)
            if locs:
                classes = sorted(locs)
                pts = locs[classes[int(torch.randint(len(classes), (), generator=g))]]
                return [int(x) for x in pts[int(torch.randint(len(pts), (), generator=g))]]
        return [int(torch.randint(s, (), generator=g)) for s in shape]

    def patch_at(self, v: int, centre: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The patch around `centre` (moved inside the volume, padded when the volume is smaller)."""
        shape = self.volumes.spatial_shape(v)
        padded = [max(s, p) for s, p in zip(shape, self.patch)]
        before = [(q - s) // 2 for q, s in zip(padded, shape)]
        start = [min(max(c + b - p // 2, 0), q - p) for c, b, p, q in zip(centre, before, self.patch, padded)]
        lo = [max(0, st - b) for st, b in zip(start, before)]
        hi = [min(s, st - b + p) for st, b, p, s in zip(start, before, self.patch, shape)]
        region = (slice(None), *(slice(a, z) for a, z in zip(lo, hi)))
        dst = (slice(None), *(slice(a - st + b, z - st + b) for a, z, st, b in zip(lo, hi, start, before)))
        image, label = self.volumes.read(v, "image", region), self.volumes.read(v, "label", region)
        out_i = np.zeros((image.shape[0], *self.patch), dtype=image.dtype)
        out_l = np.zeros((label.shape[0], *self.patch), dtype=label.dtype)
        out_i[dst], out_l[dst] = image, label
        return out_i, out_l


class VolumeDataset(Dataset):
    """3D items: whole volumes (validation, or training without data.patch_size), in case order."""

    def __init__(self, volumes: StoreVolumes, transform: Any) -> None:
        self.volumes, self.transform = volumes, transform
        self.items_per_index = 1

    @property
    def case_ids(self) -> list[str]:
        return self.volumes.case_ids

    def case_index(self, i: int) -> int:
        return i

    def spatial_shape(self, i: int) -> tuple[int, ...]:
        """Spatial size of volume i before the item transforms pad it."""
        return tuple(self.volumes.spatial_shape(i))

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict:
        vol = self.volumes[i]
        with without_meta():
            return _as_item(self.transform({"image": vol["image"], "label": vol["label"]}))


@contextmanager
def without_meta() -> Iterator[None]:
    """Item transforms need no MONAI metadata; skipping it makes them several times faster."""
    from monai.data import get_track_meta, set_track_meta

    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


def plain(t: Any) -> torch.Tensor:
    """A plain tensor (MONAI MetaTensors carry per-item metadata that batching does not need)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def _as_item(item: dict) -> dict:
    return {"image": plain(item["image"]).float(), "label": plain(item["label"]).long()}
