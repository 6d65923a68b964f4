"""A fold run's out-of-fold predictions: its validation cases predicted with best.pt on their original grid.

A training run with data.fold=k (and crossval.oof=true) ends here. Each validation case is read as
mode=evaluate reads it (the case store, the label on its own grid) and predicted by the streaming
VolumePredictor, slice by slice. For each case, in <run>/oof/:
- `<case>_pred.nii.gz`: the integer mask (class indices), as evaluate would score it;
- `<case>_truth.nii.gz`: the truth on the same grid, so crossval needs neither data.root nor the
  preprocessing again;
- `<case>_probs.b2nd`: the class probabilities, uint8-quantised, one chunk per slice (probabilities.py).
`index.json` is written last: its presence means the predictions are complete (a killed run leaves
none, and crossval names that run).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from medseg.crossval.probabilities import SCALE, ProbabilityWriter
from medseg.io_utils import atomic_write, write_json

log = logging.getLogger(__name__)

OOF_DIR = "oof"
INDEX = "index.json"
LAYOUT = "(slices along slice_axis, classes, remaining spatial axes in order); native 2D images: 1 slice"


def write_oof(cfg: DictConfig, out: Path, device: torch.device) -> Path | None:
    """Predict this fold's validation cases with the run's best checkpoint (last.pt without one) into out/oof/."""
    from medseg.config.stored import data_for_run
    from medseg.data.transforms import label_transforms, volume_transforms
    from medseg.inference.labelled_cases import evaluation_cases, load_case, load_stored_case
    from medseg.inference.predictor import context_slices
    from medseg.tasks.restore import checkpoint_predictor, restore_model

    ckpt = next((p for p in (out / "checkpoints" / n for n in ("best.pt", "last.pt")) if p.is_file()), None)
    if ckpt is None:
        log.warning("no out-of-fold predictions: the run saved no best.pt or last.pt")
        return None
    restored = restore_model(str(ckpt), device)
    names, k = restored.class_names, restored.num_classes
    _, data_cfg, cases, store = evaluation_cases(
        None,
        data_for_run(cfg.data, restored.cfg),
        str(cfg.paths.cache_dir),
        int(restored.cfg.seed),
        names,
        restored.ckpt.get("val_case_ids"),
    )
    predictor = checkpoint_predictor(restored, cfg.predict, device, data_cfg)  # mirroring as predict would
    image_chain, label_chain = volume_transforms(data_cfg, with_label=False), label_transforms(data_cfg)
    channels = restored.in_channels // (2 * context_slices(data_cfg) + 1)
    threshold = float(cfg.predict.threshold)
    folder = out / OOF_DIR
    folder.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    total_bytes, max_error = 0, 0.0
    for case in cases:
        if store is not None:
            item = load_stored_case(store, case, data_cfg, label_chain, channels, k)
        else:
            item = load_case(case, image_chain, label_chain, channels, k)
        shape = tuple(int(s) for s in item.truth.shape)
        entry, size, error = predict_case(predictor, item.image, shape, threshold, folder, item.id, item.affine)
        write_mask(folder / entry["truth"], item.truth.numpy(), item.spacing)
        entries[item.id] = {**entry, "shape": list(shape), "spacing": item.spacing}
        total_bytes, max_error = total_bytes + size, max(max_error, error)
    index = {
        "fold": int(cfg.data.fold),
        "num_folds": int(cfg.data.num_folds),
        "checkpoint": str(ckpt.relative_to(out)),
        "class_names": names,
        "num_classes": k,
        "slice_axis": int(data_cfg.slice_axis),
        "threshold": threshold,
        "probabilities": {"dtype": "uint8", "scale": SCALE, "layout": LAYOUT, "max_error": max_error},
        "probability_bytes": total_bytes,
        "cases": entries,
    }
    write_json(folder / INDEX, index)
    log.info(
        "out-of-fold predictions of fold %d: %d case(s) in %s (probabilities %.1f MB, uint8, max error %.4f)",
        index["fold"],
        len(entries),
        folder,
        total_bytes / 1e6,
        max_error,
    )
    return folder


def predict_case(
    predictor: Any,
    image: torch.Tensor,
    shape: tuple[int, ...],
    threshold: float,
    folder: Path,
    case_id: str,
    affine: Any = None,
) -> tuple[dict[str, Any], int, float]:
    """Stream one case: each probability slice goes to the .b2nd file and into the mask, then is dropped.
    `affine`: the grid's, for a model trained with data.spacing (see VolumePredictor.probability_slices)."""
    from medseg.inference.predictor import from_slices, slice_count, to_labels

    native_2d = image.ndim == 3
    n = slice_count(image, shape, predictor.axis)
    entry = {"pred": f"{case_id}_pred.nii.gz", "truth": f"{case_id}_truth.nii.gz", "probs": f"{case_id}_probs.b2nd"}
    writer, labels = None, None
    try:
        for t, probs in predictor.probability_slices(image, shape, affine):
            if writer is None:
                writer = ProbabilityWriter(folder / entry["probs"], n, int(probs.shape[0]), tuple(probs.shape[1:]))
                labels = torch.zeros((n, *probs.shape[1:]), dtype=torch.int16)
            writer.add(t, probs.numpy())
            labels[t] = to_labels(probs, threshold).to(torch.int16)
        assert writer is not None and labels is not None
        size = writer.close()
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    mask = from_slices(labels, native_2d, predictor.axis).numpy()
    write_mask(folder / entry["pred"], mask, None)
    entry["native_2d"] = native_2d
    return entry, size, writer.max_error


def write_mask(path: Path, labels: np.ndarray, spacing: list[float] | None) -> Path:
    """Class indices as a gzipped NIfTI (uint8, or uint16 past 255 classes); spacing in the affine when known."""
    import gzip

    import nibabel as nib

    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    affine = np.diag([*(spacing or [1.0] * labels.ndim), *([1.0] * (4 - labels.ndim))])
    data = gzip.compress(nib.Nifti1Image(labels.astype(dtype), affine).to_bytes(), compresslevel=6)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read_mask(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj).astype(np.int16)
