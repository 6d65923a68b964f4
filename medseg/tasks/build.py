"""Shared construction steps for the tasks: device, data, model, loss, optimizer, precision."""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from medseg.errors import ConfigError

log = logging.getLogger(__name__)


def build_loss(loss_cfg: Any) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(loss_cfg)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"cannot build trainer.loss: {' '.join(str(cause).split())[:300]}") from exc


def build_train_loss(loss_cfg: Any, model: torch.nn.Module) -> Any:
    """trainer.loss; for a deeply supervised model (training forward returns a list of logits) it is
    wrapped in MONAI's DeepSupervisionLoss, which weights the deeper outputs less."""
    loss = build_loss(loss_cfg)
    if getattr(model, "deep_supervision", False):
        from monai.losses import DeepSupervisionLoss

        log.info("deep supervision: %s wrapped in DeepSupervisionLoss", type(loss).__name__)
        return DeepSupervisionLoss(loss, weight_mode="exp")
    return loss


def build_optimizer(opt_cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(opt_cfg)(model.parameters())
    except (InstantiationException, TypeError, ValueError) as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"cannot build optimizer {opt_cfg.get('_target_')}: {' '.join(str(cause).split())}") from exc


def config_from_checkpoint(ckpt: dict[str, Any]) -> DictConfig:
    return OmegaConf.create(ckpt["config_yaml"])


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights for fine-tuning; a shape mismatch names the first differing tensor."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ConfigError(
                f"checkpoint {source}: {key} has shape {tuple(value.shape)} but the model has {tuple(own[key].shape)};"
                " the model config or number of classes differs"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        log.warning("weights from %s: %d missing, %d unexpected keys", source, len(missing), len(unexpected))
