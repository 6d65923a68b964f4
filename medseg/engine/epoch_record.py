"""One epoch's record (a history.json row and the trackers' metrics) and the console lines about it."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from medseg.engine.metrics import ConfusionCounter, foreground_mean, nan_to_none, ranked_classes

log = logging.getLogger("medseg.engine.trainer")  # the loop's own lines: one logger name for the console


def epoch_record(
    *,
    epoch: int,
    step: int,
    lr: float,
    train: dict[str, Any],
    val: dict[str, Any],
    seconds: float,
    micro_batch: int,
    accumulate: int,
    device: torch.device,
    class_names: list[str],
) -> dict[str, Any]:
    """The epoch's metrics from train_epoch's and validate's results (`val` empty when validation did not run)."""
    record: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "lr": lr,
        "train/loss": train["loss"],
        "train/dice": nan_to_none(train["dice"]),
        "train/iou": nan_to_none(train["iou"]),
        "train/grad_norm": train["grad_norm"],
        "train/samples_per_s": train["samples_per_s"],
        "time/epoch_s": seconds,
        "micro_batch": micro_batch,
        "accumulate": accumulate,
    }
    if device.type == "cuda":
        gib = 2**30
        record["gpu/mem_allocated_gb"] = torch.cuda.memory_allocated(device) / gib
        record["gpu/mem_reserved_gb"] = torch.cuda.memory_reserved(device) / gib
        record["gpu/max_mem_allocated_gb"] = torch.cuda.max_memory_allocated(device) / gib
    if val:
        record.update(
            {
                "val/loss": val["loss"],
                "val/dice": nan_to_none(val["dice"]),  # mean over cases of per-case Dice, as mode=evaluate
                "val/iou": nan_to_none(val["iou"]),
                "val/dice_pooled": nan_to_none(val["dice_pooled"]),  # counts pooled over all voxels
                "val/iou_pooled": nan_to_none(val["iou_pooled"]),
                "val/cases": val["cases"],
            }
        )
        per_class = zip(class_names, val["dice_per_class"], val["iou_per_class"], val["dice_pooled_per_class"])
        for name, d, j, pooled in per_class:
            record[f"val/dice/{name}"] = nan_to_none(d)
            record[f"val/iou/{name}"] = nan_to_none(j)
            record[f"val/dice_pooled/{name}"] = nan_to_none(pooled)
        record["gap/loss"] = val["loss"] - train["loss"]
        if record["train/dice"] is not None and record["val/dice"] is not None:
            record["gap/dice"] = record["train/dice"] - record["val/dice"]
        # relative generalisation gap of the loss: 0 = none, 0.5 = val loss 50% above train loss
        record["overfit/score"] = (val["loss"] - train["loss"]) / max(train["loss"], 1e-8)
        ranked = ranked_classes(val["dice_per_class"], class_names)
        record["val/top5"], record["val/bottom5"] = ranked["top"], ranked["bottom"]
    return record


def is_better(value: float | None, best: float | None, mode: str) -> bool:
    """Whether the monitored `value` improves on `best` (mode max or min); None and NaN never do."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def log_epoch(r: dict[str, Any], max_epochs: int) -> None:
    val = f" val/loss {r['val/loss']:.4f} val/dice {fmt(r['val/dice'])}" if "val/loss" in r else ""
    log.info(
        "epoch %d/%d: train/loss %.4f train/dice %s%s lr %.2e grad_norm %.3g %.1f samples/s (%.1fs)",
        r["epoch"],
        max_epochs,
        r["train/loss"],
        fmt(r["train/dice"]),
        val,
        r["lr"],
        r["train/grad_norm"],
        r["train/samples_per_s"],
        r["time/epoch_s"],
    )
    # printed only when no class is in both lists: with fewer than 10 foreground classes they repeat
    top, bottom = r.get("val/top5") or [], r.get("val/bottom5") or []
    if bottom and not {n for n, _ in top} & {n for n, _ in bottom}:
        log.info("  top classes: %s | bottom: %s", _pairs(r["val/top5"]), _pairs(r["val/bottom5"]))


def batch_metrics(
    loss: torch.Tensor,
    lr: float,
    grad_norm: torch.Tensor | None,
    last_batch: tuple[torch.Tensor, torch.Tensor] | None,
    num_classes: int,
) -> dict[str, float | None]:
    """The metrics of a logging step: the batch's loss, learning rate, Dice and gradient norm."""
    metrics: dict[str, float | None] = {"batch/loss": float(loss), "batch/lr": lr}
    if last_batch is not None:
        counter = ConfusionCounter(num_classes, last_batch[0].device)
        counter.update(*last_batch)
        metrics["batch/dice"] = nan_to_none(foreground_mean(counter.scores()["dice"]))
    if grad_norm is not None:
        metrics["batch/grad_norm"] = float(grad_norm)
    return metrics


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _pairs(pairs: list[list[Any]]) -> str:
    return ", ".join(f"{n} {v:.3f}" for n, v in pairs)
