"""Shared construction steps for the tasks: device, data, model, loss, optimizer, precision."""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

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


def config_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> DictConfig:
    """The training run's config stored in a checkpoint, as data (OmegaConf's safe YAML loader; nothing
    in it is instantiated here; the model is built by medseg.models.factory.build_stored_model)."""
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    text = ckpt.get("config_yaml")
    if not isinstance(text, str):
        raise CheckpointError(f"checkpoint {source} holds no config; it may be damaged or not from mode=train")
    try:
        cfg = OmegaConf.create(text)
    except (YAMLError, OmegaConfBaseException, ValueError) as exc:
        raise CheckpointError(f"checkpoint {source}: its stored config cannot be read ({type(exc).__name__})") from exc
    if not isinstance(cfg, DictConfig):
        raise CheckpointError(f"checkpoint {source}: its stored config is not a mapping; it may be damaged")
    return cfg


def check_weights_fit(model: torch.nn.Module, state: Any, source: str, stored_model: str | None = None) -> None:
    """Refuse weights of another network: a tensor missing, left over, or of another shape names the first one."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {source} holds no model weights; it may be damaged")
    own = model.state_dict()
    hint = f" (it holds a {stored_model})" if stored_model else ""
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ConfigError(
                f"checkpoint {source}: {key} has shape {tuple(value.shape)} but the model has {tuple(own[key].shape)};"
                f" the model config or number of classes differs{hint}"
            )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = f"{missing[0]!r} missing" if missing else f"{unexpected[0]!r} not in the model"
        raise ConfigError(
            f"checkpoint {source} holds weights of another network{hint}: {len(missing)} of {len(own)} tensors"
            f" missing, {len(unexpected)} unknown ({first}); choose the model= it was trained with"
        )


def load_weights(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, stored_model: str | None = None
) -> None:
    """Load weights for fine-tuning; weights of another network (or another head shape) are refused."""
    check_weights_fit(model, state, source, stored_model)
    model.load_state_dict(state)
