"""From the data config to train/val DataLoaders and the facts the model needs (DatasetInfo)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from medseg.config.schema import layout_value
from medseg.data.batch_augment import read_size
from medseg.data.checks import check_files, check_volumes
from medseg.data.datasets import PatchDataset, SliceDataset, StoreVolumes, VolumeDataset
from medseg.data.layouts import read_cases
from medseg.data.split import split_cases
from medseg.data.transforms import item_transforms
from medseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class DatasetInfo:
    in_channels: int
    num_classes: int
    class_names: list[str]
    dims: int
    train_cases: list[str] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)
    n_train_items: int = 0
    n_val_items: int = 0
    mask_values: list[int] | None = None  # stored mask value per class (e.g. [0, 255]); predict writes them back

    def as_dict(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "dims": self.dims,
            "train_cases": len(self.train_cases),
            "val_cases": len(self.val_cases),
            "train_items": self.n_train_items,
            "val_items": self.n_val_items,
            "mask_values": self.mask_values,
        }


@dataclass
class DataBundle:
    train_loader: DataLoader
    val_loader: DataLoader
    info: DatasetInfo
    train_set: Any = None
    val_set: Any = None
    val_volumes: Any = None
    loader_kwargs: dict[str, Any] = field(default_factory=dict)


def class_names_for(data_cfg: Any, layout_names: list[str] | None, num_classes: int) -> list[str]:
    names = list(data_cfg.class_names) if data_cfg.class_names else (layout_names or [])
    if data_cfg.class_names and len(names) != num_classes:
        raise DataError(f"data.class_names has {len(names)} names but there are {num_classes} classes; fix the list")
    names = names[:num_classes]
    return names + [f"class_{i}" for i in range(len(names), num_classes)]


def build_data(cfg: Any, world_size: int = 1, rank: int = 0) -> DataBundle:
    """Read, split and check the data, build what the case store lacks; return loaders and dataset facts."""
    data_cfg, hw = cfg.data, cfg.hardware
    dims = int(data_cfg.dims)
    check_geometry_settings(data_cfg)
    caseset = read_checked_cases(cfg)
    train_cases, val_cases = split_cases(caseset.cases, data_cfg, seed=int(cfg.seed))
    store = case_store(cfg, train_cases + val_cases, caseset.root, caseset.class_names)
    cache_rate = None if data_cfg.cache_rate is None else float(data_cfg.cache_rate)
    train_vols = StoreVolumes(store, train_cases, cache_rate)
    val_vols = StoreVolumes(store, val_cases, cache_rate)

    num_classes = data_cfg.num_classes
    declared = None
    if caseset.class_names:
        declared = (len(caseset.class_names), caseset.extra.get("class_source", "the layout's class names"))
    if data_cfg.check:
        train_meta = [train_vols.meta(i) for i in range(len(train_vols))]
        val_meta = [val_vols.meta(i) for i in range(len(val_vols))]
        k_train = check_volumes(train_meta, num_classes, "training", train_cases, declared)
        k_val = check_volumes(val_meta, num_classes, "validation", val_cases, declared)
        num_classes = max(k_train, k_val)
    elif num_classes is None:
        if declared is None:
            raise DataError("data.num_classes is null and data.check=false; set data.num_classes or enable the check")
        num_classes = declared[0]
    first = train_vols.require(0)
    image_channels = int(first["image_shape"][0])
    if dims == 3 and len(first["spatial_shape"]) == 2:
        raise ConfigError("data.dims=3 needs 3D volumes but these images are 2D; use data.dims=2")
    context = context_slices(data_cfg)
    in_channels = image_channels * (2 * context + 1)

    train_tf, val_tf = item_transforms(data_cfg, train=True), item_transforms(data_cfg, train=False)
    augment = batch_augment_for(cfg)  # nnU-Net's augmentation on whole batches (data.augment.batched) or None
    read = read_size(list(data_cfg.patch_size), augment.s) if augment and data_cfg.patch_size else data_cfg.patch_size
    if augment is not None and data_cfg.patch_size:
        train_tf = None  # the batch augmentation cuts every item to the patch: padding the read region is wasted
    fg_share = data_cfg.get("fg_oversample")
    if dims == 2 and data_cfg.patch_size:
        from medseg.data.slice_patches import SlicePatchDataset

        train_set = SlicePatchDataset(
            train_vols,
            int(data_cfg.slice_axis),
            train_tf,
            list(read),
            float(fg_share or 0.0),
            drop_empty=bool(data_cfg.drop_empty_slices),
            foreground_ratio=data_cfg.foreground_slice_ratio,
            seed=int(cfg.seed),
            context=context,
        )
        val_set = SliceDataset(val_vols, int(data_cfg.slice_axis), val_tf, context=context)
    elif dims == 2:
        train_set = SliceDataset(
            train_vols,
            int(data_cfg.slice_axis),
            train_tf,
            drop_empty=bool(data_cfg.drop_empty_slices),
            foreground_ratio=data_cfg.foreground_slice_ratio,
            seed=int(cfg.seed),
            context=context,
        )
        val_set = SliceDataset(val_vols, int(data_cfg.slice_axis), val_tf, context=context)
    elif data_cfg.patch_size:
        samples = int(data_cfg.samples_per_volume)
        pos_neg = float(data_cfg.pos_neg_ratio)
        if fg_share is not None:  # data.fg_oversample: that share of patch centres on foreground
            pos_neg = float(fg_share) / (1.0 - float(fg_share)) if float(fg_share) < 1 else 1e12
        train_set = PatchDataset(train_vols, list(read), samples, pos_neg, train_tf)
        val_set = VolumeDataset(val_vols, val_tf)
    else:
        train_set, val_set = VolumeDataset(train_vols, train_tf), VolumeDataset(val_vols, val_tf)

    info = DatasetInfo(
        in_channels=in_channels,
        num_classes=int(num_classes),
        class_names=class_names_for(data_cfg, caseset.class_names, int(num_classes)),
        dims=dims,
        train_cases=[c["id"] for c in train_cases],
        val_cases=[c["id"] for c in val_cases],
        n_train_items=len(train_set),
        n_val_items=len(val_set),
        mask_values=list(layout_value(data_cfg, "mask_values") or []) or None,
    )
    train_set.batch_augment = augment  # make_loader (and loaders rebuilt from train_set) augment batches with it
    if augment is not None and data_cfg.patch_size and list(read) != list(data_cfg.patch_size):
        train_set.read_sizes = (list(data_cfg.patch_size), list(read))  # the larger region only where resampled
    if len(train_set) == 0 or len(val_set) == 0:
        raise DataError("the train or validation split has no items; add cases or change data.val_percent")
    loader_kwargs = loader_settings(hw)
    shuffle = bool(data_cfg.shuffle)
    train_loader = make_loader(train_set, int(data_cfg.batch_size), shuffle, loader_kwargs, cfg.seed, world_size, rank)
    val_bs = int(data_cfg.val_batch_size or data_cfg.batch_size) if dims == 2 else 1
    val_loader = make_loader(val_set, val_bs, False, loader_kwargs, cfg.seed, world_size, rank)
    log.info(
        "data: %s cases train / %s val, %s / %s %s, %d classes, %d input channel(s)",
        len(train_cases),
        len(val_cases),
        len(train_set),
        len(val_set),
        "slices" if dims == 2 else "volumes",
        info.num_classes,
        in_channels,
    )
    return DataBundle(train_loader, val_loader, info, train_set, val_set, val_vols, loader_kwargs)


def batch_augment_for(cfg: Any) -> Any:
    """The batched augmentation of data.augment (None when it runs per item), on the training device
    when that is a GPU and data.augment.device=auto, else in the loader workers."""
    from medseg.data.batch_augment import BatchAugment, settings_from
    from medseg.data.transforms import uses_batch_augment

    data_cfg = cfg.data
    if not uses_batch_augment(data_cfg):
        return None
    aug, dims = data_cfg.augment, int(data_cfg.dims)
    where = str(aug.get("device", "auto"))
    if where not in ("auto", "cpu"):
        raise ConfigError(f"data.augment.device={where!r} must be auto or cpu")
    device = "cpu"
    if where == "auto" and torch.cuda.is_available():
        from medseg.runtime import select_device

        device = str(select_device(str(cfg.hardware.device)))
    patch = list(data_cfg.patch_size) if data_cfg.patch_size else None
    return BatchAugment(settings_from(aug, dims, patch), dims, patch, device)


def read_checked_cases(cfg: Any) -> Any:
    """The layout's cases, mask values detected into the config, every listed file present (data.check)."""
    data_cfg = cfg.data
    caseset = read_cases(data_cfg, str(cfg.paths.cache_dir))
    detected = caseset.extra.get("mask_values")
    if detected and layout_value(data_cfg, "mask_values") is None:
        # into the config, so the stored run config (evaluate, predict) maps masks the same way
        _set_key(data_cfg, "mask_values", list(detected))
        log.info("masks store values %s; mapped to classes 0..%d", detected, len(detected) - 1)
    if data_cfg.check:
        check_files(caseset.cases, "dataset")
    return caseset


