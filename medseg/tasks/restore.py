"""Rebuild a trained model from a checkpoint alone (its config travels inside)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from medseg.engine.checkpoint import load_checkpoint
from medseg.errors import CheckpointError
from medseg.models.factory import build_model
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
    try:
        train_cfg = config_from_checkpoint(ckpt)
        info = ckpt["dataset"]
        model = build_model(train_cfg.model, int(info["in_channels"]), int(info["num_classes"]), int(info["dims"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match its own config ({exc}); it may be damaged") from exc
    model.to(device).eval()
    log.info("restored %s (epoch %s, %s=%s)", path, ckpt.get("epoch"), ckpt.get("monitor"), ckpt.get("best_score"))
    return Restored(
        model, train_cfg, list(ckpt["class_names"]), int(info["in_channels"]), int(info["num_classes"]), ckpt
    )
