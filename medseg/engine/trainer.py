"""The training loop. Plain PyTorch, read top to bottom:

    fit()
      for each epoch:
        train_epoch()     loaded batches -> micro-batches -> forward (autocast) -> loss x weight -> backward
                          every `accumulate` batches: _optimizer_step() (unscale, measure and
                          clip the gradient norm, skip non-finite steps, step, schedule)
        validate()        loss over the validation loader; Dice per case on the original grid, as
                          mode=evaluate scores it (validation.py, case_scoring.py)
        epoch record      -> history, callbacks (checkpoints, early stopping, trackers, plots)

Features attach through callbacks (medseg/engine/callbacks.py); the loop itself only knows about
precision, accumulation, clipping, the LR schedule and recovery from non-finite losses and
out-of-memory errors (the remedies live in medseg/engine/oom.py). Around it, each in its own room:
epoch_plan.py (seeding, batch counts, accumulation group sizes), epoch_record.py (the history row and
console lines), resume.py (what a checkpoint holds and how a run continues from it).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg.engine.callbacks import Callback
from medseg.engine.case_scoring import CaseScorer
from medseg.engine.checkpoint import save_checkpoint
from medseg.engine.epoch_plan import limited_len, loaded_batch_size, planned_group_sizes, progress, seed_epoch
from medseg.engine.epoch_record import batch_metrics, epoch_record, fmt, is_better, log_epoch
from medseg.engine.metrics import ConfusionCounter, foreground_mean, nan_to_none
from medseg.engine.oom import OomRecovery
from medseg.engine.resume import checkpoint_payload, restore
from medseg.engine.schedulers import LRSchedule
from medseg.engine.validation import validate
from medseg.errors import TrainingError
from medseg.precision import Precision

log = logging.getLogger(__name__)


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        train_loader: Any,
        val_loader: Any,
        *,
        device: torch.device,
        precision: Precision,
        num_classes: int,
        class_names: list[str],
        max_epochs: int,
        accumulate: int = 1,
        clip_val: float | None = None,
        clip_algorithm: str = "norm",
        monitor: str = "val/dice",
        monitor_mode: str = "max",
        val_every_n_epochs: int = 1,
        log_every_n_steps: int = 10,
        limit_train_batches: int | None = None,
        limit_val_batches: int | None = None,
        max_nonfinite_steps: int = 5,
        oom_recovery: bool = True,
        seed: int = 0,
        callbacks: Iterable[Callback] = (),
        inferer: Callable[[torch.Tensor, nn.Module], torch.Tensor] | None = None,
        channels_last: bool = False,
        progress_bar: bool = True,
        extra_state: dict[str, Any] | None = None,
        distributed: Any = None,
        case_scorer: CaseScorer | None = None,
    ) -> None:
        self.model, self.loss_fn, self.optimizer, self.schedule = model, loss_fn, optimizer, schedule
        self.train_loader, self.val_loader = train_loader, val_loader
        self.device, self.precision = device, precision
        self.num_classes, self.class_names = num_classes, class_names
        self.max_epochs, self.accumulate = int(max_epochs), int(accumulate)
        self.clip_val, self.clip_algorithm = clip_val, clip_algorithm
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self.val_every_n_epochs, self.log_every_n_steps = max(1, val_every_n_epochs), max(1, log_every_n_steps)
        self.limit_train_batches, self.limit_val_batches = limit_train_batches, limit_val_batches
        self.max_nonfinite_steps = max_nonfinite_steps
        self.seed = int(seed)
        self.callbacks = list(callbacks)
        self.inferer = inferer or (lambda x, m: m(x))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.progress_bar = progress_bar and sys.stderr.isatty()
        self.extra_state = extra_state or {}
        self.distributed = distributed  # medseg.engine.distributed.DistContext or None
        self.case_scorer = case_scorer  # val/dice on each case's original grid, as mode=evaluate
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)

        self.epoch = 0  # epochs completed
        self.global_step = 0  # optimizer steps taken
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.improved = False
        self.should_stop = False
        self.history: list[dict[str, Any]] = []
        self.nonfinite_in_a_row = 0
        self._group_loss = torch.zeros((), device=device)  # loss x weight of the current accumulation group
        self.oom = OomRecovery(oom_recovery, loaded_batch_size(train_loader))
        self._last_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_saved: Path | None = None
        self.weights_epoch: int | None = None  # set when the model ends with an earlier epoch's weights

    # ------------------------------------------------------------------ the loop
    def fit(self) -> float | None:
        self._call("on_fit_start")
        try:
            while self.epoch < self.max_epochs and not self.should_stop:
                started = time.perf_counter()
                train = self.train_epoch()
                run_val = (self.epoch + 1) % self.val_every_n_epochs == 0 or self.epoch + 1 == self.max_epochs
                val = self.validate() if run_val else {}
                self.epoch += 1
                record = self._epoch_record(train, val, time.perf_counter() - started)
                self.history.append(record)
                self.schedule.after_epoch(record.get(self.monitor))
                self._log_epoch(record)
                self._call("on_epoch_end", record)
        finally:
            self._call("on_fit_end")
        return self.best_score

    @property
    def micro_batch_size(self) -> int:
        return self.oom.micro_batch_size

    def train_epoch(self) -> dict[str, Any]:
        self.model.train()
        seed_epoch(self.train_loader, self.seed, self.epoch)
        n_batches = limited_len(self.train_loader, self.limit_train_batches)
        group_sizes = planned_group_sizes(self.train_loader, n_batches, self.accumulate)

        counter = ConfusionCounter(self.num_classes, self.device)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        norm_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        samples, steps_before, started = 0, self.global_step, time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self._group_loss = torch.zeros((), device=self.device)

        group: list[tuple[torch.Tensor, torch.Tensor]] = []  # this group's batches, kept for out-of-memory recovery
        show_bar = self.progress_bar and self.is_main_process
        bar = progress(self.train_loader, n_batches, f"epoch {self.epoch + 1}", show_bar)
        for i, batch in enumerate(bar):
            if i >= n_batches:
                break
            images, labels = batch["image"], batch["label"]  # on the host: cut into micro-batches first
            step_now = (i + 1) % self.accumulate == 0 or i + 1 == n_batches
            with self._no_sync(not step_now):  # DDP: average gradients across ranks once per step
                loss = self._train_batch(images, labels, group_sizes[i // self.accumulate], counter, group)
            group = [] if step_now or not self.oom.enabled else [*group, (images, labels)]
            loss_sum += loss * images.shape[0]
            samples += images.shape[0]
            if step_now:
                step_before = self.global_step
                grad_norm = self._optimizer_step()
                if grad_norm is not None:
                    norm_sum += grad_norm
                if self.global_step != step_before and self.global_step % self.log_every_n_steps == 0:
                    self._log_step(loss, grad_norm)
                    if bar is not self.train_loader:  # postfix only at logging steps: no extra host sync
                        dice = foreground_mean(counter.scores()["dice"])
                        bar.set_postfix(loss=f"{float(loss):.4f}", dice=fmt(nan_to_none(dice)), refresh=False)

        elapsed = time.perf_counter() - started
        if self.distributed is not None:
            loss_sum, samples = self.distributed.sum_loss(loss_sum, samples)
            self.distributed.sum_(counter.counts)
        scores = counter.scores()
        steps = max(1, self.global_step - steps_before)
        return {
            "loss": float(loss_sum) / max(1, samples),
            "dice": foreground_mean(scores["dice"]),
            "iou": foreground_mean(scores["iou"]),
            "grad_norm": float(norm_sum) / steps,
            "samples": samples,
            "samples_per_s": samples / elapsed if elapsed > 0 else math.nan,
        }

    def validate(self) -> dict[str, Any]:
        """Loss over the validation loader; Dice per case as mode=evaluate scores it (engine/validation.py)."""
        return validate(
            self.model,
            self.val_loader,
            self.loss_fn,
            self.inferer,
            device=self.device,
            precision=self.precision,
            num_classes=self.num_classes,
            n_batches=limited_len(self.val_loader, self.limit_val_batches),
            to_device=self._to_device,
            scorer=self.case_scorer,
            scoring_model=self._unwrapped(),
            distributed=self.distributed,
        )

    # ------------------------------------------------------------------ one step
    def _train_batch(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        group_size: int,
        counter: ConfusionCounter,
        earlier: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Forward and backward one loaded batch, `oom.micro_batch_size` samples at a time.

        After an out-of-memory error the remedy is applied outside the `except` block (the failed
        attempt is released by then) and the batch continues at once with the smaller micro-batch.
        When the error struck in backward, the group's gradient is rebuilt from `earlier` batches.
        """
        n, done, loss_sum = images.shape[0], 0, torch.zeros((), device=self.device)
        replay: list[tuple[torch.Tensor, torch.Tensor]] = []  # samples whose gradient must be recomputed
        while done < n:
            source = replay[0] if replay else (images[done:], labels[done:])
            size = self.oom.split(source[0].shape[0])
            part = (source[0][:size], source[1][:size])
            try:
                loss = self._forward_backward(*part, size / group_size, None if replay else counter)
            except torch.OutOfMemoryError:
                loss = None
            if loss is None:  # out of memory: pick a remedy now that the failed attempt is gone
                if self.oom.recover(self._unwrapped(), size):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._group_loss = torch.zeros((), device=self.device)
                    replay = [*earlier, (images[:done], labels[:done])]
                    replay = [r for r in replay if r[0].shape[0] > 0]
                continue
            if replay:  # recomputed samples: gradient only, their loss and metrics were counted already
                rest = (replay[0][0][size:], replay[0][1][size:])
                replay = ([rest] if rest[0].shape[0] else []) + replay[1:]
                continue
            loss_sum += loss * size
            done += size
        return loss_sum / n

    def _forward_backward(
        self, images: torch.Tensor, labels: torch.Tensor, weight: float, counter: ConfusionCounter | None
    ) -> torch.Tensor:
        """Forward and backward one micro-batch (host tensors); the gradient is scaled by its share `weight`."""
        images, labels = self._to_device({"image": images, "label": labels})
        with self.precision.autocast(self.device):
            logits = self.model(images)
            loss = self.loss_fn(logits, labels)
        self.oom.in_backward = True
        self.scaler.scale(loss * weight).backward()
        self.oom.in_backward = False
        loss = loss.detach().float()
        self._group_loss += loss * weight
        if counter is not None:
            if isinstance(logits, (list, tuple)):  # deep supervision: metrics on the full-resolution output
                logits = logits[0]
            counter.update(logits.detach(), labels)
            self._last_batch = (logits.detach(), labels)  # a reference only: read at logging intervals
        return loss

    def _optimizer_step(self) -> torch.Tensor | None:
        """Unscale, measure (and clip) the gradient norm, skip non-finite steps, step, schedule."""
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            grad_norm = torch.zeros((), device=self.device)
        elif self.clip_val is not None and self.clip_algorithm == "norm":
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.clip_val)
        else:  # measure only (clip_grad_norm_ would also rescale every gradient by 1)
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.clip_val is not None and self.clip_algorithm == "value":  # after measuring: an overflow stays visible
            torch.nn.utils.clip_grad_value_(params, self.clip_val)
        # One host sync per optimizer step: the only way to skip a non-finite update before it lands.
        flags = torch.isfinite(torch.stack([self._group_loss, grad_norm.float()])).float()
        if self.distributed is not None:  # every rank skips or steps together
            self.distributed.min_(flags)
        finite_loss, finite_grad = flags.bool().tolist()
        self._group_loss = torch.zeros((), device=self.device)
        if not finite_loss or (not finite_grad and not self.scaler.is_enabled()):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            self._nonfinite_step()
            return None
        self.nonfinite_in_a_row = 0
        self.scaler.step(self.optimizer)  # with fp16 the scaler itself skips overflowing steps ...
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not finite_grad:  # ... and lowers its scale: no step was taken, so the schedule waits
            log.info("fp16 gradient overflow: step skipped, loss scale now %g", self.scaler.get_scale())
            return None
        self.global_step += 1
        self.schedule.after_optimizer_step()
        return grad_norm.detach().double()

    def _nonfinite_step(self) -> None:
        self.nonfinite_in_a_row += 1
        log.warning(
            "non-finite loss or gradient at epoch %d: step skipped (%d in a row)",
            self.epoch + 1,
            self.nonfinite_in_a_row,
        )
        if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
            kept = f"; the last good checkpoint is {self.last_saved}" if self.last_saved else ""
            raise TrainingError(
                f"{self.nonfinite_in_a_row} non-finite losses in a row at epoch {self.epoch + 1}{kept};"
                " lower optimizer.lr, enable trainer.gradient_clip_val or check the data"
            )

    # ------------------------------------------------------------------ records and logging
    def _epoch_record(self, train: dict[str, Any], val: dict[str, Any], seconds: float) -> dict[str, Any]:
        record = epoch_record(
            epoch=self.epoch,
            step=self.global_step,
            lr=self.schedule.lr(),
            train=train,
            val=val,
            seconds=seconds,
            micro_batch=self.micro_batch_size,
            accumulate=self.accumulate,
            device=self.device,
            class_names=self.class_names,
        )
        self.improved = is_better(record.get(self.monitor), self.best_score, self.monitor_mode)
        if self.improved:
            self.best_score, self.best_epoch = float(record[self.monitor]), self.epoch
        record["best/" + self.monitor] = self.best_score
        return record

    def _log_epoch(self, record: dict[str, Any]) -> None:
        if self.is_main_process:
            log_epoch(record, self.max_epochs)

    def _log_step(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        lr = self.schedule.lr()
        self._call("on_train_step", batch_metrics(loss, lr, grad_norm, self._last_batch, self.num_classes))

    # ------------------------------------------------------------------ state
    @property
    def is_main_process(self) -> bool:
        return self.distributed is None or self.distributed.rank == 0

    def _unwrapped(self) -> nn.Module:
        model = getattr(self.model, "module", self.model)
        return getattr(model, "_orig_mod", model)

    def model_state(self) -> dict[str, torch.Tensor]:
        return self._unwrapped().state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self._unwrapped().load_state_dict(state)

    def checkpoint_payload(self) -> dict[str, Any]:
        return checkpoint_payload(self)

    def save(self, path: str | Path, payload: dict[str, Any]) -> None:
        save_checkpoint(path, payload)
        self.last_saved = Path(path)

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue exactly where a checkpoint stopped (trainer.resume=true)."""
        restore(self, ckpt)

    # ------------------------------------------------------------------ helpers
    def _to_device(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        images = batch["image"].to(self.device, non_blocking=non_blocking, memory_format=self.memory_format)
        labels = batch["label"].to(self.device, non_blocking=non_blocking)
        return images, labels

    def _no_sync(self, skip_sync: bool) -> Any:
        if skip_sync and self.distributed is not None and hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)
