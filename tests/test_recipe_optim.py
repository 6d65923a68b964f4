"""optimizer=nnunet_sgd and scheduler=poly give nnU-Net's learning-rate curve over the run."""

from __future__ import annotations

import pytest
import torch

from medseg.engine.schedulers import LRSchedule
from medseg.tasks.build import build_optimizer


def test_nnunet_sgd_is_nesterov_sgd_at_nnunet_values(compose):
    cfg = compose("optimizer=nnunet_sgd", "scheduler=poly")
    opt = build_optimizer(cfg.optimizer, torch.nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (1e-2, 0.99, True, 3e-5)


@pytest.mark.parametrize("steps_per_epoch", [1, 7])
def test_poly_lr_per_epoch_matches_nnunet_formula(compose, steps_per_epoch):
    """nnU-Net's PolyLRScheduler: epoch e trains at lr0 * (1 - e / max_epochs) ** 0.9."""
    epochs = 6
    cfg = compose("optimizer=nnunet_sgd", "scheduler=poly", f"trainer.max_epochs={epochs}")
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(cfg.optimizer, model)
    schedule = LRSchedule(cfg.scheduler, opt, steps_per_epoch, int(cfg.trainer.max_epochs))
    used = []
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            used.append(schedule.lr())
            opt.step()
            schedule.after_optimizer_step()
        schedule.after_epoch(None)
    expected = [1e-2 * (1 - e / epochs) ** 0.9 for e in range(epochs) for _ in range(steps_per_epoch)]
    assert used == pytest.approx(expected, rel=1e-9)
    assert schedule.lr() == pytest.approx(0.0, abs=1e-12)  # decays to zero at the end of the run
