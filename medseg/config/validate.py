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
            text = f"a list of {'integers' if self.integer else 'numbers'} {text}"
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


RANGES: tuple[Range, ...] = (
    Range("seed", 0, 2**32 - 1, integer=True),
    # data
    Range("data.dims", 2, 3, integer=True),
    Range("data.slice_axis", 0, 2, integer=True),
    _int("data.num_classes", 2, nullable=True),
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
    _prob("data.cache_rate"),
    *(
        _prob(f"data.augment.{p}")
        for p in ("flip_prob", "rotate90_prob", "affine_prob", "intensity_prob", "noise_prob")
    ),
    *(Range(f"data.augment.{k}", low=0, nullable=True) for k in ("rotate_range", "scale_range", "intensity_shift")),
    *(Range(f"data.augment.{k}", low=0, nullable=True) for k in ("intensity_scale", "noise_std")),
    _int("data.synthetic.num_cases", 1),
    Range("data.synthetic.shape", low=1, integer=True, each=True),
    _int("data.synthetic.num_classes", 2),
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
    # optimizer and scheduler (open groups: checked where the chosen option has the key)
    Range("optimizer.lr", low=0, low_open=True),
    Range("optimizer.weight_decay", low=0, nullable=True),
    Range("optimizer.momentum", 0, 1, nullable=True),
    Range("scheduler.warmup_epochs", low=0, nullable=True),
    Range("scheduler.warmup_start_factor", 0, 1, low_open=True, nullable=True),
    # model (open group)
    Range("model.dropout", 0, 1, high_open=True, nullable=True),
    Range("model.width", low=0, low_open=True, nullable=True),
    # predict / evaluate / benchmark / lr_find
    _prob("predict.threshold", nullable=False),
    Range("predict.overlap", 0, 1, high_open=True),
    _int("predict.batch_size", 1),
    _int("benchmark.steps", 1),
    _int("benchmark.warmup", 0),
    Range("lr_find.min_lr", low=0, low_open=True),
    Range("lr_find.max_lr", low=0, low_open=True),
    Range("lr_find.smoothing", 0, 1, high_open=True),
    Range("lr_find.diverge_factor", low=1, low_open=True),
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
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < int(folds):
        return f"data.fold={fold} must be an integer in [0, {int(folds) - 1}] (data.num_folds={folds}) or null"
    return None


def _ckpt(cfg: DictConfig) -> str | None:
    path = _select(cfg, "ckpt")
    if not path or path is _ABSENT:
        return None
    if not Path(str(path)).expanduser().is_file():
        return f"checkpoint {path} not found; check the ckpt= path"
    return None


# Checks across keys (and of the one input path every mode reads first), run after the single-key ranges.
RELATIONS: tuple[Callable[[DictConfig], str | None], ...] = (
    _ckpt,
    _fold,
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
        values = list(value) if isinstance(value, (list, tuple)) else None
        if values is not None and values and all(rule.fits(v) for v in values):
            return None
    elif rule.fits(value):
        return None
    return f"{rule.key}={_show(value)} must be {rule.allowed()}"


def _select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _num(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _show(value: Any) -> str:
    """A value as the user typed it (2.0 stays 2.0)."""
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
