"""One validation pass: the loss over the validation loader, and Dice per case as mode=evaluate reports it.

    loss       every validation item (a slice, or a whole volume through the sliding window) on the
               training grid, as the model is trained
    val/dice   with a `CaseScorer` (every training run has one): each case predicted and scored on its
               original grid by evaluate's own code, so it equals evaluate's mean_dice at any scale,
               image size or spacing; without one (a bare Trainer), the loader's items are counted on
               their own grid, per case, padding cropped

Under DDP the loader's items are split over the ranks by the sampler, the cases of the scorer by
rank (case i on rank i mod world size); counts and losses are summed over the ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medseg.engine.case_scoring import CaseScorer
from medseg.engine.metrics import CaseConfusion, foreground_mean
from medseg.precision import Precision


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Any,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inferer: Callable[[torch.Tensor, nn.Module], torch.Tensor],
    *,
    device: torch.device,
    precision: Precision,
    num_classes: int,
    n_batches: int,
    to_device: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]],
    scorer: CaseScorer | None = None,
    scoring_model: nn.Module | None = None,
    distributed: Any = None,
) -> dict[str, Any]:
    """Loss and Dice over the validation cases (the first `n_batches` batches' cases with a limit)."""
    model.eval()
    dataset = loader.dataset
    case_ids = list(getattr(dataset, "case_ids", None) or range(len(dataset)))
    counts = CaseConfusion(len(case_ids), num_classes, device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    samples, position = 0, 0
    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        images, labels = to_device(batch)
        with precision.autocast(device):
            logits = inferer(images, model)
            loss = loss_fn(logits, labels)
        loss_sum += loss.detach().double() * images.shape[0]
        samples += images.shape[0]
        if scorer is not None:
            continue
        indices = batch["index"].tolist() if "index" in batch else range(position, position + images.shape[0])
        position += images.shape[0]
        pred = logits.detach().argmax(dim=1)
        for j, index in enumerate(indices):
            if index < 0:  # a repeat DistributedSampler adds to even out the ranks: counted once elsewhere
                continue
            crop = unpadded(pred.shape[1:], _spatial_shape(dataset, index))
            case = dataset.case_index(index) if hasattr(dataset, "case_index") else index
            counts.update(pred[j][crop], labels[j].reshape(pred.shape[1:])[crop], case)
    if scorer is not None:
        mine = scored_cases(dataset, n_batches if n_batches < len(loader) else None, loader.batch_size, len(scorer))
        if distributed is not None:
            mine = mine[distributed.rank :: distributed.world_size]
        counts.counts += scorer.counts(scoring_model or model, mine).to(device)
    if distributed is not None:
        loss_sum, samples = distributed.sum_loss(loss_sum, samples)
        distributed.sum_(counts.counts)
    scores = counts.scores()
    pooled = counts.pooled().scores()
    return {
        "loss": float(loss_sum) / max(1, samples),
        "dice": scores["dice"],
        "iou": scores["iou"],
        "dice_per_class": scores["dice_per_class"],
        "iou_per_class": scores["iou_per_class"],
        "dice_pooled": foreground_mean(pooled["dice"]),
        "iou_pooled": foreground_mean(pooled["iou"]),
        "dice_pooled_per_class": pooled["dice"],
        "cases": sum(1 for d in scores["dice_per_case"] if not math.isnan(d)),
    }


def scored_cases(dataset: Any, n_batches: int | None, batch_size: int | None, n_cases: int) -> list[int]:
    """Every case, or with trainer.limit_val_batches the cases whose items the first `n_batches` batches hold."""
    if n_batches is None:
        return list(range(n_cases))
    limit = min(len(dataset), n_batches * int(batch_size or 1))
    if not hasattr(dataset, "case_index"):
        return list(range(min(n_cases, limit)))
    return sorted({int(dataset.case_index(i)) for i in range(limit)})


def unpadded(padded: torch.Size | tuple[int, ...], original: tuple[int, ...] | None) -> tuple[slice, ...]:
    """The region of an item padded symmetrically (MONAI DivisiblePadd's default) that holds the original."""
    if original is None or len(original) != len(padded):
        return tuple(slice(None) for _ in padded)
    return tuple(slice((p - o) // 2, (p - o) // 2 + o) for p, o in zip(padded, original))


def _spatial_shape(dataset: Any, index: int) -> tuple[int, ...] | None:
    shape = getattr(dataset, "spatial_shape", None)
    return tuple(shape(index)) if shape is not None else None
