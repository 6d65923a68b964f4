"""LR schedules: each scheduler steps at its cadence; warm-up is linear; run-length keys are filled."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from medseg.engine.schedulers import LRSchedule
from tests.conftest import CONF


def schedule(name: str, steps_per_epoch: int = 5, max_epochs: int = 4, **extra) -> LRSchedule:
    cfg = OmegaConf.load(CONF / "scheduler" / f"{name}.yaml")
    cfg = OmegaConf.merge(
        {"trainer": {"max_epochs": max_epochs, "monitor_mode": "max"}, "optimizer": {"lr": 0.1}},
        {"scheduler": cfg},
        {"scheduler": extra},
    ).scheduler
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return LRSchedule(cfg, opt, steps_per_epoch, max_epochs)


def run(s: LRSchedule, epochs: int, steps: int, metric=lambda e: 0.5) -> list[float]:
    lrs = []
    for e in range(epochs):
        for _ in range(steps):
            s.optimizer.step()
            s.after_optimizer_step()
        s.after_epoch(metric(e))
        lrs.append(s.lr())
    return lrs


def test_cosine_steps_per_epoch_to_eta_min():
    lrs = run(schedule("cosine"), 4, 5)
    assert math.isclose(lrs[-1], 1e-6, rel_tol=1e-3)
    assert math.isclose(lrs[1], 1e-6 + (0.1 - 1e-6) * 0.5, rel_tol=1e-6)  # half way after 2 of 4 epochs


def test_onecycle_steps_every_optimizer_step_over_the_whole_run():
    s = schedule("onecycle")
    assert s.interval == "step" and s.scheduler.total_steps == 20
    used = []
    for _ in range(20):
        used.append(s.lr())
        s.optimizer.step()
        s.after_optimizer_step()
    assert max(used) == pytest.approx(0.1) and used.index(max(used)) in (5, 6)  # peak at pct_start 0.3
    assert used[0] == pytest.approx(0.1 / 25) and used[-1] == pytest.approx(0.1 / 25 / 1e4)


def test_plateau_reduces_on_the_monitored_metric():
    s = schedule("plateau", params={"patience": 1})
    lrs = run(s, 4, 1, metric=lambda e: 0.5)  # no improvement after the first epoch
    assert lrs[0] == 0.1 and lrs[-1] < 0.1


def test_linear_warmup_then_schedule():
    s = schedule("none", warmup_epochs=1, steps_per_epoch=4)
    seen = []
    for _ in range(6):
        seen.append(s.lr())
        s.after_optimizer_step()
    assert seen[0] == pytest.approx(0.001) and seen[0] < seen[1] < seen[2] < seen[3]
    assert seen[4] == pytest.approx(0.1) and seen[5] == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["cosine_restarts", "poly"])
def test_other_schedulers_decay(name):
    lrs = run(schedule(name), 4, 2)
    assert lrs[-1] < 0.1


def test_scheduler_state_roundtrip():
    a = schedule("onecycle")
    run(a, 2, 5)
    b = schedule("onecycle")
    b.load_state_dict(a.state_dict())
    assert b.steps_done == a.steps_done and b.scheduler.last_epoch == a.scheduler.last_epoch


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_warmup_then_cosine_reaches_eta_min_at_the_last_step(interval):
    s = schedule("cosine", steps_per_epoch=5, max_epochs=4, interval=interval, warmup_epochs=1)
    lrs = run(s, 4, 5)
    assert lrs[0] == pytest.approx(0.1)  # warm-up ends at the base LR
    assert lrs[-1] == pytest.approx(1e-6, rel=1e-3)
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:]))


def test_onecycle_after_warmup_has_no_jump():
    s = schedule("onecycle", steps_per_epoch=5, max_epochs=4, warmup_epochs=1)
    used = []
    for _ in range(20):  # every step of the run: the scheduler must not be stepped past total_steps
        used.append(s.lr())
        s.optimizer.step()
        s.after_optimizer_step()
    assert s.scheduler.total_steps == 15
    assert used[5] == pytest.approx(0.1 / 25)  # after 5 warm-up steps: where one-cycle starts
    steps = [abs(b - a) for a, b in zip(used, used[1:])]
    assert max(steps) < 0.06  # the cycle climbs 0.004 -> 0.1 in ~4.5 cosine steps (at most ~0.04); no jump
    assert max(used) == pytest.approx(0.1, rel=0.01) and used[-1] == pytest.approx(0.1 / 25 / 1e4)
