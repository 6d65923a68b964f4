"""mode=lr_find: the LR range test writes its plot and numbers and suggests a learning rate."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.precision import Precision
from medseg.tasks.lr_find import lr_range_test, suggest_lr

FP32 = Precision("32", None, False)


def _sweep_curve(lrs, seed=0, noise=0.03):
    """A range test's loss: flat, falling fastest at lr = 1e-3 (a logistic step in log10 lr), then a noisy
    floor that rises slowly towards lr = 1."""
    rng = np.random.default_rng(seed)
    x = np.log10(lrs)
    exact = 2.0 - 1.0 / (1.0 + np.exp(-3 * (x + 3.0))) + 0.05 * np.exp(2 * (x + 0.5))
    return list(exact + rng.normal(0, noise, len(lrs))), exact


def _floor_start(lrs, exact):
    """Where the noiseless curve first comes within 10 % of its whole fall from its lowest value."""
    low = int(np.argmin(exact))
    fall = exact[: low + 1].max() - exact[low]
    return lrs[int(np.argmax(exact[: low + 1] <= exact[low] + 0.1 * fall))]


def test_suggestion_is_a_tenth_of_where_the_loss_reaches_its_floor():
    lrs = list(np.logspace(-7, 0, 100))
    losses, exact = _sweep_curve(lrs)
    got = suggest_lr(lrs, losses)
    floor = _floor_start(lrs, exact)
    assert got["floor_lr"] == pytest.approx(floor, rel=0.5)
    assert got["suggestion"] == pytest.approx(got["floor_lr"] / 10)
    assert got["suggestion"] < 1e-3 < got["floor_lr"] < got["loss_min_lr"]  # below the steepest descent
    assert not got["still_falling"]


def test_running_average_lag_does_not_move_the_suggestion():
    """The sweep's running average (smoothing 0.98) trails the loss by ~50 steps: read on it, the floor
    begins several-fold later. The rule reads a centred average, which does not lag."""
    lrs = list(np.logspace(-7, 0, 100))
    losses, exact = _sweep_curve(lrs)
    avg, running = 0.0, []
    for step, value in enumerate(losses):
        avg = 0.98 * avg + 0.02 * value
        running.append(avg / (1 - 0.98 ** (step + 1)))
    lagged = _floor_start(lrs, np.asarray(running))
    got = suggest_lr(lrs, losses)
    assert lagged > 3 * got["floor_lr"]
    assert got["floor_lr"] == pytest.approx(_floor_start(lrs, exact), rel=0.5)


def test_suggestion_is_steady_when_the_loss_ends_in_a_noisy_floor():
    """When the loss flattens instead of diverging, its lowest point wanders along the floor from run to
    run; where the floor begins does not."""
    lrs = list(np.logspace(-7, 0, 100))
    floor = _floor_start(lrs, _sweep_curve(lrs)[1])
    runs = [suggest_lr(lrs, _sweep_curve(lrs, seed=s, noise=0.05)[0]) for s in range(6)]
    suggestions = [r["suggestion"] for r in runs]
    minima = [r["loss_min_lr"] for r in runs]
    assert all(floor / 10 / 2 < s < floor / 10 * 2 for s in suggestions)
    assert max(minima) / min(minima) > 3 * max(suggestions) / min(suggestions)


def test_a_loss_still_falling_at_max_lr_is_flagged(compose, tmp_path, caplog):
    lrs = list(np.logspace(-7, -3, 60))  # the curve above, cut before its floor
    got = suggest_lr(lrs, _sweep_curve(lrs, noise=0.0)[0])
    assert got["still_falling"] and got["suggestion"] is not None

    from medseg.app import main

    # Adam from 1e-4 to 3e-2 on the tiny data: the loss falls all the way
    cfg = compose("mode=lr_find", "lr_find.num_steps=30", "lr_find.min_lr=1e-4", "lr_find.max_lr=3e-2")
    with caplog.at_level(logging.INFO, logger="medseg.tasks.lr_find"):
        main(cfg)
    data = json.loads((tmp_path / "run" / "lr_find.json").read_text())
    assert data["still_falling"]
    assert "still falling at lr_find.max_lr=3.00e-02" in caplog.text


def test_no_suggestion_when_the_loss_never_falls_or_too_few_steps_ran():
    lrs = list(np.logspace(-5, 0, 30))
    assert suggest_lr(lrs, list(np.linspace(1.0, 3.0, 30)))["suggestion"] is None
    assert suggest_lr(lrs[:4], [2.0, 1.5, 1.0, 0.5])["suggestion"] is None
    # a non-finite loss ends the usable part of the sweep
    falling = list(np.linspace(2.0, 1.0, 20)) + [float("nan")] * 10
    got = suggest_lr(lrs, falling)
    assert got["loss_min_lr"] is not None and got["loss_min_lr"] <= lrs[19]
    assert got["still_falling"]  # the loss fell until the sweep broke off


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
    assert 1e-4 <= result["suggestion"] < result["floor_lr"] <= result["loss_min_lr"] <= lrs[-1]
    assert min(result["smoothed"]) < result["smoothed"][0]  # the loss fell before it diverged


def test_each_sweep_step_is_one_optimizer_step_over_the_accumulated_micro_batches():
    """With trainer.accumulate_grad_batches=3 a sweep step uses 3 micro-batches and equals one step on
    their concatenation: the sweep sees the gradient noise of the batch training steps on."""
    source = _regression_batches()
    micro = [next(source) for _ in range(6)]
    torch.manual_seed(0)
    swept, reference = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    reference.load_state_dict(swept.state_dict())
    result = lr_range_test(
        swept,
        torch.nn.functional.mse_loss,
        torch.optim.SGD(swept.parameters(), lr=1.0),
        iter(micro),
        device=torch.device("cpu"),
        precision=FP32,
        min_lr=0.05,
        max_lr=0.1,
        num_steps=2,
        accumulate=3,
    )
    optimizer = torch.optim.SGD(reference.parameters(), lr=1.0)
    losses = []
    for step, lr in enumerate((0.05, 0.1)):
        group = micro[3 * step : 3 * step + 3]
        x, y = torch.cat([b["image"] for b in group]), torch.cat([b["label"] for b in group])
        optimizer.param_groups[0]["lr"] = lr
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(reference(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert result["steps"] == 2 and result["lrs"] == pytest.approx([0.05, 0.1])
    assert result["losses"] == pytest.approx(losses, rel=1e-5)
    for a, b in zip(swept.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)


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
    assert data["rule"] in caplog.text and "floor" in data["rule"]
    assert data["suggestion"] == pytest.approx(data["floor_lr"] / 10)
    assert len(data["trend"]) == data["steps"]


def test_lr_find_shows_progress_without_a_terminal(compose, caplog):
    from medseg.app import main

    cfg = compose("mode=lr_find", "lr_find.num_steps=10", "lr_find.min_lr=1e-5", "lr_find.max_lr=1e-2")
    with caplog.at_level(logging.INFO, logger="medseg"):
        main(cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lr_find: ")]
    assert [m.split(" (")[0] for m in lines[:10]] == [f"lr_find: {i}/10" for i in range(1, 11)]
    assert "lr " in lines[0] and "loss " in lines[0]


def test_lr_find_rejects_a_reversed_range(compose):
    from medseg.app import main

    cfg = compose("mode=lr_find", "lr_find.min_lr=1.0", "lr_find.max_lr=1e-3")
    with pytest.raises(ConfigError, match="min_lr"):
        main(cfg)
