"""What one epoch reads: its seeding, how many batches, the samples in each accumulation group."""

from __future__ import annotations

from typing import Any


def seed_epoch(loader: Any, seed: int, epoch: int) -> None:
    """Data order and augmentation depend only on (seed, epoch), so a resumed run sees the same.

    The sampler of medseg.data.datamodule.make_loader shuffles by (seed, epoch) and hands the epoch
    to each item, whose augmentation is drawn from (seed, epoch, rank, index) in whichever worker.
    """
    if getattr(loader, "generator", None) is not None:  # worker base seeds of a non-persistent loader
        loader.generator.manual_seed(seed * 100_003 + epoch)
    if hasattr(getattr(loader, "sampler", None), "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):  # e.g. background slices drawn anew each epoch
        loader.dataset.set_epoch(epoch)


def planned_group_sizes(loader: Any, n_batches: int, accumulate: int) -> list[int]:
    """Samples in each accumulation group, so a last partial group is scaled by its true size."""
    bs = int(getattr(loader, "batch_size", 1) or 1)
    per_item = getattr(loader.dataset, "items_per_index", 1)
    n_items = len(loader.sampler) if hasattr(loader, "sampler") else n_batches * bs
    sizes = [min(bs, n_items - b * bs) * per_item for b in range(n_batches)]
    return [sum(sizes[g : g + accumulate]) for g in range(0, n_batches, accumulate)]


def loaded_batch_size(loader: Any) -> int:
    """Samples in a full loaded batch: batch_size x items per index (3D: data.samples_per_volume patches)."""
    per_item = int(getattr(getattr(loader, "dataset", None), "items_per_index", 1) or 1)
    return int(getattr(loader, "batch_size", 0) or 0) * per_item


def limited_len(loader: Any, limit: int | None) -> int:
    """Batches to run: the loader's length, or trainer.limit_*_batches when smaller."""
    n = len(loader)
    return min(n, int(limit)) if limit else n


def progress(loader: Any, total: int, desc: str, enabled: bool) -> Any:
    """The loader, wrapped in a tqdm bar when `enabled` (a terminal, rank 0, trainer.progress_bar)."""
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, total=total, desc=desc, leave=False, dynamic_ncols=True)
