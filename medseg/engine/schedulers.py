"""Learning-rate schedule: a torch scheduler from config, an optional linear warm-up, and the cadence.

`scheduler.interval` says when the torch scheduler steps: `step` (after every optimizer step, e.g.
one-cycle) or `epoch` (after validation; ReduceLROnPlateau gets the monitored metric). Warm-up is
counted in optimizer steps and holds the torch scheduler until it ends.
Keys `T_max`, `total_steps` and `total_iters` left null are filled with the run length in the
scheduler's own unit.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from medseg.errors import ConfigError

RUN_LENGTH_KEYS = ("T_max", "total_steps", "total_iters")


class LRSchedule:
    def __init__(self, sched_cfg: Any, optimizer: torch.optim.Optimizer, steps_per_epoch: int, max_epochs: int) -> None:
        self.optimizer = optimizer
        self.interval = str(sched_cfg.get("interval", "epoch")) if sched_cfg else "epoch"
        if self.interval not in ("epoch", "step"):
            raise ConfigError(f"scheduler.interval={self.interval!r} must be 'epoch' or 'step'")
        warmup_epochs = float(sched_cfg.get("warmup_epochs", 0) or 0) if sched_cfg else 0.0
        self.warmup_steps = int(math.ceil(warmup_epochs * steps_per_epoch))
        self.warmup_start = float(sched_cfg.get("warmup_start_factor", 0.01)) if sched_cfg else 1.0
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.steps_done = 0
        self.scheduler = None
        if sched_cfg and sched_cfg.get("params"):
            length = steps_per_epoch * max_epochs if self.interval == "step" else max_epochs
            self.scheduler = _build(sched_cfg.params, optimizer, length)
        self.is_plateau = isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if self.warmup_steps > 0:
            self._set_warmup_lr(0)

    @property
    def in_warmup(self) -> bool:
        return self.steps_done < self.warmup_steps

    def _set_warmup_lr(self, step: int) -> None:
        frac = min(1.0, step / self.warmup_steps)
        factor = self.warmup_start + (1.0 - self.warmup_start) * frac
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def after_optimizer_step(self) -> None:
        self.steps_done += 1
        if self.steps_done <= self.warmup_steps:
            self._set_warmup_lr(self.steps_done)
            return
        if self.scheduler is not None and self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, metric: float | None) -> None:
        if self.scheduler is None or self.interval != "epoch" or self.in_warmup:
            return
        if self.is_plateau:
            if metric is not None and not math.isnan(metric):
                self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done, "scheduler": self.scheduler.state_dict() if self.scheduler else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def _build(params: Any, optimizer: torch.optim.Optimizer, run_length: int) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    fill = {k: run_length for k in RUN_LENGTH_KEYS if k in params and OmegaConf.select(params, k) is None}
    try:
        return instantiate(params, **fill)(optimizer)
    except (InstantiationException, TypeError, ValueError) as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"cannot build scheduler {params.get('_target_')}: {' '.join(str(cause).split())}") from exc
