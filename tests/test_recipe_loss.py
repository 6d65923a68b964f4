"""Dice + cross-entropy with nnU-Net's deep supervision weights, against a computation by hand."""

from __future__ import annotations

import pytest
import torch

from medseg.errors import ConfigError


def dice_ce_by_hand(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MONAI DiceCELoss(to_onehot_y, softmax, include_background=False) written out: mean soft Dice loss
    over foreground classes and samples (smooth 1e-5) + mean cross-entropy over all classes."""
    k = logits.shape[1]
    probs = logits.softmax(1)
    onehot = torch.nn.functional.one_hot(target[:, 0].long(), k).movedim(-1, 1).float()
    axes = tuple(range(2, logits.ndim))
    inter = (probs * onehot).sum(axes)[:, 1:]
    denom = (probs.sum(axes) + onehot.sum(axes))[:, 1:]
    dice = 1 - (2 * inter + 1e-5) / (denom + 1e-5)
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0].long())
    return dice.mean() + ce


def _loss(compose, *overrides):
    from medseg.tasks.build import build_train_loss

    cfg = compose(*overrides)
    return build_train_loss(cfg.trainer.loss, torch.nn.Identity())


@pytest.mark.parametrize("spatial", [(12, 10), (6, 8, 10)])
def test_stacked_dynunet_output_weighs_heads_as_nnunet(compose, spatial):
    torch.manual_seed(0)
    heads = 4  # main + 3 deeper: weights 1, 1/2, 1/4, 0 -> normalised by 1.75
    out = torch.randn(2, heads, 3, *spatial)
    target = torch.randint(0, 3, (2, 1, *spatial))
    expected = sum(w * dice_ce_by_hand(out[:, i], target) for i, w in enumerate([1, 0.5, 0.25, 0.0])) / 1.75
    assert float(_loss(compose)(out, target)) == pytest.approx(float(expected), rel=1e-5)


def test_list_output_with_smaller_heads_and_plain_output(compose):
    torch.manual_seed(1)
    target = torch.randint(0, 3, (2, 1, 16, 16))
    main, half, quarter = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)
    loss = _loss(compose)
    small_target = target[:, :, 1::2, 1::2]  # nearest-exact down-sampling by 2: voxel centres 2i + 1
    expected = (dice_ce_by_hand(main, target) + 0.5 * dice_ce_by_hand(half, small_target)) / 1.5
    assert float(loss([main, half, quarter], target)) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss(main, target)) == pytest.approx(float(dice_ce_by_hand(main, target)), rel=1e-5)
    # a plain 3D output (B, C, D, H, W) has as many axes as a stacked 2D one: its target tells them apart
    vol, vol_target = torch.randn(2, 3, 4, 6, 6), torch.randint(0, 3, (2, 1, 4, 6, 6))
    assert float(loss(vol, vol_target)) == pytest.approx(float(dice_ce_by_hand(vol, vol_target)), rel=1e-5)


def test_monai_exp_weights_on_request_and_unknown_mode_refused(compose):
    torch.manual_seed(2)
    out, target = torch.randn(1, 3, 2, 8, 8), torch.randint(0, 2, (1, 1, 8, 8))
    loss = _loss(compose, "trainer.loss.deep_supervision=exp")
    expected = sum(w * dice_ce_by_hand(out[:, i], target) for i, w in enumerate([1, 0.5, 0.25]))
    assert float(loss(out, target)) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ConfigError, match="trainer.loss.deep_supervision"):
        _loss(compose, "trainer.loss.deep_supervision=halves")
