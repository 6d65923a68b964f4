"""Optuna studies (resume, failed and pruned trials, result files), the pruning callback, multirun summaries."""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import TINY

# a trial in about a second: tiny data, a tiny U-Net, two training batches, one validation batch
FAST = [*TINY, "model.channels=[4,8]", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- in-process pieces
def test_trials_csv_and_results_list_every_trial_with_state_value_and_params(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    from medseg.sweeps.trials_table import write_results, write_trials_csv

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for value, state in [(0.5, TrialState.COMPLETE), (None, TrialState.FAIL), (0.7, TrialState.COMPLETE)]:
        trial = study.ask()
        trial.suggest_float("optimizer.lr", 1e-5, 1e-2, log=True)
        trial.suggest_categorical("data.scale", [0.5, 1.0])
        study.tell(trial, value, state=state)
    pruned = study.ask()
    pruned.suggest_float("optimizer.lr", 1e-5, 1e-2, log=True)
    pruned.report(0.1, 1)
    study.tell(pruned, state=TrialState.PRUNED)

    rows = read_csv(write_trials_csv(tmp_path / "trials.csv", study))
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "COMPLETE", "PRUNED"]
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"]
    assert float(rows[2]["value"]) == 0.7 and rows[1]["value"] == ""
    assert {"duration_s", "params_optimizer.lr", "params_data.scale"} <= set(rows[0])
    assert rows[3]["params_data.scale"] == ""  # not sampled for that trial

    results = OmegaConf.load(write_results(tmp_path / "optimization_results.yaml", study, ["maximize"]))
    assert results.best_trial == 2 and results.best_value == 0.7
    assert dict(results.trials) == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 1}
    assert set(results.best_params) == {"optimizer.lr", "data.scale"}


def test_pruning_callback_reports_each_validation_and_raises_when_pruned() -> None:
    import optuna

    from medseg.engine.optuna_pruning import OptunaPruning

    class FakeTrainer:
        should_stop = False

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.3))
    trial = study.ask()
    callback, trainer = OptunaPruning(trial, "val/dice"), FakeTrainer()
    callback.on_epoch_end(trainer, {"epoch": 1, "val/dice": 0.5})
    callback.on_epoch_end(trainer, {"epoch": 2})  # no validation this epoch: nothing reported
    with pytest.raises(optuna.TrialPruned):
        callback.on_epoch_end(trainer, {"epoch": 3, "val/dice": 0.2})
    assert trainer.should_stop
    assert study.get_trials()[0].intermediate_values == {1: 0.5, 3: 0.2}


def test_no_trial_outside_an_optuna_sweep() -> None:
    from medseg.sweeps.trial_context import current_trial

    assert current_trial() is None


def test_multirun_summary_has_one_row_per_job_with_final_metrics(tmp_path: Path) -> None:
    from medseg.sweeps.multirun_summary import write_summary

    def job(num: int, lr: str, history: list[dict] | None) -> None:
        folder = tmp_path / str(num)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={lr}\n- trainer.max_epochs=2\n")
        if history is not None:
            (folder / "history.json").write_text(json.dumps(history))

    record = {"train/loss": 1.0, "val/loss": 1.1, "val/dice": 0.4, "val/iou": 0.3, "best/val/dice": 0.45}
    job(0, "1e-4", [{**record, "epoch": 1}, {**record, "epoch": 2, "val/dice": 0.42}])
    job(1, "5e-5", [{**record, "epoch": 1}, {**record, "epoch": 2, "val/dice": 0.38}])
    job(10, "1e-5", None)  # failed before its first epoch

    path, table = write_summary(tmp_path)
    rows = read_csv(path)
    assert path == tmp_path / "multirun_summary.csv"
    assert [r["job"] for r in rows] == ["0", "1", "10"]
    assert [r["overrides"] for r in rows] == ["optimizer.lr=1e-4", "optimizer.lr=5e-5", "optimizer.lr=1e-5"]
    assert rows[0]["val/dice"] == "0.42" and rows[1]["best/val/dice"] == "0.45" and rows[0]["epochs"] == "2"
    assert rows[2]["status"] == "no history" and rows[2]["val/dice"] == ""
    assert "optimizer.lr=5e-05" not in table and "0.38" in table


