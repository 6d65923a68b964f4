"""What a checkpoint holds of a training run, and how a run continues from one (trainer.resume=true)."""

from __future__ import annotations

import logging
from typing import Any

from medseg.engine.checkpoint import rng_state, set_rng_state

log = logging.getLogger("medseg.engine.trainer")


def checkpoint_payload(trainer: Any) -> dict[str, Any]:
    """Tensors and plain data only: weights, optimizer, schedule, scaler, counters, RNG, history, callbacks."""
    return {
        **trainer.extra_state,
        "model": trainer.model_state(),
        "optimizer": trainer.optimizer.state_dict(),
        "schedule": trainer.schedule.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "epoch": trainer.epoch,
        "global_step": trainer.global_step,
        "best_score": trainer.best_score,
        "best_epoch": trainer.best_epoch,
        "monitor": trainer.monitor,
        "rng": rng_state(),
        "history": trainer.history,
        "micro_batch_size": trainer.micro_batch_size,
        "accumulate": trainer.accumulate,
        "callbacks": {type(cb).__name__: cb.state_dict() for cb in trainer.callbacks},
    }


def restore(trainer: Any, ckpt: dict[str, Any]) -> None:
    """Put `trainer` where the checkpoint stopped: weights, optimizer, schedule, counters, callbacks and RNG."""
    trainer.load_model_state(ckpt["model"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.schedule.load_state_dict(ckpt["schedule"])
    trainer.scaler.load_state_dict(ckpt["scaler"])
    trainer.epoch, trainer.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
    trainer.best_score, trainer.best_epoch = ckpt.get("best_score"), ckpt.get("best_epoch")
    trainer.history = list(ckpt.get("history", []))
    saved_micro = int(ckpt.get("micro_batch_size") or 0)
    if 0 < saved_micro < trainer.oom.micro_batch_size:  # an earlier out-of-memory recovery carries over
        trainer.oom.micro_batch_size = saved_micro
    states = ckpt.get("callbacks", {})
    for cb in trainer.callbacks:
        if type(cb).__name__ in states:
            cb.load_state_dict(states[type(cb).__name__])
    set_rng_state(ckpt["rng"])
    log.info("resumed at epoch %d, step %d", trainer.epoch, trainer.global_step)
