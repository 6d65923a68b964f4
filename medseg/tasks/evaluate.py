"""mode=evaluate: per case and per class Dice, IoU and HD95 from a checkpoint.

Cases are the validation cases of the checkpoint's training run, or a labelled dataset given by
evaluate.input in the training layout, or DICOM given by evaluate.input: a folder or zip of case
folders, each one image series and its label (a NIfTI label map on the series' grid or a DICOM SEG of
the series; medseg/dicom/labelled.py), scored as the NIfTI conversion of the series would be. The
checkpoint gives the layout, the preprocessing and the validation case ids (older checkpoints: the
seed and split settings); the folder is this run's data.root (a checkpoint never chooses folders; the
built-in demo data is generated again under this run's paths.cache_dir). Each case is predicted slice
by slice (or slab by slab for 3D models) straight into an integer label map on the label's own grid, with the
same padding, argmax and predict.threshold (two-class models) as validation and mode=predict; no
float volume per class is ever held.

Dice follows the definition validation uses: per case 2TP / (2TP + FP + FN) over the whole volume;
a class absent from both truth and prediction has no score (empty in metrics.csv, left out of the
means); predicted but absent from the truth it scores 0. `mean_dice` is the mean over cases of the
per-case mean over classes; per-class figures are means over cases. HD95 is in mm for NIfTI (header
spacing, every layout) and DICOM (the series' pixel spacing and slice positions), in pixels for 2D
images, and runs on the bounding box of prediction ∪ truth.
A structure in the truth that is never predicted scores the image diagonal and is counted in
`hd95_missing` (summary.json, and a metrics.csv column), so it cannot drop out of `mean_hd95`.

Every case is read, checked and scored before anything is written: a bad file ends the run with one
line naming it, and no metrics.csv or summary.json is left behind.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from omegaconf import DictConfig

from medseg.config.stored import data_for_run
from medseg.data.transforms import label_transforms, volume_transforms
from medseg.inference.case_metrics import class_scores
from medseg.inference.labelled_cases import evaluation_cases, load_case, load_stored_case
from medseg.inference.predict_io import write_overlay
from medseg.inference.predictor import context_slices
from medseg.inference.scores_summary import log_summary, summarise, write_results
from medseg.runtime import run_dir, select_device
from medseg.tasks.restore import checkpoint_predictor, restore_model

log = logging.getLogger(__name__)

__all__ = ["class_scores", "run_evaluate", "summarise"]


def run_evaluate(cfg: DictConfig) -> float | None:
    from medseg.crossval.apply import crossval_file

    source = crossval_file(cfg.ckpt)
    if source is not None:  # ckpt= names the outcome of mode=crossval: its ensemble and post-processing
        from medseg.crossval.apply import run_evaluate_crossval

        return run_evaluate_crossval(cfg, source)
    device = select_device(cfg.hardware.device)
    restored = restore_model(cfg.ckpt, device)
    tcfg = restored.cfg
    names, k = restored.class_names, restored.num_classes
    source, data_cfg, cases, store = evaluation_cases(
        cfg.evaluate.input,
        data_for_run(cfg.data, tcfg),  # this run's folders, the checkpoint's preprocessing
        str(cfg.paths.cache_dir),
        int(tcfg.seed),
        names,
        restored.ckpt.get("val_case_ids"),
        cfg.export.modalities,  # DICOM input: the modalities predict accepts too
    )
    predictor = checkpoint_predictor(restored, cfg.predict, device, data_cfg)
    image_chain, label_chain = volume_transforms(data_cfg, with_label=False), label_transforms(data_cfg)
    channels = restored.in_channels // (2 * context_slices(data_cfg) + 1)
    threshold = float(cfg.predict.threshold)
    rows: list[dict[str, Any]] = []
    overlays: dict[str, tuple[np.ndarray, ...]] = {}
    spacings: set[bool] = set()
    for case in cases:
        if store is not None:
            item = load_stored_case(store, case, data_cfg, label_chain, channels, k)
        else:
            item = load_case(case, image_chain, label_chain, channels, k)
        pred = predictor.labels(item.image, tuple(item.truth.shape), threshold, item.affine)
        scores = class_scores(pred, item.truth, k, bool(cfg.evaluate.hd95), item.spacing)
        rows += [{"case": item.id, "class": names[c], **s} for c, s in enumerate(scores, start=1)]
        spacings.add(item.spacing is not None)
        if cfg.predict.viz:
            overlays[item.id] = overlay_slice(item.image, pred, item.truth, int(data_cfg.slice_axis))
    summary = summarise(rows, names, source, len(cases), hd95_unit="mm" if spacings == {True} else "voxels")
    out = run_dir(cfg)
    write_results(out, rows, summary)
    for case_id, (raw, pred, truth) in overlays.items():
        write_overlay(out / "overlays" / f"{case_id}.png", raw, pred, truth, int(data_cfg.slice_axis))
    log_summary(summary)
    from medseg.report.hooks import report_after_evaluate

    report_after_evaluate(cfg)
    return summary["mean_dice"]


def overlay_slice(image: Any, pred: Any, truth: Any, axis: int) -> tuple[np.ndarray, ...]:
    """The image, prediction and truth of the slice an overlay shows (kept instead of whole volumes)."""
    from medseg.inference.image_io import representative_slice

    truth_np, pred_np = truth.numpy(), pred.numpy()
    raw = image[0].numpy() if tuple(image.shape[1:]) == truth_np.shape else np.zeros(truth_np.shape, np.float32)
    if truth_np.ndim == 3:
        s = representative_slice(truth_np, axis)
        raw, pred_np, truth_np = (np.take(a, s, axis=axis) for a in (raw, pred_np, truth_np))
    return raw, pred_np, truth_np
