"""Connected-component post-processing per class, chosen only where it raises out-of-fold Dice.

Two operations, each touching only the voxels of one class c (set to background):
- `largest_component`: keep the largest connected component of class c;
- `largest_foreground`: keep class c only inside the largest connected component of the foreground
  (all classes > 0 together, taken from the prediction before any post-processing).
Both are decided from the raw prediction, so the decision for one class never changes another's.
Components come from scipy.ndimage.label with full connectivity (26 neighbours in 3D, 8 in 2D), the
connectivity MONAI's KeepLargestConnectedComponent uses by default; it is called directly because
the foreground operation (and scoring both candidates of every class from one labelling) is not
what that transform does, and it would need a one-hot or per-label tensor of the whole volume.
Each class is labelled within its own bounding box.

Deciding: for class c, the mean Dice over the out-of-fold cases where c is in the truth or the raw
prediction; a case where post-processing removed every false voxel of a class absent from the truth
counts 1.0 (it is now right). An operation is chosen when it raises that mean; the larger rise wins.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OPERATIONS = ("largest_component", "largest_foreground")


def _structure(ndim: int) -> np.ndarray:
    from scipy.ndimage import generate_binary_structure

    return generate_binary_structure(ndim, ndim)


def largest_foreground(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest connected foreground component (all foreground when there is one or none)."""
    from scipy.ndimage import label

    fg = labels > 0
    components, n = label(fg, structure=_structure(labels.ndim))
    if n <= 1:
        return fg
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def apply_postprocessing(labels: np.ndarray, ops: dict[int, str]) -> np.ndarray:
    """labels with each class's chosen operation applied (decided on, and computed from, the raw labels)."""
    ops = {int(c): op for c, op in ops.items() if op}
    if not ops:
        return labels
    out = labels.copy()
    keep_fg = largest_foreground(labels) if "largest_foreground" in ops.values() else None
    boxes = _boxes(labels)
    for c, op in ops.items():
        box = boxes.get(c)
        if box is None:
            continue
        if op == "largest_component":
            drop = _outside_largest(labels[box] == c)
        elif op == "largest_foreground":
            assert keep_fg is not None
            drop = (labels[box] == c) & ~keep_fg[box]
        else:
            raise ValueError(f"unknown post-processing operation {op!r}")
        out[box][drop] = 0
    return out


def _outside_largest(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import label

    components, n = label(mask, structure=_structure(mask.ndim))
    if n <= 1:
        return np.zeros_like(mask)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return (components > 0) & (components != int(sizes.argmax()))


def _boxes(labels: np.ndarray) -> dict[int, tuple[slice, ...]]:
    from scipy.ndimage import find_objects

    found = find_objects(np.where(labels > 0, labels, 0).astype(np.int32))
    return {c: box for c, box in enumerate(found, start=1) if box is not None}


class Tally:
    """Per class and operation: Dice per out-of-fold case, before and after, for the decision."""

    def __init__(self, num_classes: int) -> None:
        self.k = num_classes
        self.scores: dict[str, list[list[float]]] = {
            op: [[] for _ in range(num_classes)] for op in ("none", *OPERATIONS)
        }

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        raw = _dice_per_class(pred, truth, self.k)
        variants = {"none": pred}
        for op in OPERATIONS:
            variants[op] = apply_postprocessing(pred, {c: op for c in range(1, self.k)})
        for op, labels in variants.items():
            after = raw if op == "none" else _dice_per_class(labels, truth, self.k)
            for c in range(1, self.k):
                if raw[c] is None:  # absent from truth and raw prediction: post-processing cannot change it
                    continue
                self.scores[op][c].append(1.0 if after[c] is None else after[c])

    def decide(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """{class name: {operation (or None), dice per candidate, dice_before, dice_after, cases}}."""
        out = {}
        for c in range(1, self.k):
            means = {op: _mean(self.scores[op][c]) for op in ("none", *OPERATIONS)}
            before = means["none"]
            chosen = None
            if before is not None:
                gains = {op: means[op] - before for op in OPERATIONS if means[op] is not None}
                best = max(gains, key=lambda op: gains[op], default=None)
                if best is not None and gains[best] > 0:
                    chosen = best
            out[names[c]] = {
                "operation": chosen,
                "dice_before": before,
                "dice_largest_component": means["largest_component"],
                "dice_largest_foreground": means["largest_foreground"],
                "dice_after": means[chosen] if chosen else before,
                "cases": len(self.scores["none"][c]),
            }
        return out


def _dice_per_class(pred: np.ndarray, truth: np.ndarray, k: int) -> list[float | None]:
    from medseg.inference.case_metrics import confusion_counts

    tp, n_pred, n_true = confusion_counts(pred.astype(np.int32), truth.astype(np.int32), k)
    return [2 * tp[c] / (n_pred[c] + n_true[c]) if n_pred[c] + n_true[c] else None for c in range(k)]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
