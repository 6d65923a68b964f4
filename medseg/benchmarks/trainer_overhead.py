"""medseg's training loop against a bare hand-written loop: same model, data, batch and process.

    python -m medseg.benchmarks.trainer_overhead [--steps 40 --batch 8 --size 64 --classes 4 --repeats 3]

Both loops see the same in-memory batches; runs alternate (bare, medseg, bare, ...) and the median
samples/s of each is reported with their ratio (medseg / bare; 1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset


class InMemory(Dataset):
    def __init__(self, n: int, size: int, classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 1, size, size, generator=g)
        self.labels = torch.randint(0, classes, (n, 1, size, size), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}


def build(classes: int, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    from monai.losses import DiceCELoss

    from medseg.models.unet import UNet

    torch.manual_seed(0)
    model = UNet(1, classes, 2, channels=[16, 32, 64, 128]).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3), DiceCELoss(to_onehot_y=True, softmax=True)


def bare_loop(loader: DataLoader, classes: int, device: torch.device) -> float:
    model, optimizer, loss_fn = build(classes, device)
    model.train()
    start, seen = time.perf_counter(), 0
    for batch in loader:
        images, labels = batch["image"].to(device), batch["label"].to(device)
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def medseg_loop(loader: DataLoader, classes: int, device: torch.device) -> float:
    from medseg.engine.schedulers import LRSchedule
    from medseg.engine.trainer import Trainer
    from medseg.precision import resolve_precision

    model, optimizer, loss_fn = build(classes, device)
    trainer = Trainer(
        model,
        loss_fn,
        optimizer,
        LRSchedule(None, optimizer, len(loader), 1),
        loader,
        loader,
        device=device,
        precision=resolve_precision("32", device),
        num_classes=classes,
        class_names=[str(i) for i in range(classes)],
        max_epochs=1,
        progress_bar=False,
        log_every_n_steps=50,
    )
    start = time.perf_counter()
    stats = trainer.train_epoch()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return stats["samples"] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = InMemory(args.steps * args.batch, args.size, args.classes)
    loader = DataLoader(data, batch_size=args.batch, shuffle=False)
    bare_loop(loader, args.classes, device)  # warm-up (allocator, kernels)
    bare, ours = [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(loader, args.classes, device))
        ours.append(medseg_loop(loader, args.classes, device))
    result = {"bare_samples_per_s": statistics.median(bare), "medseg_samples_per_s": statistics.median(ours)}
    result["ratio"] = result["medseg_samples_per_s"] / result["bare_samples_per_s"]
    print(
        f"device {device}, U-Net 2D {args.size}x{args.size}, {args.classes} classes, batch {args.batch}, "
        f"{args.steps} steps x {args.repeats} repeats"
    )
    print(f"bare loop   : {result['bare_samples_per_s']:8.1f} samples/s  (runs: {', '.join(f'{v:.1f}' for v in bare)})")
    print(
        f"medseg loop : {result['medseg_samples_per_s']:8.1f} samples/s  (runs: {', '.join(f'{v:.1f}' for v in ours)})"
    )
    print(f"ratio medseg/bare: {result['ratio']:.3f}")
    return result


if __name__ == "__main__":
    main()
