"""mode=lr_find: a learning-rate range test (Smith 2017; the fastai / Lightning LR finder).

The learning rate rises exponentially from lr_find.min_lr to lr_find.max_lr, one optimizer step per
step of training (trainer.accumulate_grad_batches micro-batches each, so the sweep sees the gradient noise
of the effective batch), on a freshly initialised model. An exponential moving average of the loss watches
for divergence while the sweep runs: it stops when that average exceeds lr_find.diverge_factor times its
minimum.

The suggestion is fastai's classic "minimum / 10", with the minimum read where the loss reaches its floor:
the first learning rate at which a centred moving average of the raw loss (a tenth of the sweep wide; it
does not lag) comes within 10 % of its whole fall from its lowest value. Reading the floor's start rather
than its lowest point matters because the loss often flattens into a noisy floor instead of diverging
(Adam with batch norm): the lowest point then wanders along the floor by a decade from one sweep to the
next, while the floor's start stays put. The steepest descent of the loss, another common rule, sits on
the straight part of the fall, where the slope is flat to within noise, and landed 3x to 7x above the best
rate on the demo data (docs/lr_find.md has the measurements).
Writes lr_find.png (with the rule drawn) and lr_find.json into the run folder; no checkpoints.
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
from medseg.progress import Progress

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
            accumulate=int(cfg.trainer.accumulate_grad_batches),
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
            "lr_find: suggested learning rate %.2e (%s, %.2e); use optimizer.lr=%.2e; plot %s",
            suggestion,
            RULE,
            result["floor_lr"],
            suggestion,
            out / "lr_find.png",
        )
        if result["still_falling"] and result["diverged"]:
            log.warning(
                "lr_find: the loss broke off at lr %.2e while still falling, so no floor was seen and the "
                "suggestion may be off; rerun with a lower lr_find.max_lr or more lr_find.num_steps",
                result["lrs"][-1],
            )
        elif result["still_falling"]:
            log.warning(
                "lr_find: the loss was still falling at lr_find.max_lr=%.2e, so its floor may lie higher and the "
                "suggestion may be low; raise lr_find.max_lr",
                max_lr,
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
    accumulate: int = 1,
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
        micro = [next(batches, None) for _ in range(accumulate)]
        if micro[-1] is None:
            break
        pairs = [(b["image"].to(device), b["label"].to(device)) for b in micro]
        loss = plain_train_step(model, loss_fn, optimizer, scaler, precision, device, pairs)
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


RULE = "a tenth of the learning rate where the loss reaches its floor"
FLOOR_SHARE = 0.1  # the floor begins where the loss is within this share of its whole fall from its lowest value


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
    """The floor rule on the finite losses of a sweep.

    Returns {"suggestion", "floor_lr", "loss_min_lr", "floor_band", "still_falling", "trend"}: the
    suggested lr, the lr where the average reaches its floor (its first point within FLOOR_SHARE of its
    whole fall from its minimum), the lr of that minimum, the floor's loss range, whether the minimum lies
    in the sweep's last 5 % (no floor seen before the sweep ended), and the centred average. The
    suggestion is None when fewer than 5 steps ran or the loss never fell.
    """
    n = 0
    while n < len(losses) and math.isfinite(losses[n]):
        n += 1
    none = {"suggestion": None, "floor_lr": None, "loss_min_lr": None, "floor_band": None, "still_falling": False}
    if n < 5:
        return {**none, "trend": []}
    trend = loss_trend(losses[:n])
    low = int(np.argmin(trend))
    fall = float(np.max(trend[: low + 1]) - trend[low])
    if low == 0 or fall <= 0:
        return {**none, "trend": trend.tolist()}
    floor = int(np.argmax(trend[: low + 1] <= trend[low] + FLOOR_SHARE * fall))
    return {
        "suggestion": float(lrs[floor]) / 10,
        "floor_lr": float(lrs[floor]),
        "loss_min_lr": float(lrs[low]),
        "floor_band": [float(trend[low]), float(trend[low] + FLOOR_SHARE * fall)],
        "still_falling": low >= n - max(1, n // 20),  # lowest in the last 5 % of the sweep
        "trend": trend.tolist(),
    }


def plot_lr_find(path: str | Path, result: dict[str, Any]) -> Path:
    """The raw loss, its centred average, the floor band, where the floor begins, and the suggestion a
    decade below it, with the rule written on the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    lrs, trend = result["lrs"], result.get("trend") or []
    if result["losses"]:
        ax.plot(lrs, result["losses"], color="0.75", linewidth=0.8, label="loss")
    if trend:
        ax.plot(lrs[: len(trend)], trend, color="C0", label="loss, centred moving average")
    floor_lr, suggestion = result.get("floor_lr"), result["suggestion"]
    if floor_lr is not None and suggestion is not None:
        at = np.asarray(lrs[: len(trend)])
        ax.axhspan(*result["floor_band"], color="C2", alpha=0.15, label=f"floor: within {FLOOR_SHARE:.0%} of the fall")
        y_floor = trend[int(np.argmin(np.abs(np.log(at / floor_lr))))]
        y_sug = trend[int(np.argmin(np.abs(np.log(at / suggestion))))]
        ax.plot([floor_lr], [y_floor], "o", color="C2", label=f"floor begins at {floor_lr:.2e}")
        ax.annotate(
            "",
            xy=(suggestion, y_floor),
            xytext=(floor_lr, y_floor),
            arrowprops={"arrowstyle": "->", "color": "C3", "linewidth": 1},
        )
        ax.text((suggestion * floor_lr) ** 0.5, y_floor, "÷ 10", color="C3", ha="center", va="bottom", fontsize=9)
        ax.axvline(suggestion, color="C3", linestyle="--", linewidth=1)
        ax.plot([suggestion], [y_sug], "*", color="C3", markersize=12, label=f"suggested {suggestion:.2e}")
        ax.text(
            0.03,
            0.06,
            f"suggested {suggestion:.2e}:\n{RULE}",
            transform=ax.transAxes,
            fontsize=8,
            color="C3",
        )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return write_figure(path, fig)
