"""val/dice as mode=evaluate computes it: each validation case predicted on its original grid and scored there.

The store holds each case on the training grid (after data.scale, data.image_size or data.spacing), so
Dice counted on the loader's items would be a different number from evaluate's whenever the grid
changes (at data.scale=0.5 a run logged 0.0826 and evaluate on its best.pt gave 0.0767). `CaseScorer`
runs evaluate's own pieces instead of a copy of them: `load_stored_case` (the stored image and the
label on its original grid, checked), `VolumePredictor.labels` (streaming prediction resampled back to
that grid, padding, argmax and predict.threshold as evaluate applies them) and `confusion_counts` (the
counts behind evaluate's per-case Dice). So `val/dice` is evaluate's `mean_dice` at every scale, image
size and spacing, with predict.tta off (evaluate's default).

The original-grid label of a case is read once (the first validation) and kept compressed in RAM
(blosc2; a label map compresses some hundred-fold), so later epochs read only the stored image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.precision import Precision


class CaseScorer:
    """Confusion counts (tp, predicted, true per class) of validation cases on their original grids."""

    def __init__(
        self,
        store: Any,
        cases: list[dict[str, Any]],
        data_cfg: Any,
        *,
        num_classes: int,
        channels: int,
        device: torch.device,
        precision: Precision,
        threshold: float | None,
        overlap: float,
        batch_size: int,
    ) -> None:
        from medseg.data.transforms import label_transforms

        self.store, self.cases, self.data_cfg = store, cases, data_cfg
        self.num_classes, self.channels = int(num_classes), int(channels)
        self.device, self.precision = device, precision
        self.threshold, self.overlap, self.batch_size = threshold, float(overlap), int(batch_size)
        self.label_chain = label_transforms(data_cfg)
        self._truths: dict[int, tuple[bytes, np.ndarray | None]] = {}  # packed int16 label map, image affine

    def __len__(self) -> int:
        return len(self.cases)

    @torch.no_grad()
    def counts(self, model: nn.Module, indices: list[int]) -> torch.Tensor:
        """(len(cases), 3, classes) float64 counts; rows of cases not in `indices` stay zero (no score)."""
        from medseg.inference.case_metrics import confusion_counts
        from medseg.inference.predictor import VolumePredictor

        was_training = model.training
        predictor = VolumePredictor(
            model,
            self.data_cfg,
            self.device,
            self.precision,
            overlap=self.overlap,
            batch_size=self.batch_size,
            num_classes=self.num_classes,
        )
        out = torch.zeros(len(self.cases), 3, self.num_classes, dtype=torch.float64)
        try:
            for i in indices:
                image, truth, affine = self.case(i)
                pred = predictor.labels(image, tuple(truth.shape), self.threshold, affine)
                tp, n_pred, n_true = confusion_counts(pred.numpy(), truth, self.num_classes)
                out[i] = torch.tensor([tp, n_pred, n_true], dtype=torch.float64)
        finally:
            model.train(was_training)
        return out

    def case(self, i: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
        """Case i: the stored image (C, *spatial), its label map on the original grid and that grid's affine
        (data.spacing maps the prediction back with it)."""
        import blosc2

        case = self.cases[i]
        held = self._truths.get(i)
        if held is None:
            from medseg.inference.labelled_cases import load_stored_case

            item = load_stored_case(self.store, case, self.data_cfg, self.label_chain, self.channels, self.num_classes)
            truth = item.truth.numpy().astype(np.int16, copy=False)
            self._truths[i] = (blosc2.pack_array2(np.ascontiguousarray(truth)), item.affine)
            return item.image, truth, item.affine
        image = torch.from_numpy(np.asarray(self.store.image(case["id"])[...])).float()
        return image, blosc2.unpack_array2(held[0]), held[1]
