"""trainer.strategy=ddp under torchrun (2 CPU processes, gloo) matches one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY

# Same global batches in both runs: no shuffling (DistributedSampler deals items 0,2,4.. and 1,3,5.. to the
# two ranks, so each global batch of 2 x 4 is the single run's batch of 8), no augmentation, no batch
# statistics (instance norm), 32 training slices = 4 whole global batches.
SAME_BATCHES = [
    *TINY,
    "model.channels=[4,8]",
    "model.norm=instance",
    "data.augment.enabled=false",
    "data.shuffle=false",
    "optimizer.lr=0.01",
]


def final_weights(run: Path) -> dict:
    import torch

    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
def test_two_process_ddp_matches_a_single_process_with_the_same_global_batch(
    compose, cache_dir: Path, tmp_path: Path
) -> None:
    import torch

    from medseg.tasks.train import run_train

    run_train(compose(*SAME_BATCHES[len(TINY) :], "data.batch_size=8"))  # in this process -> tmp_path/run
    env = {**os.environ, "MEDSEG_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "run.py")]
    ddp_dir = tmp_path / "ddp"
    proc = subprocess.run(
        [*cmd, f"hydra.run.dir={ddp_dir}", *SAME_BATCHES, "data.batch_size=4", "trainer.strategy=ddp"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    single, ddp = final_weights(tmp_path / "run"), final_weights(ddp_dir)
    assert single.keys() == ddp.keys()
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5, msg=name)

    # metrics are summed over ranks: the same numbers as the single process
    h_single = json.loads((tmp_path / "run" / "history.json").read_text())
    h_ddp = json.loads((ddp_dir / "history.json").read_text())
    for key in ("train/loss", "train/dice", "val/loss", "val/dice"):
        assert h_ddp[-1][key] == pytest.approx(h_single[-1][key], rel=1e-4), key
    # only rank 0 wrote files and logged progress: one history, one set of checkpoints, one epoch line per epoch
    assert sorted(p.name for p in (ddp_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    log = (ddp_dir / "run.log").read_text()
    assert log.count("epoch 1/1:") == 1 and "ddp: 2 processes, backend gloo" in log


def test_strategy_ddp_without_torchrun_says_how_to_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg.engine.distributed import init_distributed
    from medseg.errors import ConfigError

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        init_distributed("ddp", "cpu")
    assert init_distributed("auto", "cpu") is None  # one process: no process group
