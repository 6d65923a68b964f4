"""The experiment recipes: their settings, and each one training end to end on tiny data in its real layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg.data.examples import write_folder, write_totalseg
from medseg.data.uwmgi import CLASSES, rle_decode, rle_encode, write_example
from medseg.tasks.train import run_train


def test_recipe_settings(compose):
    cfg = compose("experiment=pytorch_unet", tiny=False)
    assert (cfg.trainer.max_epochs, cfg.data.batch_size, cfg.optimizer.lr, cfg.data.scale) == (5, 1, 1e-5, 0.5)
    assert (cfg.data.val_percent, cfg.data.num_classes, cfg.data.layout) == (10.0, 2, "folder")
    assert cfg.optimizer._target_ == "torch.optim.RMSprop" and cfg.scheduler.name == "plateau"
    cfg = compose("experiment=totalseg_unet2d", tiny=False)
    assert list(cfg.model.channels) == [32, 64, 128, 256] and list(cfg.data.image_size) == [256, 256]
    assert (cfg.data.batch_size, cfg.optimizer.lr, cfg.trainer.max_epochs) == (16, 1e-3, 20)
    # the cosine spans the run it is given (null = trainer.max_epochs after warm-up), not a fixed 20 epochs
    assert (cfg.scheduler.params.T_max, cfg.scheduler.params.eta_min, cfg.data.intensity.preset) == (None, 1e-6, "ct")
    assert cfg.trainer.log_images_every_n_epochs == 1
    cfg = compose("experiment=uwm_gi_segformer", tiny=False)
    assert cfg.model.variant == "b0" and list(cfg.data.image_size) == [288, 288]
    assert (cfg.optimizer._target_, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("torch.optim.AdamW", 3e-4, 1e-4)
    p = cfg.scheduler.params
    assert (p.pct_start, p.div_factor, p.final_div_factor) == (0.3, 25.0, 1e4)
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches, cfg.trainer.precision) == (6, 2, "16-mixed")
    # the plateau alternative of the TotalSegmentator recipe composes as documented
    cfg = compose(
        "experiment=totalseg_unet2d",
        "scheduler=plateau",
        "scheduler.params.factor=0.5",
        "scheduler.params.patience=3",
        "scheduler.params.min_lr=1e-6",
        tiny=False,
    )
    assert cfg.scheduler.params._target_.endswith("ReduceLROnPlateau")


RUN_LENGTH_KEYS = ("T_max", "total_steps", "total_iters", "T_0")


@pytest.mark.parametrize("recipe", ["pytorch_unet", "totalseg_unet2d", "uwm_gi_segformer"])
def test_recipe_names_its_run_folder_and_its_schedule_follows_the_run_length(compose, recipe):
    cfg = compose(f"experiment={recipe}", "trainer.max_epochs=3", tiny=False)
    assert cfg.task_name == recipe  # the run folder is outputs/<task_name>/...
    params = cfg.scheduler.params or {}
    fixed = {k: params[k] for k in RUN_LENGTH_KEYS if k in params and params[k] is not None}
    assert fixed == {}, f"{recipe} fixes its schedule's length {fixed}: a shorter run would stop mid-schedule"


def test_readme_help_and_migration_say_where_every_recipe_writes():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    recipes = sorted(p.stem for p in (root / "conf" / "experiment").glob("*.yaml"))
    for doc in ("README.md", "docs/migration.md", "conf/hydra/help/medseg.yaml"):
        text = (root / doc).read_text()
        missing = [r for r in recipes if f"outputs/{r}/" not in text]
        assert not missing, f"{doc} does not say where {missing} write"


@pytest.mark.slow
def test_a_recipe_run_writes_to_its_own_folder_and_ends_at_its_schedules_end(tmp_path, cache_dir):
    """run.py as a user types it (no run folder given): the recipe's folder, task_name in the saved config,
    and a 2-epoch run whose cosine ends at eta_min."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from omegaconf import OmegaConf

    root = write_totalseg(tmp_path / "totalseg", num_subjects=3, shape=(32, 32, 8), num_structures=3)
    env = {**os.environ, "MEDSEG_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
    run_py = Path(__file__).resolve().parents[1] / "run.py"
    args = [f"data.root={root}", "data.image_size=[32,32]", "model.channels=[8,16]", "trainer.max_epochs=2"]
    args += ["logger=none", "trainer.progress_bar=false", "report.enabled=false", "trainer.log_images_every_n_epochs=0"]
    proc = subprocess.run(
        [sys.executable, str(run_py), "experiment=totalseg_unet2d", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "outputs" / "train").exists()
    runs = list((tmp_path / "outputs" / "totalseg_unet2d").iterdir())
    assert len(runs) == 1 and (runs[0] / "checkpoints" / "best.pt").is_file()
    assert OmegaConf.load(runs[0] / ".hydra" / "config.yaml").task_name == "totalseg_unet2d"
    last = torch.load(runs[0] / "checkpoints" / "last.pt", weights_only=True)
    cosine = last["schedule"]["scheduler"]
    assert cosine["T_max"] == 2 and cosine["last_epoch"] == 2
    assert cosine["_last_lr"][0] == pytest.approx(1e-6)  # eta_min: the schedule ran to its end in 2 epochs


def _trained(out):
    history = json.loads((out / "history.json").read_text())
    assert (out / "checkpoints" / "best.pt").is_file() and history
    return history


@pytest.mark.slow
def test_pytorch_unet_recipe_on_image_mask_folders(compose, tmp_path):
    root = write_folder(tmp_path / "carvana", num_cases=6, size=(32, 32))
    out = tmp_path / "run"
    run_train(
        compose(
            "experiment=pytorch_unet",
            f"data.root={root}",
            "model.channels=[8,16]",
            "data.val_percent=34",
            "trainer.max_epochs=2",
            "optimizer.lr=1e-3",
            output_dir=out,
        )
    )
    history = _trained(out)
    assert len(history) == 2 and "val/dice/class_1" in history[-1]
    ckpt = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["mask_values"] == [0, 255] and ckpt["dataset"]["in_channels"] == 3


@pytest.mark.slow
def test_totalseg_recipe_on_subject_folders(compose, tmp_path):
    root = write_totalseg(tmp_path / "totalseg", num_subjects=4, shape=(32, 32, 8), num_structures=5)
    out = tmp_path / "run"
    run_train(
        compose(
            "experiment=totalseg_unet2d",
            f"data.root={root}",
            "data.image_size=[32,32]",
            "model.channels=[8,16]",
            "scheduler.params.T_max=1",
            output_dir=out,
        )
    )
    history = _trained(out)
    assert len(history[-1]["val/top5"]) <= 5 and history[-1]["val/bottom5"]
    assert len(json.loads((out / "label_map.json").read_text())) == 6
    assert list((out / "images").glob("*.png"))  # image panels every epoch


def test_uwmgi_rle_roundtrip():
    mask = np.zeros((7, 9), dtype=bool)
    mask[2:5, 3:8] = True
    mask[6, 0] = True
    assert np.array_equal(rle_decode(rle_encode(mask), mask.shape), mask)


@pytest.mark.slow
def test_uwm_gi_segformer_recipe_on_kaggle_layout(compose, tmp_path):
    pytest.importorskip("transformers")
    root = write_example(tmp_path / "uwmgi", cases=3, days=2, slices=4, size=(40, 48))
    out = tmp_path / "run"
    run_train(
        compose(
            "experiment=uwm_gi_segformer",
            f"data.root={root}",
            "data.image_size=[64,64]",
            "data.batch_size=4",
            "trainer.precision=32",
            output_dir=out,
        )
    )
    history = _trained(out)
    names = json.loads((out / "label_map.json").read_text())
    assert list(names.values()) == CLASSES
    ckpt = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["dataset"]["num_classes"] == 4 and history[-1]["val/dice"] is not None
