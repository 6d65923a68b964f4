"""mode=lr_find: a learning-rate range test (Smith 2017; the fastai / Lightning LR finder).

The learning rate rises exponentially from lr_find.min_lr to lr_find.max_lr, one optimizer step per
training batch, on a freshly initialised model. An exponential moving average of the loss watches for
divergence while the sweep runs: it stops when that average exceeds lr_find.diverge_factor times its
minimum.

The suggestion is the learning rate where the loss falls fastest: the steepest negative slope, against
log10(lr), of a centred moving average of the raw loss (a tenth of the sweep wide), searched on the falling
part of the curve (up to the average's minimum). The centred average is computed after the sweep and does
not lag: the running average above (smoothing 0.98) trails the loss by about 50 steps, half a 100-step
sweep, and read on it the steepest slope lands where the raw loss already bottoms out, about 10x too
high. The slope is also steadier than fastai's "minimum / 10": when the loss flattens into a noisy floor
instead of diverging (Adam with batch norm often does), the minimum wanders along the floor by a decade
from one run to the next, while the falling part, and its steepest point, stay put.
Writes lr_find.png (with the rule marked) and lr_find.json into the run folder; no checkpoints.
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
from medseg.tasks.progress import Progress

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

    with Progress(steps, "lr_find", bool(cfg.trainer.progress_bar)) as progress:
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
            progress=progress,
        )
    write_json(out / "lr_find.json", result)
    plot_lr_find(out / "lr_find.png", result)
    suggestion = result["suggestion"]
    if suggestion is None:
        log.warning(
            "lr_find: no suggestion: the loss did not fall, or too few steps ran before it diverged; "
            "widen lr_find.min_lr..max_lr or raise lr_find.num_steps (%s)",
            out / "lr_find.png",
        )
    else:
        log.info(
            "lr_find: suggested learning rate %.2e (%s; the loss bottoms out at %.2e); use optimizer.lr=%.2e; plot %s",
            suggestion,
            RULE,
            result["loss_min_lr"],
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
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the sweep; returns lrs, raw and running-average losses, whether it diverged, the suggestion,
    the lr where the loss bottoms out, the centred average it was read from, and the rule's name."""
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
        if progress is not None:
            progress.update(lr=lr, loss=smooth)
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
        **suggest_lr(lrs, losses),
        "rule": RULE,
        "min_lr": min_lr,
        "max_lr": max_lr,
    }


RULE = "steepest descent of the loss (centred moving average)"


def loss_trend(losses: list[float], window: int | None = None) -> np.ndarray:
    """Centred moving average of the raw loss (edges padded with the end values), so it does not lag.

    The window defaults to a tenth of the sweep (odd, at least 3 steps).
    """
    y = np.asarray(losses, dtype=float)
    if window is None:
        window = max(3, len(y) // 10)
    window = min(window | 1, max(1, len(y)) | 1)  # odd
    half = window // 2
    padded = np.pad(y, half, mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def suggest_lr(lrs: list[float], losses: list[float]) -> dict[str, Any]:
    """The steepest-descent rule on the finite losses of a sweep.

    Returns {"suggestion", "loss_min_lr", "trend"}: the suggested lr, the lr where the average bottoms
    out, and the centred average. The suggestion is None when fewer than 5 steps ran or the loss never
    fell (the average's minimum is its first point).
    """
    n = 0
    while n < len(losses) and math.isfinite(losses[n]):
        n += 1
    if n < 5:
        return {"suggestion": None, "loss_min_lr": None, "trend": []}
    trend = loss_trend(losses[:n])
    low = int(np.argmin(trend))
    if low == 0:
        return {"suggestion": None, "loss_min_lr": None, "trend": trend.tolist()}
    slope = np.gradient(trend, np.log10(np.asarray(lrs[:n], dtype=float)))
    steepest = int(np.argmin(slope[: low + 1]))
    return {"suggestion": float(lrs[steepest]), "loss_min_lr": float(lrs[low]), "trend": trend.tolist()}


def plot_lr_find(path: str | Path, result: dict[str, Any]) -> Path:
    """The raw loss, its centred average, the minimum and the suggestion (marker, line and the rule as text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    lrs, trend = result["lrs"], result.get("trend") or []
    if result["losses"]:
        ax.plot(lrs, result["losses"], color="0.75", linewidth=0.8, label="loss")
    if trend:
        ax.plot(lrs[: len(trend)], trend, color="C0", label="loss, centred moving average")
    low, suggestion = result.get("loss_min_lr"), result["suggestion"]
    if low is not None and suggestion is not None:
        lr_at = np.asarray(lrs[: len(trend)])
        y_low = trend[int(np.argmin(np.abs(np.log(lr_at / low))))]
        y_sug = trend[int(np.argmin(np.abs(np.log(lr_at / suggestion))))]
        ax.plot([low], [y_low], "o", color="k", label=f"loss bottoms out at {low:.2e}")
        ax.axvline(suggestion, color="C3", linestyle="--", linewidth=1)
        ax.plot([suggestion], [y_sug], "*", color="C3", markersize=12, label=f"suggested {suggestion:.2e}")
        ax.annotate(
            f"suggested {suggestion:.2e}:\n{RULE}",
            xy=(suggestion, y_sug),
            xytext=(0.03, 0.06),
            textcoords="axes fraction",
            fontsize=8,
            color="C3",
            arrowprops={"arrowstyle": "->", "color": "C3", "linewidth": 0.8},
        )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return write_figure(path, fig)
