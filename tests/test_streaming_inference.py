"""Streaming predict/evaluate: same numbers as the whole-volume path, HD95 in mm on bounding boxes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from medseg.inference.case_metrics import class_scores, image_diagonal
from medseg.inference.predictor import VolumePredictor
from medseg.models.unet import UNet
from medseg.precision import resolve_precision

CPU = torch.device("cpu")
FP32 = resolve_precision("32", CPU)


def _compose(cache_dir: Path, out: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from medseg.config import register_configs
    from tests.conftest import CONF, tiny_for

    register_configs()
    base = [*tiny_for(overrides), f"paths.cache_dir={cache_dir}", f"paths.output_dir={out}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=base + list(overrides))


@pytest.fixture(scope="module")
def demo_ckpt(cache_dir, tmp_path_factory) -> Path:
    """A tiny 2D model trained one epoch on the demo data (shared by this module's tests)."""
    from medseg.tasks.train import run_train

    out = tmp_path_factory.mktemp("demo_train")
    run_train(_compose(cache_dir, out, "hardware.num_workers=2"))
    return out / "checkpoints" / "best.pt"


# ---------------------------------------------------------------- reference: the whole-volume path
def _reference_probabilities(
    model, image: torch.Tensor, dims: int, axis: int, k: int, patch=None, tta: bool = False
) -> torch.Tensor:
    """Whole-volume softmax (K, *spatial), as evaluate computed it before streaming (with `tta`, the
    mean over all flips of the padded input)."""
    from itertools import combinations

    def forward(x):
        from monai.inferers import sliding_window_inference

        pads = []
        for s in reversed(x.shape[2:]):
            extra = (-s) % k
            pads += [extra // 2, extra - extra // 2]
        padded = F.pad(x, pads)

        def run(v):
            return sliding_window_inference(v, patch, 4, model, overlap=0.25, mode="gaussian") if patch else model(v)

        axes = range(2, padded.ndim)
        flips = [()] + ([c for r in range(1, len(axes) + 1) for c in combinations(axes, r)] if tta else [])
        probs = sum(
            torch.softmax(run(padded.flip(d)), 1).flip(d) if d else torch.softmax(run(padded), 1) for d in flips
        )
        probs = probs / len(flips)
        before = pads[::2][::-1]
        return probs[(slice(None), slice(None), *(slice(b, b + s) for b, s in zip(before, x.shape[2:])))]

    with torch.no_grad():
        if dims == 3:
            return forward(image[None])[0]
        slices = image.movedim(axis + 1, 0)
        return forward(slices).movedim(0, axis + 1)


def _reference_scores(pred, truth, num_classes, spacing):
    """Dice, IoU and HD95 per class with MONAI on whole-volume one-hot masks (the old evaluate)."""
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

    rows = []
    for c in range(1, num_classes):
        p, t = (pred == c)[None, None].float(), (truth == c)[None, None].float()
        if not t.any() and not p.any():
            rows.append((math.nan, math.nan, math.nan))
        elif not t.any():
            rows.append((0.0, 0.0, math.nan))
        else:
            dice = float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])
            iou = float(compute_iou(p, t, include_background=True, ignore_empty=False)[0, 0])
            hd = math.nan
            if p.any():
                hd = float(compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing))
            rows.append((dice, iou, hd))
    return rows


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


