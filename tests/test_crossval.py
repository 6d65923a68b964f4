"""Cross-validation: ensembles in the streaming predictor, out-of-fold predictions of fold runs, mode=crossval
(selection, post-processing, figures) and predict/evaluate with its outcome (docs/crossval.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT
from tests.crossval_runs import CLASSES, islands_runs


def _data_cfg(dims: int, patch: list[int] | None = None) -> object:
    return OmegaConf.create(
        {"dims": dims, "slice_axis": 2, "patch_size": patch, "pad_divisible": 4, "context_slices": 0}
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_an_ensemble_of_a_model_with_itself_equals_the_model(dims: int) -> None:
    from medseg.inference.predictor import VolumePredictor
    from medseg.precision import resolve_precision

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 5, 3, padding=1) if dims == 2 else torch.nn.Conv3d(1, 5, 3, padding=1)
    image = torch.rand(1, 13, 11, 9) if dims == 3 else torch.rand(1, 21, 19, 13)
    device = torch.device("cpu")
    precision = resolve_precision("32", device)
    cfg = _data_cfg(dims, [8, 8, 4] if dims == 3 else None)
    one = VolumePredictor(conv, cfg, device, precision, num_classes=5, batch_size=3)
    pair = VolumePredictor([conv, conv], cfg, device, precision, num_classes=5, batch_size=3)
    shape = (16, 13, 12) if dims == 3 else (30, 25, 17)  # another grid: resized in-plane and along the slice axis
    assert torch.equal(one.labels(image, shape), pair.labels(image, shape))
    for (t1, p1), (t2, p2) in zip(one.probability_slices(image, shape), pair.probability_slices(image, shape)):
        assert t1 == t2 and torch.equal(p1, p2)


def test_an_ensemble_averages_its_models_probabilities() -> None:
    from medseg.inference.predictor import VolumePredictor
    from medseg.precision import resolve_precision

    torch.manual_seed(1)
    a, b = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(1, 4, 3, padding=1)
    image, device = torch.rand(1, 16, 16, 6), torch.device("cpu")
    precision, cfg = resolve_precision("32", device), _data_cfg(2)
    shape = (16, 16, 6)
    pa = dict(VolumePredictor(a, cfg, device, precision).probability_slices(image, shape))
    pb = dict(VolumePredictor(b, cfg, device, precision).probability_slices(image, shape))
    both = dict(VolumePredictor([a, b], cfg, device, precision).probability_slices(image, shape))
    for t in range(6):
        torch.testing.assert_close(both[t], (pa[t] + pb[t]) / 2)


def test_probabilities_are_stored_within_the_quantisation_error(tmp_path: Path) -> None:
    from medseg.crossval.probabilities import MAX_ERROR, ProbabilityWriter, dequantise, open_probabilities

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), size=(5, 12, 10)).transpose(0, 3, 1, 2).astype(np.float32)  # (S, K, a, b)
    writer = ProbabilityWriter(tmp_path / "p.b2nd", 5, 7, (12, 10))
    for t in range(5):
        writer.add(t, probs[t])
    size = writer.close()
    stored = open_probabilities(tmp_path / "p.b2nd")
    assert stored.dtype == np.uint8 and stored.shape == (5, 7, 12, 10)
    assert np.abs(dequantise(stored[1:3]) - probs[1:3]).max() <= MAX_ERROR + 1e-7
    assert size == (tmp_path / "p.b2nd").stat().st_size and not list(tmp_path.glob(".*tmp"))


def _crossval(compose, runs: list[Path], out: Path, *extra: str) -> dict:
    from medseg.tasks.crossval import run_crossval

    cfg = compose("mode=crossval", f"crossval.runs=[{','.join(map(str, runs))}]", *extra, output_dir=out)
    run_crossval(cfg)
    return json.loads((out / "crossval.json").read_text())


def test_postprocessing_is_chosen_where_islands_lower_dice(compose, tmp_path: Path) -> None:
    runs = islands_runs(tmp_path / "islands", "unet", islands=True)
    result = _crossval(compose, [runs], tmp_path / "cv", "crossval.hd95=false")
    decisions = result["postprocessing"]
    for name in CLASSES[1:]:
        assert decisions[name]["operation"] in ("largest_component", "largest_foreground")
        assert decisions[name]["dice_after"] > decisions[name]["dice_before"]
    assert result["chosen"]["mean_dice_after_postprocessing"] > result["chosen"]["mean_dice"]
    final = tmp_path / "cv" / "final"
    for case in ("case_00", "case_03"):  # the islands are gone from the written masks
        mask = np.asarray(nib.load(str(final / f"{case}_pred.nii.gz")).dataobj)
        assert (mask[20:23, 20:23] == 0).all() and (mask[0:2, 20:22, 10:12] == 0).all()
    assert "largest_component" in (tmp_path / "cv" / "report.html").read_text()


def test_postprocessing_is_not_chosen_without_islands(compose, tmp_path: Path) -> None:
    runs = islands_runs(tmp_path / "clean", "unet", islands=False)
    result = _crossval(compose, [runs], tmp_path / "cv", "crossval.hd95=false")
    for name in CLASSES[1:]:
        assert result["postprocessing"][name]["operation"] is None
    assert result["chosen"]["mean_dice_after_postprocessing"] == result["chosen"]["mean_dice"]


def _independent_figures(masks: dict[str, Path], truths: dict[str, Path]) -> tuple[float, float, dict[str, float]]:
    """Mean Dice, mean IoU and Dice per class from the mask files with nibabel and MedPy's dc / jc; means as
    evaluate takes them (a class absent from both has no score)."""
    from medpy.metric.binary import dc, jc

    per_case, per_case_iou, per_class = [], [], {n: [] for n in CLASSES[1:]}
    for case, path in masks.items():
        p = np.asarray(nib.load(str(path)).dataobj)
        t = np.asarray(nib.load(str(truths[case])).dataobj)
        scores, ious = [], []
        for c, name in enumerate(CLASSES[1:], start=1):
            a, b = p == c, t == c
            if a.sum() + b.sum():
                scores.append(dc(a, b))
                ious.append(jc(a, b))
                per_class[name].append(scores[-1])
        per_case.append(np.mean(scores))
        per_case_iou.append(np.mean(ious))
    return float(np.mean(per_case)), float(np.mean(per_case_iou)), {n: float(np.mean(v)) for n, v in per_class.items()}


def test_crossval_figures_equal_medpy_on_the_saved_masks(compose, tmp_path: Path) -> None:
    a = islands_runs(tmp_path / "a", "unet", islands=True)
    b = islands_runs(tmp_path / "b", "dynunet", islands=False, shift=1)
    out = tmp_path / "cv"
    result = _crossval(compose, [a, b], out)
    assert [c["name"] for c in result["candidates"]] == ["model=unet", "model=dynunet", "model=unet + model=dynunet"]
    truths = {p.name[: -len("_truth.nii.gz")]: p for p in (a / "0").parent.glob("*/oof/*_truth.nii.gz")}
    for candidate in result["candidates"]:
        if len(candidate["members"]) == 1:
            root = a if candidate["name"] == "model=unet" else b
            masks = {p.name[: -len("_pred.nii.gz")]: p for p in root.glob("*/oof/*_pred.nii.gz")}
        else:
            masks = {p.name[: -len("_pred.nii.gz")]: p for p in (out / candidate["folder"]).glob("*_pred.nii.gz")}
            _check_ensemble_masks(masks, a, b)
        assert sorted(masks) == sorted(truths)
        mean, iou, per_class = _independent_figures(masks, truths)
        assert candidate["mean_dice"] == pytest.approx(mean, abs=1e-9)
        assert candidate["mean_iou"] == pytest.approx(iou, abs=1e-9)
        for name, value in per_class.items():
            assert candidate["per_class"][name]["dice"] == pytest.approx(value, abs=1e-9)
    final = {p.name[: -len("_pred.nii.gz")]: p for p in (out / "final").glob("*_pred.nii.gz")}
    mean, _, _ = _independent_figures(final, truths)
    assert result["final"]["mean_dice"] == pytest.approx(mean, abs=1e-9)
    assert result["chosen"]["mean_dice"] == max(c["mean_dice"] for c in result["candidates"])
    chosen = next(c for c in result["candidates"] if c["name"] == result["chosen"]["name"])
    assert result["checkpoints"] == [p for m in result["chosen"]["configurations"] for p in m["checkpoints"]]
    assert len(result["checkpoints"]) == 2 * len(chosen["members"])
    page = (out / "report.html").read_text()
    assert "model=unet + model=dynunet" in page and "Configurations × folds" in page


def _check_ensemble_masks(masks: dict[str, Path], a: Path, b: Path) -> None:
    """An ensemble's masks are the argmax of its members' mean stored probabilities (read with blosc2 here)."""
    import blosc2

    for case, path in masks.items():
        total = sum(
            blosc2.open(str(next(root.glob(f"*/oof/{case}_probs.b2nd"))))[:].astype(np.float32) for root in (a, b)
        )
        expect = total.argmax(1).transpose(1, 2, 0)  # (S, K, x, y) -> (x, y, S)
        assert np.array_equal(np.asarray(nib.load(str(path)).dataobj), expect)


# ------------------------------------------------------------------ real fold runs, end to end
FOLD_RUN = [
    "data.synthetic.num_cases=8",
    "data.synthetic.shape=[32,32,8]",
    "data.num_folds=2",
    "data.batch_size=4",
    "trainer.max_epochs=1",
    "trainer.accumulate_grad_batches=2",
    "hardware.num_workers=1",
    "trainer.progress_bar=false",
    "trainer.log_images_every_n_epochs=0",
    "report.enabled=false",
    "logger=none",
]


def test_a_fold_run_ends_with_its_out_of_fold_predictions_and_its_checkpoint_twice_predicts_as_once(
    compose, tmp_path: Path
) -> None:
    from medseg.crossval.probabilities import MAX_ERROR, dequantise, open_probabilities
    from medseg.tasks.train import run_train

    quick = ["trainer.max_epochs=1", "hardware.num_workers=0", "trainer.limit_train_batches=2"]
    run_train(compose(*FOLD_RUN, *quick, "data.fold=1", "model.channels=[4,8]", tiny=False, output_dir=tmp_path / "f1"))
    oof = tmp_path / "f1" / "oof"
    index = json.loads((oof / "index.json").read_text())
    assert index["fold"] == 1 and index["checkpoint"] == "checkpoints/best.pt" and len(index["cases"]) == 4
    assert index["probabilities"]["max_error"] <= MAX_ERROR + 1e-7
    ckpt = torch.load(tmp_path / "f1" / "checkpoints" / "best.pt", weights_only=True)
    assert sorted(index["cases"]) == sorted(ckpt["val_case_ids"])
    for entry in index["cases"].values():
        pred = np.asarray(nib.load(str(oof / entry["pred"])).dataobj)
        truth = np.asarray(nib.load(str(oof / entry["truth"])).dataobj)
        assert pred.shape == truth.shape == (32, 32, 8)
        stored = open_probabilities(oof / entry["probs"])
        assert stored.shape == (8, 4, 32, 32)
        probs = dequantise(stored[:])
        agree = (probs.argmax(1).transpose(1, 2, 0) == pred).mean()
        assert agree > 0.99  # the mask is the argmax of the float probabilities; quantising may flip near-ties
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=4 * MAX_ERROR)

    # the same checkpoint twice, as crossval.json names an ensemble: predict and evaluate equal the checkpoint's own
    from medseg.data.examples import write_msd
    from medseg.tasks.evaluate import run_evaluate
    from medseg.tasks.predict import run_predict

    best = tmp_path / "f1" / "checkpoints" / "best.pt"
    held_out = write_msd(tmp_path / "held_out", num_cases=2, num_classes=4, seed=3)
    twice = tmp_path / "twice"
    twice.mkdir()
    choice = {"name": "f1 twice", "configurations": [{"name": "f1", "checkpoints": [str(best), str(best)]}]}
    (twice / "crossval.json").write_text(json.dumps({"chosen": choice, "postprocessing": {}}))
    for name, ckpt in (("ens", twice), ("one", best)):
        inputs = [f"predict.input={held_out / 'imagesTr'}", f"predict.output_dir={tmp_path / name / 'masks'}"]
        run_predict(compose(f"ckpt={ckpt}", *inputs, output_dir=tmp_path / name))
        run_evaluate(compose(f"ckpt={ckpt}", f"evaluate.input={held_out}", output_dir=tmp_path / name))
    for mask in sorted((tmp_path / "one" / "masks").glob("*.nii.gz")):
        ens = np.asarray(nib.load(str(tmp_path / "ens" / "masks" / mask.name)).dataobj)
        assert np.array_equal(ens, np.asarray(nib.load(str(mask)).dataobj)), mask.name
    assert (tmp_path / "ens" / "metrics.csv").read_text() == (tmp_path / "one" / "metrics.csv").read_text()


@pytest.mark.slow
def test_folds_then_crossval_then_predict(run_cli, cache_dir: Path, tmp_path: Path) -> None:
    """-m data.fold=0,1 for two configurations, mode=crossval (killed once, then rerun), predict with its outcome
    (a crossval.json naming one checkpoint twice: test_a_fold_run_ends_with_its_out_of_fold_predictions_...)."""
    env = {**os.environ, "MEDSEG_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
    for name, channels in (("a", "[4,8]"), ("b", "[8,16]")):
        folds = ["-m", "data.fold=0,1", f"model.channels={channels}", *FOLD_RUN, f"hydra.sweep.dir={tmp_path}/{name}"]
        folds += ["crossval.after_folds=true"] if name == "a" else []  # a's multirun runs crossval at its end
        done = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), *folds], cwd=tmp_path, env=env, capture_output=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
    alone = json.loads((tmp_path / "a" / "crossval" / "crossval.json").read_text())
    assert alone["chosen"]["name"] == "a" and len(alone["checkpoints"]) == 2
    assert not (tmp_path / "b" / "crossval").exists()
    runs = f"crossval.runs=[{tmp_path}/a,{tmp_path}/b]"
    out = tmp_path / "cv"
    cmd = [sys.executable, str(ROOT / "run.py"), "mode=crossval", runs, f"hydra.run.dir={out}", "logger=none"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("candidates/*/scores.json")) and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "crossval ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "crossval.json").exists()
    run_cli("mode=crossval", runs, f"hydra.run.dir={out}", check=True)  # the same folder: resumes
    result = json.loads((out / "crossval.json").read_text())
    assert len(result["candidates"]) == 3 and (out / "report.html").is_file()
    # the resumed run scored what a run of its own scores: configuration a alone, as a's multirun did
    (a_alone,) = [c for c in result["candidates"] if c["members"] == [c["name"]] and "[4,8]" in c["name"]]
    assert a_alone["mean_dice"] == alone["chosen"]["mean_dice"]

    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((32, 32, 8)).astype(np.float32), np.eye(4)), scan)
    run_cli("mode=predict", f"ckpt={out}", f"predict.input={scan}", f"predict.output_dir={tmp_path}/ens", check=True)
    assert (tmp_path / "ens" / "scan.nii.gz").is_file()
