"""Datasets over cached volumes: 2D slices of 3D volumes, or random 3D patches.

Volumes pass the deterministic transform chain once (MONAI CacheDataset / PersistentDataset); a
read error is kept as a marker so that the data check can name every bad case at once.
Slices and patches are cut from those cached volumes, so after the first pass no file is decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from monai.transforms import Transform
from torch.utils.data import Dataset


class GuardedChain(Transform):
    """Run a transform chain; on failure return {'id', '_error'} instead of raising.

    A MONAI Transform (deterministic): CacheDataset and PersistentDataset cache only up to the first
    step that is random or not a Transform, so a plain callable here would be re-run on every item.
    """

    def __init__(self, chain: Any) -> None:
        self.chain = chain

    def __call__(self, case: dict) -> dict:
        try:
            out = self.chain(dict(case))
        except Exception as exc:  # noqa: BLE001 - reported per case by the data check
            return {"id": case["id"], "_error": describe_failure(case, exc)}
        out["id"] = case["id"]
        out["image"] = plain(out["image"]).float()
        if "label" in out:
            label = plain(out["label"])
            if not torch.isfinite(label).all():
                return {"id": case["id"], "_error": f"label has NaN/Inf values ({case.get('label')}); fix the mask"}
            out["label"] = label.round().to(torch.int16)
        return out


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
    from monai.transforms import LoadImage

    loader = LoadImage(image_only=True)
    for path in paths:
        try:
            loader(path)
        except Exception as exc:  # noqa: BLE001
            text = str(exc).strip().splitlines()
            return path, f"{type(exc).__name__}: {text[-1] if text else ''}"
    return None


def cached_volumes(cases: list[dict], chain: Any, data_cfg: Any, num_workers: int) -> Any:
    from monai.data import CacheDataset, PersistentDataset
    from monai.data import Dataset as MonaiDataset

    guarded = GuardedChain(chain)
    if data_cfg.cache_dir:
        return PersistentDataset(data=cases, transform=guarded, cache_dir=str(data_cfg.cache_dir))
    if data_cfg.cache_rate > 0:
        return CacheDataset(  # copy_cache=False: items are only read, never modified in place
            data=cases,
            transform=guarded,
            copy_cache=False,
            cache_rate=float(data_cfg.cache_rate),
            num_workers=max(1, num_workers),
            progress=False,
        )
    return MonaiDataset(data=cases, transform=guarded)


class SliceDataset(Dataset):
    """2D items: every slice along `axis` of each volume (a native 2D image is one slice)."""

    def __init__(
        self,
        volumes: Any,
        axis: int,
        transform: Any,
        drop_empty: bool = False,
        foreground_ratio: float | None = None,
        seed: int = 0,
    ) -> None:
        self.volumes, self.axis, self.transform = volumes, axis, transform
        self.index: list[tuple[int, int]] = []
        self.case_ids: list[str] = []  # items keep case order: case_index(i) is non-decreasing
        self._slice_shapes: list[tuple[int, ...]] = []
        fg: list[bool] = []
        for v in range(len(volumes)):
            vol = loaded(volumes, v)
            label = vol["label"]
            self.case_ids.append(str(vol.get("id", v)))
            shape = tuple(label.shape[1:])
            self._slice_shapes.append(shape if label.ndim == 3 else shape[:axis] + shape[axis + 1 :])
            if label.ndim == 3:  # native 2D: (1, H, W)
                self.index.append((v, -1))
                fg.append(bool(label.any()))
                continue
            other = [d for d in range(3) if d != axis]
            has_fg = (label[0] > 0).any(dim=other[1]).any(dim=other[0]) if label.numel() else torch.zeros(0)
            for s in range(label.shape[axis + 1]):
                self.index.append((v, s))
                fg.append(bool(has_fg[s]))
        if drop_empty:
            kept = [ix for ix, f in zip(self.index, fg) if f]
            self.index = kept or self.index
        elif foreground_ratio is not None:
            self.index = _rebalance(self.index, fg, float(foreground_ratio), seed)

    def __len__(self) -> int:
        return len(self.index)

    def case_index(self, i: int) -> int:
        """The case (volume) item i was cut from."""
        return self.index[i][0]

    def spatial_shape(self, i: int) -> tuple[int, ...]:
        """Spatial size of item i before the item transforms pad it."""
        return self._slice_shapes[self.index[i][0]]

    def __getitem__(self, i: int) -> dict:
        v, s = self.index[i]
        vol = loaded(self.volumes, v)
        if s < 0:
            item = {"image": vol["image"], "label": vol["label"]}
        else:
            item = {"image": vol["image"].select(self.axis + 1, s), "label": vol["label"].select(self.axis + 1, s)}
        with without_meta():
            return _as_item(self.transform(item))


def _rebalance(index: list, fg: list[bool], ratio: float, seed: int) -> list:
    """Keep all foreground slices and enough background ones for a foreground share of `ratio`."""
    pos = [ix for ix, f in zip(index, fg) if f]
    neg = [ix for ix, f in zip(index, fg) if not f]
    if not pos or not 0 < ratio <= 1:
        return index
    n_neg = min(len(neg), int(round(len(pos) * (1 - ratio) / ratio)))
    rng = np.random.default_rng(seed)
    chosen = [neg[i] for i in sorted(rng.choice(len(neg), size=n_neg, replace=False))] if n_neg else []
    return sorted(pos + chosen)


class VolumeDataset(Dataset):
    """3D items: whole volumes (validation) or random patches (training) from cached volumes.

    With patch sampling one index yields a list of `items_per_index` patches (MONAI's collate
    flattens them into the batch); the trainer reads it to weight accumulation groups.
    """

    def __init__(self, volumes: Any, transform: Any, items_per_index: int = 1) -> None:
        self.volumes, self.transform = volumes, transform
        self.items_per_index = int(items_per_index)
        cases = getattr(volumes, "data", None) or [{} for _ in range(len(volumes))]  # MONAI datasets keep their cases
        self.case_ids = [str(c.get("id", i)) for i, c in enumerate(cases)]
        self._shapes: dict[int, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self.volumes)

    def case_index(self, i: int) -> int:
        """The case item i belongs to: one item per case."""
        return i

    def spatial_shape(self, i: int) -> tuple[int, ...]:
        """Spatial size of volume i before the item transforms pad it."""
        if i not in self._shapes:
            self._shapes[i] = tuple(loaded(self.volumes, i)["label"].shape[1:])
        return self._shapes[i]

    def __getitem__(self, i: int) -> Any:
        vol = loaded(self.volumes, i)
        with without_meta():
            out = self.transform({"image": vol["image"], "label": vol["label"]})
        if isinstance(out, list):  # several patches per volume
            return [_as_item(o) for o in out]
        return _as_item(out)


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


def loaded(volumes: Any, i: int) -> dict:
    """Volume i, or a DataError when it could not be read (reached only with data.check=false)."""
    item = volumes[i]
    if "_error" in item:
        from medseg.errors import DataError

        raise DataError(f"case {item['id']}: {item['_error']}; fix it (data.check=true lists every bad case)")
    return item


def plain(t: Any) -> torch.Tensor:
    """A plain tensor (MONAI MetaTensors carry per-item metadata that batching does not need)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def _as_item(item: dict) -> dict:
    return {"image": plain(item["image"]).float(), "label": plain(item["label"]).long()}
