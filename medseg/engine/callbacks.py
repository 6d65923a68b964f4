"""Small named callbacks the training loop calls at fixed points.

Hooks: on_fit_start(trainer), on_train_step(trainer, metrics) every trainer.log_every_n_steps
optimizer steps, on_epoch_end(trainer, record), on_fit_end(trainer). Each callback does one thing.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Callback:
    def on_fit_start(self, trainer: Any) -> None: ...

    def on_train_step(self, trainer: Any, metrics: dict[str, float]) -> None: ...

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None: ...

    def on_fit_end(self, trainer: Any) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ModelCheckpoint(Callback):
    """last.pt every epoch, best.pt when the monitored metric improves, epoch_{N}.pt every N epochs.

    When the run ends with an earlier epoch's weights (early stopping with restore_best), last.pt is
    written once more at the end, holding those weights (`weights_epoch` says which epoch's).
    """

    def __init__(
        self,
        folder: str | Path,
        save_last: bool = True,
        save_best: bool = True,
        every_n_epochs: int = 0,
        keep_last: int = 3,
    ) -> None:
        self.folder = Path(folder)
        self.save_last, self.save_best = save_last, save_best
        self.every_n_epochs, self.keep_last = int(every_n_epochs), int(keep_last)

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if not trainer.is_main_process:
            return
        payload = trainer.checkpoint_payload()
        if self.save_last:
            trainer.save(self.folder / "last.pt", payload)
        if self.save_best and trainer.improved:
            trainer.save(self.folder / "best.pt", payload)
        if self.every_n_epochs > 0 and trainer.epoch % self.every_n_epochs == 0:
            trainer.save(self.folder / f"epoch_{trainer.epoch}.pt", payload)
            self._prune()

    def on_fit_end(self, trainer: Any) -> None:
        if trainer.is_main_process and self.save_last and trainer.weights_epoch is not None:
            payload = {**trainer.checkpoint_payload(), "weights_epoch": trainer.weights_epoch}
            trainer.save(self.folder / "last.pt", payload)

    def _prune(self) -> None:
        numbered = sorted(
            (int(m.group(1)), p)
            for p in self.folder.glob("epoch_*.pt")
            if (m := re.fullmatch(r"epoch_(\d+)\.pt", p.name))
        )
        for _, path in numbered[: max(0, len(numbered) - self.keep_last)]:
            path.unlink(missing_ok=True)


class EarlyStopping(Callback):
    """Stop after `patience` epochs without an improvement larger than min_delta; restore the best.

    With restore_best, a stopped run ends with the weights of the best epoch (the trainer's best, the
    one in best.pt): in the model and in last.pt, for whatever follows. A run that reaches
    max_epochs without stopping keeps its last weights, so that it can be resumed for more epochs.
    """

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float, restore_best: bool) -> None:
        self.monitor, self.mode = monitor, mode
        self.patience, self.min_delta, self.restore_best = int(patience), float(min_delta), restore_best
        self.best: float | None = None
        self.wait = 0
        self.best_weights: dict[str, Any] | None = None
        self.best_weights_epoch: int | None = None
        self.stopped_epoch: int | None = None

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        value = record.get(self.monitor)
        if value is None or math.isnan(value):
            return
        if self.restore_best and trainer.improved:  # the epoch best.pt holds
            self.best_weights = copy.deepcopy({k: v.detach().cpu() for k, v in trainer.model_state().items()})
            self.best_weights_epoch = trainer.epoch
        if self._better(value):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = trainer.epoch
            trainer.should_stop = True
            log.info("early stopping: %s did not improve for %d epochs (best %.4f)", self.monitor, self.wait, self.best)

    def on_fit_end(self, trainer: Any) -> None:
        stopped = self.stopped_epoch is not None and self.stopped_epoch == trainer.epoch
        if not (self.restore_best and stopped and self.best_weights is not None):
            return
        if self.best_weights_epoch != trainer.epoch:
            trainer.load_model_state(self.best_weights)
            trainer.weights_epoch = self.best_weights_epoch
            log.info(
                "early stopping: the model and last.pt now hold the weights of epoch %s (%s=%s)",
                self.best_weights_epoch,
                self.monitor,
                trainer.best_score,
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "wait": self.wait,
            "best_weights": self.best_weights,
            "best_weights_epoch": self.best_weights_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait, self.best_weights = state["best"], state["wait"], state.get("best_weights")
        self.best_weights_epoch = state.get("best_weights_epoch")


class HistoryWriter(Callback):
    """history.json, rewritten after every epoch, and history.png, redrawn after an epoch when `plot_every_s`
    seconds have passed since it was last drawn, and when training ends (however it ends).

    Drawing the six panels takes about half a second; every epoch of a run with second-long epochs (a
    sweep trial on small data, the demo) spent more time on the picture than on training. Runs whose epochs
    take a minute or more still get it after every epoch."""

    def __init__(self, folder: str | Path, plot: bool = True, plot_every_s: float = 60.0) -> None:
        self.folder, self.plot, self.plot_every_s = Path(folder), plot, plot_every_s
        self._drawn_at = time.monotonic()
        self._drawn_epochs = 0

    def on_fit_start(self, trainer: Any) -> None:
        self._drawn_at = time.monotonic()

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if not trainer.is_main_process:
            return
        from medseg.engine.history import write_history

        write_history(self.folder / "history.json", trainer.history)
        if time.monotonic() - self._drawn_at >= self.plot_every_s:
            self._draw(trainer)

    def on_fit_end(self, trainer: Any) -> None:
        if trainer.is_main_process and len(trainer.history) > self._drawn_epochs:
            self._draw(trainer)

    def _draw(self, trainer: Any) -> None:
        from medseg.engine.history import plot_history

        if self.plot:
            plot_history(self.folder / "history.png", trainer.history)
        self._drawn_at, self._drawn_epochs = time.monotonic(), len(trainer.history)


class TrackerBridge(Callback):
    """Forward metrics to the configured trackers (csv, wandb, tensorboard, ...)."""

    def __init__(self, trackers: list[Any]) -> None:
        self.trackers = trackers

    def on_train_step(self, trainer: Any, metrics: dict[str, float]) -> None:
        for t in self.trackers:
            t.log_step(metrics, step=trainer.global_step)

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        for t in self.trackers:
            t.log_epoch(record, step=trainer.global_step)

    def on_fit_end(self, trainer: Any) -> None:
        summary = {"best/" + trainer.monitor: trainer.best_score, "best/epoch": trainer.best_epoch}
        for t in self.trackers:
            t.log_summary(summary)
