"""Build the network from the `model` config; channels and dimensions come from the data.

Two doors: `build_model` for the user's own config (Hydra instantiates what the user typed), and
`build_stored_model` for a config read from a checkpoint. A checkpoint is data from someone else, so
that door builds only an allow-listed network class and never instantiates anything else in the file.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

from medseg.errors import CheckpointError, ConfigError, MedsegError

log = logging.getLogger(__name__)

# Modules whose public network classes (taking in_channels and out_channels) a checkpoint may name;
# every conf/model/*.yaml target lives in one of them (tests/test_trust.py checks it).
MEDSEG_MODEL_MODULES = ("medseg.models.unet", "medseg.models.monai_nets", "medseg.models.segformer")
# MONAI segmentation networks a config may name directly (_target_: monai.networks.nets.UNet). Networks
# that download or read weights on construction (FlexibleUNet, EfficientNet, TorchVisionFCModel, ...) are left out.
MONAI_NETS = "monai.networks.nets"
MONAI_SEGMENTATION_NETS = (
    "AttentionUnet",
    "BasicUNet",
    "BasicUNetPlusPlus",
    "DynUNet",
    "HighResNet",
    "SegResNet",
    "SegResNetDS",
    "SwinUNETR",
    "UNETR",
    "UNet",
    "VNet",
)


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


def allowed_model_targets() -> list[str]:
    """Every `_target_` a checkpoint's model config may name."""
    targets = [f"{MONAI_NETS}.{name}" for name in MONAI_SEGMENTATION_NETS]
    for module_name in MEDSEG_MODEL_MODULES:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if _is_medseg_network(obj, module_name, name):
                targets.append(f"{module_name}.{name}")
    return sorted(targets)


def _is_medseg_network(obj: Any, module_name: str, name: str) -> bool:
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)) or name.startswith("_"):
        return False
    if obj.__module__ != module_name:  # imported from elsewhere (torch, monai), not one of ours
        return False
    params = inspect.signature(obj.__init__).parameters
    return "in_channels" in params and "out_channels" in params


def allowed_model_class(target: Any, source: str) -> type[nn.Module]:
    """The network class a stored `_target_` names, when it is on the allow-list; else CheckpointError.

    Only the string is looked at before the check passes: nothing outside medseg.models and
    monai.networks.nets is imported.
    """
    refuse = CheckpointError(
        f"checkpoint {source} names model {target!r}, which medseg does not build from a checkpoint"
        f" (allowed: the classes of {', '.join(MEDSEG_MODEL_MODULES)} and {MONAI_NETS}.{{"
        f"{','.join(MONAI_SEGMENTATION_NETS)}}}); the file may be crafted"
    )
    if not isinstance(target, str):
        raise refuse
    module_name, _, name = target.rpartition(".")
    if module_name in MEDSEG_MODEL_MODULES:
        obj = getattr(importlib.import_module(module_name), name, None)
        if _is_medseg_network(obj, module_name, name):
            return obj
    elif module_name == MONAI_NETS and name in MONAI_SEGMENTATION_NETS:
        obj = getattr(importlib.import_module(module_name), name, None)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            return obj
    raise refuse


def build_stored_model(model_cfg: Any, in_channels: int, num_classes: int, spatial_dims: int, source: str) -> nn.Module:
    """Build the network described by a checkpoint's stored `model` config, without Hydra.

    The class must be on the allow-list (allowed_model_class); every other value is passed as plain
    data. A nested `_target_` (or any Hydra key such as `_partial_`) is refused, not instantiated.
    """
    plain = _plain(model_cfg)
    if not isinstance(plain, Mapping) or "_target_" not in plain:
        raise CheckpointError(f"checkpoint {source} holds no model config with a _target_; it may be damaged")
    nested = _hydra_keys(plain, "model", top=True)
    if nested:
        raise CheckpointError(
            f"checkpoint {source} asks to build objects inside its model config ({nested[0]});"
            " medseg refuses to run code named in a checkpoint; the file may be crafted"
        )
    cls = allowed_model_class(plain["_target_"], source)
    kwargs = {k: v for k, v in plain.items() if k != "_target_"}
    if "pretrained_path" in kwargs:  # the weights come from the checkpoint, not from a file it names
        kwargs["pretrained_path"] = None
    try:
        return cls(**kwargs, in_channels=in_channels, out_channels=num_classes, spatial_dims=spatial_dims)
    except MedsegError:
        raise
    except Exception as exc:  # noqa: BLE001 - a stored config the class rejects: the same to the user
        raise CheckpointError(
            f"checkpoint {source}: cannot build {plain['_target_']} from its stored config"
            f" ({type(exc).__name__}: {_one_line(exc)}); the file may be damaged or from another medseg version"
        ) from exc


def _hydra_keys(node: Any, where: str, top: bool = False) -> list[str]:
    """Places of Hydra's special keys (`_target_`, `_partial_`, `_args_`, ...) below the top level."""
    found = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(key, str) and key.startswith("_") and key.endswith("_") and not (top and key == "_target_"):
                found.append(f"{where}.{key}")
            found += _hydra_keys(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found += _hydra_keys(value, f"{where}[{i}]")
    return found


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


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
