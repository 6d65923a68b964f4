"""Epoch-level segmentation metrics from on-device confusion counts (no host sync per batch).

`ConfusionCounter` sums true-positive / predicted / actual voxel counts over the whole epoch: the
pooled ("global" or pseudo) Dice nnU-Net reports during training (`train/dice`, `val/dice_pooled`).
`CaseConfusion` keeps the counts per validation case, so Dice is what mode=evaluate reports (the
convention of nnU-Net and MONAI evaluation): per case and class 2TP / (2TP + FP + FN) over the whole
case, the case's Dice the mean over its classes, `val/dice` the mean over cases.
A class absent from both truth and prediction has no defined score: it is NaN, reported as null,
and left out of the means (0 when predicted but absent from the truth). Foreground means exclude
class 0 (background) unless there is only one class.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def confusion(pred: torch.Tensor, true: torch.Tensor, k: int) -> torch.Tensor:
    """(3, k) counts of true positives, predicted and true voxels per class, from one bincount of the
    (true, predicted) pairs: one pass over the voxels (the training loop counts every micro-batch)."""
    true = true.reshape(-1).to(pred.device, torch.long).clamp(0, k - 1)
    pairs = torch.bincount(true * k + pred.reshape(-1).clamp(0, k - 1), minlength=k * k).reshape(k, k)
    return torch.stack([pairs.diagonal(), pairs.sum(dim=0), pairs.sum(dim=1)])


class ConfusionCounter:
    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.counts = torch.zeros(3, num_classes, dtype=torch.float64, device=device)  # tp, pred, true

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """logits (B, C, *spatial); labels (B, 1, *spatial) or (B, *spatial) integer classes."""
        pred = logits.argmax(dim=1).reshape(-1)
        self.counts += confusion(pred, labels, self.num_classes)

    def merge_(self, other_counts: torch.Tensor) -> None:
        self.counts += other_counts.to(self.counts.device)

    def scores(self) -> dict[str, list[float]]:
        tp, pred, true = self.counts.cpu().tolist()
        dice, iou = [], []
        for t, p, g in zip(tp, pred, true):
            union = p + g - t
            dice.append(2 * t / (p + g) if p + g > 0 else math.nan)
            iou.append(t / union if union > 0 else math.nan)
        return {"dice": dice, "iou": iou}


class CaseConfusion:
    """Voxel counts per (case, class): tp, predicted, true, shape (cases, 3, classes), on the device."""

    def __init__(self, num_cases: int, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_cases, self.num_classes = num_cases, num_classes
        self.counts = torch.zeros(num_cases, 3, num_classes, dtype=torch.float64, device=device)

    def update(self, pred: torch.Tensor, true: torch.Tensor, case: int) -> None:
        """Add one item: predicted and true class indices of the same shape, from case `case`."""
        self.counts[case] += confusion(pred.reshape(-1), true, self.num_classes)

    def pooled(self) -> ConfusionCounter:
        """All cases summed: the pooled counts."""
        counter = ConfusionCounter(self.num_classes, self.counts.device)
        counter.merge_(self.counts.sum(dim=0))
        return counter

    def scores(self) -> dict[str, Any]:
        """Per-case Dice/IoU rows, their per-class means over cases and the mean over cases."""
        tp, pred, true = (t.numpy() for t in self.counts.cpu().unbind(dim=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            dice = np.where(pred + true > 0, 2 * tp / (pred + true), np.nan)
            union = pred + true - tp
            iou = np.where(union > 0, tp / union, np.nan)
        out: dict[str, Any] = {}
        for name, table in (("dice", dice), ("iou", iou)):
            per_case = [foreground_mean(row.tolist()) for row in table]
            out[f"{name}_per_case"] = per_case
            out[f"{name}_per_class"] = [_nanmean(table[:, k].tolist()) for k in range(self.num_classes)]
            out[name] = _nanmean(per_case)  # cases without any scored class are left out
        return out


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def foreground_mean(values: list[float]) -> float:
    fg = values[1:] if len(values) > 1 else values
    finite = [v for v in fg if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def ranked_classes(per_class: list[float], class_names: list[str], k: int = 5) -> dict[str, list[list[Any]]]:
    """Top-k and bottom-k foreground classes by score, by name (classes without a score left out)."""
    pairs = [(class_names[i], v) for i, v in enumerate(per_class) if i > 0 and not math.isnan(v)]
    pairs.sort(key=lambda p: p[1], reverse=True)
    top = [[n, round(v, 4)] for n, v in pairs[:k]]
    bottom = [[n, round(v, 4)] for n, v in sorted(pairs, key=lambda p: p[1])[:k]]
    return {"top": top, "bottom": bottom}


def nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
