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
    assert (cfg.scheduler.params.T_max, cfg.scheduler.params.eta_min, cfg.data.intensity.preset) == (20, 1e-6, "ct")
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