def _read_metrics(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _num(text: str) -> float:
    return math.nan if text == "" else float(text)


# ---------------------------------------------------------------- evaluate on the demo data
def test_streaming_evaluate_equals_the_whole_volume_path(demo_ckpt, cache_dir, tmp_path):
    from medseg.data.layouts import read_cases
    from medseg.data.split import split_cases
    from medseg.data.transforms import label_transforms, volume_transforms
    from medseg.tasks.evaluate import run_evaluate
    from medseg.tasks.restore import restore_model

    out = tmp_path / "eval"
    run_evaluate(_compose(cache_dir, out, "mode=evaluate", f"ckpt={demo_ckpt}"))
    got = _read_metrics(out / "metrics.csv")
    summary = json.loads((out / "summary.json").read_text())

    restored = restore_model(str(demo_ckpt), CPU)
    data_cfg, k, names = restored.cfg.data, restored.num_classes, restored.class_names
    _, cases = split_cases(read_cases(data_cfg, str(cache_dir)).cases, data_cfg, int(restored.cfg.seed))
    image_chain, label_chain = volume_transforms(data_cfg, with_label=False), label_transforms(data_cfg)
    per_case = []
    i = 0
    for case in cases:
        image = torch.as_tensor(image_chain({"image": case["image"]})["image"])
        truth = torch.as_tensor(label_chain({"label": case["label"]})["label"][0]).round().long()
        probs = _reference_probabilities(restored.model, image, 2, int(data_cfg.slice_axis), 16)
        probs = F.interpolate(probs[None], size=tuple(truth.shape), mode="trilinear", align_corners=False)[0]
        spacing = [float(z) for z in nib.load(case["label"]).header.get_zooms()[:3]]
        ref = _reference_scores(probs.argmax(0), truth, k, spacing)
        for c, (dice, iou, hd) in enumerate(ref, start=1):
            row = got[i]
            i += 1
            assert (row["case"], row["class"]) == (case["id"], names[c])
            assert _close(_num(row["dice"]), dice) and _close(_num(row["iou"]), iou), row
            if row["hd95_missing"] == "1":  # the old path dropped it; now it scores the diagonal
                assert math.isnan(hd) and _num(row["hd95"]) == pytest.approx(image_diagonal(truth.shape, spacing))
            else:
                assert _close(_num(row["hd95"]), hd, 1e-5), row
        dices = [d for d, _, _ in ref if not math.isnan(d)]
        per_case.append(sum(dices) / len(dices))
    assert i == len(got) and summary["cases"] == len(cases)
    assert summary["mean_dice"] == pytest.approx(sum(per_case) / len(per_case), abs=1e-6)
    assert summary["hd95_unit"] == "mm"


# ---------------------------------------------------------------- the predictor against references
def test_2d_streaming_with_context_slices_and_resizing_equals_the_whole_volume():
    """2.5D inputs (k=1: 3 slices as channels, edges replicated) and resizing back, in-plane and along
    the slice axis, give the labels of whole-volume probabilities resized at once."""
    torch.manual_seed(0)
    model = UNet(3, 5, 2, channels=[4, 8]).eval()
    data = OmegaConf.create({"dims": 2, "slice_axis": 1, "patch_size": None, "pad_divisible": 8, "context_slices": 1})
    image = torch.randn(1, 20, 7, 13)  # slice axis 1 has 7 slices
    vol = image[0].movedim(1, 0)  # (7, 20, 13)
    slabs = torch.stack([torch.stack([vol[max(s - 1, 0)], vol[s], vol[min(s + 1, 6)]]) for s in range(7)])
    with torch.no_grad():
        probs = torch.softmax(model(F.pad(slabs, [1, 2, 2, 2])), 1)[:, :, 2:22, 1:14]  # symmetric pad to 24x16
    whole = probs.movedim(0, 2)  # (K, 20, 7, 13)
    for target in [(20, 7, 13), (31, 7, 9), (20, 11, 13), (15, 4, 26)]:
        expect = F.interpolate(whole[None], size=target, mode="trilinear", align_corners=False)[0].argmax(0)
        got = VolumePredictor(model, data, CPU, FP32, batch_size=3).labels(image, target)
        assert got.shape == target and torch.equal(got.long(), expect), target


def test_2d_tta_averages_the_flips_of_each_slice():
    torch.manual_seed(0)
    model = UNet(1, 3, 2, channels=[4, 8]).eval()
    data = OmegaConf.create({"dims": 2, "slice_axis": 2, "patch_size": None, "pad_divisible": 8})
    vol = torch.randn(1, 16, 16, 3)
    x = vol.movedim(3, 0)
    with torch.no_grad():
        mean = sum(torch.softmax(model(x.flip(d)), 1).flip(d) for d in [(2,), (3,), (2, 3)])
        mean = (mean + torch.softmax(model(x), 1)) / 4
    got = VolumePredictor(model, data, CPU, FP32, tta=True).labels(vol, (16, 16, 3))
    assert torch.equal(got.long(), mean.argmax(1).movedim(0, 2))


@pytest.mark.parametrize("target", [(30, 20, 41), (33, 17, 50)])
def test_3d_slabs_equal_one_sliding_window_pass(target):
    """Slabs of any size give the labels of one whole-volume Gaussian sliding window, resized at once."""
    torch.manual_seed(0)
    model = UNet(1, 5, 3, channels=[4, 8]).eval()
    data = OmegaConf.create({"dims": 3, "slice_axis": 2, "patch_size": [16, 16, 8], "pad_divisible": 8})
    image = torch.randn(1, 30, 20, 41)
    whole = _reference_probabilities(model, image, 3, 2, 8, patch=[16, 16, 8])
    expect = F.interpolate(whole[None], size=target, mode="trilinear", align_corners=False)[0].argmax(0)
    for slab_bytes in (1, 200_000, 2**30):  # one window position per slab, a few, the whole volume
        got = VolumePredictor(model, data, CPU, FP32, num_classes=5, slab_bytes=slab_bytes).labels(image, target)
        assert torch.equal(got.long(), expect), slab_bytes
    if target == image.shape[1:]:  # flip TTA (a smaller volume): one slab is the whole volume, flipped as a whole
        small = image[:, :16, :16, :17]
        whole = _reference_probabilities(model, small, 3, 2, 8, patch=[16, 16, 8], tta=True)
        predictor = VolumePredictor(model, data, CPU, FP32, tta=True, num_classes=5, slab_bytes=2**30)
        assert torch.equal(predictor.labels(small, tuple(small.shape[1:])).long(), whole.argmax(0))


# ---------------------------------------------------------------- HD95
def _blobs(shape, seed):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int16)
    lab[0:7, 3:12, 0:5] = 1  # touches the volume's border
    lab[20:31, 18:25, 6:14] = 2
    lab[rng.random(shape) > 0.995] = 3  # scattered voxels
    return lab


