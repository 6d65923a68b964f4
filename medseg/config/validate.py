"""Check every numeric setting against its range before any work (before data is read or the config
tree is printed). A bad value raises ConfigError with one line naming the key and the allowed range.

The schema (medseg/config/schema.py) already refuses unknown keys and wrong types at composition;
this module checks the values. Keys of open groups (optimizer, scheduler, model) are checked when
present; a key that is absent or null where null is allowed passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from medseg.errors import ConfigError

_ABSENT = object()


@dataclass(frozen=True)
class Range:
    """`key` must be a number (or a list of numbers, with `each`) within low..high."""

    key: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is not allowed
    high_open: bool = False
    integer: bool = False
    nullable: bool = False  # null (or an absent key) allowed
    each: bool = False  # a list whose every entry is checked
    max_len: int | None = None  # with each: at most this many entries
    scalar: bool = False  # with each: a single number is allowed too (num_heads: 12 or [3, 6, 12, 24])

    def allowed(self) -> str:
        """The allowed values in words: `in (0, 1]`, `an integer >= 1`, `a list of integers >= 1 or null`."""
        if self.low is not None and self.high is not None:
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"in {lo}{_num(self.low)}, {_num(self.high)}{hi}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        else:
            text = f"{'<' if self.high_open else '<='} {_num(self.high)}"
        if self.each:
            most = f"at most {self.max_len} " if self.max_len else ""
            kind = "integers" if self.integer else "numbers"
            one = f"{'an integer' if self.integer else 'a number'} or " if self.scalar else ""
            text = f"{one}a list of {most}{kind} {text}"
        elif self.integer:
            text = f"an integer {text}"
        return text + (" or null" if self.nullable else "")

    def fits(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or (self.integer and value != int(value)):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True


def _int(key: str, low: int, nullable: bool = False) -> Range:
    return Range(key, low=low, integer=True, nullable=nullable)


def _prob(key: str, nullable: bool = True) -> Range:
    return Range(key, 0.0, 1.0, nullable=nullable)


def _sizes(key: str, high: int, low: int = 1, levels: int = 16) -> Range:
    """Network sizes per level or stage (features, blocks, heads): bounded, so no config (typed or read from a
    checkpoint) can ask for gigabytes of weights or thousands of layers."""
    return Range(key, low, high, integer=True, nullable=True, each=True, max_len=levels, scalar=True)


# Upper bounds of network sizes: far above any published segmentation network (nnU-Net tops out at
# 320-512 features per level, ViT-L at 1024 wide / 4096 MLP, MiT-B5 at 40 blocks in a stage).
MAX_FEATURES = 4096
MAX_BLOCKS = 64
MAX_HEADS = 128
MAX_CLASSES = 1024
MAX_CHANNELS = 1024


RANGES: tuple[Range, ...] = (
    Range("seed", 0, 2**32 - 1, integer=True),
    # data
    Range("data.dims", 2, 3, integer=True),
    Range("data.slice_axis", 0, 2, integer=True),
    Range("data.num_classes", 2, MAX_CLASSES, integer=True, nullable=True),
    _int("data.batch_size", 1),
    _int("data.val_batch_size", 1, nullable=True),
    Range("data.val_percent", 0, 100, low_open=True, high_open=True),
    _int("data.num_folds", 2),
    Range("data.scale", 0, 1, low_open=True),
    Range("data.image_size", low=1, integer=True, nullable=True, each=True),
    Range("data.spacing", low=0, low_open=True, nullable=True, each=True),
    Range("data.patch_size", low=1, integer=True, nullable=True, each=True),
    _int("data.samples_per_volume", 1),
    Range("data.pos_neg_ratio", low=0),
    _int("data.pad_divisible", 1),
    _int("data.context_slices", 0, nullable=True),
    _prob("data.foreground_slice_ratio"),
    Range("data.intensity.ct_window", -1e5, 1e5, each=True, max_len=2),
    Range("data.intensity.percentiles", 0, 100, each=True, max_len=2),
    Range("data.intensity.mean", -1e6, 1e6, each=True, max_len=MAX_CHANNELS),
    Range("data.intensity.std", 0, 1e6, low_open=True, each=True, max_len=MAX_CHANNELS),
    Range("data.mask_values", 0, 65535, integer=True, nullable=True, each=True, max_len=MAX_CLASSES),
    _prob("data.cache_rate"),
    *(
        _prob(f"data.augment.{p}")
        for p in ("flip_prob", "rotate90_prob", "affine_prob", "intensity_prob", "noise_prob")
    ),
    *(Range(f"data.augment.{k}", low=0, nullable=True) for k in ("rotate_range", "scale_range", "intensity_shift")),
    *(Range(f"data.augment.{k}", low=0, nullable=True) for k in ("intensity_scale", "noise_std")),
    # recipe: nnU-Net's augmentation keys and foreground oversampling (conf/augment/, conf/recipe/)
    _prob("data.fg_oversample"),
    *(
        _prob(f"data.augment.{p}")
        for p in ("rotation_prob", "scaling_prob", "blur_prob", "brightness_prob", "contrast_prob", "lowres_prob")
    ),
    *(_prob(f"data.augment.{p}") for p in ("gamma_invert_prob", "gamma_prob")),
    Range("data.augment.rotation_deg", 0, 180, nullable=True),
    Range("data.augment.scaling", 0, 10, low_open=True, each=True, max_len=2),
    Range("data.augment.blur_sigma", 0, 10, low_open=True, each=True, max_len=2),
    *(Range(f"data.augment.{k}", 0, 10, each=True, max_len=2) for k in ("brightness", "contrast", "gamma")),
    Range("data.augment.lowres_zoom", 0, 1, low_open=True, each=True, max_len=2),
    Range("data.synthetic.num_cases", 1, 10_000, integer=True),
    Range("data.synthetic.shape", 1, 1024, integer=True, each=True, max_len=3),
    Range("data.synthetic.num_classes", 2, 64, integer=True),
    Range("data.synthetic.seed", 0, 2**32 - 1, integer=True),
    # trainer
    _int("trainer.max_epochs", 1),
    _int("trainer.accumulate_grad_batches", 1),
    Range("trainer.gradient_clip_val", low=0, low_open=True, nullable=True),
    _int("trainer.val_every_n_epochs", 1),
    _int("trainer.log_every_n_steps", 1),
    _int("trainer.log_images_every_n_epochs", 0),
    _int("trainer.log_images_count", 0),
    _int("trainer.log_histograms_every_n_epochs", 0),
    _int("trainer.limit_train_batches", 1, nullable=True),
    _int("trainer.limit_val_batches", 1, nullable=True),
    _int("trainer.max_nonfinite_steps", 1),
    _int("trainer.early_stopping.patience", 1),
    Range("trainer.early_stopping.min_delta", low=0),
    _int("trainer.checkpoint.every_n_epochs", 0),
    _int("trainer.checkpoint.keep_last", 0),
    # hardware
    _int("hardware.num_workers", 0),
    _int("hardware.prefetch_factor", 1, nullable=True),
    _int("hardware.max_batch_size", 1),
    Range("hardware.model_width", low=0, low_open=True),
    Range("hardware.memory_gb", low=0, low_open=True, nullable=True),
    Range("plan.memory_gb", low=0, low_open=True, nullable=True),
    # optimizer and scheduler (open groups: checked where the chosen option has the key)
    Range("optimizer.lr", low=0, low_open=True),
    Range("optimizer.weight_decay", low=0, nullable=True),
    Range("optimizer.momentum", 0, 1, nullable=True),
    Range("scheduler.warmup_epochs", low=0, nullable=True),
    Range("scheduler.warmup_start_factor", 0, 1, low_open=True, nullable=True),
    # model (open group: checked where the chosen network has the key); in/out channels come from the data
    Range("model.in_channels", 1, MAX_CHANNELS, integer=True),
    Range("model.out_channels", 1, MAX_CLASSES, integer=True),
    Range("model.dropout", 0, 1, high_open=True, nullable=True),
    Range("model.drop_path", 0, 1, high_open=True, nullable=True),
    Range("model.width", 0, 16, low_open=True, nullable=True),
    *(
        _sizes(f"model.{k}", MAX_FEATURES)
        for k in ("channels", "filters", "features", "hidden_sizes", "init_filters", "feature_size")
    ),
    *(_sizes(f"model.{k}", 4 * MAX_FEATURES) for k in ("hidden_size", "mlp_dim", "decoder_hidden_size")),
    *(_sizes(f"model.{k}", MAX_BLOCKS, low=0) for k in ("depths", "blocks_down", "blocks_up")),
    *(_sizes(f"model.{k}", MAX_HEADS) for k in ("num_heads", "num_attention_heads")),
    _sizes("model.sr_ratios", 64),
    _sizes("model.kernel_size", 15),
    _sizes("model.window_size", 64),
    _sizes("model.img_size", 4096, levels=3),
    Range("model.deep_supr_num", 0, 16, integer=True, nullable=True),
    Range("model.features_per_stage", 1, 4096, integer=True, nullable=True, each=True, max_len=16),  # planned U-Net
    # predict / evaluate / benchmark / lr_find
    _prob("predict.threshold", nullable=False),
    Range("predict.overlap", 0, 1, high_open=True),
    _int("predict.batch_size", 1),
    Range("export.opset", 13, 21, integer=True),
    _int("benchmark.steps", 1),
    _int("benchmark.warmup", 0),
    Range("lr_find.min_lr", low=0, low_open=True),
    Range("lr_find.max_lr", low=0, low_open=True),
    Range("lr_find.smoothing", 0, 1, high_open=True),
    Range("lr_find.diverge_factor", low=1, low_open=True),
    Range("crossval.max_ensemble", 2, 16, integer=True),
    _int("crossval.slab_slices", 1),
)


def _both(cfg: DictConfig, low_key: str, high_key: str) -> str | None:
    low, high = _select(cfg, low_key), _select(cfg, high_key)
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and not low < high:
        return f"{low_key}={_show(low)} must be below {high_key}={_show(high)}"
    return None


def _fold(cfg: DictConfig) -> str | None:
    fold, folds = _select(cfg, "data.fold"), _select(cfg, "data.num_folds")
    if fold is None or fold is _ABSENT:
        return None
    if not isinstance(folds, int) or isinstance(folds, bool):
        return f"data.fold={fold} needs data.num_folds"
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < int(folds):
        return f"data.fold={fold} must be an integer in [0, {int(folds) - 1}] (data.num_folds={folds}) or null"
    return None


def _ckpt(cfg: DictConfig) -> str | None:
    path = _select(cfg, "ckpt")
    if not path or path is _ABSENT:
        return None
    found = Path(str(path)).expanduser()
    if not (found.is_file() or (found / "crossval.json").is_file() or (found / "manifest.json").is_file()):
        # a file, a crossval folder (it stands for its ensemble) or an export folder
        return f"checkpoint {path} not found; check the ckpt= path"
    return None


def _colour_map(cfg: DictConfig) -> str | None:
    table = _select(cfg, "data.colour_map")
    if table is None or table is _ABSENT:
        return None
    ok = isinstance(table, list) and 0 < len(table) <= 1024
    if ok and all(isinstance(c, list) and len(c) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in c) for c in table):
        return None
    return f"data.colour_map={_show(table)[:80]} must be a list of [r, g, b] colours (integers 0..255), one per class"


def _layout(cfg: DictConfig) -> str | None:
    """A composed run's data config is one layout's (data=<layout>), and data.layout names that layout."""
    data = OmegaConf.select(cfg, "data", default=None)
    if not isinstance(data, DictConfig) or "mode" not in cfg:  # a part of a config (a checkpoint's values)
        return None
    from medseg.config.schema import LAYOUT_SCHEMAS, layout_of_schema

    chosen, layout = layout_of_schema(OmegaConf.get_type(data)), data.get("layout")
    choices = "|".join(LAYOUT_SCHEMAS)
    if chosen is None:
        return f"data=base is not a layout (it holds the keys every layout shares); choose data={choices}"
    if layout != chosen:
        return f"data.layout={layout} does not match data={chosen}; choose the layout with data=<{choices}>"
    return None


# Checks across keys (and of the one input path every mode reads first), run after the single-key ranges.
RELATIONS: tuple[Callable[[DictConfig], str | None], ...] = (
    _ckpt,
    _layout,
    _fold,
    _colour_map,
    lambda cfg: _both(cfg, "lr_find.min_lr", "lr_find.max_lr"),
)


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first setting outside its range (in the order of RANGES)."""
    for rule in RANGES:
        problem = _check(cfg, rule)
        if problem:
            raise ConfigError(problem)
    for relation in RELATIONS:
        problem = relation(cfg)
        if problem:
            raise ConfigError(problem)


def _check(cfg: DictConfig, rule: Range) -> str | None:
    value = _select(cfg, rule.key)
    if value is _ABSENT or value is None:
        if rule.nullable or value is _ABSENT:
            return None
        return f"{rule.key}=null must be {rule.allowed()}"
    if rule.each:
        values = list(value) if isinstance(value, (list, tuple)) else [value] if rule.scalar else None
        too_long = values is not None and rule.max_len is not None and len(values) > rule.max_len
        if values and not too_long and all(rule.fits(v) for v in values):
            return None
    elif rule.fits(value):
        return None
    return f"{rule.key}={_show(value)} must be {rule.allowed()}"


def _select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _num(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _show(value: Any) -> str:
    """A value as the user typed it (2.0 stays 2.0)."""
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
