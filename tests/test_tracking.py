"""Trackers: wandb offline run folders, csv columns, tensorboard events, resume, image panels, secrets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from medseg.config.redact import MASK, redact, secret_values
from medseg.config.tree import config_tree
from medseg.tracking.run_name import format_run_name

FAKE_KEY = "fk-0123456789abcdef0123456789"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)


def _files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_run_name_template_fills_config_values_compactly() -> None:
    import datetime as dt

    config = {"model": {"_target_": "medseg.models.unet.UNet"}, "data": {"batch_size": 8}, "optimizer": {"lr": 1e-4}}
    name = format_run_name("{model}-bs{data.batch_size}-lr{optimizer.lr}-{date}", config, dt.datetime(2026, 11, 23))
    assert name == "unet-bs8-lr1e-4-1123"
    with pytest.raises(Exception, match="optimizer.momentum"):
        format_run_name("{optimizer.momentum}", config)


def test_redact_masks_secret_keys_and_environment_values() -> None:
    env = {"WANDB_API_KEY": FAKE_KEY, "TOKENIZERS_PARALLELISM": "false", "HF_TOKEN": "hf_abcdefghijkl"}
    config = {
        "logger": {"wandb": {"notes": f"run with {FAKE_KEY} inside", "api_key": "k3y-value"}},
        "data": {"root": "/data/hf_abcdefghijkl/x", "num_workers": 4, "tokenizer": "bert", "flag": "false"},
        "db": {"password": "hunter22"},
        "model": {"token_dim": 768, "cls_token": True, "tokenizer": "bpe"},
        "other": "uses k3y-value twice k3y-value",
    }
    out = redact(config, secret_values(config, env))
    assert out["logger"]["wandb"] == {"notes": f"run with {MASK} inside", "api_key": MASK}
    assert out["data"] == {"root": f"/data/{MASK}/x", "num_workers": 4, "tokenizer": "bert", "flag": "false"}
    assert out["db"]["password"] == MASK
    assert out["model"] == config["model"]
    assert out["other"] == f"uses {MASK} twice {MASK}"
    assert config["db"]["password"] == "hunter22"  # the input is left alone


def test_log_records_are_masked_before_any_handler_writes_them(tmp_path: Path) -> None:
    import logging

    from medseg.config.redact import install_log_filter

    root = logging.getLogger()
    handler = logging.FileHandler(tmp_path / "run.log")
    root.addHandler(handler)
    try:
        install_log_filter([FAKE_KEY])
        logging.getLogger("medseg.test").warning("override logger.wandb.notes=%s", FAKE_KEY)
        handler.flush()
    finally:
        root.removeHandler(handler)
        handler.close()
    assert (tmp_path / "run.log").read_text() == f"override logger.wandb.notes={MASK}\n"


def test_config_tree_lists_groups_first_and_nested_keys() -> None:
    tree = config_tree({"trainer": {"max_epochs": 3}, "mode": "train", "model": {"channels": [16, 32], "x": None}})
    assert tree.splitlines() == [
        "CONFIG",
        "├── mode: train",
        "├── model",
        "│   ├── channels: [16, 32]",
        "│   └── x: null",
        "└── trainer",
        "    └── max_epochs: 3",
    ]


def test_wandb_offline_run_holds_history_summary_images_and_resume_continues_it(
    compose, tmp_path: Path, offline: None
) -> None:
    from medseg.app import main
    from medseg.tracking.wandb_offline import offline_runs, read_offline_run

    common = ("logger=[wandb,csv]", "trainer.log_every_n_steps=2", "trainer.log_images_every_n_epochs=1")
    common += ("trainer.limit_train_batches=4", "trainer.log_images_count=2")
    secret_note = "logger.wandb.notes='note ${oc.env:WANDB_API_KEY}'"
    first = tmp_path / "first"
    main(compose(*common, secret_note, "tags=[tiny]", output_dir=first))

    folders = offline_runs(first)
    assert len(folders) == 1
    run = read_offline_run(folders[0], wait_s=30)
    history = json.loads((first / "history.json").read_text())
    epochs = [row for row in run.history if "val/dice" in row]
    assert [row["epoch"] for row in epochs] == [1]
    assert epochs[0]["val/dice"] == pytest.approx(history[0]["val/dice"])
    assert epochs[0]["train/grad_norm"] == pytest.approx(history[0]["train/grad_norm"])
    assert [row["_step"] for row in run.history if "batch/loss" in row] == [2, 4]  # 4 steps, every 2
    assert run.summary["best/val/dice"] == pytest.approx(history[0]["val/dice"])
    assert run.summary["best/epoch"] == 1
    assert run.exit_code == 0
    assert run.name.startswith("unet-bs4-lr1e-3-") and run.tags == ["tiny"] and run.group == ""
    facts = run.config["facts"]
    assert facts["dataset"]["train_cases"] == 4 and facts["dataset"]["val_cases"] == 2
    assert facts["dataset"]["train_items"] == 32 and facts["model"]["params_total"] > 0
    assert run.config["trainer"]["max_epochs"] == 1  # the resolved config
    assert run.config["logger"]["wandb"]["notes"] == f"note {MASK}"
    panels = sorted((folders[0] / "files" / "media" / "images").rglob("*.png"))
    assert len(panels) == 2  # trainer.log_images_count validation items
    assert (first / "images" / "val_epoch_001.png").is_file()

    # a run file read while wandb is still writing it: the complete records, no error
    partial = tmp_path / "partial"
    partial.mkdir()
    data = next(folders[0].glob("run-*.wandb")).read_bytes()
    (partial / "run-x.wandb").write_bytes(data[: len(data) // 2 + 3])
    assert len(read_offline_run(partial).history) < len(run.history)

    second = tmp_path / "second"
    resume = (f"ckpt={first}/checkpoints/last.pt", "trainer.resume=true", "trainer.max_epochs=2")
    main(compose(*common, *resume, output_dir=second))
    resumed = read_offline_run(offline_runs(second)[0], wait_s=30)
    assert resumed.run_id == run.run_id
    assert [row["epoch"] for row in resumed.history if "val/dice" in row] == [2]
    assert min(row["_step"] for row in resumed.history) > 4  # steps continue, wandb keeps them all on sync

    ckpt = torch.load(first / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["tracker_ids"]["wandb"] == run.run_id
    with open(second / "metrics.csv", newline="") as fh:  # the csv table continues too
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]
    assert f"note {MASK}" in ckpt["config_yaml"]
    assert f"note {MASK}" in (first / "config_tree.txt").read_text()
    assert _files_holding(tmp_path, FAKE_KEY) == []


def test_csv_and_tensorboard_log_every_epoch_with_images_and_histograms(compose, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from medseg.tasks.train import run_train

    out = tmp_path / "run"
    run_train(
        compose(
            "logger=[csv,tensorboard]",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=2",
            "trainer.log_images_every_n_epochs=1",
            "trainer.log_images_count=2",
            "trainer.log_histograms_every_n_epochs=2",
            output_dir=out,
        )
    )
    history = json.loads((out / "history.json").read_text())
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    expected = ["epoch", "step", "lr", "train/loss", "train/dice", "train/grad_norm", "val/loss", "val/dice"]
    expected += ["val/dice/disc", "best/val/dice", "time/epoch_s"]
    assert set(expected) <= set(rows[0])
    for row, record in zip(rows, history):
        assert float(row["val/dice"]) == pytest.approx(record["val/dice"])
        assert float(row["lr"]) == pytest.approx(record["lr"])

    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    val_dice = acc.Scalars("val/dice")
    assert [e.step for e in val_dice] == [1, 2]
    assert [e.value for e in val_dice] == pytest.approx([r["val/dice"] for r in history], rel=1e-5)
    assert acc.Tags()["images"] == ["val/panels"]
    assert len(acc.Images("val/panels")) == 2  # every epoch
    assert "params/inc.0.weight" in acc.Tags()["histograms"] and "grads/inc.0.weight" in acc.Tags()["histograms"]
    assert [e.step for e in acc.Histograms("grads/inc.0.weight")] == [history[1]["step"]]

    from PIL import Image

    with Image.open(out / "images" / "val_epoch_002.png") as im:
        # four 32 px tiles enlarged 8x to 256 px, 2 px gaps, 4 px margins; two items stacked under column
        # titles, each with its label line, then the legend
        assert im.size[0] == 4 * 256 + 3 * 2 + 8
        assert im.size[1] > 2 * 256 + 4 * 16


def test_image_panel_colours_truth_prediction_and_agreement() -> None:
    import numpy as np

    from medseg.engine.image_panels import CORRECT, EXTRA, MISSED, WRONG_CLASS, panel

    image = np.zeros((4, 4), dtype=np.float32)
    truth = np.zeros((4, 4), dtype=np.int64)
    pred = np.zeros((4, 4), dtype=np.int64)
    truth[0, :3] = 1  # (0,0) correct, (0,1) missed, (0,2) wrong class
    pred[0, 0] = pred[1, 0] = 1  # (1,0) extra
    pred[0, 2] = 2
    out = panel(image, truth, pred)
    assert out.shape == (4, 4 * 4 + 3 * 2, 3) and out.dtype == np.uint8
    compare = out[:, 3 * 6 :]
    expected = {(0, 0): CORRECT, (0, 1): MISSED, (0, 2): WRONG_CLASS, (1, 0): EXTRA}
    for (r, c), colour in expected.items():
        assert tuple(compare[r, c]) == colour
    assert tuple(compare[3, 3]) == (160, 160, 160)  # background: the faded input


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_memory_is_in_the_epoch_record(compose, tmp_path: Path) -> None:
    from medseg.tasks.train import run_train

    out = tmp_path / "run"
    run_train(compose("hardware.device=cuda", "logger=csv", output_dir=out))
    record = json.loads((out / "history.json").read_text())[0]
    assert 0 < record["gpu/mem_allocated_gb"] <= record["gpu/mem_reserved_gb"]
    assert record["gpu/max_mem_allocated_gb"] >= record["gpu/mem_allocated_gb"]
    with open(out / "metrics.csv", newline="") as fh:
        assert "gpu/mem_reserved_gb" in next(csv.DictReader(fh))
