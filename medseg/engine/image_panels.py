"""Every N epochs: the model on a fixed few validation items, drawn as panels for the trackers.

One row per item, left to right: the input, the ground truth in class colours, the prediction in
class colours, and the two compared voxel by voxel: correct class, wrong class, missed (truth only),
extra (prediction only), in AGREEMENT colours that no class ever has, over a faded input. Column titles
above, a row label (item and case) on the left of each row, and a legend naming every class shown and
the comparison colours below; small images are enlarged (nearest neighbour) to at least MIN_TILE px so
thin structures stay visible. Each item's figure is sent to every tracker (Tracker.log_images); all
items together are saved as <run folder>/images/val_epoch_{N}.png. The report reuses `labelled_figure`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from medseg.engine.callbacks import Callback

log = logging.getLogger(__name__)

# The last column: how prediction and truth agree at each voxel. None of these colours is in the class
# palette (medseg.inference.image_io.PALETTE), so a reader never takes an error for a class; a test checks it.
# Drawn solid on a faded (light) copy of the input, so dark colours stand out on any image.
CORRECT, WRONG_CLASS, MISSED, EXTRA = (0, 100, 0), (0, 0, 255), (0, 0, 0), (140, 70, 0)
AGREEMENT = (
    ("correct", CORRECT, "truth and prediction name the same class"),
    ("wrong class", WRONG_CLASS, "both name a structure, but not the same class"),
    ("missed", MISSED, "a structure in the truth, background in the prediction"),
    ("extra", EXTRA, "background in the truth, a structure in the prediction"),
)
CANDIDATES = 64  # validation items looked at when choosing the ones with the most foreground
COLUMN_TITLES = ("input", "truth", "prediction", "agreement")
MIN_TILE = 256  # px: tiles are enlarged by a whole factor until their shorter side reaches this
MAX_TILE = 320  # px: larger slices are shrunk to this (a figure row of 4 tiles fits a page; files stay small)
FONT_SIZE = 16


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
        names = list(getattr(trainer, "class_names", None) or [])
        rows, labels = [], []
        for i in self.indices:
            rows.append(self._predict(trainer, dataset[i]))
            labels.append(_item_label(dataset, i))
        if not rows:
            return
        heading = f"validation, epoch {trainer.epoch}"
        panels = [labelled_figure([r], [lab], names, heading) for r, lab in zip(rows, labels)]
        key = ", ".join(f"{name} {_colour_name(rgb)}" for name, rgb, _ in AGREEMENT)
        captions = [f"{lab}: input | truth | prediction | agreement ({key})" for lab in labels]
        for tracker in self.trackers:
            tracker.log_images("val/panels", panels, step=trainer.global_step, captions=captions)
        if self.folder is not None:
            save_png(self.folder / f"val_epoch_{trainer.epoch:03d}.png", labelled_figure(rows, labels, names, heading))

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
    """`count` items among evenly spaced candidates (fixed for the run): the one with the most foreground of
    each case, cases with more foreground first, so the panels show different cases, not neighbouring
    slices of one; only when there are fewer cases than `count` does a case give a second item."""
    n = len(dataset)
    if n == 0:
        return []
    candidates = sorted(set(np.linspace(0, n - 1, min(n, CANDIDATES)).round().astype(int).tolist()))
    if len(candidates) <= count:
        return candidates
    foreground = {i: int((dataset[i]["label"] > 0).sum()) for i in candidates}
    by_case: dict[Any, list[int]] = {}
    for i in candidates:
        by_case.setdefault(_case_of(dataset, i), []).append(i)
    for items in by_case.values():
        items.sort(key=lambda i: -foreground[i])
    picked: list[int] = []
    while len(picked) < count:  # round by round: each case's next best item, cases by that item's foreground
        row = sorted((items.pop(0) for items in by_case.values() if items), key=lambda i: -foreground[i])
        if not row:
            break
        picked += row[: count - len(picked)]
    return sorted(picked)


def _case_of(dataset: Any, i: int) -> Any:
    """The case of item `i` (datasets of slices expose case_index); an item is its own case otherwise."""
    try:
        return int(dataset.case_index(i))
    except (AttributeError, TypeError, IndexError):
        return ("item", i)


def panel(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(height, 4 x width, 3) uint8: input | truth | prediction | comparison."""
    from medseg.inference.image_io import colour

    grey = _grey(image)
    tiles = [grey, _blend(grey, colour(truth), truth > 0), _blend(grey, colour(pred), pred > 0)]
    tiles.append(agreement(grey, truth, pred))
    sep = np.full((grey.shape[0], _GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([x for tile in tiles for x in (tile, sep)][:-1], axis=1)


def agreement(grey: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(height, width, 3) uint8: the input faded to light greys (160-230), and each voxel where truth or
    prediction has a structure painted solid in its AGREEMENT colour: correct, wrong class, missed or extra."""
    out = (160 + grey.astype(np.float32) * (70 / 255)).astype(np.uint8)
    t, p = truth > 0, pred > 0
    out[t & p & (truth == pred)] = CORRECT
    out[t & p & (truth != pred)] = WRONG_CLASS
    out[t & ~p] = MISSED
    out[p & ~t] = EXTRA
    return out


def agreement_counts(truth: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """Voxels per agreement kind (what the last column paints)."""
    t, p = truth > 0, pred > 0
    return {
        "correct": int((t & p & (truth == pred)).sum()),
        "wrong class": int((t & p & (truth != pred)).sum()),
        "missed": int((t & ~p).sum()),
        "extra": int((p & ~t).sum()),
    }


def _colour_name(rgb: tuple[int, int, int]) -> str:
    return {CORRECT: "dark green", WRONG_CLASS: "blue", MISSED: "black", EXTRA: "brown"}.get(tuple(rgb), str(rgb))


def _item_label(dataset: Any, i: int) -> str:
    """'item 12 · case_003' when the dataset knows its cases (validation datasets expose case_index/case_ids)."""
    try:
        return f"item {i} · {dataset.case_ids[dataset.case_index(i)]}"
    except (AttributeError, IndexError, TypeError):
        return f"item {i}"


def labelled_figure(
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    row_labels: list[str],
    class_names: list[str],
    heading: str = "",
) -> np.ndarray:
    """(H, W, 3) uint8: a heading, column titles, one labelled panel row per (image, truth, prediction)
    and a legend naming the classes present in any row (name from `class_names`, colour from the palette)."""
    from PIL import Image, ImageDraw

    from medseg.inference.image_io import PALETTE

    font = _font()
    tiles = [_enlarge(panel(*_shrink(*r))) for r in rows]
    tile_w = max(t.shape[1] for t in tiles)
    col_w = (tile_w - 3 * _GAP) // 4 + _GAP
    line = FONT_SIZE + 8
    present = sorted({int(c) for r in rows for a in (r[1], r[2]) for c in np.unique(a) if c > 0})
    legend: list[tuple[str, Any]] = [("classes:", None)]
    legend += [(_name(class_names, c), tuple(int(v) for v in PALETTE[c % len(PALETTE)])) for c in present]
    legend += [("| agreement:", None)] + [(name, rgb) for name, rgb, _ in AGREEMENT]
    legend_lines = _wrap_legend(legend, tile_w, font)
    height = line * 2 + sum(t.shape[0] + line for t in tiles) + line * len(legend_lines) + 6
    canvas = Image.new("RGB", (tile_w + 8, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), heading, fill=(0, 0, 0), font=font)
    for k, title in enumerate(COLUMN_TITLES):
        draw.text((4 + k * col_w, 4 + line), title, fill=(40, 40, 40), font=font)
    y = 2 * line
    for tile, label in zip(tiles, row_labels):
        draw.text((4, y), label, fill=(80, 80, 80), font=font)
        canvas.paste(Image.fromarray(tile), (4, y + line))
        y += tile.shape[0] + line
    for entries in legend_lines:
        x = 4
        for name, rgb in entries:
            if rgb is None:  # a group title
                draw.text((x, y + 4), name, fill=(90, 90, 90), font=font)
                x += 8 + int(draw.textlength(name, font=font))
                continue
            draw.rectangle((x, y + 4, x + FONT_SIZE, y + 4 + FONT_SIZE), fill=rgb, outline=(0, 0, 0))
            draw.text((x + FONT_SIZE + 4, y + 4), name, fill=(0, 0, 0), font=font)
            x += FONT_SIZE + 16 + int(draw.textlength(name, font=font))
        y += line
    return np.asarray(canvas)


def save_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    from medseg.io_utils import atomic_write

    return atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


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


_GAP = 2  # px between tiles


def _enlarge(tile_row: np.ndarray) -> np.ndarray:
    """A panel row enlarged by a whole factor (nearest neighbour) so each tile is at least MIN_TILE px."""
    height = tile_row.shape[0]
    factor = max(1, -(-MIN_TILE // max(height, 1)))
    if factor == 1:
        return tile_row
    tile_w = (tile_row.shape[1] - 3 * _GAP) // 4
    tiles = [tile_row[:, k * (tile_w + _GAP) : k * (tile_w + _GAP) + tile_w] for k in range(4)]
    big = [t.repeat(factor, axis=0).repeat(factor, axis=1) for t in tiles]
    sep = np.full((height * factor, _GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([x for t in big for x in (t, sep)][:-1], axis=1)


def _shrink(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, ...]:
    """Slices larger than MAX_TILE resized to fit it: the image smoothly, the labels nearest-neighbour."""
    h, w = image.shape
    if max(h, w) <= MAX_TILE:
        return image, truth, pred
    from PIL import Image

    size = (max(1, round(w * MAX_TILE / max(h, w))), max(1, round(h * MAX_TILE / max(h, w))))
    small = np.asarray(Image.fromarray(image.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
    labels = [
        np.asarray(Image.fromarray(a.astype(np.int32), mode="I").resize(size, Image.NEAREST)) for a in (truth, pred)
    ]
    return small, labels[0], labels[1]


def _font() -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _name(class_names: list[str], c: int) -> str:
    return class_names[c] if c < len(class_names) else f"class {c}"


def _wrap_legend(entries: list[tuple[str, Any]], width: int, font: Any) -> list[list[tuple[str, Any]]]:
    lines: list[list[tuple[str, Any]]] = [[]]
    x = 0
    for name, rgb in entries:
        w = FONT_SIZE + 16 + int(font.getlength(name))
        if lines[-1] and x + w > width:
            lines.append([])
            x = 0
        lines[-1].append((name, rgb))
        x += w
    return lines


def _grey(image: np.ndarray) -> np.ndarray:
    img = image.astype(np.float32)
    lo, hi = float(np.percentile(img, 1)), float(np.percentile(img, 99))
    g = np.clip((img - lo) / (hi - lo + 1e-8), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _blend(grey: np.ndarray, colours: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = grey.copy()
    out[mask] = (0.45 * grey[mask] + 0.55 * colours[mask]).astype(np.uint8)
    return out
