"""Epoch-level segmentation metrics from an on-device confusion count (no host sync per batch).

Dice and IoU per class come from true-positive / predicted / actual voxel counts summed over the
epoch (the "global" or pseudo Dice nnU-Net reports). A class absent from both truth and prediction
has no defined score: it is NaN, reported as null, and left out of the means. The foreground mean
excludes class 0 (background) unless there is only one class.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class ConfusionCounter:
    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.counts = torch.zeros(3, num_classes, dtype=torch.float64, device=device)  # tp, pred, true

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """logits (B, C, *spatial); labels (B, 1, *spatial) or (B, *spatial) integer classes."""
        pred = logits.argmax(dim=1).reshape(-1)
        true = labels.reshape(-1).to(pred.device, torch.long)
        c = self.num_classes
        self.counts[0] += torch.bincount(true[pred == true], minlength=c)[:c]
        self.counts[1] += torch.bincount(pred, minlength=c)[:c]
        self.counts[2] += torch.bincount(true.clamp(0, c - 1), minlength=c)[:c]

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
