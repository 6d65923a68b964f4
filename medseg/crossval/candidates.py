"""Out-of-fold masks of each candidate (one configuration, or an ensemble of several) and their scores.

A configuration's masks are its fold runs' own (predicted from float probabilities). An ensemble's
are made here: for each case, slab by slab (crossval.slab_slices slices), the members' stored uint8
probabilities are dequantised and summed into one float buffer, averaged, turned into class indices
(argmax, or predict.threshold for two classes, as evaluate does) and dropped; only the integer mask
of the case is kept, and written to <crossval run>/candidates/<name>/. Scores per case and class are
medseg's own (medseg.inference.case_metrics.class_scores), summarised as evaluate summarises them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.crossval.oof import read_mask, write_mask
from medseg.crossval.runs import Configuration
from medseg.errors import DataError
from medseg.io_utils import write_json


@dataclass
class Candidate:
    name: str
    members: list[Configuration]

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1


def candidates(configs: list[Configuration], max_size: int) -> tuple[list[Candidate], list[str]]:
    """Every configuration alone, then every ensemble of 2..max_size configurations sharing a slice axis."""
    from itertools import combinations

    out = [Candidate(c.name, [c]) for c in configs]
    skipped = []
    for size in range(2, min(max_size, len(configs)) + 1):
        for group in combinations(configs, size):
            name = " + ".join(c.name for c in group)
            if len({c.slice_axis for c in group}) > 1:
                skipped.append(f"{name}: the configurations predict along different slice axes")
                continue
            out.append(Candidate(name, list(group)))
    return out, skipped


def case_masks(candidate: Candidate, out: Path, threshold: float, slab: int) -> Iterator[tuple[str, np.ndarray]]:
    """(case id, predicted mask) for every out-of-fold case; ensembles are averaged here and written to `out`."""
    first = candidate.members[0]
    for case_id, run in sorted(first.cases().items()):
        if not candidate.is_ensemble:
            yield case_id, read_mask(run.case_file(case_id, "pred"))
            continue
        mask = ensemble_mask(candidate, case_id, threshold, slab)
        write_mask(out / f"{case_id}_pred.nii.gz", mask, run.index["cases"][case_id].get("spacing"))
        yield case_id, mask


def ensemble_mask(candidate: Candidate, case_id: str, threshold: float, slab: int) -> np.ndarray:
    import torch

    from medseg.crossval.probabilities import SCALE, open_probabilities
    from medseg.inference.predictor import from_slices, to_labels

    arrays = []
    for config in candidate.members:
        run = config.cases()[case_id]
        path = run.case_file(case_id, "probs")
        try:
            arrays.append(open_probabilities(path))
        except Exception as exc:  # noqa: BLE001 - a damaged or missing file is named
            raise DataError(
                f"{path} cannot be read ({type(exc).__name__}); rerun fold {run.fold} of {config.name}"
            ) from None
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"case {case_id}: the configurations' probabilities differ in shape {sorted(shapes)}")
    n = arrays[0].shape[0]
    labels = torch.zeros((n, *arrays[0].shape[2:]), dtype=torch.int16)
    for start in range(0, n, slab):
        stop = min(n, start + slab)
        total = np.zeros((stop - start, *arrays[0].shape[1:]), dtype=np.float32)
        for array in arrays:
            total += array[start:stop]
        probs = torch.from_numpy(total / (SCALE * len(arrays)))
        for i in range(stop - start):
            labels[start + i] = to_labels(probs[i], threshold).to(torch.int16)
        del total, probs
    run = candidate.members[0].cases()[case_id]
    entry = run.index["cases"][case_id]
    return from_slices(labels, bool(entry.get("native_2d")), int(run.index["slice_axis"])).numpy()


def score(candidate: Candidate, out: Path, names: list[str], threshold: float, slab: int, hd95: bool) -> dict[str, Any]:
    """Per case rows and evaluate's summary of one candidate; reused from out/scores.json when its inputs match."""
    from medseg.inference.case_metrics import class_scores
    from medseg.inference.scores_summary import summarise

    key = inputs_key(candidate, threshold, hd95)
    saved = out / "scores.json"
    if saved.is_file():
        try:
            done = json.loads(saved.read_text())
            if done.get("inputs") == key:
                return done
        except (OSError, ValueError):
            pass
    k = len(names)
    rows: list[dict[str, Any]] = []
    fold_of: dict[str, int] = {}
    for case_id, mask in case_masks(candidate, out, threshold, slab):
        run = candidate.members[0].cases()[case_id]
        truth = read_mask(run.case_file(case_id, "truth"))
        if mask.shape != truth.shape:
            raise DataError(
                f"case {case_id}: prediction {mask.shape} and truth {truth.shape} differ; rerun fold {run.fold}"
            )
        spacing = run.index["cases"][case_id].get("spacing")
        scores = class_scores(mask, truth, k, hd95, spacing)
        rows += [{"case": case_id, "class": names[c], **s} for c, s in enumerate(scores, start=1)]
        fold_of[case_id] = run.fold
    summary = summarise(rows, names, "out-of-fold", len(fold_of), hd95_unit=hd95_unit(candidate))
    per_fold: dict[str, float | None] = {}
    for fold in sorted(set(fold_of.values())):
        values = [summary["per_case"][c]["dice"] for c, f in fold_of.items() if f == fold]
        finite = [v for v in values if v is not None]
        per_fold[str(fold)] = sum(finite) / len(finite) if finite else None
    result = {"inputs": key, "name": candidate.name, "rows": rows, "summary": summary, "per_fold_dice": per_fold}
    write_json(saved, result)
    return result


def hd95_unit(candidate: Candidate) -> str:
    """mm where every case has a voxel spacing (NIfTI), else voxels (2D images), as evaluate says it."""
    cases = candidate.members[0].cases()
    return "mm" if all(run.index["cases"][c].get("spacing") for c, run in cases.items()) else "voxels"


def inputs_key(candidate: Candidate, threshold: float, hd95: bool) -> str:
    """What a candidate's scores depend on: its fold runs' index files, the threshold and the HD95 switch."""
    h = hashlib.sha256(json.dumps([threshold, hd95]).encode())
    for config in candidate.members:
        for fold in sorted(config.folds):
            run = config.folds[fold]
            h.update(str(run.folder.resolve()).encode())
            h.update((run.folder / "oof" / "index.json").read_bytes())
    return h.hexdigest()
