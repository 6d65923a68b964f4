"""Overlays of the best, median and worst validation cases, for the report.

Where they come from: at the end of training the best weights are run once more over at most
`report.overlay_cases` validation cases (evenly spaced, slice by slice for 2D models, the inferer for
3D), each case is scored with the per-case Dice of the validation contract, and the best, median and
worst are drawn (a few slices through their structures) into <run>/report_overlays/ with a manifest.
This bounds the cost on big data (a few cases, never the whole split, no float volume per class) and
lets `mode=report` redraw the page later without a model or data. An evaluate folder with overlay
PNGs (predict.viz=true) uses those, picked by evaluate's own per-case Dice.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from medseg.io_utils import write_json

log = logging.getLogger(__name__)

FOLDER = "report_overlays"
ROLES = ("best", "median", "worst")
BATCH = 16  # slices per forward pass


def case_dice(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Per-case Dice of the contract: nanmean over foreground classes of 2TP/(2TP+FP+FN) over the volume
    (NaN when a class is absent from both); NaN when every class is absent."""
    k = int(num_classes)
    joint = np.bincount(truth.astype(np.int64).ravel() * k + pred.astype(np.int64).ravel(), minlength=k * k)
    confusion = joint[: k * k].reshape(k, k)
    tp = np.diag(confusion).astype(np.float64)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    denom = 2 * tp + fp + fn
    scores = [2 * tp[c] / denom[c] for c in range(1, k) if denom[c] > 0]
    return float(np.mean(scores)) if scores else math.nan


