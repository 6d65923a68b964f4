"""Per case and per class Dice, IoU and HD95 from two integer label maps on the same grid.

Dice and IoU come from one confusion count of the whole case (2TP / (2TP + FP + FN)), computed on
the integer maps with `bincount` instead of MONAI's `compute_dice`, which needs a one-hot float
volume per class (118 classes of a CT are several GB). A class absent from both maps has no score
(NaN); predicted but absent from the truth, it scores 0.

HD95 uses MONAI's `compute_hausdorff_distance` on the bounding box of prediction ∪ truth of each
class, plus one voxel (so the surface at the box's border is the same as in the whole volume), with
the voxel spacing, so it is in mm for NIfTI. The missing-structure rule: a structure in the truth
that is never predicted has no surface to measure from, and MONAI would drop it. It scores the
image diagonal in mm (the largest distance possible on that grid) and is counted in `hd95_missing`,
so missing structures raise the mean HD95 instead of vanishing from it. A structure predicted but
absent from the truth has no HD95 (NaN): Dice already scores it 0.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch


def class_scores(
    pred: Any, truth: Any, num_classes: int, hd95: bool, spacing: list[float] | None = None
) -> list[dict[str, float]]:
    """Rows for classes 1..K-1: dice, iou, hd95 (in mm when `spacing` is given) and hd95_missing (0/1)."""
    p, t = _numpy(pred), _numpy(truth)
    tp, n_pred, n_true = confusion_counts(p, t, num_classes)
    boxes = _boxes(p, t, num_classes) if hd95 else {}
    diagonal = image_diagonal(t.shape, spacing)
    rows = []
    for c in range(1, num_classes):
        row = {"dice": math.nan, "iou": math.nan, "hd95": math.nan, "hd95_missing": 0}
        if n_pred[c] + n_true[c] > 0:
            row["dice"] = 2 * tp[c] / (n_pred[c] + n_true[c])
            row["iou"] = tp[c] / (n_pred[c] + n_true[c] - tp[c])
        if hd95 and n_true[c] > 0:
            if n_pred[c] == 0:
                row["hd95"], row["hd95_missing"] = diagonal, 1
            else:
                row["hd95"] = hd95_in_box(p, t, c, boxes[c], spacing)
        rows.append(row)
    return rows


def confusion_counts(pred: np.ndarray, truth: np.ndarray, k: int) -> tuple[list[int], list[int], list[int]]:
    """Per class: true positives, predicted voxels, true voxels (classes >= k are ignored)."""
    p, t = pred.reshape(-1), truth.reshape(-1)
    n_pred = np.bincount(p[(p >= 0) & (p < k)], minlength=k)[:k]
    n_true = np.bincount(t[(t >= 0) & (t < k)], minlength=k)[:k]
    same = p == t
    tp = np.bincount(t[same & (t >= 0) & (t < k)], minlength=k)[:k]
    return tp.tolist(), n_pred.tolist(), n_true.tolist()


def hd95_in_box(
    pred: np.ndarray, truth: np.ndarray, c: int, box: tuple[slice, ...], spacing: list[float] | None
) -> float:
    """95th percentile Hausdorff distance of class c, computed inside `box` only."""
    from monai.metrics import compute_hausdorff_distance

    warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
    p = torch.from_numpy(np.ascontiguousarray(pred[box] == c))[None, None].float()
    t = torch.from_numpy(np.ascontiguousarray(truth[box] == c))[None, None].float()
    return float(compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing)[0, 0])


def image_diagonal(shape: tuple[int, ...], spacing: list[float] | None) -> float:
    """Length of the grid's diagonal, in mm with `spacing`, else in voxels."""
    step = spacing or [1.0] * len(shape)
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, step))))


def _boxes(pred: np.ndarray, truth: np.ndarray, k: int, margin: int = 1) -> dict[int, tuple[slice, ...]]:
    """Bounding box of prediction ∪ truth per class, grown by `margin` voxels (within the grid)."""
    from scipy.ndimage import find_objects

    found: dict[int, list[tuple[int, int]]] = {}
    for labels in (pred, truth):
        inside = np.where((labels > 0) & (labels < k), labels, 0)
        for c, box in enumerate(find_objects(inside), start=1):
            if box is None:
                continue
            spans = [(s.start, s.stop) for s in box]
            old = found.get(c)
            found[c] = spans if old is None else [(min(a, x), max(b, y)) for (a, b), (x, y) in zip(old, spans)]
    return {
        c: tuple(slice(max(0, a - margin), min(n, b + margin)) for (a, b), n in zip(spans, pred.shape))
        for c, spans in found.items()
    }


def _numpy(labels: Any) -> np.ndarray:
    arr = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return arr.astype(np.int32, copy=False)
