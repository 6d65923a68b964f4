"""Shared construction steps for the tasks: device, data, model, loss, optimizer, precision."""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig

from medseg.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def build_loss(loss_cfg: Any) -> Any:
    """trainer.loss without its `deep_supervision` key (read by build_train_loss)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if OmegaConf.is_dict(loss_cfg) and "deep_supervision" in loss_cfg:
        loss_cfg = OmegaConf.masked_copy(loss_cfg, [k for k in loss_cfg if k != "deep_supervision"])
    try:
        return instantiate(loss_cfg)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"cannot build trainer.loss: {' '.join(str(cause).split())[:300]}") from exc


def build_train_loss(loss_cfg: Any, model: torch.nn.Module) -> Any:
    """trainer.loss over every head of the model's output: a deeply supervised model's training forward
    (DynUNet's stacked (B, heads, C, ...) or a list) is weighted per trainer.loss.deep_supervision
    (nnunet: 1/2^i, lowest-resolution head dropped, normalised); a plain output goes to the loss as it is."""
    from medseg.losses.deep_supervision import DeepSupervised

    loss = build_loss(loss_cfg)
    mode = str(loss_cfg.get("deep_supervision", "nnunet") or "nnunet")
    if getattr(model, "deep_supervision", False):
        log.info("deep supervision: %s over every head, %s weights", type(loss).__name__, mode)
    return DeepSupervised(loss, mode)


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