def test_hd95_on_bounding_boxes_equals_the_whole_volume():
    truth = _blobs((40, 30, 16), 0)
    pred = _blobs((40, 30, 16), 1)
    pred[1:8, 4:13, 0:5] = np.where(pred[1:8, 4:13, 0:5] == 0, 1, pred[1:8, 4:13, 0:5])  # shifted structure 1
    pred[pred == 2] = 0
    pred[22:30, 17:26, 5:12] = 2
    spacing = [0.7, 1.2, 2.0]
    rows = class_scores(torch.from_numpy(pred), torch.from_numpy(truth), 4, True, spacing)
    ref = _reference_scores(torch.from_numpy(pred).long(), torch.from_numpy(truth).long(), 4, spacing)
    for row, (dice, iou, hd) in zip(rows, ref):
        assert _close(row["dice"], dice) and _close(row["iou"], iou) and _close(row["hd95"], hd, 1e-5)
        assert row["hd95_missing"] == 0


def test_a_structure_never_predicted_scores_the_diagonal_and_is_counted():
    from medseg.tasks.evaluate import summarise

    truth = np.zeros((10, 12, 4), np.int16)
    truth[2:5, 2:5, 1:3], truth[6:9, 6:9, 1:3] = 1, 2
    pred = np.where(truth == 1, 1, 0).astype(np.int16)  # structure 2 is missed
    spacing = [2.0, 2.0, 3.0]
    rows = class_scores(pred, truth, 3, True, spacing)
    assert rows[0]["hd95"] == 0.0 and rows[0]["hd95_missing"] == 0
    assert rows[1]["hd95"] == pytest.approx(math.sqrt(20**2 + 24**2 + 12**2)) and rows[1]["hd95_missing"] == 1
    summary = summarise([{"case": "a", "class": n, **r} for n, r in zip("xy", rows)], ["bg", "x", "y"], "t", 1)
    assert summary["hd95_missing"] == 1 and summary["per_class"]["y"]["hd95_missing"] == 1
    assert summary["mean_hd95"] == pytest.approx(rows[1]["hd95"] / 2)  # the missed structure is not dropped


# ---------------------------------------------------------------- totalseg: mm, threshold, predict agrees
def _write_totalseg_2mm(root: Path, subjects: int = 4) -> Path:
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for s in range(subjects):
        folder = root / f"s{s:04d}"
        (folder / "segmentations").mkdir(parents=True)
        mask = np.zeros((24, 24, 6), np.uint8)
        mask[4 + s : 14 + s, 6:16, 1:5] = 1
        ct = rng.normal(-800, 40, mask.shape).astype(np.float32)
        ct[mask > 0] = 150 + rng.normal(0, 20, int(mask.sum()))
        nib.save(nib.Nifti1Image(ct, affine), folder / "ct.nii.gz")
        nib.save(nib.Nifti1Image(mask, affine), folder / "segmentations" / "liver.nii.gz")
    return root


def _hd95_scipy(pred: np.ndarray, truth: np.ndarray, spacing: list[float]) -> float:
    """Independent HD95: surface voxels by erosion, distances by scipy's Euclidean distance transform."""
    from scipy import ndimage

    def surface(mask):
        return mask & ~ndimage.binary_erosion(mask)

    sp, st = surface(pred), surface(truth)
    to_truth = ndimage.distance_transform_edt(~st, sampling=spacing)[sp]
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)[st]
    return max(np.percentile(to_truth, 95), np.percentile(to_pred, 95))


