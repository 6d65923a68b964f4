"""mode=benchmark: time training and inference steps of the configured model, data and hardware.

After `benchmark.warmup` steps, `benchmark.steps` training steps (forward, backward, optimizer step)
and as many inference steps are timed on real batches of the configured data, plus the loader alone.
Prints samples/s, ms/step and peak memory (CUDA max allocated, or the process's peak RSS on CPU) and
writes the same to benchmark.json in the run folder. Progress shows as training's does (a bar on a
terminal, a log line every tenth of each phase otherwise).
"""

from __future__ import annotations

import itertools
import logging
import resource
import sys
import time
from typing import Any

import torch
from omegaconf import DictConfig

from medseg.data.datamodule import build_data
from medseg.engine.plain_step import plain_train_step
from medseg.hardware import resolve_auto_hardware
from medseg.io_utils import write_json
from medseg.models.factory import build_model, describe_model
from medseg.models.input_size import fill_input_size
from medseg.precision import resolve_precision
from medseg.progress import Progress
from medseg.runtime import apply_backend_flags, run_dir, seed_everything, select_device
from medseg.tasks.build import build_loss, build_optimizer

log = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _batches(loader: Any, n: int, bar: bool = True) -> list[dict[str, torch.Tensor]]:
    """n batches, cycling through the loader when it is shorter."""
    batches = []
    with Progress(n, "benchmark: loading batches", bar) as progress:
        for batch in itertools.islice(itertools.cycle(loader), n):
            batches.append(batch)
            progress.update()
    return batches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_benchmark(cfg: DictConfig) -> dict[str, Any]:
    out = run_dir(cfg)
    seed_everything(int(cfg.seed))
    resolve_auto_hardware(cfg)  # hardware=auto: the preset that fits this machine
    device = select_device(cfg.hardware.device)
    apply_backend_flags(cfg.hardware, False)
    data = build_data(cfg)
    info = data.info
    fill_input_size(cfg.model, info.dims, [data.val_set, data.train_set])
    model = build_model(cfg.model, info.in_channels, info.num_classes, info.dims).to(device)
    facts = describe_model(model, cfg.model)
    loss_fn, optimizer = build_loss(cfg.trainer.loss), build_optimizer(cfg.optimizer, model)
    precision = resolve_precision(cfg.trainer.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
    warmup, steps = int(cfg.benchmark.warmup), int(cfg.benchmark.steps)

    bar = bool(cfg.trainer.progress_bar)
    start = time.perf_counter()
    batches = _batches(data.train_loader, warmup + steps, bar)
    loader_seconds = time.perf_counter() - start
    loader_samples = sum(b["image"].shape[0] for b in batches)

    def train_step(batch: dict[str, torch.Tensor]) -> None:
        images, labels = batch["image"].to(device), batch["label"].to(device)
        plain_train_step(model, loss_fn, optimizer, scaler, precision, device, [(images, labels)])

    @torch.no_grad()
    def infer_step(batch: dict[str, torch.Tensor]) -> None:
        with precision.autocast(device):
            model(batch["image"].to(device))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    train = _time(train_step, batches, warmup, device, Progress(len(batches), "benchmark: training steps", bar))
    model.eval()
    infer = _time(infer_step, batches, warmup, device, Progress(len(batches), "benchmark: inference steps", bar))
    result = {
        "model": facts["architecture"],
        "params": facts["params_total"],
        "device": str(device),
        "precision": precision.name,
        "micro_batch": int(cfg.data.batch_size),
        "dims": info.dims,
        "input_shape": list(batches[0]["image"].shape[1:]),
        "steps": steps,
        "warmup": warmup,
        "train_samples_per_s": train["samples_per_s"],
        "train_ms_per_step": train["ms_per_step"],
        "infer_samples_per_s": infer["samples_per_s"],
        "infer_ms_per_step": infer["ms_per_step"],
        "loader_samples_per_s": loader_samples / loader_seconds if loader_seconds > 0 else None,
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss",
    }
    write_json(out / "benchmark.json", result)
    log.info(
        "benchmark %s on %s (%s, batch %d): train %.1f samples/s (%.1f ms/step), inference %.1f samples/s"
        " (%.1f ms/step), loader %.1f samples/s, peak memory %.0f MiB",
        result["model"],
        device,
        precision.name,
        result["micro_batch"],
        result["train_samples_per_s"],
        result["train_ms_per_step"],
        result["infer_samples_per_s"],
        result["infer_ms_per_step"],
        result["loader_samples_per_s"] or float("nan"),
        result["peak_memory_mb"],
    )
    return result


def _time(
    step: Any, batches: list[dict[str, torch.Tensor]], warmup: int, device: torch.device, progress: Progress
) -> dict[str, float]:
    with progress:
        for batch in batches[:warmup]:
            step(batch)
            progress.update(phase="warm-up")
        _sync(device)
        timed = batches[warmup:]
        start = time.perf_counter()
        for batch in timed:
            step(batch)
            progress.update(phase="timed")  # a counter, or a log line every tenth: no device sync
        _sync(device)
        seconds = time.perf_counter() - start
    samples = sum(b["image"].shape[0] for b in timed)
    return {"samples_per_s": samples / seconds, "ms_per_step": 1000 * seconds / max(1, len(timed))}