def case_store(cfg: Any, cases: list[dict[str, Any]], source: Any, classes: list[str] | None = None) -> Any:
    """The case store of this data config, every case in `cases` built (missing ones now, in parallel)."""
    from medseg.data.store import open_store, store_cfg

    workers = store_cfg(cfg.data).get("workers")
    workers = int(cfg.hardware.num_workers) if workers is None else int(workers)
    progress = bool(OmegaConf.select(cfg, "trainer.progress_bar", default=True))
    return open_store(
        cfg.data, str(cfg.paths.cache_dir), cases, source, workers=workers, progress=progress, classes=classes
    )


def context_slices(data_cfg: Any) -> int:
    """data.context_slices (k): 2D items carry 2k+1 neighbouring slices as channels."""
    k = int(OmegaConf.select(data_cfg, "context_slices", default=0) or 0)
    if k < 0:
        raise ConfigError(f"data.context_slices={k} must be >= 0")
    if k and int(data_cfg.dims) != 2:
        raise ConfigError(f"data.context_slices={k} is for 2D training; use data.context_slices=0 with data.dims=3")
    return k


def check_geometry_settings(data_cfg: Any) -> None:
    """Config combinations that cannot work, caught before any file is read."""
    dims = int(data_cfg.dims)
    if dims not in (2, 3):
        raise ConfigError(f"data.dims={dims} must be 2 or 3")
    if dims == 2 and not 0 <= int(data_cfg.slice_axis) <= 2:
        raise ConfigError(f"data.slice_axis={data_cfg.slice_axis} must be 0, 1 or 2")
    context_slices(data_cfg)
    k = int(data_cfg.pad_divisible)
    if k < 1:
        raise ConfigError(f"data.pad_divisible={k} must be >= 1")
    if dims == 3 and data_cfg.patch_size:
        patch = [int(p) for p in data_cfg.patch_size]
        if len(patch) != 3:
            raise ConfigError(f"data.patch_size={patch} must have 3 sizes for data.dims=3")
        if any(p % k for p in patch):
            fixed = [max(k, round(p / k) * k) for p in patch]
            raise ConfigError(
                f"data.patch_size={patch} is not divisible by data.pad_divisible={k} (the model's down-sampling); "
                f"use e.g. data.patch_size={fixed}"
            )
    if dims == 2 and data_cfg.patch_size:
        patch = [int(p) for p in data_cfg.patch_size]
        if len(patch) != 2:
            raise ConfigError(f"data.patch_size={patch} must have 2 sizes [H, W] for data.dims=2")
        if any(p % k for p in patch):
            fixed = [max(k, round(p / k) * k) for p in patch]
            raise ConfigError(
                f"data.patch_size={patch} is not divisible by data.pad_divisible={k} (the model's down-sampling); "
                f"use e.g. data.patch_size={fixed}"
            )
    if data_cfg.spacing and len(data_cfg.spacing) != 3:
        raise ConfigError(f"data.spacing={list(data_cfg.spacing)} must have 3 values (mm), for 3D volumes")


