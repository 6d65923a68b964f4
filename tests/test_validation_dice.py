"""val/dice is evaluate's number: the mean over cases of per-case Dice (padding cropped, repeats once)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from medseg.data.datamodule import make_loader
from medseg.engine.schedulers import LRSchedule
from medseg.engine.trainer import Trainer
from medseg.engine.validation import unpadded
from medseg.precision import resolve_precision
from medseg.tasks.evaluate import class_scores
from tests.conftest import TINY

CPU = torch.device("cpu")
K = 3  # classes: background + 2


class OneHotSlices(torch.utils.data.Dataset):
    """2D slices of cases with 20 x 20 slices, padded to 32 x 32 by MONAI's DivisiblePadd.

    The image carries the prediction as one-hot channels, so that the model below predicts it exactly;
    in the padding (zeros) the model predicts class 1, which must not count.
    """

    def __init__(self, preds: list[torch.Tensor], truths: list[torch.Tensor]) -> None:
        from monai.transforms import DivisiblePadd

        self.transform = DivisiblePadd(keys=["image", "label"], k=16)
        self.items = [(c, s) for c, p in enumerate(preds) for s in range(p.shape[0])]
        self.preds, self.truths = preds, truths
        self.case_ids = [f"case{c}" for c in range(len(preds))]

    def __len__(self) -> int:
        return len(self.items)

    def case_index(self, i: int) -> int:
        return self.items[i][0]

    def spatial_shape(self, i: int) -> tuple[int, ...]:
        return tuple(self.truths[self.items[i][0]].shape[1:])

    def __getitem__(self, i: int) -> dict:
        c, s = self.items[i]
        image = nn.functional.one_hot(self.preds[c][s], K).permute(2, 0, 1).float()
        out = self.transform({"image": image, "label": self.truths[c][s][None]})
        return {"image": torch.as_tensor(out["image"]), "label": torch.as_tensor(out["label"]).long()}


class PredictsItsInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = (x.sum(dim=1) == 0).float()
        return x + torch.stack([torch.zeros_like(padding), padding, torch.zeros_like(padding)], dim=1)


def cases() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    truths, preds = [], []
    for n_slices in (3, 2, 4):
        truth = torch.zeros(n_slices, 20, 20, dtype=torch.long)
        truth[:, 4:12, 4:12] = 1
        pred = truth.clone()
        flip = torch.rand(truth.shape, generator=g) < 0.2
        pred[flip] = torch.randint(0, K, truth.shape, generator=g)[flip]
        truths.append(truth)
        preds.append(pred)
    truths[0][1, 14:18, 14:18] = 2  # class 2 in case 0 only
    preds[1][0, 0, 0] = 2  # case 1: class 2 predicted where it is absent -> Dice 0
    preds[2][preds[2] == 2] = 0  # case 2: class 2 neither in truth nor predicted -> NaN, left out
    return preds, truths


def trainer_for(val_loader) -> Trainer:
    model = PredictsItsInput()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(
        model,
        lambda logits, labels: logits.mean(),
        opt,
        LRSchedule(None, opt, 1, 1),
        val_loader,
        val_loader,
        device=CPU,
        precision=resolve_precision("32", CPU),
        num_classes=K,
        class_names=["bg", "a", "b"],
        max_epochs=1,
        progress_bar=False,
    )


def evaluate_style(preds, truths) -> tuple[float, list[float]]:
    """Evaluate's rule, independently: MONAI Dice per case volume and class, nanmean, mean over cases."""
    per_case, per_class = [], [[] for _ in range(1, K)]
    for p, t in zip(preds, truths):
        dice = [r["dice"] for r in class_scores(p, t, K, hd95=False)]
        for k, d in enumerate(dice):
            per_class[k].append(d)
        per_case.append(np.nanmean(dice))
    return float(np.mean(per_case)), [float(np.nanmean(d)) for d in per_class]


def test_val_dice_is_the_mean_over_cases_of_per_case_dice():
    preds, truths = cases()
    loader = make_loader(OneHotSlices(preds, truths), 4, False, {"num_workers": 0}, seed=0)
    val = trainer_for(loader).validate()
    mean, per_class = evaluate_style(preds, truths)
    assert val["dice"] == pytest.approx(mean, abs=1e-6)  # MONAI computes in float32
    assert val["dice_per_class"][1:] == pytest.approx(per_class, abs=1e-6)  # MONAI computes in float32
    p, t = torch.cat([x.flatten() for x in preds]), torch.cat([x.flatten() for x in truths])
    pooled = [2 * ((p == c) & (t == c)).sum() / ((p == c).sum() + (t == c).sum()) for c in (1, 2)]
    assert val["dice_pooled"] == pytest.approx(float(sum(pooled)) / 2, abs=1e-6)  # MONAI computes in float32
    assert val["dice"] != pytest.approx(val["dice_pooled"], abs=1e-3)  # the two numbers differ here


