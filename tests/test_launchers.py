"""launcher=joblib / submitit_slurm and hparams_search=optuna compose into the Hydra config (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_with_hydra(*overrides: str):
    from hydra import compose, initialize_config_dir

    from medseg.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize(
    ("choice", "target"),
    [
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ],
)
def test_launcher_configs_select_the_plugin(choice: str, target: str) -> None:
    cfg = compose_with_hydra(f"launcher={choice}")
    assert cfg.hydra.launcher._target_ == target
    assert cfg.hydra.runtime.choices["hydra/launcher"] == choice
    # the training config itself is untouched by the launcher choice
    assert cfg.trainer.max_epochs == compose_with_hydra().trainer.max_epochs


def test_slurm_launcher_keys_are_overridable() -> None:
    cfg = compose_with_hydra("launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30")
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.timeout_min == 30


def test_default_launcher_is_hydras_basic_one() -> None:
    cfg = compose_with_hydra()
    assert cfg.hydra.launcher._target_ == "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def test_optuna_search_uses_our_sweeper_with_a_stable_study_folder() -> None:
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    cfg = compose_with_hydra("hparams_search=optuna", "task_name=seg")
    sweeper = cfg.hydra.sweeper
    found = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Sweeper)}
    assert sweeper._target_ in found  # Hydra only instantiates sweepers found under hydra_plugins/
    assert sweeper.direction == "maximize" and cfg.trainer.monitor_mode == "max"
    assert sweeper.sampler.seed == cfg.seed
    # no timestamp in the folder: the same command finds the same study again
    assert cfg.hydra.sweep.dir == "multirun/seg/seg_optuna"
    assert sweeper.storage == "sqlite:///multirun/seg/seg_optuna/optuna.db"
    assert set(OmegaConf.to_container(sweeper.params)) == {"optimizer.lr", "data.batch_size", "data.scale"}
    assert "log" in sweeper.params["optimizer.lr"]


def test_optuna_search_composes_with_a_launcher() -> None:
    cfg = compose_with_hydra("hparams_search=optuna", "launcher=joblib", "hydra.sweeper.n_jobs=2")
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.sweeper._target_.startswith("hydra_plugins.medseg_optuna_sweeper.")
    assert cfg.hydra.sweeper.n_jobs == 2
