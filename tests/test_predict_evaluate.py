"""Predict, evaluate and benchmark from a checkpoint: geometry kept, numbers right, errors clear."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medseg.errors import DataError, MedsegError
from medseg.tasks.evaluate import class_scores, summarise


@pytest.fixture
def trained(compose, tmp_path):
    """A tiny 2D model trained for one epoch on the demo data; returns its best.pt."""
    from medseg.tasks.train import run_train

    out = tmp_path / "train"
    run_train(compose("trainer.max_epochs=1", output_dir=out))
    return out / "checkpoints" / "best.pt"


def test_predict_png_keeps_size_and_nifti_keeps_geometry(compose, trained, tmp_path):
    from medseg.tasks.predict import run_predict

    src = tmp_path / "inputs"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((28, 41)) * 255).astype(np.uint8)).save(src / "slice.png")  # H 28, W 41
    affine = np.array([[0.7, 0, 0, -10], [0, 0.8, 0, 5], [0, 0, 3.0, 2], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(rng.random((30, 22, 5)).astype(np.float32), affine), src / "vol.nii.gz")
    out = tmp_path / "pred"
    run_predict(
        compose(
            "mode=predict",
            f"ckpt={trained}",
            f"predict.input={src}",
            f"predict.output_dir={out}",
            "predict.viz=true",
            "predict.tta=true",
        )
    )
    mask = Image.open(out / "slice.png")
    assert mask.size == (41, 28)
    assert set(np.unique(np.asarray(mask))) <= {0, 1, 2, 3}
    vol = nib.load(out / "vol.nii.gz")
    assert vol.shape == (30, 22, 5) and np.allclose(vol.affine, affine)
    assert (out / "slice_overlay.png").is_file() and (out / "vol_overlay.png").is_file()


def test_predict_without_save_writes_no_masks(compose, trained, tmp_path):
    from medseg.tasks.predict import run_predict

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(img)
    out = tmp_path / "pred"
    run_predict(
        compose(
            "mode=predict",
            f"ckpt={trained}",
            f"predict.input={img}",
            f"predict.output_dir={out}",
            "predict.save=false",
            "predict.viz=true",
        )
    )
    assert sorted(p.name for p in out.iterdir()) == ["a_overlay.png"]


def test_predict_errors_name_the_file(compose, trained, tmp_path):
    from medseg.tasks.predict import run_predict

    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(rgb)
    with pytest.raises(DataError, match="rgb.png has 3 channel"):
        run_predict(compose("mode=predict", f"ckpt={trained}", f"predict.input={rgb}"))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 definitely not a volume")
    with pytest.raises(DataError, match="broken.nii.gz cannot be read"):
        run_predict(compose("mode=predict", f"ckpt={trained}", f"predict.input={broken}"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MedsegError, match="predict.output_dir"):
        run_predict(
            compose("mode=predict", f"ckpt={trained}", f"predict.input={rgb}", f"predict.output_dir={blocker}/sub")
        )


def test_evaluate_writes_per_case_metrics(compose, trained, tmp_path):
    from medseg.tasks.evaluate import run_evaluate

    out = tmp_path / "eval"
    mean = run_evaluate(compose("mode=evaluate", f"ckpt={trained}", output_dir=out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 2 and set(summary["per_class"]) == {"disc", "square", "ring"}
    assert summary["mean_dice"] == pytest.approx(mean)
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("case,class,dice,iou,hd95") and len(lines) == 1 + 2 * 3


def test_class_scores_match_hand_computation():
    truth = torch.zeros(10, 10, dtype=torch.long)
    pred = torch.zeros(10, 10, dtype=torch.long)
    truth[2:6, 2:6] = 1  # 16 voxels
    pred[2:6, 4:8] = 1  # 16 voxels, 8 overlapping, shifted by 2 columns
    pred[0, 0] = 2  # class 2 predicted but absent from the truth
    rows = class_scores(pred, truth, num_classes=4, hd95=True)
    assert rows[0]["dice"] == pytest.approx(2 * 8 / 32)
    assert rows[0]["iou"] == pytest.approx(8 / 24)
    assert rows[0]["hd95"] == pytest.approx(2.0)
    assert rows[1]["dice"] == 0.0  # a false positive class scores 0
    assert math.isnan(rows[2]["dice"])  # absent from both: no score
    summary = summarise(
        [{"case": "a", "class": n, **r} for n, r in zip(["x", "y", "z"], rows)], ["bg", "x", "y", "z"], "t", 1
    )
    assert summary["mean_dice"] == pytest.approx((0.5 + 0.0) / 2)
    assert summary["per_class"]["z"]["dice"] is None


def test_benchmark_json_has_its_fields(compose, tmp_path):
    from medseg.tasks.benchmark import run_benchmark

    out = tmp_path / "bench"
    run_benchmark(compose("mode=benchmark", "benchmark.steps=2", "benchmark.warmup=1", output_dir=out))
    result = json.loads((out / "benchmark.json").read_text())
    for key in (
        "train_samples_per_s",
        "train_ms_per_step",
        "infer_samples_per_s",
        "infer_ms_per_step",
        "loader_samples_per_s",
        "peak_memory_mb",
        "device",
        "precision",
        "micro_batch",
    ):
        assert result[key] is not None, key
    assert result["peak_memory_mb"] > 0 and result["train_samples_per_s"] > 0


def test_evaluate_on_the_validation_split_reads_the_case_store(compose, trained, tmp_path, monkeypatch):
    """Evaluate decodes no image or label of the validation split (training stored them) and scores the
    same as reading the files again."""
    import csv

    from monai.data import NibabelReader

    import medseg.tasks.evaluate as evaluate
    from medseg.inference.labelled_cases import evaluation_cases

    decoded = {"n": 0}
    real = NibabelReader.read

    def counted(self, *args, **kwargs):
        decoded["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(NibabelReader, "read", counted)
    evaluate.run_evaluate(compose("mode=evaluate", f"ckpt={trained}", output_dir=tmp_path / "stored"))
    assert decoded["n"] == 0

    def without_store(*args, **kwargs):
        return (*evaluation_cases(*args, **kwargs)[:3], None)

    monkeypatch.setattr(evaluate, "evaluation_cases", without_store)
    evaluate.run_evaluate(compose("mode=evaluate", f"ckpt={trained}", output_dir=tmp_path / "files"))
    assert decoded["n"] >= 4  # image and label of both validation cases

    def rows(folder):
        with open(folder / "metrics.csv") as f:
            return list(csv.DictReader(f))

    stored, files = rows(tmp_path / "stored"), rows(tmp_path / "files")
    assert [(r["case"], r["class"]) for r in stored] == [(r["case"], r["class"]) for r in files]
    for a, b in zip(stored, files):
        for key in ("dice", "iou", "hd95"):
            assert (a[key] == b[key] == "") or float(a[key]) == pytest.approx(float(b[key]), abs=1e-6)
