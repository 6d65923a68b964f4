"""mode=lr_find: a learning-rate range test (Smith 2017; the fastai / Lightning LR finder).

The learning rate rises exponentially from lr_find.min_lr to lr_find.max_lr, one optimizer step per
training batch, on a freshly initialised model. The loss is smoothed exponentially; the sweep stops
when the smoothed loss exceeds lr_find.diverge_factor times its minimum. The suggestion is the
learning rate where the smoothed loss falls fastest (steepest negative slope against log10 lr).
Writes lr_find.png and lr_find.json into the run folder; nothing else (no checkpoints).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from medseg.engine.plain_step import plain_train_step
from medseg.errors import ConfigError
from medseg.io_utils import write_figure, write_json

log = logging.getLogger(__name__)


def run_lr_find(cfg: DictConfig) -> float | None:
    from medseg.data.datamodule import build_data
    from medseg.hardware import resolve_auto_hardware
    from medseg.models.factory import build_model, describe_model
    from medseg.precision import resolve_precision
    from medseg.runtime import apply_backend_flags, run_dir, seed_everything, select_device
    from medseg.tasks.build import build_optimizer, build_train_loss

    lcfg = cfg.lr_find
    min_lr, max_lr, steps = float(lcfg.min_lr), float(lcfg.max_lr), int(lcfg.num_steps)
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"lr_find.min_lr={min_lr} and lr_find.max_lr={max_lr}: need 0 < min_lr < max_lr")
    if steps < 5:
        raise ConfigError(f"lr_find.num_steps={steps}: use at least 5 (100 is typical)")
    out = run_dir(cfg)
    seed_everything(int(cfg.seed))
    resolve_auto_hardware(cfg)
    device = select_device(cfg.hardware.device)
    apply_backend_flags(cfg.hardware, bool(cfg.trainer.deterministic))
    data = build_data(cfg)
    seed_everything(int(cfg.seed))
    model = build_model(cfg.model, data.info.in_channels, data.info.num_classes, data.info.dims)
    describe_model(model, cfg.model)
    model.to(device)
    loss_fn = build_train_loss(cfg.trainer.loss, model)
    optimizer = build_optimizer(cfg.optimizer, model)
    precision = resolve_precision(cfg.trainer.precision, device)

    result = lr_range_test(
        model,
        loss_fn,
        optimizer,
        _batches(data.train_loader),
        device=device,
        precision=precision,
        min_lr=min_lr,
        max_lr=max_lr,
        num_steps=steps,
        smoothing=float(lcfg.smoothing),
        diverge_factor=float(lcfg.diverge_factor),
    )
    write_json(out / "lr_find.json", result)
    plot_lr_find(out / "lr_find.png", result)
    suggestion = result["suggestion"]
    if suggestion is None:
        log.warning("lr_find: too few steps before divergence for a suggestion; lower lr_find.min_lr (%s)", out)
    else:
        log.info(
            "lr_find: suggested learning rate %.2e (steepest descent of the smoothed loss); "
            "use optimizer.lr=%.2e; plot %s",
            suggestion,
            suggestion,
            out / "lr_find.png",
        )
    return suggestion


def _batches(loader: Any) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches, cycling through the loader as often as the sweep needs."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return


def lr_range_test(
    model: torch.nn.Module,
    loss_fn: Any,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[dict[str, torch.Tensor]],
    *,
    device: torch.device,
    precision: Any,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
) -> dict[str, Any]:
    """Run the sweep; returns lrs, raw and smoothed losses, whether it diverged, and the suggestion."""
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
    ratio = max_lr / min_lr
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best, diverged = 0.0, math.inf, False
    model.train()
    for step in range(num_steps):
        lr = min_lr * ratio ** (step / (num_steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = next(batches, None)
        if batch is None:
            break
        images, labels = batch["image"].to(device), batch["label"].to(device)
        loss = plain_train_step(model, loss_fn, optimizer, scaler, precision, device, images, labels)
        value = float(loss)  # read every step: the sweep stops as soon as the loss diverges
        lrs.append(lr)
        losses.append(value)
        if not math.isfinite(value):
            diverged = True
            break
        avg = smoothing * avg + (1 - smoothing) * value
        smooth = avg / (1 - smoothing ** (step + 1))  # bias correction for the first steps
        smoothed.append(smooth)
        best = min(best, smooth)
        if smooth > diverge_factor * best:
            diverged = True
            break
    return {
        "lrs": lrs,
        "losses": losses,
        "smoothed": smoothed,
        "diverged": diverged,
        "steps": len(lrs),
        "suggestion": suggest_lr(lrs[: len(smoothed)], smoothed),
        "min_lr": min_lr,
        "max_lr": max_lr,
    }


def suggest_lr(lrs: list[float], smoothed: list[float], skip_start: float = 0.1, skip_end: int = 1) -> float | None:
    """The lr at the steepest descent of the smoothed loss against log10(lr).

    The first `skip_start` share of points (the smoothing warms up there) and the last `skip_end`
    points (divergence) are left out. None when fewer than 3 points remain.
    """
    start = int(len(lrs) * skip_start)
    end = len(lrs) - skip_end
    if end - start < 3:
        return None
    x = np.log10(np.asarray(lrs[start:end], dtype=float))
    y = np.asarray(smoothed[start:end], dtype=float)
    slope = np.gradient(y, x)
    return float(lrs[start + int(np.argmin(slope))])


def plot_lr_find(path: str | Path, result: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    n = len(result["smoothed"])
    if result["losses"]:
        ax.plot(result["lrs"], result["losses"], color="0.75", linewidth=0.8, label="loss")
    if n:
        ax.plot(result["lrs"][:n], result["smoothed"], color="C0", label="smoothed loss")
    if result["suggestion"] is not None:
        ax.axvline(result["suggestion"], color="C3", linestyle="--", label=f"suggested {result['suggestion']:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend()
    fig.tight_layout()
    return write_figure(path, fig)
