"""Trials of a worker that died, on any host, are failed and stop counting towards n_trials.

Optuna's heartbeat does this across hosts: the study storage is an RDBStorage with a
`heartbeat_interval`; while a trial runs, its sweep process records a heartbeat in the database every
interval (the database's own clock stamps it, so the hosts' clocks need not agree); any worker calls
`optuna.storages.fail_stale_trials` before it asks for new trials, which marks FAIL every RUNNING
trial whose last heartbeat is older than `grace_period` (default 2 x interval). The failed trials'
numbers are recorded on the study (`medseg:stale:<number>`, through the storage's
failed_trial_callback, since a finished trial takes no more attributes), so they are not counted.

Optuna records heartbeats itself only inside `study.optimize`; medseg's sweep launches jobs through
Hydra's launcher with ask/tell, so `beating` runs the same loop (optuna.study._optimize._record_heartbeat)
in a thread while the jobs of a batch run.

Optuna 2.10.1 (the pinned version) measures a heartbeat's age with `timedelta.seconds`, i.e. modulo
one day: a trial killed more than a day ago is failed at the first check whose age modulo a day
passes the grace period, which the sweep loop repeats before every batch. In-memory and Redis
storages have no heartbeat; there the same-host check of optuna_sweeper.py is what remains.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import optuna

from medseg.errors import MedsegError

log = logging.getLogger(__name__)

STALE_PREFIX = "medseg:stale:"  # study system attribute per trial failed for a missing heartbeat


def study_storage(url: Any, heartbeat_interval: int | None, grace_period: int | None) -> Any:
    """What optuna.create_study gets: an RDBStorage with the heartbeat for a database URL, else `url` as given."""
    for key, value in (("heartbeat_interval", heartbeat_interval), ("grace_period", grace_period)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise MedsegError(f"hydra.sweeper.{key}={value!r} must be an integer >= 1 (seconds) or null")
    if not isinstance(url, str) or url.startswith("redis") or not heartbeat_interval:
        return url
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=int(heartbeat_interval),
        grace_period=int(grace_period) if grace_period else None,
        failed_trial_callback=_mark_stale,
    )


def _mark_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    study.set_system_attr(f"{STALE_PREFIX}{trial.number}", True)
    log.warning("trial %d failed: its worker stopped sending heartbeats (killed, or its host is gone)", trial.number)


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's fail_stale_trials (marked experimental in 2.10.1; its warning is silenced here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def stale_numbers(study: optuna.Study) -> set[int]:
    """Numbers of the trials failed because their heartbeat stopped."""
    return {int(k[len(STALE_PREFIX) :]) for k in study.system_attrs if k.startswith(STALE_PREFIX)}


def record(study: optuna.Study, trials: list[Any]) -> None:
    """One heartbeat for each trial (at once after asking, so a worker killed before its first beat is caught)."""
    storage = study._storage
    if storage.is_heartbeat_enabled():
        for trial in trials:
            storage.record_heartbeat(trial._trial_id)


@contextlib.contextmanager
def beating(study: optuna.Study, trials: list[Any]) -> Iterator[None]:
    """Record the trials' heartbeats every heartbeat_interval while the block runs."""
    storage = study._storage
    if not storage.is_heartbeat_enabled():
        yield
        return
    stop = threading.Event()
    interval = float(storage.get_heartbeat_interval())

    def loop() -> None:
        warned = False
        while not stop.wait(interval):
            try:
                record(study, trials)
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the running jobs
                if not warned:
                    log.warning("heartbeat not recorded (%s: %s); retrying", type(exc).__name__, exc)
                    warned = True

    thread = threading.Thread(target=loop, name="medseg-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
