"""Augmentation streams: per worker and per rank, independent of the worker count, exact on resume."""

from __future__ import annotations

import json

import pytest
import torch

from medseg.data.datamodule import make_loader

WORKERS = {"num_workers": 2, "persistent_workers": True}


class SameImage(torch.utils.data.Dataset):
    """Identical items: any difference between two drawn items comes from the augmentation."""

    def __init__(self, n: int = 8) -> None:
        from monai import transforms as T

        self.n = n
        self.transform = T.Compose([T.RandGaussianNoised(keys="image", prob=1.0, std=1.0)])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.transform({"image": torch.zeros(1, 4, 4), "label": torch.zeros(1, 4, 4, dtype=torch.long)})


def draw(loader, epoch: int) -> dict[int, torch.Tensor]:
    """Item index -> drawn image (a loader without an "index" key is taken to be in index order)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    out, position = {}, 0
    for batch in loader:
        n = batch["image"].shape[0]
        indices = batch["index"].tolist() if "index" in batch else range(position, position + n)
        position += n
        for index, image in zip(indices, batch["image"]):
            out[index] = image
    return out


def test_two_workers_draw_different_augmentations():
    loader = make_loader(SameImage(), 1, False, WORKERS, seed=0)
    items = draw(loader, 0)
    assert not torch.equal(items[0], items[1])  # item 0 from worker 0, item 1 from worker 1: different noise
    assert len({tuple(v.flatten().tolist()) for v in items.values()}) == len(items)


def test_augmentation_depends_on_seed_epoch_and_item_not_on_workers():
    in_main = make_loader(SameImage(), 2, True, {"num_workers": 0}, seed=0)
    persistent = make_loader(SameImage(), 2, True, WORKERS, seed=0)
    for epoch in (0, 1, 2):
        a, b = draw(in_main, epoch), draw(persistent, epoch)
        assert a.keys() == b.keys()
        for index in a:
            assert torch.equal(a[index], b[index]), (epoch, index)
    assert not torch.equal(draw(in_main, 0)[0], draw(in_main, 1)[0])  # a new epoch, new draws


def test_each_rank_draws_its_own_stream():
    from medseg.runtime import seed_everything

    rank0 = make_loader(SameImage(), 4, True, {"num_workers": 0}, seed=0, world_size=2, rank=0)
    rank1 = make_loader(SameImage(), 4, True, {"num_workers": 0}, seed=0, world_size=2, rank=1)
    a, b = draw(rank0, 0), draw(rank1, 0)
    assert a.keys().isdisjoint(b.keys()) and len(a) == len(b) == 4
    firsts = [v for v in a.values()] + [v for v in b.values()]
    assert len({tuple(v.flatten().tolist()) for v in firsts}) == 8
    seed_everything(0, rank=0)
    x0 = torch.rand(4)
    seed_everything(0, rank=1)
    assert not torch.equal(x0, torch.rand(4))  # dropout and other model-side draws differ per rank


def test_resume_is_exact_with_two_persistent_workers(compose, tmp_path, monkeypatch):
    common = [
        "trainer.max_epochs=4",
        "hardware.num_workers=2",
        "hardware.persistent_workers=true",
        "trainer.accumulate_grad_batches=2",
        "data.augment.flip_prob=0.5",
        "data.augment.noise_prob=0.5",
        "model.dropout=0.1",
    ]
    from medseg.tasks.train import run_train

    straight = tmp_path / "straight"
    run_train(compose(*common, output_dir=straight))

    from medseg.engine import callbacks

    original = callbacks.HistoryWriter.on_epoch_end

    def killed_after_two(self, trainer, record):
        original(self, trainer, record)
        if trainer.epoch == 2:
            raise KeyboardInterrupt  # the process dies here: last.pt of epoch 2 is all that is left

    monkeypatch.setattr(callbacks.HistoryWriter, "on_epoch_end", killed_after_two)
    first = tmp_path / "first"
    with pytest.raises(KeyboardInterrupt):
        run_train(compose(*common, output_dir=first))
    monkeypatch.setattr(callbacks.HistoryWriter, "on_epoch_end", original)

    resumed = tmp_path / "resumed"
    run_train(compose(*common, f"ckpt={first}/checkpoints/last.pt", "trainer.resume=true", output_dir=resumed))
    load = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
    a, b = load(straight / "checkpoints/last.pt"), load(resumed / "checkpoints/last.pt")
    assert b["epoch"] == 4 and b["global_step"] == a["global_step"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    h_a = json.loads((straight / "history.json").read_text())
    h_b = json.loads((resumed / "history.json").read_text())
    assert [r["train/loss"] for r in h_a] == [r["train/loss"] for r in h_b]
