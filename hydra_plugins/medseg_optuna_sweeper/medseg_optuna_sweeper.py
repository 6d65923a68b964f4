"""The Hydra plugin class `medseg_optuna`: the stock OptunaSweeper with medseg's sweep loop.

Selected with `defaults: [override /hydra/sweeper: medseg_optuna]` (conf/hparams_search/optuna.yaml).
Kept light: optuna is imported only when a sweep starts. No `from __future__ import annotations`:
Hydra executes plugin modules before registering them, and dataclasses then cannot resolve string types.
"""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


class MedsegOptunaSweeper(OptunaSweeper):
    """OptunaSweeper whose n_trials is the study's total, resumable, with FAIL/PRUNED trials and a trials.csv."""

    def __init__(
        self, pruner: Any = None, heartbeat_interval: int | None = 60, grace_period: int | None = None, **kwargs: Any
    ) -> None:
        from medseg.sweeps.optuna_sweeper import ResumableOptunaSweeperImpl

        self.sweeper = ResumableOptunaSweeperImpl(
            pruner=pruner, heartbeat_interval=heartbeat_interval, grace_period=grace_period, **kwargs
        )


@dataclass
class MedsegOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.medseg_optuna_sweeper.medseg_optuna_sweeper.MedsegOptunaSweeper"
    # Share of this sweep's planned trials that may fail before the sweep stops (1.0 = never stop).
    max_failure_rate: float = 0.5
    # An optuna pruner config (_target_: optuna.pruners.MedianPruner ...), or null for no pruning.
    pruner: Any = None
    # Seconds between heartbeats of a running trial in a database storage (null = none); a trial whose
    # heartbeat is older than grace_period (null = 2 x interval) is failed by any worker and not counted.
    heartbeat_interval: int | None = 60
    grace_period: int | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="medseg_optuna", node=MedsegOptunaSweeperConf, provider="medseg"
)
