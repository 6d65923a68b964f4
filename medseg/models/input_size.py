"""Networks with position embeddings (UNETR) need one fixed input size. When the config gives none
(model.img_size, data.image_size in 2D, data.patch_size in 3D) and every item of the data has the same
size, that size is taken from the data and written into the config, so the checkpoint's stored config
rebuilds the same network for evaluate and predict."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def item_size(item: Any) -> tuple[int, ...]:
    """Spatial size of one dataset item ({"image": (C, *spatial)}, or a list of such patches)."""
    if isinstance(item, (list, tuple)):
        item = item[0]
    return tuple(int(s) for s in item["image"].shape[1:])


def shared_item_size(datasets: Sequence[Any], max_items: int = 32) -> tuple[tuple[int, ...] | None, set]:
    """(the size every looked-at item shares, or None; all sizes seen).

    Looks at up to `max_items` items per dataset, spread evenly from its first to its last item (a
    dataset keeps cases in order, so this spans the cases). Training batches of more than one item need
    one size anyway, so a sample is enough to find the size a network must be built for.
    """
    sizes: set[tuple[int, ...]] = set()
    for dataset in datasets:
        n = len(dataset)
        if n == 0:
            continue
        cut = getattr(getattr(dataset, "batch_augment", None), "out_size", None)
        if cut:  # batched augmentation cuts every item (a raw read region) to this size
            sizes.add(tuple(int(s) for s in cut))
            continue
        for i in np.unique(np.linspace(0, n - 1, min(n, max_items)).astype(int)):
            sizes.add(item_size(dataset[int(i)]))
    return (next(iter(sizes)) if len(sizes) == 1 else None), sizes


def fill_input_size(model_cfg: Any, dims: int, datasets: Sequence[Any]) -> tuple[int, ...] | None:
    """Set model.img_size from the data when the model needs a fixed size and the config gives none.

    Returns the size set, or None when nothing was changed (model without img_size, size given, or the
    items differ in size, in which case building the model reports the missing size as before).
    """
    if "img_size" not in model_cfg:
        return None
    given = model_cfg.get("img_size") or (model_cfg.get("image_size") if dims == 2 else model_cfg.get("patch_size"))
    if given:
        return None
    size, seen = shared_item_size(datasets)
    if size is None:
        log.info("model.img_size: the data's items differ in size (%s); cannot take one from the data", sorted(seen))
        return None
    OmegaConf.update(model_cfg, "img_size", list(size), merge=False)
    log.info("model.img_size=%s: every item looked at has this size", list(size))
    return size