def _set_key(node: Any, key: str, value: Any) -> None:
    from omegaconf import DictConfig, read_write

    if isinstance(node, DictConfig):
        with read_write(node):
            node[key] = value
    else:
        node[key] = value


def loader_settings(hw: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_workers": int(hw.num_workers)}
    kwargs["pin_memory"] = bool(hw.pin_memory) and torch.cuda.is_available()
    if hw.num_workers > 0:
        kwargs["persistent_workers"] = bool(hw.persistent_workers)
        if hw.prefetch_factor:
            kwargs["prefetch_factor"] = int(hw.prefetch_factor)
    return kwargs


def make_loader(
    dataset: Any,
    batch_size: int,
    shuffle: bool,
    kwargs: dict[str, Any],
    seed: int,
    world_size: int = 1,
    rank: int = 0,
) -> DataLoader:
    """A loader whose order and augmentation depend only on (seed, epoch, rank, item index).

    The sampler shuffles with (seed, epoch) and hands each index to the dataset together with the
    epoch; the item's random transforms are re-seeded from (seed, epoch, rank, index) right before
    it is drawn. So every worker and every rank draws its own augmentation, and the stream is the
    same whatever the number of workers, whichever worker gets the item, and whether the workers
    persist across epochs (persistent workers keep their state, so seeding them once per worker or
    per epoch could not make a resumed run exact). The trainer calls `loader.sampler.set_epoch`.
    """
    from monai.data import list_data_collate

    from medseg.data.batch_augment import AugmentingCollate

    sampler = EpochSampler(dataset, shuffle, int(seed), world_size, rank)
    augment = getattr(dataset, "batch_augment", None)
    collate: Any = list_data_collate
    loader_class: Any = DataLoader
    if augment is not None and augment.device.type == "cpu":
        collate = AugmentingCollate(augment)  # in the loader workers, after collation
    elif augment is not None:  # on the GPU, in this process; the workers hand over unstacked read regions
        collate = AugmentingCollate(None)
        loader_class = functools.partial(DeviceAugmentLoader, augment=augment)
    return loader_class(
        SeededItems(dataset, int(seed), rank),
        batch_size=batch_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(int(seed)),  # base seeds of the workers' global RNGs
        worker_init_fn=functools.partial(seed_worker, rank=rank),
        collate_fn=collate,
        drop_last=False,
        **kwargs,
    )


class DeviceAugmentLoader(DataLoader):
    """A DataLoader whose batches are moved to the augmentation's device (a GPU) and augmented there."""

    def __init__(self, *args: Any, augment: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.augment = augment

    def __iter__(self) -> Any:
        for batch in super().__iter__():
            yield self.augment(batch)


class EpochSampler(torch.utils.data.Sampler):
    """DistributedSampler's order (one process is rank 0 of 1), each index tagged (epoch, index, repeat).

    `repeat` marks the copies DistributedSampler adds so that every rank gets as many items: validation
    counts them once.
    """

    def __init__(self, dataset: Any, shuffle: bool, seed: int, world_size: int, rank: int) -> None:
        from torch.utils.data.distributed import DistributedSampler

        self.base = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Any:
        n, rank, step = len(self.base.dataset), self.base.rank, self.base.num_replicas
        for position, index in enumerate(self.base):
            yield self.epoch, int(index), rank + position * step >= n


class SeededItems(torch.utils.data.Dataset):
    """Item (epoch, index) with its random transforms seeded from (seed, epoch, rank, index); adds "index"."""

    def __init__(self, dataset: Any, seed: int, rank: int) -> None:
        self.dataset, self.seed, self.rank = dataset, seed, rank

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # case_index, items_per_index, transform, ... of the dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: Any) -> Any:
        epoch, index, repeat = key if isinstance(key, tuple) else (0, int(key), False)
        transform = getattr(self.dataset, "transform", None)
        state = np.random.SeedSequence([self.seed % 2**32, epoch, self.rank, index]).generate_state(1)[0]
        if hasattr(transform, "set_random_state"):  # MONAI Compose: re-seeds each random transform in it
            transform.set_random_state(seed=int(state))
        if hasattr(self.dataset, "seed_item"):  # e.g. 3D patch centres
            self.dataset.seed_item(int(state))
        extra: dict[str, Any] = {"seed": int(state) & 0x7FFFFFFF}  # seeds batched augmentation
        augment = getattr(self.dataset, "batch_augment", None)
        if augment is not None:  # whether batched augmentation rotates / scales this item, drawn now
            extra["spatial"] = torch.tensor(augment.draw_spatial(int(state)))
            if getattr(self.dataset, "read_sizes", None):
                self.dataset.set_read_large(bool(extra["spatial"].any()))
        item = self.dataset[index]
        tag = -1 if repeat else index
        if isinstance(item, list):  # several patches per index
            return [{**part, "index": tag, **extra, "seed": extra["seed"] + j} for j, part in enumerate(item)]
        return {**item, "index": tag, **extra}


def seed_worker(worker_id: int, rank: int = 0) -> None:
    """Global RNGs of a worker from (its base seed, rank): PyTorch's default leaves ranks alike.

    Item augmentation does not depend on these (SeededItems re-seeds it per item); they serve code
    that draws from the global RNGs.
    """
    import random

    base = torch.initial_seed()  # PyTorch set it to the loader's base seed + worker_id
    state = np.random.SeedSequence([base % 2**32, rank, worker_id]).generate_state(2)
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))