# ---------------------------------------------------------------- the sweep loop, with a fake launcher
class FakeLauncher:
    """Runs `job(params, job_num)` in-process for each override set, like Hydra's basic launcher."""

    def __init__(self, job) -> None:
        self.job, self.job_nums = job, []

    def launch(self, overrides, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        returns = []
        for i, job_overrides in enumerate(overrides):
            self.job_nums.append(initial_job_idx + i)
            params = dict(o.split("=", 1) for o in job_overrides)
            ret = JobReturn(overrides=list(job_overrides))
            try:
                ret.return_value, ret.status = self.job(params, initial_job_idx + i), JobStatus.COMPLETED
            except Exception as exc:  # what Hydra's run_job does with a failing task
                ret.return_value, ret.status = exc, JobStatus.FAILED
            returns.append(ret)
        return returns


def make_sweeper(tmp_path: Path, job, n_trials: int, max_failure_rate: float = 0.5, seed: int | None = 7):
    from hydra.utils import instantiate

    from medseg.sweeps.optuna_sweeper import ResumableOptunaSweeperImpl

    sampler_cfg = {"_target_": "optuna.samplers.TPESampler", "seed": seed}
    sweeper = ResumableOptunaSweeperImpl(
        sampler=instantiate(sampler_cfg),
        direction="maximize",
        storage=f"sqlite:///{tmp_path}/optuna.db",
        study_name="unit",
        n_trials=n_trials,
        n_jobs=1,
        max_failure_rate=max_failure_rate,
        search_space=None,
        custom_search_space=None,
        params=OmegaConf.create({"optimizer.lr": "tag(log, interval(1e-5, 1e-2))", "data.scale": "choice(0.5, 1.0)"}),
    )
    sweeper.config = OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(tmp_path)}, "sweeper": {"sampler": sampler_cfg}}, "trainer": {}}
    )
    sweeper.launcher = FakeLauncher(job)
    return sweeper


def load_trials(tmp_path: Path):
    import optuna

    return optuna.load_study(study_name="unit", storage=f"sqlite:///{tmp_path}/optuna.db").trials


def test_resumed_study_runs_only_missing_trials_with_new_parameters_and_job_numbers(tmp_path: Path) -> None:
    def job(params, num):
        return float(params["optimizer.lr"])

    first = make_sweeper(tmp_path, job, n_trials=2)
    first.sweep([])
    second = make_sweeper(tmp_path, job, n_trials=4)  # a fresh process: same seed, same study
    second.sweep([])
    trials = load_trials(tmp_path)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert first.launcher.job_nums == [0, 1] and second.launcher.job_nums == [2, 3]
    assert len({t.params["optimizer.lr"] for t in trials}) == 4
    assert len(read_csv(tmp_path / "trials.csv")) == 4

    third = make_sweeper(tmp_path, job, n_trials=4)
    third.sweep([])
    assert third.launcher.job_nums == [] and len(load_trials(tmp_path)) == 4


def test_failed_pruned_and_non_finite_trials_are_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    import optuna

    from medseg.errors import ConfigError

    def job(params, num):
        outcome = ["fine", "error", "pruned", "nan", "none", "fine"][num]
        if outcome == "error":
            raise ConfigError("data.scale=2 must be in (0, 1]")
        if outcome == "pruned":
            raise optuna.TrialPruned("val/dice=0.1 at epoch 1")
        return {"fine": 0.5, "nan": float("nan"), "none": None}[outcome]

    make_sweeper(tmp_path, job, n_trials=6, max_failure_rate=1.0).sweep([])
    states = [t.state.name for t in load_trials(tmp_path)]
    assert states == ["COMPLETE", "FAIL", "PRUNED", "FAIL", "FAIL", "COMPLETE"]
    assert OmegaConf.load(tmp_path / "optimization_results.yaml").best_value == 0.5


