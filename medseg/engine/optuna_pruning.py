"""Report the monitored metric to the Optuna trial after each validation; stop the run when pruned.

Registered by medseg/tasks/train.py only when the job runs for a trial of the medseg_optuna sweeper
(medseg/sweeps/trial_context.py). Raising optuna.TrialPruned ends the job; the sweeper records the
trial as PRUNED. The pruner itself is hydra.sweeper.pruner (null = report only, never prune).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from medseg.engine.callbacks import Callback

log = logging.getLogger(__name__)


class OptunaPruning(Callback):
    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if len(self.trial.study.directions) > 1:
            return  # optuna reports and prunes single-objective studies only
        value = record.get(self.monitor)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return  # no validation this epoch
        step = int(record["epoch"])
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            import optuna

            trainer.should_stop = True
            message = f"{self.monitor}={value:.4f} at epoch {step}"
            log.info("trial %d pruned: %s", self.trial.number, message)
            raise optuna.TrialPruned(message)
