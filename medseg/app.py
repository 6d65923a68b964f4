"""The application: print and check the composed config, then run the chosen mode."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medseg.errors import ConfigError

log = logging.getLogger("medseg")


def _train(cfg: DictConfig) -> Any:
    from medseg.tasks.train import run_train

    return run_train(cfg)


def _evaluate(cfg: DictConfig) -> Any:
    from medseg.tasks.evaluate import run_evaluate

    return run_evaluate(cfg)


def _predict(cfg: DictConfig) -> Any:
    from medseg.tasks.predict import run_predict

    return run_predict(cfg)


def _benchmark(cfg: DictConfig) -> Any:
    from medseg.tasks.benchmark import run_benchmark

    run_benchmark(cfg)


def _lr_find(cfg: DictConfig) -> Any:
    from medseg.tasks.lr_find import run_lr_find

    return run_lr_find(cfg)


MODES: dict[str, Callable[[DictConfig], Any]] = {
    "train": _train,
    "evaluate": _evaluate,
    "predict": _predict,
    "benchmark": _benchmark,
    "lr_find": _lr_find,
}


def main(cfg: DictConfig) -> Any:
    """Run one job; returns the monitored metric for train (what a sweeper optimises)."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode!r} is not known; choose one of {', '.join(MODES)}")
    if cfg.mode in ("evaluate", "predict") and not cfg.ckpt:
        raise ConfigError(f"mode={cfg.mode} needs ckpt=path/to/checkpoints/best.pt")
    if cfg.print_config and cfg.mode == "train":
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    return MODES[cfg.mode](cfg)
