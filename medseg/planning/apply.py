"""The plan as ordinary config values: `plan=auto` fills data.* / model.* keys through the `${plan:...}`
resolver, so a key given on the command line (or by a sweep) replaces the interpolation and wins, and
`--cfg job --resolve` shows the planned values.

    data.batch_size: ${plan:batch_size,4}     # the planned value; the second argument is what modes
                                              # that do not plan (predict, evaluate, report, export) see

The plan is made once per process and settings (fingerprint from its JSON beside the case store after the
first run). The configuration follows data.dims (2d | 3d_fullres) unless plan.configuration names one.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medseg.errors import ConfigError

log = logging.getLogger(__name__)

PLANNING_MODES = ("train", "lr_find", "benchmark", "plan", "preprocess", "crossval")
DEFAULT_BUDGET_GB = 8.0  # nnU-Net's default target, for a preset without one (cpu)
_PLANS: dict[str, dict[str, Any]] = {}


def budget_gb(cfg: Any) -> tuple[float, str]:
    """The memory budget (GB) and the key it comes from: plan.memory_gb, hardware.memory_gb, the GPU that
    hardware=auto finds, or nnU-Net's default 8 GB (CPU)."""
    own = OmegaConf.select(cfg, "plan.memory_gb", default=None)
    if own is not None:
        return float(own), "plan.memory_gb"
    hw = OmegaConf.select(cfg, "hardware.memory_gb", default=None)
    if hw is not None:
        return float(hw), "hardware.memory_gb"
    if str(OmegaConf.select(cfg, "hardware.name", default="")) == "auto":
        from medseg.hardware import cuda_memory_gib

        device = str(OmegaConf.select(cfg, "hardware.device", default="auto"))
        index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
        gib = None if device == "cpu" else cuda_memory_gib(index)
        if gib is not None:
            return round(gib * 2**30 / 1e9, 1), "hardware=auto (the CUDA device)"
    return DEFAULT_BUDGET_GB, "nnU-Net's default (no GPU budget in hardware.memory_gb)"


def _key(cfg: Any) -> str:
    data = cfg.data
    parts = [
        str(data.layout),
        str(data.get("root")),
        str(cfg.paths.cache_dir),
        str(OmegaConf.select(cfg, "data.store.dir", default=None)),
        str(OmegaConf.to_container(data.synthetic, resolve=True)) if "synthetic" in data else "",
        str(data.get("structures")),
        str(data.get("mask_values")),
        str(data.get("num_classes")),
        str(budget_gb(cfg)),
        str(OmegaConf.select(cfg, "plan.network", default="plain")),
    ]
    return "|".join(parts)


def current_plan(cfg: Any) -> dict[str, Any]:
    """The plan for this config's data and budget (fingerprint read from its JSON, or computed once)."""
    key = _key(cfg)
    if key not in _PLANS:
        from medseg.planning.fingerprint import dataset_fingerprint
        from medseg.planning.planner import make_plan

        memory, source = budget_gb(cfg)
        fingerprint = dataset_fingerprint(cfg)
        network = str(OmegaConf.select(cfg, "plan.network", default="plain"))
        budget_key = source if source.startswith(("plan.", "hardware.memory")) else "plan.memory_gb"
        plan = make_plan(fingerprint, memory, network=network, budget_key=budget_key)
        plan["memory_budget_source"] = source
        plan["fingerprint"] = _fingerprint_summary(fingerprint)
        _PLANS[key] = plan
    return _PLANS[key]


def configuration_name(cfg: Any, plan: dict[str, Any]) -> str:
    chosen = OmegaConf.select(cfg, "plan.configuration", default=None)
    configs = plan["configurations"]
    if chosen:
        if chosen not in configs:
            raise ConfigError(
                f"plan.configuration={chosen!r} is not planned for these data; choose one of {', '.join(configs)}"
            )
        return str(chosen)
    name = "3d_fullres" if int(cfg.data.dims) == 3 else "2d"
    if name not in configs:
        raise ConfigError(
            f"data.dims={cfg.data.dims}: the data are 2D images, so the plan has only"
            f" {', '.join(configs)}; set data.dims=2"
        )
    return name


