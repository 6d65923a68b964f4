"""Checks on loaded cases before any training: one error listing the first bad cases and the fix."""

from __future__ import annotations

from typing import Any

import torch

from medseg.errors import DataError

MAX_LISTED = 5


def check_volumes(volumes: Any, num_classes: int | None, what: str) -> int:
    """Validate every cached volume; return the number of classes (inferred when not given)."""
    problems: list[str] = []
    max_label = 0
    for i in range(len(volumes)):
        item = volumes[i]
        case = item.get("id", str(i))
        if "_error" in item:
            problems.append(f"{case}: {item['_error']} ({item.get('image_path')})")
            continue
        image, label = item["image"], item["label"]
        if tuple(image.shape[1:]) != tuple(label.shape[1:]):
            problems.append(f"{case}: image shape {tuple(image.shape[1:])} != label shape {tuple(label.shape[1:])}")
            continue
        if not torch.isfinite(image).all():
            problems.append(f"{case}: image has NaN/Inf voxels; clean the file or mask them")
        lo, hi = int(label.min()), int(label.max())
        if lo < 0:
            problems.append(f"{case}: negative label value {lo}")
        if num_classes is not None and hi >= num_classes:
            problems.append(f"{case}: label value {hi} outside [0, data.num_classes={num_classes})")
        max_label = max(max_label, hi)
    if problems:
        listed = "; ".join(problems[:MAX_LISTED])
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} bad {what} case(s): {listed}{more}")
    return num_classes if num_classes is not None else max(2, max_label + 1)
