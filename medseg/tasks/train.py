"""mode=train: build everything from the config, fit, return the monitored metric."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from medseg.config.redact import redact_config
from medseg.data.datamodule import build_data
from medseg.engine.adaptive_threads import AdaptiveThreads
from medseg.engine.callbacks import EarlyStopping, HistoryWriter, ModelCheckpoint, TrackerBridge
from medseg.engine.case_scoring import CaseScorer
from medseg.engine.checkpoint import library_versions, load_checkpoint
from medseg.engine.distributed import DistContext, init_distributed, shared_run_dir
from medseg.engine.histograms import ParameterHistograms
from medseg.engine.image_panels import ImagePanels
from medseg.engine.optuna_pruning import OptunaPruning
from medseg.engine.schedulers import LRSchedule
from medseg.engine.trainer import Trainer
from medseg.hardware import fit_micro_batch, resolve_auto_hardware, usable_cpus
from medseg.inference.inferers import make_inferer
from medseg.io_utils import write_json
from medseg.models.factory import build_model, describe_model
from medseg.models.input_size import fill_input_size
from medseg.precision import resolve_precision
from medseg.runtime import apply_backend_flags, run_dir, seed_everything, select_device
from medseg.sweeps.trial_context import current_trial
from medseg.tasks.build import (
    build_optimizer,
    build_train_loss,
    check_weights_fit,
    config_from_checkpoint,
    load_weights,
)
from medseg.tracking.base import build_trackers

log = logging.getLogger(__name__)


def run_train(cfg: DictConfig) -> float | None:
    tcfg = cfg.trainer
    ddp = init_distributed(tcfg.strategy, cfg.hardware.device)  # None unless trainer.strategy=ddp under torchrun
    try:
        return _train(cfg, ddp)
    finally:
        if ddp is not None:
            ddp.close()


def _train(cfg: DictConfig, ddp: DistContext | None) -> float | None:
    tcfg = cfg.trainer
    out = shared_run_dir(ddp, run_dir(cfg))
    main_process = ddp is None or ddp.is_main
    world_size, rank = (ddp.world_size, ddp.rank) if ddp is not None else (1, 0)
    seed_everything(int(cfg.seed))
    resolve_auto_hardware(cfg)  # hardware=auto: apply the preset that fits this machine
    device = ddp.device if ddp is not None else select_device(cfg.hardware.device)
    apply_backend_flags(cfg.hardware, bool(tcfg.deterministic))
    ckpt = load_checkpoint(cfg.ckpt) if cfg.ckpt else None
    if ckpt is not None and tcfg.resume:  # its stored config must be data as for predict (never used here)
        config_from_checkpoint(ckpt, str(cfg.ckpt))

    # 1. data: cases -> split -> checks -> cached datasets -> loaders
    with ddp.rank0_first() if ddp is not None else contextlib.nullcontext():  # rank 0 writes shared caches
        data = build_data(cfg, world_size, rank)
    info = data.info
    if main_process:
        write_json(out / "label_map.json", {str(i): name for i, name in enumerate(info.class_names)})

    # 2. model, loss, optimizer, schedule, precision
    fill_input_size(cfg.model, info.dims, [data.val_set, data.train_set])  # UNETR: a fixed size from the data
    seed_everything(int(cfg.seed), rank)  # each rank its own stream (dropout); DDP copies rank 0's initial weights
    model = build_model(cfg.model, info.in_channels, info.num_classes, info.dims)
    model_facts = describe_model(model, cfg.model)
    if ckpt is not None:  # only the tensors are used; nothing named in the checkpoint's config is built
        stored_model = (ckpt.get("model_facts") or {}).get("architecture")
        check_weights_fit(model, ckpt.get("model"), str(cfg.ckpt), stored_model)
    if ckpt is not None and not tcfg.resume:
        load_weights(model, ckpt["model"], str(cfg.ckpt))
        log.info("fine-tuning from the weights in %s", cfg.ckpt)
    model.to(device)
    if cfg.hardware.channels_last and info.dims == 2:
        model.to(memory_format=torch.channels_last)
    train_model = ddp.wrap(model) if ddp is not None else model
    train_model = torch.compile(train_model) if cfg.hardware.compile else train_model
    loss_fn = build_train_loss(tcfg.loss, model)
    optimizer = build_optimizer(cfg.optimizer, model)
    precision = resolve_precision(tcfg.precision, device)
    if cfg.hardware.find_batch_size:
        data.train_loader = fit_micro_batch(cfg, model, loss_fn, data, device, precision)
    accumulate = int(tcfg.accumulate_grad_batches)
    if accumulate < 1:
        from medseg.errors import ConfigError

        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate} must be >= 1")
    n_batches = len(data.train_loader)
    if tcfg.limit_train_batches:
        n_batches = min(n_batches, int(tcfg.limit_train_batches))
    schedule = LRSchedule(cfg.scheduler, optimizer, math.ceil(n_batches / accumulate), int(tcfg.max_epochs))
    log.info("device %s, precision %s, %s", device, precision.name, batch_line(data, accumulate, world_size))

    # 3. callbacks and trackers
    resumed = ckpt if (ckpt is not None and tcfg.resume) else None
    trackers = build_trackers(cfg.logger, out, resumed, str(cfg.ckpt)) if main_process else []
    facts = {"dataset": info.as_dict(), "model": model_facts, "hardware": cfg.hardware.name, "device": str(device)}
    plain_cfg = redact_config(cfg)  # secrets masked before anything leaves this process
    for tracker in trackers:
        tracker.log_config(plain_cfg, facts)
    callbacks: list[Any] = [
        ModelCheckpoint(out / "checkpoints", **OmegaConf.to_container(tcfg.checkpoint)),
        HistoryWriter(out),
        TrackerBridge(trackers),
        ImagePanels(
            trackers, tcfg.log_images_every_n_epochs, tcfg.log_images_count, cfg.data.slice_axis, out / "images"
        ),
        ParameterHistograms(trackers, tcfg.log_histograms_every_n_epochs),
    ]
    if tcfg.early_stopping.enabled:
        es = tcfg.early_stopping
        callbacks.insert(0, EarlyStopping(tcfg.monitor, tcfg.monitor_mode, es.patience, es.min_delta, es.restore_best))
    if not cfg.hardware.num_threads:  # automatic: follow the load of other work as the run goes
        callbacks.append(AdaptiveThreads(usable_cpus(), int(cfg.hardware.num_workers)))
    trial = current_trial()  # an Optuna trial of the medseg_optuna sweeper: report each epoch, maybe prune
    if trial is not None:
        callbacks.append(OptunaPruning(trial, str(tcfg.monitor)))  # last: the epoch's files are written first

    extra_state = {
        "config_yaml": OmegaConf.to_yaml(OmegaConf.create(plain_cfg)),
        "class_names": info.class_names,
        "mask_values": info.mask_values,  # stored mask value per class (e.g. [0, 255]); predict writes them back
        "dataset": info.as_dict(),
        "val_case_ids": list(info.val_cases),  # evaluate scores these, read from its own data.root
        "model_facts": model_facts,
        "versions": library_versions(),
        "tracker_ids": {t.name: t.run_id for t in trackers if t.run_id},
    }

    trainer = Trainer(
        train_model,
        loss_fn,
        optimizer,
        schedule,
        data.train_loader,
        data.val_loader,
        device=device,
        precision=precision,
        num_classes=info.num_classes,
        class_names=info.class_names,
        max_epochs=int(tcfg.max_epochs),
        accumulate=accumulate,
        clip_val=tcfg.gradient_clip_val,
        clip_algorithm=str(tcfg.gradient_clip_algorithm),
        monitor=str(tcfg.monitor),
        monitor_mode=str(tcfg.monitor_mode),
        val_every_n_epochs=int(tcfg.val_every_n_epochs),
        log_every_n_steps=int(tcfg.log_every_n_steps),
        limit_train_batches=tcfg.limit_train_batches,
        limit_val_batches=tcfg.limit_val_batches,
        max_nonfinite_steps=int(tcfg.max_nonfinite_steps),
        oom_recovery=bool(tcfg.oom_recovery) and ddp is None,  # halving one rank's batch would desync DDP
        seed=int(cfg.seed),
        callbacks=callbacks,
        inferer=make_inferer(cfg.data, overlap=float(cfg.predict.overlap)),
        channels_last=bool(cfg.hardware.channels_last) and info.dims == 2,
        progress_bar=bool(tcfg.progress_bar),
        extra_state=extra_state,
        distributed=ddp,
        case_scorer=validation_scorer(cfg, data, device, precision),
    )
    exit_code = 1
    try:  # trackers are finished whatever happens, so a multirun's next job starts a fresh run
        if ckpt is not None and tcfg.resume:
            trainer.restore(ckpt)
        best = trainer.fit()
        exit_code = 0
    finally:
        for tracker in trackers:
            tracker.finish(exit_code)
    if main_process:  # report.html: curves, tables and best/median/worst validation overlays
        from medseg.report.hooks import report_after_training

        report_after_training(cfg, out, trainer, model, data, facts)
    if main_process and cfg.data.fold is not None and cfg.crossval.oof:  # what mode=crossval needs
        from medseg.crossval.oof import write_oof

        write_oof(cfg, out, device)
    log.info("best %s = %s at epoch %s; run folder %s", tcfg.monitor, _fmt(best), trainer.best_epoch, out)
    if main_process:
        from medseg.tasks.next_commands import log_next_commands

        log_next_commands(cfg, out)
    return best


def batch_line(data: Any, accumulate: int, world_size: int) -> str:
    """'[batch B x S samples per volume = ]micro-batch M x accumulation A x P process(es) = effective batch E'."""
    batch = int(data.train_loader.batch_size)
    per_item = int(getattr(data.train_set, "items_per_index", 1) or 1)
    loaded = f"batch {batch} x {per_item} samples per volume = " if per_item > 1 else ""
    micro = batch * per_item
    return (
        f"{loaded}micro-batch {micro} x accumulation {accumulate} x {world_size} process(es)"
        f" = effective batch {micro * accumulate * world_size}"
    )


def validation_scorer(cfg: DictConfig, data: Any, device: torch.device, precision: Any) -> CaseScorer:
    """val/dice on each validation case's original grid, with mode=evaluate's settings (predict.*, no TTA)."""
    from medseg.data.datamodule import context_slices

    info = data.info
    return CaseScorer(
        data.val_volumes.store,
        data.val_volumes.data,
        cfg.data,
        num_classes=info.num_classes,
        channels=info.in_channels // (2 * context_slices(cfg.data) + 1),
        device=device,
        precision=precision,
        threshold=float(cfg.predict.threshold),
        overlap=float(cfg.predict.overlap),
        batch_size=int(cfg.predict.batch_size),
    )


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
