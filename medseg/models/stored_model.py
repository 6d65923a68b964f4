"""Build the network a checkpoint describes, without letting the file run code or size our memory.

A checkpoint is data from someone else. Its model config is taken only this far:
- the class must be on the allow-list (medseg's own networks, a few MONAI segmentation networks);
  only its name string is looked at before that check;
- every other key must be a keyword of that class's constructor, holding plain data (numbers,
  booleans, plain words, lists of them); Hydra keys (`_target_` below the top, `_partial_`, ...)
  and interpolations are refused; keywords that name files (pretrained_path, ...) are never taken;
- the values are range-checked like command-line values (medseg.config.validate), and numbers
  without a range of their own stay below MAX_NUMBER.
Then the network is built on PyTorch's `meta` device (shapes only, no memory), every tensor shape is
compared with the checkpoint's own weights, and only then is it materialised from those weights:
what we allocate is what the file holds.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from medseg.config.inert import refuse_interpolation, stored_value_error
from medseg.config.validate import RANGES
from medseg.errors import CheckpointError, MedsegError

# Modules whose public network classes (taking in_channels and out_channels) a checkpoint may name;
# every conf/model/*.yaml target lives in one of them (tests/test_trust.py checks it).
MEDSEG_MODEL_MODULES = (
    "medseg.models.unet",
    "medseg.models.monai_nets",
    "medseg.models.segformer",
    "medseg.models.planned",
)
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
FROM_DATA = ("in_channels", "out_channels", "spatial_dims")  # from the checkpoint's dataset facts
# keywords that name files or downloads (pretrained_path, weights_file, ...): never taken from a checkpoint
FILE_KEYWORD = re.compile(r"(^|_)(path|paths|file|filename|dir|folder|url|uri|weights|pretrained|bundle)(_|$)", re.I)
MODEL_WORD = re.compile(r"[A-Za-z0-9_.+-]{0,64}")  # a string value: a mode or variant name
MAX_NUMBER = 65536  # any number of a stored model config without a range of its own
MAX_LIST = 64
EXTRA_BUFFER_BYTES = 64 * 2**20  # buffers a network computes itself (not in the file) may add this much


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


def stored_model_config(node: Any, source: str) -> dict[str, Any]:
    """The checkpoint's model config, reduced to what may be built: `_target_` and checked keywords."""
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise CheckpointError(f"checkpoint {source} holds no model config with a _target_; it may be damaged")
    nested = _hydra_keys(node, "model", top=True)
    if nested:
        raise CheckpointError(
            f"checkpoint {source} asks to build objects inside its model config ({nested[0]});"
            " medseg refuses to run code named in a checkpoint; the file may be crafted"
        )
    cls = allowed_model_class(node["_target_"], source)
    params = inspect.signature(cls.__init__).parameters
    open_keywords = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out: dict[str, Any] = {"_target_": node["_target_"]}
    ranged = {rule.key for rule in RANGES}
    for key, value in node.items():
        if key == "_target_" or key in FROM_DATA or FILE_KEYWORD.search(str(key)):
            continue  # sizes come from the dataset facts; files never come from a checkpoint
        if key not in params and not open_keywords:
            raise CheckpointError(
                f"checkpoint {source}: its stored model.{key} is not a keyword of {node['_target_']};"
                " the file may be crafted or from another medseg version"
            )
        refuse_interpolation(value, f"model.{key}", source)
        problem = _plain_problem(value, bounded=f"model.{key}" not in ranged)  # ranged: checked by validate
        if problem:
            raise stored_value_error(source, f"model.{key}", value, problem)
        out[str(key)] = value
    return out


