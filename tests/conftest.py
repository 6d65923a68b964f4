"""Shared fixtures: in-process config composition and tiny synthetic settings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small enough to train an epoch in a second or two on a 2-core CPU.
TINY = [
    "data.synthetic.num_cases=6",
    "data.synthetic.shape=[32,32,8]",
    "data.batch_size=4",
    "data.val_percent=34",
    "trainer.max_epochs=1",
    "trainer.progress_bar=false",
    "trainer.accumulate_grad_batches=1",
    "logger=none",
    "print_config=false",
]


def tiny_for(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """TINY for a composition with these overrides: the demo data's sizes only where the demo data is the
    chosen layout (data.synthetic.* is a key of data=synthetic only; another layout refuses it)."""
    from omegaconf import OmegaConf

    layout = "synthetic"
    for item in overrides:
        group, _, option = item.partition("=")
        if group == "experiment":
            entries = OmegaConf.load(CONF / "experiment" / f"{option}.yaml").get("defaults", [])
            layout = next((e["override /data"] for e in entries if "override /data" in e), layout)
    layout = next((item.partition("=")[2] for item in overrides if item.startswith("data=")), layout)
    return [o for o in TINY if layout == "synthetic" or not o.startswith("data.synthetic.")]


@pytest.fixture(autouse=True)
def _one_torch_thread_per_xdist_worker() -> None:
    """Under pytest-xdist the workers share the CPUs: one PyTorch thread each (reset before every test,
    as a run in this process sets its own), because PyTorch's intra-op threads slow down many-fold when
    another process keeps a CPU busy."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("medseg_cache")


@pytest.fixture
def compose(cache_dir: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """compose(*overrides, tiny=True) -> the config run.py would see, with its run folder in tmp_path."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from medseg.config import register_configs

    register_configs()

    def _compose(*overrides: str, tiny: bool = True, output_dir: Path | None = None) -> DictConfig:
        base = tiny_for(overrides) if tiny else ["logger=none", "print_config=false"]
        base += [f"paths.cache_dir={cache_dir}", f"paths.output_dir={output_dir or tmp_path / 'run'}"]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=base + list(overrides))

    return _compose


@pytest.fixture
def run_cli(cache_dir: Path, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run `python run.py ...` in a subprocess with run folders under tmp_path."""

    def _run(*args: str, check: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
        env = {**os.environ, "MEDSEG_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
        env.pop("HYDRA_FULL_ERROR", None)
        cmd = [
            sys.executable,
            str(ROOT / "run.py"),
            f"hydra.run.dir={tmp_path}/run",
            f"hydra.sweep.dir={tmp_path}/multirun",
            *args,
        ]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"run.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    return _run


@pytest.fixture(scope="session")
def exported(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """The deploy tests' demo models as checkpoints and exports: name -> (best.pt, export folder)."""
    from tests.deploy_models import export_models

    return export_models(cache_dir, tmp_path_factory)


@pytest.fixture(scope="session")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A volume of a size no model was trained on (not divisible by 16, odd slice count)."""
    from tests.deploy_models import write_scan

    return write_scan(tmp_path_factory)
