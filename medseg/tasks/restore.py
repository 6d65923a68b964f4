"""Rebuild a trained model from a checkpoint alone (its config travels inside).

The stored config is data: the model is built through the factory's allow-list
(medseg.models.factory.build_stored_model), never by instantiating what the file names.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from medseg.engine.checkpoint import load_checkpoint
from medseg.errors import CheckpointError
from medseg.models.factory import build_stored_model
from medseg.tasks.build import config_from_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Restored:
    model: torch.nn.Module
    cfg: DictConfig  # the training run's resolved config
    class_names: list[str]
    in_channels: int
    num_classes: int
    ckpt: dict[str, Any]


def restore_model(path: str | None, device: torch.device) -> Restored:
    ckpt = load_checkpoint(path)
    train_cfg = config_from_checkpoint(ckpt, str(path))
    try:
        info = ckpt["dataset"]
        dims = (int(info["in_channels"]), int(info["num_classes"]), int(info["dims"]))
        class_names = [str(n) for n in ckpt["class_names"]]
        state = ckpt["model"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} lacks {exc}; it may be damaged or not from mode=train") from exc
    model = build_stored_model(train_cfg.get("model"), *dims, source=str(path))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit its own model config ({first}); it may be damaged"
        ) from exc
    model.to(device).eval()
    log.info("restored %s (%s)", path, describe_score(ckpt))
    return Restored(model, train_cfg, class_names, dims[0], dims[1], ckpt)


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