def _plain_problem(value: Any, bounded: bool = True, depth: int = 0) -> str | None:
    """What is wrong with a stored model value, or None for plain data (numbers within MAX_NUMBER unless
    the key has a range of its own)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        if not bounded or (math.isfinite(value) and abs(value) <= MAX_NUMBER):
            return None
        return f"must be a finite number of at most {MAX_NUMBER}"
    if isinstance(value, str):
        return None if MODEL_WORD.fullmatch(value) else "must be a plain word (letters, digits, _ . + -)"
    if isinstance(value, list) and depth < 2:
        if len(value) > MAX_LIST:
            return f"must be a list of at most {MAX_LIST} entries"
        return next((p for p in (_plain_problem(v, bounded, depth + 1) for v in value) if p), None)
    return "must be a number, a word or a list of them"


def build_stored_model(
    model_cfg: Mapping[str, Any],
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    state: Any,
    source: str,
) -> nn.Module:
    """The network of a checked stored config (stored_model_config), holding the checkpoint's weights."""
    cls = allowed_model_class(model_cfg["_target_"], source)
    kwargs = {k: v for k, v in model_cfg.items() if k != "_target_"}
    sizes = {"in_channels": in_channels, "out_channels": num_classes, "spatial_dims": spatial_dims}

    def build() -> nn.Module:
        try:
            return cls(**kwargs, **sizes)
        except MedsegError:
            raise
        except Exception as exc:  # noqa: BLE001 - a stored config the class rejects: the same to the user
            raise CheckpointError(
                f"checkpoint {source}: cannot build {model_cfg['_target_']} from its stored config"
                f" ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); the file may be damaged or from"
                " another medseg version"
            ) from exc

    with torch.device("meta"), _SchedulesOnCPU():
        skeleton = build()
    weights = fitting_weights(skeleton, state, source)
    skeleton.load_state_dict(weights, assign=True)  # the file's tensors become the parameters
    if not any(t.is_meta for t in (*skeleton.parameters(), *skeleton.buffers())):
        return skeleton
    model = build()  # buffers the network computes itself: a real build, now known to be of the file's size
    model.load_state_dict(weights)
    return model


class _SchedulesOnCPU(TorchFunctionMode):
    """Inside `torch.device("meta")`: torch.linspace / logspace without a device stay on the CPU, since
    constructors read their values (SwinUNETR's drop-path rates call .item()); transformers does the same
    for its meta-device builds (transformers.initialization.meta_device_safe_creation_ops)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in (torch.linspace, torch.logspace) and kwargs.get("device") is None:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


def weights_mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> tuple[str, bool] | None:
    """The first difference between a model's tensors and a checkpoint's, in words, and whether the names
    agree (only a shape differs); None when every name and shape agree."""
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            return f"{key} has shape {tuple(value.shape)} but the model has {tuple(own[key].shape)}", True
    missing = [k for k in own if k not in state]
    unknown = [k for k in state if k not in own]
    if missing or unknown:
        first = f"{missing[0]!r} missing" if missing else f"{unknown[0]!r} not in the model"
        return f"{len(missing)} of {len(own)} tensors missing, {len(unknown)} unknown ({first})", False
    return None


def fitting_weights(skeleton: nn.Module, state: Any, source: str) -> dict[str, torch.Tensor]:
    """The checkpoint's weights when every tensor of `skeleton` (a meta-device build) has the same name
    and shape there; else CheckpointError naming the first difference."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {source} holds no model weights; it may be damaged")
    own = skeleton.state_dict()
    mismatch = weights_mismatch(own, state)
    if mismatch:
        raise CheckpointError(
            f"checkpoint {source}: its weights do not fit its own model config ({mismatch[0]});"
            " it may be damaged or crafted"
        )
    weights = {}
    for key, tensor in own.items():
        stored = state[key]
        if stored.dtype != tensor.dtype:
            if not (stored.is_floating_point() and tensor.is_floating_point()):
                raise CheckpointError(
                    f"checkpoint {source}: its weights do not fit its own model config ({key} is {stored.dtype},"
                    f" not {tensor.dtype}); it may be damaged"
                )
            stored = stored.to(tensor.dtype)
        weights[key] = stored
    own_names = set(own)
    extra = sum(b.numel() * b.element_size() for n, b in skeleton.named_buffers() if n not in own_names)
    if extra > EXTRA_BUFFER_BYTES:
        raise CheckpointError(
            f"checkpoint {source}: its model config asks for {extra / 2**20:.0f} MiB of buffers beyond its weights;"
            " the file may be crafted"
        )
    return weights


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
