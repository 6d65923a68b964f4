"""recipe=nnunet composes nnU-Net's training defaults as ordinary keys; its checkpoint predicts with mirroring."""

from __future__ import annotations

from types import SimpleNamespace

from omegaconf import OmegaConf

from medseg.tasks.build import config_from_checkpoint
from medseg.tasks.restore import mirroring_at_test_time


def test_recipe_sets_nnunets_defaults_and_a_command_line_key_wins(compose):
    cfg = compose("recipe=nnunet")
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.nesterov and cfg.optimizer.momentum == 0.99
    assert cfg.scheduler.name == "poly" and cfg.scheduler.params.power == 0.9
    assert cfg.data.augment.name == "nnunet" and cfg.data.augment.batched and cfg.data.fg_oversample == 0.33
    assert cfg.trainer.loss.deep_supervision == "nnunet" and cfg.data.augment.test_time_mirroring
    mine = compose("recipe=nnunet", "data.augment.flip_prob=0.2", "optimizer.lr=0.05", "data.fg_oversample=0.5")
    assert (mine.data.augment.flip_prob, mine.optimizer.lr, mine.data.fg_oversample) == (0.2, 0.05, 0.5)
    plain = compose()
    assert plain.data.augment.name == "flips" and not plain.data.augment.test_time_mirroring
    assert plain.data.fg_oversample is None and plain.predict.tta is None


def test_the_checkpoint_carries_test_time_mirroring_and_predict_tta_overrides_it(compose):
    for overrides, stored in ((["recipe=nnunet"], True), ([], False)):
        cfg = compose(*overrides)
        stored_cfg = config_from_checkpoint({"config_yaml": OmegaConf.to_yaml(cfg, resolve=True)}, "ckpt")
        restored = SimpleNamespace(cfg=stored_cfg)
        assert mirroring_at_test_time(None, restored) is stored  # through the stored-config allow-list
        assert mirroring_at_test_time(not stored, restored) is (not stored)


def test_every_checkpoint_predictor_mirrors_as_the_training_run_chose(compose):
    """Predict, evaluate, out-of-fold predictions and crossval ensembles share checkpoint_predictor: with
    predict.tta=null a recipe checkpoint mirrors at test time in each of them (the fold runs' out-of-fold
    predictions once read predict.tta as a plain bool and never mirrored)."""
    import torch

    from medseg.tasks.restore import checkpoint_predictor

    for overrides, stored in ((["recipe=nnunet"], True), ([], False)):
        cfg = compose(*overrides)
        stored_cfg = config_from_checkpoint({"config_yaml": OmegaConf.to_yaml(cfg, resolve=True)}, "ckpt")
        restored = SimpleNamespace(cfg=stored_cfg, model=torch.nn.Identity(), num_classes=4)
        predictor = checkpoint_predictor(restored, cfg.predict, torch.device("cpu"))
        assert cfg.predict.tta is None and predictor.tta is stored
        ensemble = checkpoint_predictor(restored, cfg.predict, torch.device("cpu"), models=[restored.model] * 2)
        assert ensemble.tta is stored
