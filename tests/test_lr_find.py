"""mode=lr_find: the LR range test writes its plot and numbers and suggests a learning rate."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.precision import Precision
from medseg.tasks.lr_find import lr_range_test, suggest_lr

FP32 = Precision("32", None, False)


def test_suggestion_is_at_the_steepest_descent():
    lrs = list(np.logspace(-6, 0, 61))
    # a loss that falls fastest around lr = 1e-3 (a logistic step in log10 lr)
    smoothed = [2.0 - 1.0 / (1.0 + math.exp(-4 * (math.log10(lr) + 3))) for lr in lrs]
    assert suggest_lr(lrs, smoothed) == pytest.approx(1e-3, rel=0.3)
    assert suggest_lr(lrs[:3], smoothed[:3]) is None  # too few points for a slope


def _regression_batches():
    torch.manual_seed(0)
    w = torch.randn(4, 1)
    while True:
        x = torch.randn(16, 4)
        yield {"image": x, "label": x @ w}


def test_range_test_sweeps_exponentially_and_stops_on_divergence():
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    result = lr_range_test(
        model,
        torch.nn.functional.mse_loss,
        optimizer,
        _regression_batches(),
        device=torch.device("cpu"),
        precision=FP32,
        min_lr=1e-4,
        max_lr=100.0,
        num_steps=60,
    )
    lrs = np.asarray(result["lrs"])
    assert lrs[0] == pytest.approx(1e-4)
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, ratios[0])  # a constant factor per step: exponential
    assert result["diverged"] and result["steps"] < 60  # SGD on MSE blows up well before lr = 100
    assert 1e-4 <= result["suggestion"] <= lrs[-1]
    assert min(result["smoothed"]) < result["smoothed"][0]  # the loss fell before it diverged


def test_lr_find_mode_writes_plot_and_json(compose, tmp_path, caplog):
    from medseg.app import main

    cfg = compose("mode=lr_find", "lr_find.num_steps=8", "lr_find.min_lr=1e-5", "lr_find.max_lr=1.0")
    with caplog.at_level(logging.INFO, logger="medseg.tasks.lr_find"):
        suggestion = main(cfg)
    run = tmp_path / "run"
    data = json.loads((run / "lr_find.json").read_text())
    assert len(data["lrs"]) == len(data["losses"]) == data["steps"] <= 8
    assert data["suggestion"] == suggestion
    assert 1e-5 <= suggestion <= 1.0
    assert (run / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert not (run / "checkpoints").exists()  # a range test leaves no weights behind
    assert f"suggested learning rate {suggestion:.2e}" in caplog.text


def test_lr_find_rejects_a_reversed_range(compose):
    from medseg.app import main

    cfg = compose("mode=lr_find", "lr_find.min_lr=1.0", "lr_find.max_lr=1e-3")
    with pytest.raises(ConfigError, match="min_lr"):
        main(cfg)
