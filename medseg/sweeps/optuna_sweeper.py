"""The sweep loop behind `hydra/sweeper=medseg_optuna`: the stock hydra-optuna-sweeper, made resumable.

What differs from the stock loop (hydra_plugins.hydra_optuna_sweeper._impl.OptunaSweeperImpl.sweep):
- n_trials is the study's total: a study loaded from its storage runs only the missing trials, and
  job numbers equal trial numbers (job folders 0..n-1 across restarts, and across workers that share
  one database).
- A seeded sampler is re-seeded before each trial with seed + trials so far, so a restarted sweep
  does not replay the parameters it already tried.
- A job that raises (a MedsegError, out of memory, non-finite losses) or returns a non-finite value
  is a FAIL trial and the sweep goes on until more than max_failure_rate of the planned trials failed;
  optuna.TrialPruned raised in a job (medseg/engine/optuna_pruning.py) makes a PRUNED trial.
- Trials left RUNNING by a sweep process that no longer exists (killed) are marked FAIL and not counted:
  on any host through Optuna's heartbeat (hydra.sweeper.heartbeat_interval / grace_period, see
  medseg/sweeps/heartbeat.py), at once when the process was on this host and its pid is gone.
- At the end: trials.csv (every trial) and optimization_results.yaml (best parameters and value).
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from medseg.config.redact import mask_urls
from medseg.errors import MedsegError
from medseg.sweeps import heartbeat, trial_context
from medseg.sweeps.storage import storage_errors
from medseg.sweeps.trials_table import write_results, write_trials_csv

log = logging.getLogger(__name__)

# system attributes naming the sweep process that owns a trial (to detect trials a killed sweep left RUNNING)
HOST_ATTR, PID_ATTR, INTERRUPTED_ATTR = "medseg:host", "medseg:pid", "medseg:interrupted"


def plain_optuna_console() -> None:
    """Optuna's console lines without colour codes unless stderr is a terminal (and NO_COLOR is unset).

    Optuna's default handler colours every line (colorlog) even when stderr is redirected, so a console
    saved to a file (`python run.py -m ... > sweep.log 2>&1`, a batch system's output file) was full of
    escape codes. Optuna's public switch removes its handler; a plain one in the same format replaces it.
    """
    import sys

    if sys.stderr.isatty() and not os.environ.get("NO_COLOR"):
        return
    optuna.logging.disable_default_handler()
    library = logging.getLogger("optuna")
    for handler in list(library.handlers):
        if getattr(handler, "_medseg_plain", False):
            library.removeHandler(handler)
    handler = logging.StreamHandler()  # sys.stderr as it is now
    handler.setFormatter(logging.Formatter("[%(levelname)1.1s %(asctime)s] %(message)s"))
    handler._medseg_plain = True  # type: ignore[attr-defined]
    library.addHandler(handler)


class SweepError(MedsegError):
    """Too many trials of a sweep failed."""


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    def __init__(
        self, pruner: Any = None, heartbeat_interval: int | None = 60, grace_period: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.pruner = pruner
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period

    # ------------------------------------------------------------------ the loop
    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        plain_optuna_console()
        distributions, fixed_params = self._search_space(arguments)
        directions = self._get_directions()
        self._check_direction(directions)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        _make_sqlite_folder(self.storage)

        with storage_errors(self.storage):
            study = optuna.create_study(
                study_name=self.study_name,
                storage=heartbeat.study_storage(self.storage, self.heartbeat_interval, self.grace_period),
                sampler=self._sampler(0),
                pruner=self.pruner or optuna.pruners.NopPruner(),
                directions=directions,
                load_if_exists=True,
            )
        interrupted = _fail_interrupted_trials(study)
        planned = max(0, self.n_trials - _counted(study))
        log.info(
            "study %s (%s): %d trials recorded, %d to run for n_trials=%d%s",
            study.study_name,
            mask_urls(str(self.storage)) if self.storage else "in memory",
            _counted(study),
            planned,
            self.n_trials,
            f"; {interrupted} interrupted trial(s) marked FAIL" if interrupted else "",
        )
        failures: list[str] = []
        try:
            while (to_go := self.n_trials - _counted(study)) > 0:
                trials = [self._ask(study) for _ in range(min(self.n_jobs, to_go))]
                overrides = self._configure_trials(trials, distributions, fixed_params)
                try:
                    with heartbeat.beating(study, trials):
                        returns = self._launch(trials, overrides)
                except BaseException:
                    _fail(study, trials, interrupted=True)
                    raise
                for trial, ret in zip(trials, returns):
                    error = self._tell(study, trial, ret, len(directions))
                    if error is not None:
                        failures.append(f"trial {trial.number}: {error}")
                _release(returns)
                if len(failures) > self.max_failure_rate * planned:
                    raise SweepError(
                        f"{len(failures)} of {planned} planned trials failed (hydra.sweeper.max_failure_rate="
                        f"{self.max_failure_rate}); last: {failures[-1]}; see the run.log in {sweep_dir}/<trial>/"
                    )
        finally:
            write_trials_csv(sweep_dir / "trials.csv", study)
        write_results(sweep_dir / "optimization_results.yaml", study, directions)

    # ------------------------------------------------------------------ pieces
    def _search_space(self, arguments: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Distributions from hydra.sweeper.params and the command line (as the stock sweeper reads them)."""
        self._process_searchspace_config()
        params_conf = self._parse_sweeper_params_config() + list(arguments)
        override_distributions, fixed_params = create_params_from_overrides(params_conf)
        distributions = dict(self.search_space_distributions or {})
        distributions.update(override_distributions)
        for name in fixed_params:
            distributions.pop(name, None)
        if _is_grid(self.sampler):
            raise MedsegError("hydra.sweeper.sampler=grid is not supported by medseg_optuna; use a plain multirun")
        return distributions, fixed_params

    def _check_direction(self, directions: list[str]) -> None:
        mode = OmegaConf.select(self.config, "trainer.monitor_mode")
        expected = {"max": "maximize", "min": "minimize"}.get(str(mode))
        if len(directions) == 1 and expected and directions[0] != expected:
            log.warning(
                "hydra.sweeper.direction=%s but trainer.monitor_mode=%s (%s); the sweep optimises the returned metric",
                directions[0],
                mode,
                OmegaConf.select(self.config, "trainer.monitor"),
            )

    def _sampler(self, trials_so_far: int) -> Any:
        """The configured sampler; a seeded one re-seeded with seed + trials so far (no replay after a restart)."""
        cfg = OmegaConf.select(self.config, "hydra.sweeper.sampler")
        seed = cfg.get("seed") if isinstance(cfg, DictConfig) else None
        if seed is None:
            return self.sampler
        return instantiate(cfg, seed=int(seed) + int(trials_so_far))

    def _ask(self, study: optuna.Study) -> optuna.Trial:
        study.sampler = self._sampler(len(study.get_trials(deepcopy=False)))
        heartbeat.fail_stale_trials(study)  # a dead worker's trials end before n_trials is counted again
        trial = study.ask()
        trial.set_system_attr(HOST_ATTR, socket.gethostname())
        trial.set_system_attr(PID_ATTR, os.getpid())
        heartbeat.record(study, [trial])
        return trial

    def _launch(self, trials: list[optuna.Trial], overrides: Sequence[Sequence[str]]) -> list[JobReturn]:
        """Launch with job number = trial number, and the trials visible to in-process jobs."""
        numbers = [t.number for t in trials]
        with trial_context.active(trials):
            if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
                returns = list(self.launcher.launch(overrides, initial_job_idx=numbers[0]))
            else:  # another worker took numbers in between: one job at a time keeps folders = trial numbers
                returns = [r for n, o in zip(numbers, overrides) for r in self.launcher.launch([o], initial_job_idx=n)]
        self.job_idx = numbers[-1] + 1
        return returns

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: JobReturn, n_objectives: int) -> str | None:
        """Record the job's outcome; returns the error text of a failed trial."""
        if ret.status != JobStatus.COMPLETED:
            exc = getattr(ret, "_return_value", None)
            if isinstance(exc, optuna.TrialPruned):
                if _told(study, trial, state=TrialState.PRUNED):
                    log.info("trial %d pruned: %s", trial.number, exc)
                return None
            return _fail_one(study, trial, f"{type(exc).__name__}: {exc}")
        value = ret.return_value
        try:
            values = [float(v) for v in (value if n_objectives > 1 else [value])]
        except (TypeError, ValueError):
            return _fail_one(study, trial, f"the job returned {value!r}, not a number (no validation ran?)")
        if len(values) != n_objectives or not all(math.isfinite(v) for v in values):
            return _fail_one(study, trial, f"the job returned {value!r}")
        _told(study, trial, values=values[0] if n_objectives == 1 else values)
        return None


