"""Structured schemas for the composed config.

Registered in Hydra's ConfigStore as `medseg_schema`, the first entry of conf/config.yaml's defaults
list, so that a misspelt key (`trainer.max_epoch=3`) or a wrong type (`trainer.max_epochs=abc`)
fails at composition, before any work. Defaults and comments for users live in conf/*.yaml; the
values here are the fallbacks that make the schema complete.
Groups whose keys depend on the chosen option (model, optimizer, scheduler, logger) are open
dictionaries here; their keys are checked when the objects are built. The data group is typed per
layout: the keys every layout has are DataConfig, each layout's own keys a subclass (LAYOUT_SCHEMAS),
which its conf/data/<layout>.yaml loads first; a key of another layout is refused in one line naming
the layout that has it (other_layout_key).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class SyntheticConfig:
    num_cases: int = 12
    shape: list[int] = field(default_factory=lambda: [64, 64, 16])
    num_classes: int = 4
    seed: int = 0


@dataclass
class AugmentConfig:
    enabled: bool = True
    flip_prob: float = 0.5
    rotate90_prob: float = 0.0
    affine_prob: float = 0.0
    rotate_range: float = 0.26
    scale_range: float = 0.1
    intensity_prob: float = 0.0
    intensity_shift: float = 0.1
    intensity_scale: float = 0.1
    noise_prob: float = 0.0
    noise_std: float = 0.05
    # config group augment (conf/augment/): flips | nnunet
    name: str = "flips"
    batched: bool = False
    device: str = "auto"
    rotation_prob: float = 0.0
    rotation_deg: float | None = None
    scaling_prob: float = 0.0
    scaling: list[float] = field(default_factory=lambda: [0.7, 1.4])
    blur_prob: float = 0.0
    blur_sigma: list[float] = field(default_factory=lambda: [0.5, 1.0])
    brightness_prob: float = 0.0
    brightness: list[float] = field(default_factory=lambda: [0.75, 1.25])
    contrast_prob: float = 0.0
    contrast: list[float] = field(default_factory=lambda: [0.75, 1.25])
    lowres_prob: float = 0.0
    lowres_zoom: list[float] = field(default_factory=lambda: [0.5, 1.0])
    gamma_invert_prob: float = 0.0
    gamma_prob: float = 0.0
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.5])
    test_time_mirroring: bool = False


@dataclass
class IntensityConfig:
    preset: str = "minmax"
    ct_window: list[float] = field(default_factory=lambda: [-1000.0, 1000.0])
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class StoreConfig:
    dir: str | None = None
    image_dtype: str = "float32"
    workers: int | None = None
    fg_samples: int = 1000


@dataclass
class DataConfig:
    """The keys every data layout has (conf/data/base.yaml). A layout's own keys live in its subclass below
    and in its conf/data/<layout>.yaml, which picks its schema first in its defaults list; the defaults
    here are those YAML files' values (tests/test_config.py compares them)."""

    layout: str = MISSING
    root: str | None = None
    dims: int = 2
    slice_axis: int = 2
    num_classes: int | None = None
    class_names: list[str] | None = None
    batch_size: int = 4
    val_batch_size: int | None = None
    shuffle: bool = True
    val_percent: float = 20.0
    split_file: str | None = None
    fold: int | None = None
    num_folds: int = 5
    scale: float = 1.0
    image_size: list[int] | None = None
    spacing: list[float] | None = None
    patch_size: list[int] | None = None
    samples_per_volume: int = 2
    pos_neg_ratio: float = 1.0
    fg_oversample: float | None = None
    pad_divisible: int = 16
    context_slices: int = 0
    drop_empty_slices: bool = False
    foreground_slice_ratio: float | None = None
    cache_rate: float | None = 0.0  # None = automatic: 2D images in RAM, volumes from the store
    check: bool = True
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    store: StoreConfig = field(default_factory=StoreConfig)


@dataclass
class MsdDataConfig(DataConfig):
    layout: str = "msd"
    mask_values: list[int] | None = None
    intensity: IntensityConfig = field(default_factory=lambda: IntensityConfig(preset="zscore"))


@dataclass
class FolderDataConfig(DataConfig):
    layout: str = "folder"
    val_percent: float = 10.0
    cache_rate: float | None = None
    images_dir: str = "imgs"
    masks_dir: str = "masks"
    mask_suffix: str = ""
    colour_map: list[list[int]] | None = None
    mask_values: list[int] | None = None


@dataclass
class TotalsegDataConfig(DataConfig):
    layout: str = "totalseg"
    drop_empty_slices: bool = True
    structures: list[str] | None = None
    intensity: IntensityConfig = field(default_factory=lambda: IntensityConfig(preset="ct"))


@dataclass
class UwmgiDataConfig(DataConfig):
    layout: str = "uwmgi"
    intensity: IntensityConfig = field(default_factory=lambda: IntensityConfig(preset="zscore"))


@dataclass
class SyntheticDataConfig(DataConfig):
    layout: str = "synthetic"
    cache_rate: float = 1.0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


# data.layout -> its schema; registered as `medseg_data_<layout>` (conf/data/<layout>.yaml loads it first)
LAYOUT_SCHEMAS: dict[str, type[DataConfig]] = {
    "msd": MsdDataConfig,
    "folder": FolderDataConfig,
    "totalseg": TotalsegDataConfig,
    "uwmgi": UwmgiDataConfig,
    "synthetic": SyntheticDataConfig,
}


