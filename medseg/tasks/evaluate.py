"""mode=evaluate: per case and per class Dice, IoU and HD95 (MONAI metrics) from a checkpoint.

Cases are the validation split of the checkpoint's own data (same seed, same split), or a labelled
dataset given by evaluate.input in the training layout. Predictions are resized back to each
label's original resolution before scoring; HD95 is in mm for NIfTI (header spacing), in pixels
for 2D images. A class absent from both truth and prediction has no score (empty in metrics.csv,
left out of means); absent from truth but predicted scores 0.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from medseg.data.datasets import plain
from medseg.data.layouts import read_cases
from medseg.data.split import split_cases
from medseg.data.transforms import label_transforms, volume_transforms
from medseg.engine.precision import resolve_precision
from medseg.inference.predictor import VolumePredictor, resize_probabilities, to_labels
from medseg.io_utils import write_json, write_text
from medseg.runtime import run_dir, select_device
from medseg.tasks.predict import write_overlay
from medseg.tasks.restore import restore_model

log = logging.getLogger(__name__)


def class_scores(
    pred: torch.Tensor, truth: torch.Tensor, num_classes: int, hd95: bool, spacing: list[float] | None = None
) -> list[dict[str, float]]:
    """Per class (1..K-1) Dice, IoU and optionally HD95 (in mm when `spacing` is given) for one case."""
    import warnings

    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

    warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")

    rows = []
    for c in range(1, num_classes):
        p = (pred == c)[None, None].float()
        t = (truth == c)[None, None].float()
        has_p, has_t = bool(p.any()), bool(t.any())
        if not has_t and not has_p:
            rows.append({"dice": math.nan, "iou": math.nan, "hd95": math.nan})
            continue
        if not has_t:  # predicted where nothing is: a false positive, scored 0
            rows.append({"dice": 0.0, "iou": 0.0, "hd95": math.nan})
            continue
        dice = float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])
        iou = float(compute_iou(p, t, include_background=True, ignore_empty=False)[0, 0])
        dist = math.nan
        if hd95 and has_p:
            dist = float(
                compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing)[0, 0]
            )
        rows.append({"dice": dice, "iou": iou, "hd95": dist})
    return rows


def run_evaluate(cfg: DictConfig) -> float | None:
    device = select_device(cfg.hardware.device)
    restored = restore_model(cfg.ckpt, device)
    tcfg = restored.cfg
    data_cfg = tcfg.data
    if cfg.evaluate.input:
        data_cfg = OmegaConf.merge(data_cfg, {"root": str(cfg.evaluate.input)})
        cases = read_cases(data_cfg, str(tcfg.paths.cache_dir)).cases
        source = str(cfg.evaluate.input)
    else:
        _, cases = split_cases(read_cases(data_cfg, str(tcfg.paths.cache_dir)).cases, data_cfg, int(tcfg.seed))
        source = "validation split"
    predictor = VolumePredictor(
        restored.model,
        data_cfg,
        device,
        resolve_precision(tcfg.trainer.precision, device),
        tta=bool(cfg.predict.tta),
        overlap=float(cfg.predict.overlap),
        batch_size=int(cfg.predict.batch_size),
    )
    image_chain, label_chain = volume_transforms(data_cfg, with_label=False), label_transforms(data_cfg)
    names, k = restored.class_names, restored.num_classes
    out = run_dir(cfg)
    rows: list[dict[str, Any]] = []
    for case in cases:
        image = plain(image_chain({"image": case["image"]})["image"])
        truth = plain(label_chain({"label": case["label"]})["label"])[0].round().long()
        probs = resize_probabilities(predictor.probabilities(image), tuple(truth.shape))
        pred = to_labels(probs, None)
        spacing = voxel_spacing(case["label"], truth.ndim)
        for c, scores in enumerate(class_scores(pred, truth, k, bool(cfg.evaluate.hd95), spacing), start=1):
            rows.append({"case": case["id"], "class": names[c], **scores})
        if cfg.predict.viz:
            raw = image[0].numpy() if image.shape[1:] == truth.shape else truth.numpy() * 0.0
            write_overlay(
                out / "overlays" / f"{case['id']}.png", raw, pred.numpy(), truth.numpy(), int(data_cfg.slice_axis)
            )
    summary = summarise(rows, names, source, len(cases))
    _write_csv(out / "metrics.csv", rows)
    write_json(out / "summary.json", summary)
    _print_summary(summary)
    from medseg.report.hooks import report_after_evaluate

    report_after_evaluate(cfg)
    return summary["mean_dice"]


def voxel_spacing(path: str, ndim: int) -> list[float] | None:
    """Voxel size in mm from a NIfTI header (None for 2D images: distances in pixels)."""
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        return None
    import nibabel as nib

    zooms = nib.load(str(path)).header.get_zooms()[:ndim]
    return [float(z) for z in zooms] if len(zooms) == ndim else None


def summarise(rows: list[dict[str, Any]], names: list[str], source: str, n_cases: int) -> dict[str, Any]:
    per_class: dict[str, dict[str, float | None]] = {}
    for name in names[1:]:
        mine = [r for r in rows if r["class"] == name]
        per_class[name] = {m: _nanmean([r[m] for r in mine]) for m in ("dice", "iou", "hd95")}
    dice_values = [v["dice"] for v in per_class.values() if v["dice"] is not None]
    ranked = sorted(((n, v["dice"]) for n, v in per_class.items() if v["dice"] is not None), key=lambda p: -p[1])
    return {
        "source": source,
        "cases": n_cases,
        "mean_dice": sum(dice_values) / len(dice_values) if dice_values else None,
        "mean_iou": _nanmean([v["iou"] for v in per_class.values()]),
        "mean_hd95": _nanmean([v["hd95"] for v in per_class.values()]),
        "per_class": per_class,
        "best_classes": ranked[:5],
        "worst_classes": ranked[::-1][:5],
    }


def _nanmean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def _write_csv(path: Any, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["case", "class", "dice", "iou", "hd95"])
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())


def _print_summary(s: dict[str, Any]) -> None:
    log.info("evaluate on %s (%d cases): mean Dice %s", s["source"], s["cases"], _f(s["mean_dice"]))
    for name, v in s["per_class"].items():
        log.info("  %-20s Dice %s  IoU %s  HD95 %s", name, _f(v["dice"]), _f(v["iou"]), _f(v["hd95"]))
    log.info("  best: %s", ", ".join(f"{n} {d:.3f}" for n, d in s["best_classes"]))
    log.info("  worst: %s", ", ".join(f"{n} {d:.3f}" for n, d in s["worst_classes"]))


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
