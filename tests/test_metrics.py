"""Epoch metrics: Dice/IoU per class from confusion counts, matching MONAI, with empty classes explicit."""

from __future__ import annotations

import math

import torch

from medseg.engine.metrics import ConfusionCounter, foreground_mean, ranked_classes


def one_hot_logits(pred: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, k).movedim(-1, 1).float()


def test_hand_computed_dice_and_iou():
    truth = torch.tensor([[0, 1, 1, 2], [0, 1, 2, 2]])[None, None]  # (1, 1, 2, 4)
    pred = torch.tensor([[0, 1, 0, 2], [1, 1, 2, 0]])[None]
    counter = ConfusionCounter(4)
    counter.update(one_hot_logits(pred, 4), truth)
    scores = counter.scores()
    # class 1: tp 2, pred 3, true 3 -> dice 4/6 ; iou 2/4
    assert math.isclose(scores["dice"][1], 4 / 6)
    assert math.isclose(scores["iou"][1], 2 / 4)
    # class 2: tp 2, pred 2, true 3 -> dice 4/5 ; iou 2/3
    assert math.isclose(scores["dice"][2], 4 / 5)
    assert math.isclose(scores["iou"][2], 2 / 3)
    # class 3 is absent from truth and prediction: no score, left out of the mean
    assert math.isnan(scores["dice"][3])
    assert math.isclose(foreground_mean(scores["dice"]), (4 / 6 + 4 / 5) / 2)


def test_false_positive_class_scores_zero():
    truth = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    pred[0, 0, 0] = 1
    counter = ConfusionCounter(2)
    counter.update(one_hot_logits(pred, 2), truth)
    assert counter.scores()["dice"][1] == 0.0


def test_binary_and_accumulation_match_monai():
    from monai.metrics import DiceMetric

    g = torch.Generator().manual_seed(0)
    counter = ConfusionCounter(2)
    preds, truths = [], []
    for _ in range(3):
        truth = (torch.rand(2, 1, 16, 16, generator=g) > 0.6).long()
        pred = (torch.rand(2, 16, 16, generator=g) > 0.5).long()
        counter.update(one_hot_logits(pred, 2), truth)
        preds.append(pred)
        truths.append(truth[:, 0])
    # global Dice over all batches equals MONAI's Dice on everything concatenated as one image
    p = one_hot_logits(torch.cat(preds).reshape(1, -1), 2)
    t = one_hot_logits(torch.cat(truths).reshape(1, -1), 2)
    expected = DiceMetric(include_background=False)(p, t).item()
    assert math.isclose(counter.scores()["dice"][1], expected, rel_tol=1e-6)


def test_ranked_classes_by_name():
    names = ["background", "liver", "spleen", "kidney"]
    ranked = ranked_classes([0.99, 0.5, float("nan"), 0.9], names, k=5)
    assert [n for n, _ in ranked["top"]] == ["kidney", "liver"]
    assert [n for n, _ in ranked["bottom"]] == ["liver", "kidney"]
