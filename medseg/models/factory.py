"""Build the network from the run's own `model` config; channels and dimensions come from the data.

Hydra instantiates what the user typed. A config read from a checkpoint never comes through here:
medseg.models.stored_model builds that one (allow-listed classes, checked values, weights-sized).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from medseg.errors import ConfigError, MedsegError

log = logging.getLogger(__name__)


def build_model(model_cfg: Any, in_channels: int, num_classes: int, spatial_dims: int) -> nn.Module:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        model = instantiate(model_cfg, in_channels=in_channels, out_channels=num_classes, spatial_dims=spatial_dims)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, MedsegError):  # the model's own message already names the key and the fix
            raise cause from exc
        raise ConfigError(f"cannot build model {model_cfg.get('_target_')}: {_one_line(cause)}") from exc
    return model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def describe_model(model: nn.Module, model_cfg: Any) -> dict[str, Any]:
    counts = parameter_counts(model)
    arch = str(model_cfg.get("_target_", type(model).__name__)).rsplit(".", 1)[-1]
    variant = getattr(model, "variant", None)
    if variant:
        arch = f"{arch}-{variant}"
    checkpointing = bool(getattr(model, "grad_checkpointing", False))
    log.info(
        "model: %s, %s parameters (%s trainable)%s",
        arch,
        f"{counts['total']:,}",
        f"{counts['trainable']:,}",
        ", gradient checkpointing on" if checkpointing else "",
    )
    return {
        "architecture": arch,
        "params_total": counts["total"],
        "params_trainable": counts["trainable"],
        "grad_checkpointing": checkpointing,
    }


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
