"""The training loop: run files, checkpoint contents, exact resume, accumulation, recovery paths."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch.utils.data import DataLoader

from medseg.engine.callbacks import EarlyStopping, ModelCheckpoint
from medseg.engine.schedulers import LRSchedule
from medseg.engine.trainer import Trainer
from medseg.errors import TrainingError
from medseg.models.unet import UNet
from medseg.precision import resolve_precision
from medseg.tasks.train import run_train

CPU = torch.device("cpu")


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- full runs through run_train
def test_train_writes_run_files_and_checkpoint_contents(compose, tmp_path):
    out = tmp_path / "run"
    best = run_train(
        compose(
            "trainer.max_epochs=2",
            "trainer.checkpoint.every_n_epochs=1",
            "trainer.checkpoint.keep_last=1",
            output_dir=out,
        )
    )
    for name in (
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "checkpoints/epoch_2.pt",
        "history.json",
        "history.png",
        "label_map.json",
    ):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints/epoch_1.pt").exists()  # keep_last=1
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    for key in (
        "train/loss",
        "val/loss",
        "train/dice",
        "val/dice",
        "val/iou",
        "val/dice/disc",
        "gap/loss",
        "gap/dice",
        "overfit/score",
        "lr",
        "train/grad_norm",
        "time/epoch_s",
        "train/samples_per_s",
        "val/top5",
        "val/bottom5",
    ):
        assert key in history[-1], key
    assert best == max(r["val/dice"] for r in history)
    ckpt = load(out / "checkpoints/last.pt")
    for key in (
        "model",
        "optimizer",
        "schedule",
        "scaler",
        "epoch",
        "global_step",
        "best_score",
        "rng",
        "config_yaml",
        "class_names",
        "versions",
    ):
        assert key in ckpt, key
    assert ckpt["epoch"] == 2 and ckpt["class_names"] == ["background", "disc", "square", "ring"]
    assert json.loads((out / "label_map.json").read_text())["1"] == "disc"


def test_resume_continues_exactly(compose, tmp_path, monkeypatch):
    common = ["trainer.max_epochs=4", "data.augment.flip_prob=0.5", "model.dropout=0.1"]
    straight = tmp_path / "straight"
    run_train(compose(*common, output_dir=straight))

    # A run killed right after epoch 2 was checkpointed ...
    from medseg.engine import callbacks

    original = callbacks.HistoryWriter.on_epoch_end

    def killed_after_two(self, trainer, record):
        original(self, trainer, record)
        if trainer.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.HistoryWriter, "on_epoch_end", killed_after_two)
    first = tmp_path / "first"
    with pytest.raises(KeyboardInterrupt):
        run_train(compose(*common, output_dir=first))
    monkeypatch.setattr(callbacks.HistoryWriter, "on_epoch_end", original)
    assert load(first / "checkpoints/last.pt")["epoch"] == 2

    # ... and resumed for the remaining two epochs ends with the same weights.
    resumed = tmp_path / "resumed"
    run_train(compose(*common, f"ckpt={first}/checkpoints/last.pt", "trainer.resume=true", output_dir=resumed))
    a, b = load(straight / "checkpoints/last.pt"), load(resumed / "checkpoints/last.pt")
    assert b["epoch"] == 4 and b["global_step"] == a["global_step"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert len(json.loads((resumed / "history.json").read_text())) == 4


def test_fine_tune_loads_weights_only(compose, tmp_path):
    first = tmp_path / "first"
    run_train(compose("trainer.max_epochs=1", output_dir=first))
    tuned = tmp_path / "tuned"
    run_train(compose("trainer.max_epochs=1", f"ckpt={first}/checkpoints/last.pt", output_dir=tuned))
    ckpt = load(tuned / "checkpoints/last.pt")
    assert ckpt["epoch"] == 1  # a new run, not a continuation


# ---------------------------------------------------------------- the loop on small in-memory data
class Items(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = [
            {"image": torch.randn(1, 16, 16, generator=g), "label": torch.randint(0, 3, (1, 16, 16), generator=g)}
            for _ in range(n)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def make_trainer(batch: int, accumulate: int, n: int = 10, loss_fn=None, callbacks=(), **kwargs) -> Trainer:
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    model = UNet(1, 3, 2, channels=[4, 8], norm="instance")
    loader = DataLoader(Items(n), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(Items(4, seed=1), batch_size=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(
        model,
        loss_fn or DiceCELoss(to_onehot_y=True, softmax=True),
        optimizer,
        LRSchedule(None, optimizer, 1, 1),
        loader,
        val,
        device=CPU,
        precision=resolve_precision("32", CPU),
        num_classes=3,
        class_names=["bg", "a", "b"],
        max_epochs=kwargs.pop("max_epochs", 1),
        accumulate=accumulate,
        callbacks=callbacks,
        progress_bar=False,
        **kwargs,
    )


def test_accumulation_equals_large_batch_including_partial_group():
    # 10 items: batch 2 x 4 gives groups of 8 and 2 samples, the same groups as batch 8 x 1
    small = make_trainer(batch=2, accumulate=4)
    large = make_trainer(batch=8, accumulate=1)
    small.fit()
    large.fit()
    assert small.global_step == large.global_step == 2
    for (name, a), b in zip(small.model.state_dict().items(), large.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_oom_in_a_step_halves_micro_batch_and_keeps_effective_batch(caplog):
    trainer = make_trainer(batch=4, accumulate=1, n=8, max_epochs=2)
    trainer.model.grad_checkpointing = True  # already on: the next remedy is a smaller micro-batch
    forward = trainer.model.forward

    def limited(x):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return forward(x)

    trainer.model.forward = limited
    trainer.loader_factory = lambda bs: DataLoader(
        Items(8), batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    with caplog.at_level(logging.WARNING):
        trainer.fit()
    assert "out of memory" in caplog.text
    assert (trainer.micro_batch_size, trainer.accumulate) == (2, 2)
    assert trainer.history[-1]["micro_batch"] == 2 and trainer.global_step == 4  # 2 steps per epoch throughout


def test_oom_first_switches_on_gradient_checkpointing(caplog):
    trainer = make_trainer(batch=2, accumulate=1, n=4)
    forward = trainer.model.forward

    def needs_checkpointing(x):
        if not trainer.model.grad_checkpointing:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return forward(x)

    trainer.model.forward = needs_checkpointing
    with caplog.at_level(logging.WARNING):
        trainer.fit()
    assert trainer.model.grad_checkpointing and trainer.micro_batch_size == 2
    assert "gradient checkpointing" in caplog.text


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path, caplog):
    from monai.losses import DiceCELoss

    base = DiceCELoss(to_onehot_y=True, softmax=True)
    state = {"poison": False}

    def loss_fn(logits, labels):
        loss = base(logits, labels)
        return loss * float("nan") if state["poison"] else loss

    class PoisonAfterFirstEpoch(ModelCheckpoint):
        def on_epoch_end(self, trainer, record):
            super().on_epoch_end(trainer, record)
            state["poison"] = True

    trainer = make_trainer(
        batch=2,
        accumulate=1,
        n=10,
        loss_fn=loss_fn,
        max_epochs=3,
        max_nonfinite_steps=3,
        callbacks=[PoisonAfterFirstEpoch(tmp_path)],
    )
    trainer.extra_state = {}
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with caplog.at_level(logging.WARNING), pytest.raises(TrainingError, match="non-finite"):
        trainer.fit()
    assert caplog.text.count("step skipped") == 3
    last = load(tmp_path / "last.pt")
    assert last["epoch"] == 1
    # the skipped steps changed nothing: weights are still those of the epoch-1 checkpoint
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, last["model"][key]), key
    assert any(not torch.equal(before[k], v) for k, v in last["model"].items())


def test_gradient_clipping_by_norm_bounds_the_update():
    trainer = make_trainer(batch=10, accumulate=1, n=10, clip_val=1e-3, clip_algorithm="norm")
    params = [p for p in trainer.model.parameters()]
    before = [p.detach().clone() for p in params]
    trainer.fit()
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(params, before)))
    assert step <= 0.1 * 1e-3 * 1.01  # lr x max_norm
    assert trainer.history[0]["train/grad_norm"] > 1e-3  # the logged norm is the one before clipping


def test_early_stopping_restores_best_weights():
    class FakeTrainer:
        epoch = 0
        should_stop = False
        weights = {"w": torch.tensor([0.0])}

        def model_state(self):
            return self.weights

        def load_model_state(self, state):
            self.weights = state

    es = EarlyStopping("val/dice", "max", patience=2, min_delta=0.01, restore_best=True)
    t = FakeTrainer()
    for epoch, dice in enumerate([0.5, 0.8, 0.805, 0.7], start=1):
        t.epoch, t.weights = epoch, {"w": torch.tensor([float(epoch)])}
        es.on_epoch_end(t, {"val/dice": dice})
    assert t.should_stop and es.stopped_epoch == 4
    es.on_fit_end(t)
    assert t.weights["w"].item() == 2.0  # 0.805 is not better than 0.8 by min_delta


def test_precision_falls_back_on_cpu_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("16-mixed", CPU).name == "32"
    assert "16-mixed needs a CUDA device" in caplog.text
    bf16 = resolve_precision("bf16-mixed", CPU)
    assert bf16.dtype == torch.bfloat16 and not bf16.use_scaler
