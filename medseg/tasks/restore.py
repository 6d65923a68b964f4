"""Rebuild a trained model from a checkpoint alone (its config travels inside).

The stored config is data (medseg.config.stored): only allow-listed architecture and preprocessing
keys are read, range-checked, never resolved; the network is built through
medseg.models.stored_model on the meta device, compared with the file's weights, then materialised.
The checkpoint's facts (channels, classes, class names, mask values, validation case ids) are checked
as well. Nothing read here names a folder or a file: where a run reads and writes comes from its own config.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from medseg.config.stored import NAME, check_ranges, names, stored_value_error
from medseg.engine.checkpoint import load_checkpoint
from medseg.errors import CheckpointError
from medseg.models.stored_model import build_stored_model
from medseg.tasks.build import config_from_checkpoint

log = logging.getLogger(__name__)

MAX_CASE_IDS = 1_000_000


@dataclass
class Restored:
    model: torch.nn.Module
    cfg: DictConfig  # the sanitised stored config: seed, trainer.precision, data (preprocessing), model
    class_names: list[str]
    in_channels: int
    num_classes: int
    ckpt: dict[str, Any]  # the checkpoint as loaded; its checked facts replace the raw ones


def restore_model(path: str | None, device: torch.device) -> Restored:
    ckpt = load_checkpoint(path)
    source = str(path)
    train_cfg = config_from_checkpoint(ckpt, source)
    in_channels, num_classes, dims = checkpoint_sizes(ckpt, source)
    class_names = checked_class_names(ckpt, num_classes, source)
    ckpt["mask_values"] = checked_mask_values(ckpt, num_classes, source)
    ckpt["val_case_ids"] = checked_case_ids(ckpt, source)
    model = build_stored_model(train_cfg.model, in_channels, num_classes, dims, ckpt.get("model"), source)
    model.to(device).eval()
    log.info("restored %s (%s)", path, describe_score(ckpt))
    return Restored(model, train_cfg, class_names, in_channels, num_classes, ckpt)


def mirroring_at_test_time(tta: Any, restored: Restored) -> bool:
    """predict.tta, or when null the training run's choice (data.augment.test_time_mirroring: the
    nnU-Net recipe mirrors at test time)."""
    if tta is not None:
        return bool(tta)
    from omegaconf import OmegaConf

    return bool(OmegaConf.select(restored.cfg, "data.augment.test_time_mirroring", default=False))


def checkpoint_predictor(
    restored: Restored, predict_cfg: Any, device: torch.device, data_cfg: Any = None, models: Any = None
) -> Any:
    """The streaming VolumePredictor for a restored checkpoint (or `models`, the folds of one configuration
    that share its preprocessing): its data settings and precision, predict.overlap / batch_size, and
    test-time mirroring as predict.tta says or, when null, as the training run chose. Predict, evaluate,
    out-of-fold predictions and crossval ensembles all build it here, so they predict alike."""
    from medseg.inference.predictor import VolumePredictor
    from medseg.precision import resolve_precision

    return VolumePredictor(
        restored.model if models is None else models,
        restored.cfg.data if data_cfg is None else data_cfg,
        device,
        resolve_precision(restored.cfg.trainer.precision, device),
        tta=mirroring_at_test_time(predict_cfg.tta, restored),
        overlap=float(predict_cfg.overlap),
        batch_size=int(predict_cfg.batch_size),
        num_classes=restored.num_classes,
    )


def checkpoint_sizes(ckpt: dict[str, Any], source: str) -> tuple[int, int, int]:
    """(in_channels, num_classes, dims) of the stored dataset facts, range-checked like config values."""
    info = ckpt.get("dataset")
    try:
        sizes = {k: info[k] for k in ("in_channels", "num_classes", "dims")}
    except (KeyError, TypeError):
        raise CheckpointError(
            f"checkpoint {source} lacks its dataset facts; it may be damaged or not from mode=train"
        ) from None
    check_ranges(
        {
            "model": {"in_channels": sizes["in_channels"], "out_channels": sizes["num_classes"]},
            "data": {"num_classes": sizes["num_classes"], "dims": sizes["dims"]},
        },
        source,
    )
    return int(sizes["in_channels"]), int(sizes["num_classes"]), int(sizes["dims"])


def checked_class_names(ckpt: dict[str, Any], num_classes: int, source: str) -> list[str]:
    value = ckpt.get("class_names")
    problem = names(NAME)(value) if value is not None else "must be a list of names"
    if not problem and len(value) != num_classes:
        problem = f"must name the {num_classes} classes of its weights"
    if problem:
        raise stored_value_error(source, "class_names", value, problem)
    return [str(n) for n in value]


def checked_mask_values(ckpt: dict[str, Any], num_classes: int, source: str) -> list[int] | None:
    """The stored mask value of each class (predict writes them back), or None."""
    value = ckpt.get("mask_values")
    if value is None:
        return None
    check_ranges({"data": {"mask_values": value}}, source)
    if len(value) != num_classes:
        raise stored_value_error(source, "mask_values", value, f"must hold one value per class ({num_classes})")
    return [int(v) for v in value]


def checked_case_ids(ckpt: dict[str, Any], source: str) -> list[str] | None:
    """The ids of the training run's validation cases (None in checkpoints older than this key)."""
    value = ckpt.get("val_case_ids")
    if value is None:
        return None
    ok = isinstance(value, list) and len(value) <= MAX_CASE_IDS
    if not (ok and all(isinstance(v, str) and 0 < len(v) <= 256 for v in value)):
        raise stored_value_error(source, "val_case_ids", value, "must be a list of case ids")
    return list(value)


def describe_score(ckpt: dict[str, Any]) -> str:
    """The checkpoint's own epoch and monitored score (last.pt's score is its epoch's, not the run's best)."""
    epoch, monitor = ckpt.get("epoch"), ckpt.get("monitor")
    own = checkpoint_score(ckpt)
    text = f"epoch {epoch}, {monitor}={_fmt(own)}"
    best, best_epoch = ckpt.get("best_score"), ckpt.get("best_epoch")
    if best is not None and best_epoch is not None and best_epoch != epoch:
        text += f"; the run's best was {_fmt(best)} at epoch {best_epoch}"
    return text


def checkpoint_score(ckpt: dict[str, Any]) -> float | None:
    """The monitored metric of the epoch the weights are from (None when that epoch was not validated)."""
    epoch, monitor = ckpt.get("epoch"), ckpt.get("monitor")
    for record in reversed(list(ckpt.get("history") or [])):
        if isinstance(record, dict) and record.get("epoch") == epoch:
            value = record.get(monitor)
            return float(value) if isinstance(value, (int, float)) else None
    if epoch is not None and epoch == ckpt.get("best_epoch"):
        return ckpt.get("best_score")
    return None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
