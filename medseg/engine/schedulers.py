"""Learning-rate schedule: a torch scheduler from config, an optional linear warm-up, and the cadence.

`scheduler.interval` says when the torch scheduler steps: `step` (after every optimizer step, e.g.
one-cycle) or `epoch` (after validation; ReduceLROnPlateau gets the monitored metric). Warm-up is
counted in optimizer steps and holds the torch scheduler until it ends; an epoch-interval scheduler
starts after the last epoch that had warm-up steps.
Keys `T_max`, `total_steps` and `total_iters` left null are filled with the run length after warm-up
in the scheduler's own unit, so cosine reaches eta_min at the last step.
Warm-up rises linearly to the learning rate the scheduler starts from (for one-cycle its
max_lr / div_factor), so there is no jump when the scheduler takes over.
Steps the fp16 GradScaler skips are not counted: the trainer calls after_optimizer_step only for
steps taken.
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
        # epochs that contain warm-up steps: an epoch-interval scheduler starts after them
        self.warmup_whole_epochs = math.ceil(self.warmup_steps / max(1, steps_per_epoch))
        self.warmup_start = float(sched_cfg.get("warmup_start_factor", 0.01)) if sched_cfg else 1.0
        self.steps_done = 0
        self.epochs_done = 0
        self.scheduler = None
        if sched_cfg and sched_cfg.get("params"):
            if self.interval == "step":
                length = steps_per_epoch * max_epochs - self.warmup_steps
            else:
                length = max_epochs - self.warmup_whole_epochs
            self.scheduler = _build(sched_cfg.params, optimizer, max(1, length))
        self.is_plateau = isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]  # where the scheduler starts: warm-up's target
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
        self.epochs_done += 1
        if self.scheduler is None or self.interval != "epoch" or self.epochs_done <= self.warmup_whole_epochs:
            return
        if self.is_plateau:
            if metric is not None and not math.isnan(metric):
                self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "epochs_done": self.epochs_done,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.epochs_done = int(state.get("epochs_done", 0))
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
