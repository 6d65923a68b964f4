"""Every N epochs: the model on a fixed few validation items, drawn as panels for the trackers.

One panel per item, left to right: the input, the ground truth in class colours, the prediction in
class colours, and the two compared (truth only green, prediction only red, both yellow). Panels are
sent to every tracker (Tracker.log_images) and saved as <run folder>/images/val_epoch_{N}.png.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from medseg.engine.callbacks import Callback

log = logging.getLogger(__name__)

TRUTH_ONLY, PRED_ONLY, BOTH = (60, 180, 75), (230, 25, 75), (255, 225, 25)
CANDIDATES = 64  # validation items looked at when choosing the ones with the most foreground


class ImagePanels(Callback):
    def __init__(
        self,
        trackers: list[Any],
        every_n_epochs: int,
        count: int = 4,
        slice_axis: int = 2,
        folder: str | Path | None = None,
    ) -> None:
        self.trackers, self.every_n_epochs, self.count = trackers, int(every_n_epochs), int(count)
        self.slice_axis = int(slice_axis)
        self.folder = Path(folder) if folder else None
        self.indices: list[int] | None = None

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if self.every_n_epochs <= 0 or self.count <= 0 or not trainer.is_main_process:
            return
        last = trainer.epoch >= trainer.max_epochs or trainer.should_stop
        if trainer.epoch % self.every_n_epochs != 0 and not last:
            return
        dataset = trainer.val_loader.dataset
        if self.indices is None:
            self.indices = choose_items(dataset, self.count)
        panels, captions = [], []
        for i in self.indices:
            image, truth, pred = self._predict(trainer, dataset[i])
            panels.append(panel(image, truth, pred))
            captions.append(f"val item {i}: input | truth | prediction | truth green, prediction red, both yellow")
        if not panels:
            return
        for tracker in self.trackers:
            tracker.log_images("val/panels", panels, step=trainer.global_step, captions=captions)
        if self.folder is not None:
            save_grid(self.folder / f"val_epoch_{trainer.epoch:03d}.png", panels)

    def _predict(self, trainer: Any, item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image, truth, prediction) as 2D arrays in display order (height, width)."""
        import torch

        model = trainer._unwrapped()
        was_training = model.training
        model.eval()
        with torch.no_grad(), trainer.precision.autocast(trainer.device):
            x = item["image"][None].to(trainer.device)
            pred = trainer.inferer(x, model).argmax(1)[0].cpu().numpy()
        model.train(was_training)
        image = item["image"].float().mean(0).cpu().numpy()  # channels averaged for display
        truth = item["label"][0].cpu().numpy()
        if image.ndim == 3:  # a 3D volume: the slice with the most foreground
            from medseg.inference.image_io import representative_slice

            s = representative_slice(truth, self.slice_axis)
            image, truth, pred = (np.take(a, s, axis=self.slice_axis) for a in (image, truth, pred))
        return image.T, truth.T, pred.T  # MONAI order (x, y) -> rows are y


def choose_items(dataset: Any, count: int) -> list[int]:
    """The `count` items with the most foreground among evenly spaced candidates (fixed for the run)."""
    n = len(dataset)
    if n == 0:
        return []
    candidates = sorted(set(np.linspace(0, n - 1, min(n, CANDIDATES)).round().astype(int).tolist()))
    if len(candidates) <= count:
        return candidates
    foreground = [int((dataset[i]["label"] > 0).sum()) for i in candidates]
    best = sorted(range(len(candidates)), key=lambda j: -foreground[j])[:count]
    return sorted(candidates[j] for j in best)


def panel(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(height, 4 x width, 3) uint8: input | truth | prediction | comparison."""
    from medseg.inference.image_io import colour

    grey = _grey(image)
    tiles = [grey, _blend(grey, colour(truth), truth > 0), _blend(grey, colour(pred), pred > 0)]
    compare = np.zeros_like(grey)
    t, p = truth > 0, pred > 0
    compare[t & ~p], compare[p & ~t], compare[t & p] = TRUTH_ONLY, PRED_ONLY, BOTH
    tiles.append(_blend(grey, compare, t | p))
    sep = np.full((grey.shape[0], 2, 3), 255, dtype=np.uint8)
    return np.concatenate([x for tile in tiles for x in (tile, sep)][:-1], axis=1)


def save_grid(path: Path, panels: list[np.ndarray]) -> Path:
    """Panels stacked top to bottom (padded to the widest) into one PNG."""
    from PIL import Image

    from medseg.io_utils import atomic_write

    width = max(p.shape[1] for p in panels)
    rows = []
    for p in panels:
        pad = np.zeros((p.shape[0], width - p.shape[1], 3), dtype=np.uint8)
        rows += [np.concatenate([p, pad], axis=1), np.full((2, width, 3), 255, dtype=np.uint8)]
    grid = np.concatenate(rows[:-1], axis=0)
    return atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))


def _grey(image: np.ndarray) -> np.ndarray:
    img = image.astype(np.float32)
    lo, hi = float(np.percentile(img, 1)), float(np.percentile(img, 99))
    g = np.clip((img - lo) / (hi - lo + 1e-8), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _blend(grey: np.ndarray, colours: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = grey.copy()
    out[mask] = (0.45 * grey[mask] + 0.55 * colours[mask]).astype(np.uint8)
    return out
