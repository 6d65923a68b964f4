"""model=unetr takes its fixed input size from the data when every item shares one, and the checkpoint
rebuilds the same network for predict; items of different sizes keep the old message."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.models.input_size import fill_input_size, shared_item_size

SMALL_UNETR = ["model=unetr", "model.hidden_size=48", "model.mlp_dim=96", "model.num_heads=4", "model.feature_size=8"]


def _items(*sizes):
    return [{"image": torch.zeros(1, *s), "label": torch.zeros(1, *s)} for s in sizes]


def test_shared_item_size_finds_one_size_or_none():
    assert shared_item_size([_items((32, 32), (32, 32)), _items((32, 32))])[0] == (32, 32)
    size, seen = shared_item_size([_items((32, 32), (48, 32))])
    assert size is None and seen == {(32, 32), (48, 32)}
    patches = [[{"image": torch.zeros(1, 16, 16, 16)}, {"image": torch.zeros(1, 16, 16, 16)}]]
    assert shared_item_size([patches])[0] == (16, 16, 16)  # 3D patch sampling yields lists of patches


def test_items_of_different_sizes_keep_the_fixed_size_message(compose):
    from medseg.models.factory import build_model

    cfg = compose(*SMALL_UNETR)
    assert fill_input_size(cfg.model, 2, [_items((32, 32), (48, 48))]) is None
    assert cfg.model.img_size is None
    with pytest.raises(ConfigError, match="needs a fixed input size"):
        build_model(cfg.model, 1, 4, 2)


def test_a_given_size_is_kept(compose):
    cfg = compose(*SMALL_UNETR, "model.img_size=[64,64]")
    assert fill_input_size(cfg.model, 2, [_items((32, 32))]) is None
    assert list(cfg.model.img_size) == [64, 64]
    unet = compose()
    assert fill_input_size(unet.model, 2, [_items((32, 32))]) is None and "img_size" not in unet.model


def test_unetr_trains_on_demo_data_and_predicts_from_its_checkpoint(compose, tmp_path, cache_dir):
    from medseg.tasks.predict import run_predict
    from medseg.tasks.train import run_train

    run = tmp_path / "run"
    cfg = compose(*SMALL_UNETR, "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", output_dir=run)
    run_train(cfg)  # stopped with "model=unetr needs a fixed input size" before
    ckpt = run / "checkpoints" / "last.pt"
    assert "img_size:\n  - 32\n  - 32" in torch.load(ckpt, weights_only=True)["config_yaml"]

    image = sorted(cache_dir.rglob("imagesTr/*.nii.gz"))[0]
    out = tmp_path / "pred"
    run_predict(
        compose(
            "mode=predict",
            f"ckpt={ckpt}",
            f"predict.input={image}",
            f"predict.output_dir={out}",
            output_dir=tmp_path / "predict_run",
        )
    )
    mask = nib.load(out / image.name)
    assert mask.shape == nib.load(image).shape
    assert np.asarray(mask.dataobj).max() < 4