def test_too_many_failures_stop_the_sweep_and_keep_the_record(tmp_path: Path) -> None:
    from medseg.sweeps.optuna_sweeper import SweepError

    def job(params, num):
        raise RuntimeError("CUDA out of memory")

    sweeper = make_sweeper(tmp_path, job, n_trials=4, max_failure_rate=0.5)
    with pytest.raises(SweepError, match="3 of 4 planned trials failed"):
        sweeper.sweep([])
    assert [r["state"] for r in read_csv(tmp_path / "trials.csv")] == ["FAIL"] * 3


def test_trials_left_running_by_a_killed_sweep_are_failed_and_not_counted(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    import optuna

    from medseg.sweeps.optuna_sweeper import HOST_ATTR, INTERRUPTED_ATTR, PID_ATTR

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = optuna.create_study(study_name="unit", storage=f"sqlite:///{tmp_path}/optuna.db", direction="maximize")
    orphan = study.ask()  # what a sweep killed during its first trial leaves behind
    orphan.set_system_attr(HOST_ATTR, socket.gethostname())
    orphan.set_system_attr(PID_ATTR, dead.pid)

    make_sweeper(tmp_path, lambda params, num: 0.5, n_trials=2).sweep([])
    trials = load_trials(tmp_path)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].system_attrs[INTERRUPTED_ATTR] is True


# ---------------------------------------------------------------- real sweeps through run.py
def sweep(run_cli, *args: str):
    return run_cli("hydra.mode=MULTIRUN", "hparams_search=optuna", *FAST, *args, check=True)


@pytest.mark.slow
def test_a_stopped_study_resumes_to_n_trials_in_total_without_repeating_parameters(run_cli, tmp_path: Path) -> None:
    sweep(run_cli, "hydra.sweeper.n_trials=1")
    second = sweep(run_cli, "hydra.sweeper.n_trials=2")
    sweep_dir = tmp_path / "multirun"
    assert "1 trials recorded, 1 to run" in second.stdout + second.stderr

    rows = read_csv(sweep_dir / "trials.csv")
    assert [r["number"] for r in rows] == ["0", "1"]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    params = [(r["params_optimizer.lr"], r["params_data.scale"]) for r in rows]
    assert len(set(params)) == 2  # the re-created seeded sampler did not replay trial 0
    # job folders continue the numbering: one per trial, each with its own training history
    for n in range(2):
        history = json.loads((sweep_dir / str(n) / "history.json").read_text())
        assert history[-1]["val/dice"] == pytest.approx(float(rows[n]["value"]))
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.best_value == max(float(r["value"]) for r in rows)
    assert results.best_params["optimizer.lr"] == pytest.approx(float(rows[results.best_trial]["params_optimizer.lr"]))


@pytest.mark.slow
def test_failing_and_pruned_trials_are_recorded_and_the_sweep_goes_on(run_cli, tmp_path: Path) -> None:
    # data.scale=2.0 is invalid (a ConfigError in the job); a threshold above any Dice prunes every
    # valid trial after its first validation
    sweep(
        run_cli,
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.max_failure_rate=1.0",
        "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:2.0}",
        "trainer.max_epochs=3",
        "optimizer.lr=1e-3",
        "data.scale=choice(2.0,0.5)",
    )
    sweep_dir = tmp_path / "multirun"
    rows = read_csv(sweep_dir / "trials.csv")
    assert len(rows) == 3
    assert {r["params_data.scale"]: r["state"] for r in rows} == {"2.0": "FAIL", "0.5": "PRUNED"}
    for row in rows:
        history = sweep_dir / row["number"] / "history.json"
        if row["state"] == "FAIL":
            assert not history.exists()
            assert "data.scale=2.0 must be in (0, 1]" in (sweep_dir / row["number"] / "run.log").read_text()
        else:  # stopped after epoch 1 of 3, its files written
            assert len(json.loads(history.read_text())) == 1
            assert float(row["value"]) == pytest.approx(json.loads(history.read_text())[0]["val/dice"])
            assert (sweep_dir / row["number"] / "checkpoints" / "last.pt").is_file()
    summary = read_csv(sweep_dir / "multirun_summary.csv")
    expected = sorted("ok" if r["state"] == "PRUNED" else "no history" for r in rows)
    assert sorted(r["status"] for r in summary) == expected


