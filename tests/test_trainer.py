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
        precision=kwargs.pop("precision", resolve_precision("32", CPU)),
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


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_oom_mid_group_continues_at_once_and_matches_a_run_at_the_smaller_micro_batch(where, caplog):
    """An out-of-memory error in the 2nd batch of a group (batch 4, accumulate 2): micro-batch 4 -> 2.

    Injected (no CUDA here): raised once from the model's forward, or from its backward (a gradient hook),
    where it may have touched some gradients and the group is recomputed. Reference: micro-batch 2 from
    the start, the same 8-sample groups (10 samples: groups of 8 and 2).
    """
    reference = make_trainer(batch=2, accumulate=4, n=10, max_epochs=2)
    reference.fit()

    trainer = make_trainer(batch=4, accumulate=2, n=10, max_epochs=2)
    trainer.model.grad_checkpointing = True  # already on: the next remedy is a smaller micro-batch
    forward, calls = trainer.model.forward, {"n": 0}

    def fails_once(x):
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch of the first accumulation group
            if where == "forward":
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            out = forward(x)

            def oom(grad):
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")

            out.register_hook(oom)
            return out
        return forward(x)

    trainer.model.forward = fails_once
    with caplog.at_level(logging.WARNING):
        trainer.fit()
    assert "micro-batch 4 -> 2" in caplog.text
    assert ("recomputed" in caplog.text) == (where == "backward")
    assert trainer.micro_batch_size == 2 and trainer.accumulate == 2  # effective batch 8 as before
    assert trainer.global_step == reference.global_step == 4
    assert trainer.history[-1]["micro_batch"] == 2
    for (name, a), b in zip(trainer.model.state_dict().items(), reference.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)
    for key in ("train/loss", "train/dice"):  # each sample counted once in the epoch's metrics
        assert trainer.history[-1][key] == pytest.approx(reference.history[-1][key], abs=1e-5)


def test_oom_recovery_off_fails_plainly():
    trainer = make_trainer(batch=2, accumulate=1, n=4, oom_recovery=False)

    def oom(x):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    trainer.model.forward = oom
    with pytest.raises(TrainingError, match="lower data.batch_size"):
        trainer.fit()


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


def test_early_stopping_ends_the_run_with_the_best_weights_in_model_and_last_pt(tmp_path):
    # Monitor the (constant) learning rate: epoch 1 is the best, no later epoch improves, so patience 1
    # stops the run after epoch 2; the weights trained in epoch 2 must not be the run's result.
    es = EarlyStopping("lr", "max", patience=1, min_delta=0.0, restore_best=True)
    trainer = make_trainer(
        batch=2,
        accumulate=1,
        n=6,
        max_epochs=5,
        monitor="lr",
        callbacks=[es, ModelCheckpoint(tmp_path)],
    )
    trainer.fit()
    assert es.stopped_epoch == 2 and trainer.epoch == 2 and trainer.best_epoch == 1
    best, last = load(tmp_path / "best.pt"), load(tmp_path / "last.pt")
    assert best["epoch"] == 1 and last["weights_epoch"] == 1
    for key, value in best["model"].items():
        assert torch.equal(trainer.model.state_dict()[key], value), key
        assert torch.equal(last["model"][key], value), key


def test_precision_falls_back_on_cpu_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("16-mixed", CPU).name == "32"
    assert "16-mixed needs a CUDA device" in caplog.text
    bf16 = resolve_precision("bf16-mixed", CPU)
    assert bf16.dtype == torch.bfloat16 and not bf16.use_scaler


def test_3d_patches_train_on_the_whole_loaded_batch_and_log_the_effective_batch(compose, monkeypatch, caplog):
    """batch_size=2 volumes x samples_per_volume=2 patches: one forward of 4 per loaded batch (before, two of 2)."""
    import medseg.tasks.train as train_task

    forwards: list[int] = []
    build = train_task.build_model

    def counted(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda m, inputs, out: forwards.append(inputs[0].shape[0]) if m.training else None)
        return model

    monkeypatch.setattr(train_task, "build_model", counted)
    with caplog.at_level(logging.INFO, logger="medseg.tasks.train"):
        run_train(
            compose(
                "model.channels=[8,16]",
                "data.dims=3",
                "data.patch_size=[16,16,8]",
                "data.pad_divisible=8",
                "data.batch_size=2",
                "data.samples_per_volume=2",
                "trainer.accumulate_grad_batches=2",
                "report.enabled=false",
                "trainer.log_images_every_n_epochs=0",
            )
        )
    assert forwards == [4, 4]  # 4 training volumes: 2 loaded batches of 2 x 2 patches, one forward each
    assert "batch 2 x 2 samples per volume = micro-batch 4 x accumulation 2 x 1 process(es) = effective batch 8" in (
        caplog.text
    )


def test_history_is_written_every_epoch_and_its_picture_when_due_and_at_the_end(tmp_path):
    """history.json after every epoch; history.png after an epoch only once plot_every_s has passed since it
    was drawn, and always when training ends, with every epoch in it."""
    from types import SimpleNamespace

    from medseg.engine.callbacks import HistoryWriter

    def epochs(writer: HistoryWriter, folder, n: int) -> SimpleNamespace:
        trainer = SimpleNamespace(is_main_process=True, history=[])
        writer.on_fit_start(trainer)
        for epoch in range(1, n + 1):
            trainer.history.append({"epoch": epoch, "train/loss": 1.0 / epoch, "lr": 1e-3})
            writer.on_epoch_end(trainer, trainer.history[-1])
            assert [r["epoch"] for r in json.loads((folder / "history.json").read_text())] == list(range(1, epoch + 1))
        return trainer

    rare = tmp_path / "rare"
    rare.mkdir()
    writer = HistoryWriter(rare, plot_every_s=3600)
    trainer = epochs(writer, rare, 3)
    assert not (rare / "history.png").exists()  # short epochs: not redrawn after each
    writer.on_fit_end(trainer)
    assert (rare / "history.png").is_file()
    drawn = (rare / "history.png").stat().st_mtime_ns
    writer.on_fit_end(trainer)  # nothing new since: not drawn again
    assert (rare / "history.png").stat().st_mtime_ns == drawn

    every = tmp_path / "every"
    every.mkdir()
    epochs(HistoryWriter(every, plot_every_s=0), every, 1)
    assert (every / "history.png").is_file()  # long epochs: drawn after each