def data_schema(layout: str) -> type[DataConfig]:
    """The schema of one layout's data config (a ConfigError names the known layouts)."""
    if layout not in LAYOUT_SCHEMAS:
        from medseg.errors import ConfigError

        raise ConfigError(f"data.layout={layout!r} is not known; choose one of {', '.join(LAYOUT_SCHEMAS)}")
    return LAYOUT_SCHEMAS[layout]


def layout_keys(layout: str) -> set[str]:
    """The top-level data keys of one layout."""
    return {f.name for f in dataclasses.fields(data_schema(layout))}


def layouts_with_key(key: str) -> list[str]:
    """The layouts whose data config has `key` (a top-level data key)."""
    return [name for name, schema in LAYOUT_SCHEMAS.items() if key in {f.name for f in dataclasses.fields(schema)}]


def layout_value(data_cfg: Any, key: str, default: Any = None) -> Any:
    """A data key that only some layouts have (mask_values, colour_map, structures, ...): its value, or
    `default` where the layout has no such key. Code that serves every layout reads such keys here."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(data_cfg):
        return OmegaConf.select(data_cfg, key, default=default)
    return data_cfg.get(key, default) if hasattr(data_cfg, "get") else getattr(data_cfg, key, default)


def layout_of_schema(node_type: Any) -> str | None:
    """The layout whose schema `node_type` is (OmegaConf.get_type of a data config), or None."""
    return next((name for name, schema in LAYOUT_SCHEMAS.items() if schema is node_type), None)


def other_layout_key(full_key: str | None, node_type: Any) -> str | None:
    """The one line for `data.<key>` given where the chosen layout (whose schema is `node_type`) has no such
    key but another layout has; None for any other error (a typo, a key of no layout)."""
    parts = str(full_key or "").split(".")
    chosen = layout_of_schema(node_type)
    if len(parts) < 2 or parts[0] != "data" or chosen is None or parts[1] in layout_keys(chosen):
        return None
    owners = layouts_with_key(parts[1])
    if not owners:
        return None
    owned, choices = (" and ".join(f"data={o}" for o in owners), " or ".join(f"data={o}" for o in owners))
    return f"data.{parts[1]} is a key of {owned}, not of data={chosen}; leave it out, or choose {choices}"


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    patience: int = 10
    min_delta: float = 0.0
    restore_best: bool = True


@dataclass
class CheckpointConfig:
    save_last: bool = True
    save_best: bool = True
    every_n_epochs: int = 0
    keep_last: int = 3


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    accumulate_grad_batches: int = 1
    precision: str = "32"
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    resume: bool = False
    monitor: str = "val/dice"
    monitor_mode: str = "max"
    val_every_n_epochs: int = 1
    log_every_n_steps: int = 10
    log_images_every_n_epochs: int = 5
    log_images_count: int = 4
    log_histograms_every_n_epochs: int = 0
    limit_train_batches: int | None = None
    limit_val_batches: int | None = None
    max_nonfinite_steps: int = 5
    oom_recovery: bool = True
    deterministic: bool = False
    progress_bar: bool = True
    strategy: str = "auto"
    loss: Any = None
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


@dataclass
class HardwareConfig:
    name: str = "cpu"
    device: str = "auto"
    memory_gb: float | None = None
    num_workers: int = 0
    num_threads: int | None = None  # PyTorch threads; null = usable CPUs minus loader workers and busy CPUs
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    cudnn_benchmark: bool = False
    matmul_precision: str = "highest"
    channels_last: bool = False
    compile: bool = False
    find_batch_size: bool = False
    max_batch_size: int = 64
    model_width: float = 1.0
    grad_checkpointing: bool = False
    bilinear_upsampling: bool = False


@dataclass
class PathsConfig:
    cache_dir: str = "~/.cache/medseg"
    output_dir: str | None = None


@dataclass
class PredictConfig:
    input: str | None = None
    output_dir: str | None = None
    threshold: float = 0.5
    viz: bool = False
    save: bool = True
    tta: bool | None = None
    overlap: float = 0.25
    batch_size: int = 4
    output_format: str = "nifti"


@dataclass
class ExportConfig:
    output_dir: str | None = None
    opset: int = 17
    modalities: list[str] | None = None


@dataclass
class EvaluateConfig:
    input: str | None = None
    hd95: bool = True


@dataclass
class BenchmarkConfig:
    steps: int = 20
    warmup: int = 5


@dataclass
class LRFindConfig:
    min_lr: float = 1e-7
    max_lr: float = 1.0
    num_steps: int = 100
    smoothing: float = 0.98
    diverge_factor: float = 4.0


@dataclass
class ReportConfig:
    enabled: bool = True
    path: str | None = None
    output: str | None = None
    overlay_cases: int = 16
    overlay_slices: int = 3
    top_trials: int = 5


@dataclass
class PlanConfig:
    name: str = "none"
    network: str = "plain"
    configuration: str | None = None
    memory_gb: float | None = None


@dataclass
class CrossvalConfig:
    after_folds: bool = False
    oof: bool = True
    runs: list[str] = field(default_factory=list)
    hd95: bool = True
    max_ensemble: int = 3
    slab_slices: int = 8


@dataclass
class MedsegConfig:
    mode: str = "train"
    seed: int = 42
    ckpt: str | None = None
    task_name: str = "train"
    tags: list[str] = field(default_factory=list)
    print_config: bool = False
    model: Any = None
    data: Any = None  # one layout's schema (LAYOUT_SCHEMAS), chosen by the data group
    optimizer: Any = None
    scheduler: Any = None
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    logger: dict[str, Any] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    lr_find: LRFindConfig = field(default_factory=LRFindConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    crossval: CrossvalConfig = field(default_factory=CrossvalConfig)
