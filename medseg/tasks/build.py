"""Shared construction steps for the tasks: device, data, model, loss, optimizer, precision."""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig

from medseg.errors import CheckpointError, ConfigError

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
        from medseg.models.planned import DeepSupervisionLoss  # MONAI's, for heads at their own resolution too

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


def config_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> DictConfig:
    """The training run's config stored in a checkpoint, sanitised: parsed as plain YAML (nothing resolved,
    nothing instantiated), only the allow-listed architecture and preprocessing keys taken and range-checked
    (medseg.config.stored), never a path. Folders and files come from the run's own config."""
    from medseg.config.stored import read_stored_config, sanitised_config

    return sanitised_config(read_stored_config(ckpt.get("config_yaml"), source), source)


def check_weights_fit(model: torch.nn.Module, state: Any, source: str, stored_model: str | None = None) -> None:
    """Refuse weights of another network: a tensor missing, left over, or of another shape names the first one."""
    from medseg.models.stored_model import weights_mismatch

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {source} holds no model weights; it may be damaged")
    mismatch = weights_mismatch(model.state_dict(), state)
    if mismatch is None:
        return
    hint = f" (it holds a {stored_model})" if stored_model else ""
    detail, same_names = mismatch
    if same_names:
        raise ConfigError(f"checkpoint {source}: {detail}; the model config or number of classes differs{hint}")
    raise ConfigError(
        f"checkpoint {source} holds weights of another network{hint}: {detail}; choose the model= it was trained with"
    )


def load_weights(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, stored_model: str | None = None
) -> None:
    """Load weights for fine-tuning; weights of another network (or another head shape) are refused."""
    check_weights_fit(model, state, source, stored_model)
    model.load_state_dict(state)