def pick_roles(scores: dict[str, float]) -> list[tuple[str, str, float]]:
    """(role, case, dice) for the best, median and worst scored case (a case appears once)."""
    ranked = sorted(((d, c) for c, d in scores.items() if not math.isnan(d)), key=lambda p: (-p[0], p[1]))
    if not ranked:
        return []
    picks = {"best": ranked[0], "worst": ranked[-1], "median": ranked[len(ranked) // 2]}
    chosen: dict[str, tuple[float, str]] = {}
    for role, (d, c) in picks.items():  # best, then worst, then median: two cases are best and worst
        if all(c != other for _, other in chosen.values()):
            chosen[role] = (d, c)
    return [(role, chosen[role][1], chosen[role][0]) for role in ROLES if role in chosen]


def display_slices(truth: np.ndarray, pred: np.ndarray, axis: int, count: int) -> list[int]:
    """`count` slices along `axis` spread through the structures (truth or prediction), else the middle one."""
    other = tuple(a for a in range(truth.ndim) if a != axis)
    fg = np.flatnonzero(((truth > 0) | (pred > 0)).any(axis=other))
    if fg.size == 0:
        return [truth.shape[axis] // 2]
    picks = (
        [int(fg[int(round(q * (fg.size - 1)))]) for q in np.linspace(0.2, 0.8, max(1, count))]
        if count > 1
        else [int(fg[fg.size // 2])]
    )
    return sorted(set(picks))


def write_validation_overlays(
    model: Any,
    dataset: Any,
    case_ids: list[str],
    inferer: Any,
    device: Any,
    precision: Any,
    class_names: list[str],
    out: Path,
    max_cases: int,
    slices: int,
    slice_axis: int,
) -> list[dict[str, Any]]:
    """Score up to `max_cases` validation cases with `model`; draw best/median/worst; write the manifest."""
    from medseg.engine.image_panels import agreement_counts, labelled_figure, save_png

    groups = _case_items(dataset)
    if max_cases <= 0 or not groups:
        return []
    order = sorted(groups)
    chosen = sorted({order[int(i)] for i in np.linspace(0, len(order) - 1, min(max_cases, len(order))).round()})
    shown, scores = {}, {}
    for case in chosen:  # one case in memory at a time; only the slices a page could show are kept
        name = case_ids[case] if case < len(case_ids) else f"case {case}"
        image, truth, pred, axis = _predict_case(model, dataset, groups[case], inferer, device, precision, slice_axis)
        scores[name] = case_dice(truth, pred, len(class_names))
        picks = display_slices(truth, pred, axis, slices) if truth.ndim == 3 else [None]
        cuts = [_cut(image, truth, pred, axis, s) for s in picks]
        counts = [agreement_counts(t, p) for _, t, p in cuts]
        shown[name] = (picks, axis, cuts, {k: sum(c[k] for c in counts) for k in counts[0]})
        del image, truth, pred
    manifest = []
    folder = out / FOLDER
    for role, name, dice in pick_roles(scores):
        picks, axis, rows, counts = shown[name]
        labels = [f"slice {s} (axis {axis})" if s is not None else "" for s in picks]
        heading = f"{role} validation case: {name} · Dice {dice:.3f}"
        file = f"{role}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
        save_png(folder / file, labelled_figure(rows, labels, class_names, heading))
        entry = {"role": role, "case": name, "dice": dice, "file": file, "agreement": counts}
        entry["slices"] = [s for s in picks if s is not None]  # a 2D image has no slice number
        if entry["slices"]:
            entry["axis"] = axis
        manifest.append(entry)
    write_json(folder / "overlays.json", {"scored_cases": len(scores), "overlays": manifest})
    log.info("report overlays: %d validation case(s) scored; best/median/worst drawn in %s", len(scores), folder)
    return manifest


def _case_items(dataset: Any) -> dict[int, list[int]]:
    """Validation items grouped by case, in order (case_index when the dataset has it)."""
    groups: dict[int, list[int]] = {}
    index = getattr(dataset, "index", None)
    for i in range(len(dataset)):
        if hasattr(dataset, "case_index"):
            case = int(dataset.case_index(i))
        elif isinstance(index, list) and i < len(index) and isinstance(index[i], tuple):
            case = int(index[i][0])
        else:  # one item per case (3D volumes)
            case = i
        groups.setdefault(case, []).append(i)
    return groups


def _predict_case(
    model: Any, dataset: Any, items: list[int], inferer: Any, device: Any, precision: Any, slice_axis: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(image, truth, prediction) of one case; 2D items stacked along a last axis; and the display axis."""
    import torch

    images, truths, preds = [], [], []
    model.eval()
    for start in range(0, len(items), BATCH):
        batch = [_one(dataset[i]) for i in items[start : start + BATCH]]
        x = torch.stack([b["image"] for b in batch]).to(device)
        with torch.no_grad(), precision.autocast(device):
            pred = inferer(x, model).argmax(1).cpu().numpy().astype(np.int16)
        for b, p in zip(batch, pred):
            images.append(b["image"].float().mean(0).numpy())
            truths.append(b["label"][0].numpy().round().astype(np.int16))
            preds.append(p)
    if images[0].ndim == 3:  # a 3D volume: one item per case
        return images[0], truths[0], preds[0], int(slice_axis)
    if len(images) == 1:  # a native 2D image
        return images[0], truths[0], preds[0], -1
    return np.stack(images, -1), np.stack(truths, -1), np.stack(preds, -1), 2


def _one(item: Any) -> dict[str, Any]:
    return item[0] if isinstance(item, list) else item


def _cut(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, axis: int, s: int | None) -> tuple:
    if s is None:
        return image.T, truth.T, pred.T
    return tuple(np.take(a, s, axis=axis).T for a in (image, truth, pred))  # MONAI (x, y) -> rows are y


def saved_overlays(train_dir: Path | None) -> list[dict[str, Any]]:
    """The overlays written at the end of training, with their PNG bytes."""
    if train_dir is None:
        return []
    from medseg.report.sources import read_json

    manifest = read_json(train_dir / FOLDER / "overlays.json")
    if not isinstance(manifest, dict):
        return []
    out = []
    for entry in manifest.get("overlays", []):
        png = _read(train_dir / FOLDER / str(entry.get("file", "")))
        if png is not None:
            out.append({**entry, "png": png})
    return out


def evaluate_overlays(folder: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best/median/worst by evaluate's per-case Dice, from evaluate's overlays/<case>.png (predict.viz=true)."""
    if not (folder / "overlays").is_dir():
        return []
    per_case: dict[str, list[float]] = {}
    for r in rows:
        if isinstance(r.get("dice"), float):
            per_case.setdefault(str(r["case"]), []).append(r["dice"])
    scores = {c: float(np.mean(v)) for c, v in per_case.items()}
    out = []
    for role, case, dice in pick_roles(scores):
        png = _read(folder / "overlays" / f"{case}.png")
        if png is not None:
            out.append({"role": role, "case": case, "dice": dice, "png": png, "slices": []})
    return out


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
