"""On a GPU: a real CUDA out-of-memory error in training is recovered with a smaller micro-batch.

The card is filled first, so that a micro-batch of 8 does not fit but one of 2 does. Skipped without CUDA.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils.data import DataLoader

pytestmark = pytest.mark.gpu

SIZE = 256  # 256 x 256 slices


class Slices(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = [
            {
                "image": torch.randn(1, SIZE, SIZE, generator=g),
                "label": torch.randint(0, 3, (1, SIZE, SIZE), generator=g),
            }
            for _ in range(n)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def make(batch: int, device: torch.device):
    from monai.losses import DiceCELoss

    from medseg.engine.schedulers import LRSchedule
    from medseg.engine.trainer import Trainer
    from medseg.models.unet import UNet
    from medseg.precision import resolve_precision

    torch.manual_seed(0)
    model = UNet(1, 3, 2, channels=[32, 64, 128], norm="instance").to(device)
    model.grad_checkpointing = True  # the remedy left is a smaller micro-batch
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(Slices(16), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    return Trainer(
        model,
        DiceCELoss(to_onehot_y=True, softmax=True),
        optimizer,
        LRSchedule(None, optimizer, 1, 1),
        loader,
        DataLoader(Slices(2), batch_size=1),
        device=device,
        precision=resolve_precision("32", device),
        num_classes=3,
        class_names=["bg", "a", "b"],
        max_epochs=1,
        accumulate=2,
        progress_bar=False,
    )


def activation_bytes_per_sample(device: torch.device) -> int:
    trainer = make(2, device)
    batch = next(iter(trainer.train_loader))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    trainer._train_batch(batch["image"], batch["label"], 2, _Counter(), [])
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - start) // 2


class _Counter:
    def update(self, *args) -> None: ...


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_oom_is_recovered_with_a_smaller_micro_batch(caplog):
    device = torch.device("cuda")
    per_sample = activation_bytes_per_sample(device)
    torch.cuda.empty_cache()
    trainer = make(8, device)
    torch.cuda.synchronize()
    free, _ = torch.cuda.mem_get_info()
    budget = 3 * per_sample + 256 * 2**20  # room for ~3 samples' activations and the weights' gradients
    filler = torch.empty(max(0, free - budget), dtype=torch.uint8, device=device)
    try:
        with caplog.at_level(logging.WARNING):
            trainer.fit()
    finally:
        del filler
        torch.cuda.empty_cache()
    assert "out of memory" in caplog.text
    assert trainer.micro_batch_size <= 2 and trainer.accumulate == 2
    assert trainer.global_step == 1  # 16 samples, 2 loaded batches of 8 per step: the effective batch kept
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())

    reference = make(8, device)  # no memory pressure: the same 16-sample step at the smaller micro-batch
    reference.oom.micro_batch_size = trainer.micro_batch_size
    reference.fit()
    for (name, a), b in zip(trainer.model.state_dict().items(), reference.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)