def config_values(c: dict[str, Any], fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a planned configuration sets, by resolver key."""
    divisors = [int(math.prod(s[a] for s in c["strides"])) for a in range(len(c["patch_size"]))]
    dims = int(c["dims"])
    spacing = c.get("target_spacing")
    if dims == 2 and spacing and len(spacing) == 3:
        # 2D: the slice axis keeps the median spacing (nnU-Net keeps each case's own; medseg resamples volumes)
        spacing = list(spacing)
        spacing[c["slice_axis"]] = c["median_slice_spacing"]
    if spacing is not None and len(spacing) != 3:
        spacing = None  # 2D images: no resampling
    norm = c["normalization"]
    ct = len(norm) == 1 and norm[0]["scheme"] == "ct"
    if ct:
        preset = "ct_zscore"
    elif all(n["scheme"] == "zscore" and n.get("nonzero_mask") for n in norm):
        preset = "zscore_nonzero"
    else:
        preset = "zscore"
    return {
        "target_spacing": [round(float(s), 6) for s in spacing] if spacing else None,
        "patch_size": list(c["patch_size"]) if dims == 3 else None,
        "batch_size": int(c["batch_size"]),
        "slice_axis": c.get("slice_axis"),
        "pad_divisible": min(divisors) if dims == 3 else max(divisors),
        "features_per_stage": list(c["features_per_stage"]),
        "strides": [list(s) for s in c["strides"]],
        "kernel_sizes": [list(k) for k in c["kernel_sizes"]],
        "residual": c["network"] != "plain",
        "intensity_preset": preset,
        "ct_window": norm[0]["clip"] if ct else None,
        "intensity_mean": [norm[0]["mean"]] if ct else None,
        "intensity_std": [norm[0]["std"]] if ct else None,
    }


def plan_value(key: str, fallback: Any = None, *, _root_: DictConfig) -> Any:
    """The `${plan:key,fallback}` resolver (lists come back as ListConfig: OmegaConf.resolve, which
    `--cfg job --resolve` uses, cannot put a plain list into a node)."""
    value = _planned_value(key, fallback, _root_)
    return OmegaConf.create(value) if isinstance(value, (list, tuple)) else value


def _planned_value(key: str, fallback: Any, _root_: DictConfig) -> Any:
    if OmegaConf.select(_root_, "data.layout", default=None) is None:
        return fallback  # a single YAML file during composition (OmegaConf asks whether a value is None)
    if str(OmegaConf.select(_root_, "plan.name", default="none")) != "auto":
        return fallback  # model=planned_unet without a plan: the values as written
    if str(OmegaConf.select(_root_, "mode", default="train")) not in PLANNING_MODES:
        return fallback
    plan = current_plan(_root_)
    c = plan["configurations"][configuration_name(_root_, plan)]
    values = config_values(c)
    if key not in values:
        raise ConfigError(f"${{plan:{key}}}: no such planned value; choose one of {', '.join(values)}")
    value = values[key]
    if value is None:
        return fallback
    return value


def plan_summary(cfg: Any) -> str | None:
    """One line for the run header: which plan, which configuration, and its main values."""
    if str(OmegaConf.select(cfg, "plan.name", default="none")) != "auto":
        return None
    plan = current_plan(cfg)
    name = configuration_name(cfg, plan)
    c = plan["configurations"][name]
    return (
        f"plan: auto ({plan['network']}, {name}, budget {plan['memory_budget_gb']:g} GB from"
        f" {plan['memory_budget_source']}): patch {c['patch_size']}, batch {c['batch_size']},"
        f" {c['num_stages']} stages {c['features_per_stage'][0]}->{c['features_per_stage'][-1]},"
        f" spacing {c['target_spacing']}, about {c['estimated_memory_gb']:.2f} GB; command-line keys win"
    )


def _fingerprint_summary(fp: dict[str, Any]) -> dict[str, Any]:
    return {
        k: fp[k]
        for k in (
            "num_cases",
            "channel_names",
            "modality",
            "num_classes",
            "foreground_intensity",
            "median_relative_size_after_cropping",
        )
        if k in fp
    }


PLAN_BY_DEFAULT = ("msd", "totalseg")  # layouts that plan=default plans


def apply_default_plan(cfg: DictConfig, overrides: Any = None) -> str:
    """plan=default: for data=msd / totalseg lay conf/plan/auto.yaml (and conf/model/planned_unet.yaml
    unless model= was chosen) over cfg in place, keeping every key given on the command line, as
    hardware=auto does; for other layouts the run is unplanned. Returns the plan name now in effect."""
    name = str(OmegaConf.select(cfg, "plan.name", default="none"))
    if name != "default":
        return name
    if str(OmegaConf.select(cfg, "data.layout", default="")) not in PLAN_BY_DEFAULT or _chosen_experiment():
        OmegaConf.update(cfg, "plan.name", "none", merge=False)  # an experiment= recipe is its own plan
        return "none"
    from medseg.hardware import _flatten, command_line_keys
    from medseg.runtime import conf_dir

    user = command_line_keys(overrides)
    model = OmegaConf.load(conf_dir() / "model" / "planned_unet.yaml")
    # model= on the command line, or a key only the configured model has (model.channels=...), keeps that model
    own_model = "model" in user or any(k.startswith("model.") and k.split(".", 1)[1] not in model for k in user)
    if not own_model:
        kept = {k: cfg.model[k] for k in cfg.model if f"model.{k}" in user and k in model}
        with open_dict(cfg):
            cfg.model = model
            for k, v in kept.items():
                cfg.model[k] = v
    auto = OmegaConf.to_container(OmegaConf.load(conf_dir() / "plan" / "auto.yaml"), resolve=False)
    auto.pop("defaults", None)
    for key, value in _flatten(auto):
        if key not in user:
            OmegaConf.update(cfg, key, value, merge=False)
    log.info("plan=default: data=%s is planned (plan=auto); plan=none trains the configured model", cfg.data.layout)
    return "auto"


def _chosen_experiment() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return HydraConfig.get().runtime.choices.get("experiment")
    except Exception:  # noqa: BLE001 - outside a Hydra run there is no recipe
        return None
    return None


def open_dict(cfg: DictConfig) -> Any:
    from omegaconf import open_dict as _open_dict

    return _open_dict(cfg)


def plan_document(cfg: Any) -> dict[str, Any]:
    """plan.json: the plan of every configuration (what mode=plan prints), in medseg's axis order."""
    plan = current_plan(cfg)
    doc = {k: v for k, v in plan.items() if k != "configurations"}
    doc["configurations"] = {}
    for name, c in plan["configurations"].items():
        values = config_values(c)
        doc["configurations"][name] = {
            "target_spacing": c["target_spacing"],
            "patch_size": c["patch_size"],
            "batch_size": c["batch_size"],
            "strides": c["strides"],
            "kernel_sizes": c["kernel_sizes"],
            "features_per_stage": c["features_per_stage"],
            "num_stages": c["num_stages"],
            "normalization": c["normalization"],
            "slice_axis": c.get("slice_axis"),
            "estimated_memory_gb": c["estimated_memory_gb"],
            "memory_budget_gb": c["memory_budget_gb"],
            "median_shape": c["median_shape"],
            "config_keys": config_keys(values),
        }
    return doc


def config_keys(values: dict[str, Any]) -> dict[str, Any]:
    """The config keys a configuration sets under plan=auto (null: the key keeps its fallback)."""
    return {
        "data.spacing": values["target_spacing"],
        "data.patch_size": values["patch_size"],
        "data.batch_size": values["batch_size"],
        "data.slice_axis": values["slice_axis"],
        "data.pad_divisible": values["pad_divisible"],
        "data.intensity.preset": values["intensity_preset"],
        "data.intensity.ct_window": values["ct_window"],
        "data.intensity.mean": values["intensity_mean"],
        "data.intensity.std": values["intensity_std"],
        "model.features_per_stage": values["features_per_stage"],
        "model.strides": values["strides"],
        "model.kernel_sizes": values["kernel_sizes"],
        "model.residual": values["residual"],
    }


def write_plan_json(cfg: Any, path: Any) -> None:
    import json

    from medseg.io_utils import write_text

    write_text(path, json.dumps(plan_document(cfg), indent=1))
