"""run.py as a user runs it: train -> evaluate -> predict, and one-line errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

TINY_CLI = [
    "data.synthetic.num_cases=6",
    "data.synthetic.num_classes=2",
    "data.synthetic.shape=[32,32,8]",
    "data.batch_size=4",
    "data.val_percent=34",
    "trainer.max_epochs=4",
    "trainer.progress_bar=false",
    "trainer.accumulate_grad_batches=1",
    "logger=none",
    "optimizer.lr=3e-3",
]


@pytest.mark.slow
def test_train_evaluate_predict(run_cli, tmp_path, cache_dir):
    train = run_cli(*TINY_CLI, check=True)
    run = tmp_path / "run"
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 4
    best = max(r["val/dice"] for r in history)
    assert best > 0.6, f"validation Dice {best} is not clearly above chance"
    assert "best val/dice" in train.stderr + train.stdout
    ckpt = run / "checkpoints" / "best.pt"
    assert ckpt.is_file() and (run / "checkpoints" / "last.pt").is_file()
    assert torch.load(ckpt, weights_only=True)["format"] == "medseg-checkpoint"

    # evaluate: rebuilds the model from the checkpoint alone; per-class Dice on the validation split
    ev_dir = tmp_path / "eval"
    run_cli("mode=evaluate", f"ckpt={ckpt}", f"hydra.run.dir={ev_dir}", check=True)
    summary = json.loads((ev_dir / "summary.json").read_text())
    assert set(summary["per_class"]) == {"disc"}
    assert summary["mean_dice"] > 0.5
    rows = (ev_dir / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("case,class,dice,iou,hd95") and len(rows) == 1 + 2  # 2 val cases x 1 foreground class

    # predict: a NIfTI mask per input, with the input's affine and shape
    meta = torch.load(ckpt, weights_only=True)["config_yaml"]
    assert "num_classes: 2" in meta
    images = sorted(p for p in cache_dir.rglob("imagesTr/*.nii.gz") if _binary_set(p))[:2]
    src = tmp_path / "scans"
    src.mkdir()
    for p in images:
        (src / p.name).write_bytes(p.read_bytes())
    pred_dir = tmp_path / "pred"
    run_cli(
        "mode=predict",
        f"ckpt={ckpt}",
        f"predict.input={src}",
        f"predict.output_dir={pred_dir}",
        "predict.viz=true",
        f"hydra.run.dir={tmp_path}/predict_run",
        check=True,
    )
    for p in images:
        out = nib.load(pred_dir / p.name)
        inp = nib.load(p)
        assert out.shape == inp.shape and np.allclose(out.affine, inp.affine)
        labels = np.asarray(out.dataobj)
        assert set(np.unique(labels)) <= {0, 1} and (labels > 0).any()
        assert (pred_dir / f"{p.name[:-7]}_overlay.png").is_file()


@pytest.mark.slow
def test_config_typo_prints_one_line_and_fails(run_cli):
    proc = run_cli("trainer.max_epoch=3")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "trainer.max_epoch" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_missing_checkpoint_prints_one_line_and_fails(run_cli, tmp_path):
    proc = run_cli("mode=evaluate", f"ckpt={tmp_path}/nope.pt")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nope.pt" in lines[0] and "not found" in lines[0]


@pytest.mark.slow
def test_full_traceback_on_request(run_cli, monkeypatch):
    monkeypatch.setenv("MEDSEG_DEBUG", "1")
    proc = run_cli("mode=evaluate", "ckpt=/nonexistent/x.pt")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def _binary_set(path) -> bool:
    import json as _json

    meta = _json.loads((path.parents[1] / "dataset.json").read_text())
    return len(meta["labels"]) == 2