def _release(returns: list[JobReturn]) -> None:
    """Drop what failed in-process jobs still hold (a traceback keeps their tensors, e.g. after out of memory)."""
    import gc
    import sys

    for ret in returns:
        if isinstance(ret._return_value, BaseException):
            ret._return_value.__traceback__ = None
        ret.return_value = None
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fail_one(study: optuna.Study, trial: optuna.Trial, error: str) -> str:
    if _told(study, trial, state=TrialState.FAIL):
        log.warning("trial %d failed: %s", trial.number, error)
    return error


def _told(study: optuna.Study, trial: optuna.Trial, **outcome: Any) -> bool:
    """study.tell; False when another worker already failed the trial (its heartbeat was late)."""
    try:
        study.tell(trial, **outcome)
    except RuntimeError as exc:
        log.warning("trial %d: result not recorded (%s); another worker failed it as stale", trial.number, exc)
        return False
    return True


def _fail(study: optuna.Study, trials: list[optuna.Trial], interrupted: bool) -> None:
    for trial in trials:
        try:
            if interrupted:
                trial.set_system_attr(INTERRUPTED_ATTR, True)
            study.tell(trial, state=TrialState.FAIL)
        except Exception:  # noqa: BLE001 - already finished, or the storage is gone; nothing to record
            pass


def _counted(study: optuna.Study) -> int:
    """Trials that count towards n_trials: all but those a stopped or dead sweep process left unfinished."""
    stale = heartbeat.stale_numbers(study)
    trials = study.get_trials(deepcopy=False)
    return sum(1 for t in trials if not t.system_attrs.get(INTERRUPTED_ATTR) and t.number not in stale)


def _fail_interrupted_trials(study: optuna.Study) -> int:
    """Trials RUNNING for a sweep process of this host that is gone (killed): FAIL, not counted. Dead
    workers of other hosts are found by their missing heartbeat (fail_stale_trials, before every ask)."""
    before = heartbeat.stale_numbers(study)
    heartbeat.fail_stale_trials(study)
    host, stale = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.system_attrs.get(PID_ATTR)
        if t.system_attrs.get(HOST_ATTR) == host and pid is not None and not _alive(int(pid)):
            stale.append(optuna.Trial(study, t._trial_id))
    _fail(study, stale, interrupted=True)
    return len(stale) + len(heartbeat.stale_numbers(study) - before)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a trial of this very process cannot be running before its sweep started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_sqlite_folder(storage: Any) -> None:
    url = str(storage or "")
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)


def _is_grid(sampler: Any) -> bool:
    import functools

    return isinstance(sampler, functools.partial) and sampler.func is optuna.samplers.GridSampler
