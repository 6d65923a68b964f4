"""Fold run folders for mode=crossval tests, written in the real on-disk format of a fold run's oof/ (the
writer's own functions), from label volumes chosen by the test: made without training so that the test
controls what is predicted (islands or none)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.crossval.oof import write_mask
from medseg.crossval.probabilities import ProbabilityWriter

CLASSES = ["background", "organ", "tumour"]
SHAPE = (24, 24, 12)


def truth_volume(seed: int) -> np.ndarray:
    """Two boxes (classes 1 and 2) at a place that varies with the seed."""
    rng = np.random.default_rng(seed)
    t = np.zeros(SHAPE, np.int16)
    x, y = rng.integers(2, 6, size=2)
    t[x : x + 8, y : y + 8, 2:9] = 1
    t[x + 10 : x + 15, y + 10 : y + 15, 3:8] = 2
    return t


def predicted(truth: np.ndarray, seed: int, islands: bool, shift: int = 0) -> np.ndarray:
    """The truth, moved by `shift` voxels and with one voxel layer of class 1 lost; with `islands`, small false
    components of both classes far from the structures."""
    p = np.roll(truth, shift, axis=0).copy()
    p[(p == 1) & (np.roll(p, 1, axis=1) != 1)] = 0
    if islands:
        rng = np.random.default_rng(seed + 100)
        z = int(rng.integers(0, 3))
        p[20:23, 20:23, z : z + 2] = 1
        p[0:2, 20:22, 10:12] = 2
    return p


def probabilities(labels: np.ndarray, seed: int) -> np.ndarray:
    """(K, *spatial) softmax probabilities whose argmax is `labels`."""
    rng = np.random.default_rng(seed)
    logits = 4.0 * np.eye(len(CLASSES), dtype=np.float32)[labels].transpose(3, 0, 1, 2)
    logits += rng.normal(0, 0.3, size=logits.shape).astype(np.float32)
    e = np.exp(logits - logits.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def write_fold_runs(
    root: Path,
    config: str,
    predictions: dict[str, np.ndarray],
    truths: dict[str, np.ndarray],
    num_folds: int = 2,
    seed: int = 0,
    skip_folds: tuple[int, ...] = (),
) -> Path:
    """A multirun folder `root` of fold runs 0..num_folds-1 (case i in fold i % num_folds)."""
    axis = 2
    ids = sorted(predictions)
    for fold in range(num_folds):
        if fold in skip_folds:
            continue
        job = root / str(fold)
        (job / ".hydra").mkdir(parents=True, exist_ok=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- data.fold={fold}\n- model={config}\n")
        oof = job / "oof"
        oof.mkdir(exist_ok=True)
        cases = {}
        for i, case_id in enumerate(ids):
            if i % num_folds != fold:
                continue
            labels, truth = predictions[case_id], truths[case_id]
            probs = probabilities(labels, seed + i)
            writer = ProbabilityWriter(
                oof / f"{case_id}_probs.b2nd", labels.shape[axis], len(CLASSES), labels.shape[:2]
            )
            for t in range(labels.shape[axis]):
                writer.add(t, probs[:, :, :, t])
            writer.close()
            pred = probs.argmax(0).astype(np.int16)
            write_mask(oof / f"{case_id}_pred.nii.gz", pred, [1.0, 1.0, 2.0])
            write_mask(oof / f"{case_id}_truth.nii.gz", truth, [1.0, 1.0, 2.0])
            cases[case_id] = {
                "pred": f"{case_id}_pred.nii.gz",
                "truth": f"{case_id}_truth.nii.gz",
                "probs": f"{case_id}_probs.b2nd",
                "native_2d": False,
                "shape": list(labels.shape),
                "spacing": [1.0, 1.0, 2.0],
            }
        index = {
            "fold": fold,
            "num_folds": num_folds,
            "checkpoint": "checkpoints/best.pt",
            "class_names": CLASSES,
            "num_classes": len(CLASSES),
            "slice_axis": axis,
            "threshold": 0.5,
            "cases": cases,
        }
        (oof / "index.json").write_text(json.dumps(index))
    return root


def islands_runs(root: Path, config: str, islands: bool, n_cases: int = 6, shift: int = 0) -> Path:
    truths = {f"case_{i:02d}": truth_volume(i) for i in range(n_cases)}
    preds = {k: predicted(t, i, islands, shift) for i, (k, t) in enumerate(truths.items())}
    return write_fold_runs(root, config, preds, truths)
