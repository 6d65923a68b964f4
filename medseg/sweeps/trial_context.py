"""Which Optuna trial (if any) the current job runs for, so the trainer can report to it and be pruned.

The sweeper (medseg/sweeps/optuna_sweeper.py) launches trial N as job N. A job launched in-process
(Hydra's basic launcher) finds its Trial object in the registry below; a job in another process
(joblib, submitit) rebuilds it from hydra.sweeper.storage + study_name + its job number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_ACTIVE: dict[int, Any] = {}  # job number -> optuna.Trial, while the sweeper launches them
SWEEPER_TARGET_PREFIX = "hydra_plugins.medseg_optuna_sweeper."


@contextlib.contextmanager
def active(trials: list[Any]) -> Iterator[None]:
    """Make these trials visible to jobs running in this process, keyed by trial (= job) number."""
    _ACTIVE.update({t.number: t for t in trials})
    try:
        yield
    finally:
        for t in trials:
            _ACTIVE.pop(t.number, None)


def current_trial() -> Any | None:
    """The optuna.Trial of this job, or None outside a medseg_optuna sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    sweeper = hc.sweeper
    if hc.mode != RunMode.MULTIRUN or not str(sweeper.get("_target_", "")).startswith(SWEEPER_TARGET_PREFIX):
        return None
    number = int(hc.job.num)
    if number in _ACTIVE:
        return _ACTIVE[number]
    if not sweeper.get("storage") or not sweeper.get("study_name"):
        return None  # an in-memory study cannot be reached from another process
    return _trial_from_storage(str(sweeper.storage), str(sweeper.study_name), number, sweeper.get("pruner"))


def _trial_from_storage(storage: str, study_name: str, number: int, pruner_cfg: Any) -> Any:
    import optuna
    from hydra.utils import instantiate

    from medseg.sweeps.storage import storage_errors

    pruner = instantiate(pruner_cfg) if pruner_cfg else optuna.pruners.NopPruner()
    with storage_errors(storage):
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)
