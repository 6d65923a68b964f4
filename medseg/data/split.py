"""Train/validation split by case (never by slice): percentage, explicit split file, or k-fold."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from medseg.errors import DataError


def split_cases(cases: list[dict[str, Any]], data_cfg: Any, seed: int) -> tuple[list[dict], list[dict]]:
    """Return (train, val) case lists; the same seed and cases give the same split."""
    if data_cfg.split_file:
        return _from_file(cases, Path(str(data_cfg.split_file)).expanduser())
    # cases of one subject (e.g. several scan days of a patient) stay on one side of the split
    groups: dict[str, list[str]] = {}
    for c in sorted(cases, key=lambda c: c["id"]):
        groups.setdefault(str(c.get("subject", c["id"])), []).append(c["id"])
    order = [{"id": key} for key in sorted(groups)]
    random.Random(seed).shuffle(order)
    if data_cfg.fold is not None:
        k = int(data_cfg.num_folds)
        if not 0 <= data_cfg.fold < k:
            raise DataError(f"data.fold={data_cfg.fold} must be in [0, data.num_folds={k})")
        if len(order) < k:
            raise DataError(f"{len(order)} cases cannot make {k} folds; lower data.num_folds")
        val_ids = {c["id"] for i, c in enumerate(order) if i % k == data_cfg.fold}
    else:
        pct = float(data_cfg.val_percent)
        if not 0 < pct < 100:
            raise DataError(f"data.val_percent={pct} must be in (0, 100)")
        n_val = max(1, int(math.floor(len(order) * pct / 100 + 0.5)))
        if n_val >= len(order):
            raise DataError(
                f"data.val_percent={pct} leaves no training case out of {len(order)}; lower it or add cases"
            )
        val_ids = {c["id"] for c in order[:n_val]}
    val_ids = {case_id for key in val_ids for case_id in groups[key]}
    train = [c for c in cases if c["id"] not in val_ids]
    val = [c for c in cases if c["id"] in val_ids]
    return train, val


def _from_file(cases: list[dict[str, Any]], path: Path) -> tuple[list[dict], list[dict]]:
    try:
        spec = json.loads(path.read_text())
        train_ids, val_ids = set(spec["train"]), set(spec["val"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(
            f'data.split_file={path} cannot be read ({exc}); expected JSON {{"train": [...], "val": [...]}}'
        ) from exc
    known = {c["id"] for c in cases}
    unknown = sorted((train_ids | val_ids) - known)
    if unknown:
        raise DataError(f"data.split_file={path} names unknown cases {unknown[:5]}; use the case ids of data.root")
    train = [c for c in cases if c["id"] in train_ids]
    val = [c for c in cases if c["id"] in val_ids]
    if not train or not val:
        raise DataError(f"data.split_file={path} gives an empty train or val split")
    return train, val