# ---------------------------------------------------------------- workers on several hosts
def _as_another_host(tmp_path: Path, env: dict[str, str]) -> list[str]:
    """A command prefix that runs a process under the host name `worker-a`: its own UTS namespace where
    the kernel allows one (unshare), else a sitecustomize that makes the sweeper record that name (the
    stale-trial handling under test runs in the other, untouched process)."""
    import shutil
    import subprocess

    if shutil.which("unshare") and subprocess.run(["unshare", "-r", "-u", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-r", "-u", "sh", "-c", 'hostname worker-a && exec "$@"', "sh"]
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import socket\nsocket.gethostname = lambda: 'worker-a'\n")
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return []


def _running_on(db: Path, host: str) -> bool:
    """Whether the study holds a RUNNING trial of `host` with a recorded heartbeat."""
    import sqlite3

    if not db.is_file():
        return False
    query = (
        "SELECT count(*) FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id"
        " JOIN trial_system_attributes a ON a.trial_id = t.trial_id"
        " WHERE t.state = 'RUNNING' AND a.key = 'medseg:host' AND a.value_json = ?"
    )
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as con:
            return con.execute(query, (json.dumps(host),)).fetchone()[0] > 0
    except sqlite3.OperationalError:  # tables not created yet
        return False


@pytest.mark.slow
def test_a_trial_killed_on_another_host_is_failed_by_its_heartbeat_and_not_counted(
    run_cli, tmp_path: Path, cache_dir: Path
) -> None:
    """Worker A (another host name) is killed with SIGKILL in the middle of its trial; worker B on this host
    fails that trial once its heartbeat is older than the grace period and runs the study's one trial itself."""
    import signal
    import subprocess
    import sys
    import time

    import optuna

    from tests.conftest import ROOT

    sweep_dir = tmp_path / "multirun"
    study = ["hparams_search=optuna", "hydra.sweeper.n_trials=1", "hydra.sweeper.heartbeat_interval=1"]
    study += ["hydra.sweeper.grace_period=2"]
    env = {**os.environ, "MEDSEG_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
    prefix = _as_another_host(tmp_path, env)
    worker_a = [sys.executable, str(ROOT / "run.py"), "-m", f"hydra.sweep.dir={sweep_dir}", *study, *FAST]
    proc = subprocess.Popen(
        [*prefix, *worker_a, "trainer.max_epochs=100000"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (_running_on(sweep_dir / "optuna.db", "worker-a") and (sweep_dir / "0" / "history.json").is_file()):
            assert proc.poll() is None and time.monotonic() < deadline, "worker A never got into its trial"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(3)  # past the grace period

    second = run_cli("hydra.mode=MULTIRUN", *study, *FAST, check=True)
    assert "1 interrupted trial(s) marked FAIL" in second.stdout + second.stderr
    loaded = optuna.load_study(study_name="train_optuna", storage=f"sqlite:///{sweep_dir}/optuna.db")
    trials = loaded.trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].system_attrs["medseg:host"] == "worker-a"
    assert "medseg:stale:0" in loaded.system_attrs
    assert [r["state"] for r in read_csv(sweep_dir / "trials.csv")] == ["FAIL", "COMPLETE"]


def test_optuna_lines_carry_no_colour_codes_when_the_console_is_a_file(tmp_path: Path, capsys) -> None:
    """stderr redirected (as `> sweep.log 2>&1` or a batch system's output file): Optuna's lines are plain."""

    def job(params, num):
        return float(params["optimizer.lr"])

    make_sweeper(tmp_path, job, n_trials=1).sweep([])
    err = capsys.readouterr().err
    assert "A new study created" in err
    assert "\x1b[" not in err