class CapturedSums:
    """Stands in for the process group: keeps what validate would sum over ranks."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None

    def sum_loss(self, loss: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
        return loss, n

    def sum_(self, counts: torch.Tensor) -> torch.Tensor:
        self.counts = counts.clone()
        return counts


def test_distributed_repeats_are_counted_once():
    """Two ranks emulated in one process (their counts added as the all-reduce would)."""
    from medseg.engine.metrics import CaseConfusion

    preds, truths = cases()  # 9 slices over 2 ranks: DistributedSampler repeats one slice on rank 1
    data = OneHotSlices(preds, truths)
    merged = torch.zeros(3, 3, K, dtype=torch.float64)
    for rank in (0, 1):
        trainer = trainer_for(make_loader(data, 2, False, {"num_workers": 0}, seed=0, world_size=2, rank=rank))
        trainer.distributed = CapturedSums()
        trainer.validate()
        merged += trainer.distributed.counts
    reference = CaseConfusion(3, K)
    for c, (p, t) in enumerate(zip(preds, truths)):
        reference.update(p, t, c)
    assert torch.equal(merged, reference.counts)


def test_unpadded_undoes_divisible_padding():
    from monai.transforms import DivisiblePad

    x = torch.arange(1 * 19 * 21 * 5, dtype=torch.float32).reshape(1, 19, 21, 5)
    padded = DivisiblePad(k=16)(x)
    assert torch.equal(torch.as_tensor(padded)[(slice(None), *unpadded(padded.shape[1:], (19, 21, 5)))], x)


def contract_mean_dice(metrics_csv) -> float:
    """Mean over cases of the nanmean over classes of metrics.csv's dice column (the shared contract)."""
    per_case: dict[str, list[float]] = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            per_case.setdefault(row["case"], []).append(float(row["dice"]) if row["dice"] else math.nan)
    means = [np.nanmean(v) for v in per_case.values() if not all(math.isnan(x) for x in v)]
    return float(np.mean(means))


def test_evaluate_on_best_pt_reproduces_the_best_val_dice(run_cli, tmp_path):
    train, evaluate = tmp_path / "train", tmp_path / "evaluate"
    run_cli(*TINY, "trainer.max_epochs=3", f"paths.output_dir={train}", check=True)
    history = json.loads((train / "history.json").read_text())
    best = max(history, key=lambda r: r["val/dice"])
    assert best["val/cases"] == 2
    run_cli(
        "mode=evaluate", f"ckpt={train}/checkpoints/best.pt", f"paths.output_dir={evaluate}", "logger=none", check=True
    )
    assert contract_mean_dice(evaluate / "metrics.csv") == pytest.approx(best["val/dice"], abs=1e-4)


# ---------------------------------------------------------------- val/dice == evaluate on a resized grid
NO_EXTRAS = ["model.channels=[8,16]", "report.enabled=false", "trainer.log_images_every_n_epochs=0"]


def _best_val_dice_and_evaluate(compose, tmp_path, *overrides: str) -> tuple[float, float, list[dict]]:
    """Train, then mode=evaluate on best.pt: (best val/dice in history.json, evaluate's mean_dice, history)."""
    from medseg.tasks.evaluate import run_evaluate
    from medseg.tasks.train import run_train

    train, evaluate = tmp_path / "train", tmp_path / "evaluate"
    run_train(compose(*NO_EXTRAS, *overrides, output_dir=train))
    history = json.loads((train / "history.json").read_text())
    best = max(r["val/dice"] for r in history if r.get("val/dice") is not None)
    ckpt = train / "checkpoints" / "best.pt"
    mean_dice = run_evaluate(compose("mode=evaluate", f"ckpt={ckpt}", "evaluate.hd95=false", output_dir=evaluate))
    assert mean_dice == json.loads((evaluate / "summary.json").read_text())["mean_dice"]
    return best, mean_dice, history


def test_val_dice_equals_evaluate_at_scale_half_with_workers_and_accumulation(compose, tmp_path):
    """2D at data.scale=0.5: validation scores each case on its original grid, as mode=evaluate does
    (before, it scored the half-size stored grid: 0.0826 against evaluate's 0.0767 in the report)."""
    best, mean_dice, history = _best_val_dice_and_evaluate(
        compose,
        tmp_path,
        "data.scale=0.5",
        "trainer.max_epochs=2",
        "hardware.num_workers=1",  # loader workers > 0
        "hardware.persistent_workers=false",
        "trainer.accumulate_grad_batches=2",
    )
    assert history[-1]["accumulate"] == 2 and history[-1]["val/cases"] == 2
    assert mean_dice == pytest.approx(best, abs=1e-6)


def test_val_dice_equals_evaluate_with_an_image_size(compose, tmp_path):
    """2D slices resized to data.image_size=[24,20] (not the aspect of the 32 x 32 images): the same equality."""
    best, mean_dice, _ = _best_val_dice_and_evaluate(compose, tmp_path, "data.image_size=[24,20]")
    assert mean_dice == pytest.approx(best, abs=1e-6)


def test_val_dice_equals_evaluate_for_3d_with_a_spacing_change(compose, tmp_path):
    """3D patches, volumes resampled from 1 x 1 x 2.5 mm to 1.5 x 1.5 x 2 mm: val/dice is scored on the
    original grid after the prediction is resampled back, as evaluate scores it."""
    best, mean_dice, _ = _best_val_dice_and_evaluate(
        compose,
        tmp_path,
        "data.dims=3",
        "data.patch_size=[16,16,8]",
        "data.pad_divisible=8",
        "data.spacing=[1.5,1.5,2.0]",
        "data.samples_per_volume=2",
        "data.batch_size=2",
        "trainer.max_epochs=2",
    )
    assert mean_dice == pytest.approx(best, abs=1e-6)


def test_a_val_batch_limit_scores_the_cases_those_batches_hold():
    """trainer.limit_val_batches with original-grid scoring: the cases whose slices the first batches hold."""
    from medseg.engine.validation import scored_cases

    preds, truths = cases()  # 3, 2 and 4 slices
    data = OneHotSlices(preds, truths)
    assert scored_cases(data, None, 4, 3) == [0, 1, 2]  # no limit: every case
    assert scored_cases(data, 1, 4, 3) == [0, 1]  # slices 0-3: case 0's three and case 1's first
    assert scored_cases(data, 2, 4, 3) == [0, 1, 2]
