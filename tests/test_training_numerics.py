"""Mixed precision on CPU (fp16 with a GradScaler, bf16), skipped fp16 steps and the torch range.

torch runs float16 autocast and GradScaler("cpu") on CPU, so these paths run in CI without a GPU.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from medseg.engine.schedulers import LRSchedule
from medseg.precision import Precision
from tests.test_trainer import make_trainer

ROOT = Path(__file__).resolve().parents[1]


def warmup_schedule(optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> LRSchedule:
    cfg = OmegaConf.create({"interval": "step", "warmup_epochs": 1, "warmup_start_factor": 0.1, "params": None})
    return LRSchedule(cfg, optimizer, steps_per_epoch, 1)


@pytest.mark.parametrize(
    "precision",
    [Precision("16-mixed", torch.float16, True), Precision("bf16-mixed", torch.bfloat16, False)],
    ids=["fp16", "bf16"],
)
def test_mixed_precision_trains_on_cpu(precision):
    trainer = make_trainer(batch=2, accumulate=2, n=8, precision=precision, max_epochs=2)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert trainer.scaler.is_enabled() == precision.use_scaler
    assert trainer.global_step == 4
    assert all(math.isfinite(r["train/loss"]) and math.isfinite(r["val/loss"]) for r in trainer.history)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_a_step_the_fp16_scaler_skips_does_not_advance_the_schedule(caplog):
    """An overflowing fp16 gradient (inf injected by a gradient hook: a real overflow needs luck) in step 2."""
    trainer = make_trainer(batch=2, accumulate=1, n=8, precision=Precision("16-mixed", torch.float16, True))
    trainer.schedule = warmup_schedule(trainer.optimizer, steps_per_epoch=8)  # the LR changes every step
    weight = next(trainer.model.parameters())
    calls = {"n": 0}

    def overflow_in_second_step(grad):
        calls["n"] += 1
        return grad * math.inf if calls["n"] == 2 else grad

    weight.register_hook(overflow_in_second_step)
    scale = trainer.scaler.get_scale()
    trainer.fit()
    assert trainer.scaler.get_scale() == scale / 2  # the scaler saw the overflow and skipped the step
    assert trainer.global_step == 3 and trainer.schedule.steps_done == 3  # 4 batches, 3 steps taken
    expected = warmup_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), 8)
    for _ in range(3):
        expected.after_optimizer_step()
    assert trainer.schedule.lr() == pytest.approx(expected.lr())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_torch_range_covers_the_apis_the_code_uses():
    text = (ROOT / "pyproject.toml").read_text()
    spec = re.search(r'"torch>=([\d.]+),<([\d.]+)"', text)
    assert spec, "pyproject.toml pins torch as >=X,<Y"
    low, high = (tuple(int(x) for x in v.split(".")) for v in spec.groups())
    assert low >= (2, 6)  # torch.nn.utils.get_total_norm; torch.amp.GradScaler(device) needs 2.3
    installed = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert low[:2] <= installed < high[:2]