def test_totalseg_hd95_is_in_mm_and_evaluate_agrees_with_predict(cache_dir, tmp_path):
    """A two-class totalseg model at 2 mm: evaluate's HD95 and Dice equal an independent computation on
    the masks mode=predict writes with the same predict.threshold."""
    from medseg.tasks.evaluate import run_evaluate
    from medseg.tasks.predict import run_predict
    from medseg.tasks.train import run_train

    root = _write_totalseg_2mm(tmp_path / "ts")
    common = ["data=totalseg", f"data.root={root}", "data.intensity.preset=ct", "data.val_percent=25"]
    run_train(_compose(cache_dir, tmp_path / "train", *common, "trainer.max_epochs=2"))
    ckpt = tmp_path / "train" / "checkpoints" / "best.pt"
    threshold = ["predict.threshold=0.3"]
    run_evaluate(
        _compose(cache_dir, tmp_path / "eval", "mode=evaluate", f"ckpt={ckpt}", f"evaluate.input={root}", *threshold)
    )
    rows = {r["case"]: r for r in _read_metrics(tmp_path / "eval" / "metrics.csv")}
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["hd95_unit"] == "mm" and set(rows) == {f"s{s:04d}" for s in range(4)}
    measured = 0
    for case, row in rows.items():
        out = tmp_path / "pred" / case
        run_predict(
            _compose(
                cache_dir,
                tmp_path / "p",
                "mode=predict",
                f"ckpt={ckpt}",
                f"predict.input={root / case / 'ct.nii.gz'}",
                f"predict.output_dir={out}",
                *threshold,
            )
        )
        pred = np.asarray(nib.load(out / "ct.nii.gz").dataobj) > 0
        truth = np.asarray(nib.load(root / case / "segmentations" / "liver.nii.gz").dataobj) > 0
        dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
        assert _num(row["dice"]) == pytest.approx(dice, abs=1e-6), case
        if pred.any():
            measured += 1
            assert row["hd95_missing"] == "0"
            assert _num(row["hd95"]) == pytest.approx(_hd95_scipy(pred, truth, [2.0, 2.0, 2.0]), abs=1e-4), case
        else:
            assert row["hd95_missing"] == "1"
            assert _num(row["hd95"]) == pytest.approx(2.0 * math.sqrt(24**2 + 24**2 + 6**2)), case
    assert measured > 0  # at least one case compares a real surface distance


# ---------------------------------------------------------------- evaluate and predict inputs
def _demo_copy(demo_ckpt: Path, cache_dir: Path, dest: Path) -> Path:
    """A copy of the demo dataset the checkpoint was trained on (MSD layout)."""
    import shutil

    from medseg.data.layouts import read_cases
    from medseg.tasks.restore import restore_model

    root = read_cases(restore_model(str(demo_ckpt), CPU).cfg.data, str(cache_dir)).root
    return Path(shutil.copytree(root, dest))


@pytest.mark.slow
def test_truncated_label_ends_evaluate_in_one_line_and_writes_no_metrics(demo_ckpt, cache_dir, tmp_path, run_cli):
    root = _demo_copy(demo_ckpt, cache_dir, tmp_path / "data")
    label = sorted((root / "labelsTr").glob("*.nii.gz"))[-1]
    label.write_bytes(label.read_bytes()[: label.stat().st_size // 2])
    proc = run_cli("mode=evaluate", f"ckpt={demo_ckpt}", f"evaluate.input={root}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(label) in lines[0] and "Traceback" not in proc.stderr
    assert not list((tmp_path / "run").rglob("metrics.csv")) and not list((tmp_path / "run").rglob("summary.json"))


def test_bad_evaluate_and_predict_inputs_are_refused_naming_the_key_or_case(demo_ckpt, cache_dir, tmp_path):
    from medseg.errors import DataError
    from medseg.tasks.evaluate import run_evaluate
    from medseg.tasks.predict import run_predict

    def evaluate(where: Path):
        run_evaluate(
            _compose(cache_dir, tmp_path / "eval", "mode=evaluate", f"ckpt={demo_ckpt}", f"evaluate.input={where}")
        )

    with pytest.raises(DataError, match=f"^evaluate.input={tmp_path}/nope is not a folder"):
        evaluate(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"^evaluate.input={tmp_path}/empty does not match data=msd"):
        evaluate(tmp_path / "empty")
    root = _demo_copy(demo_ckpt, cache_dir, tmp_path / "data")
    label = sorted((root / "labelsTr").glob("*.nii.gz"))[0]
    img = nib.load(label)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :-2], img.affine), label)  # one column fewer
    case = label.name[: -len(".nii.gz")]
    with pytest.raises(DataError, match=f"case {case}: label shape \\(32, 30, 8\\) differs from image shape"):
        evaluate(root)
    assert not (tmp_path / "eval" / "metrics.csv").exists()
    image = sorted((root / "imagesTr").glob("*.nii.gz"))[0]
    image.unlink()
    with pytest.raises(DataError, match=f"missing file {image}"):
        evaluate(root)
    with pytest.raises(DataError, match=f"predict.input={tmp_path}/missing.nii.gz does not exist"):
        run_predict(
            _compose(
                cache_dir,
                tmp_path / "p",
                "mode=predict",
                f"ckpt={demo_ckpt}",
                f"predict.input={tmp_path}/missing.nii.gz",
            )
        )
