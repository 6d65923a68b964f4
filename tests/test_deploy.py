"""mode=export and the onnxruntime predictor: the same masks as the PyTorch path, no training imports,
checksums checked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import CheckpointError
from tests.conftest import ROOT
from tests.deploy_models import MODELS
from tests.deploy_models import compose_cfg as _compose


def _torch_predict(cache_dir: Path, ckpt: Path, scan: Path, out: Path, *extra: str) -> np.ndarray:
    from medseg.tasks.predict import run_predict

    cfg = _compose(cache_dir, out, "mode=predict", f"ckpt={ckpt}", f"predict.input={scan}", *extra)
    cfg.predict.output_dir = str(out / "torch")
    run_predict(cfg)
    return np.asarray(nib.load(str(out / "torch" / scan.name)).dataobj)


def _onnx_predict(folder: Path, scan: Path, out: Path, **settings) -> np.ndarray:
    from medseg.deploy.runner import open_export, predict_cases
    from medseg.dicom.cases import collect_cases

    predict_cases(open_export(folder), collect_cases(str(scan)), out / "onnx", "nifti", **settings)
    return np.asarray(nib.load(str(out / "onnx" / scan.name)).dataobj)


@pytest.mark.parametrize("name", list(MODELS))
def test_export_then_predict_equals_the_checkpoint_prediction(name, exported, scan, cache_dir, tmp_path):
    ckpt, folder = exported[name]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["dims"] == (3 if name.startswith("3d") else 2) and manifest["opset"] == 17
    assert manifest["context_slices"] == (1 if name == "2.5d" else 0)
    assert manifest["spacing"] == MODELS[name]["data"].get("spacing")
    assert manifest["intensity"]["preset"] == MODELS[name]["data"].get("intensity", {}).get("preset", "minmax")
    assert manifest["classes"]["names"] == ["background", "disc", "square", "ring"]
    import onnx

    onnx.checker.check_model(str(folder / "model.onnx"))
    tta = name == "3d"  # flip TTA over the slab-wise sliding window (costly; once is enough)
    expect = _torch_predict(cache_dir, ckpt, scan, tmp_path, f"predict.tta={tta}")
    got = _onnx_predict(folder, scan, tmp_path, tta=tta)
    assert got.shape == (30, 27, 11)
    assert len(np.unique(expect)) > 1, "the comparison needs more than one class"
    assert np.array_equal(got, expect), f"{int((got != expect).sum())} voxels differ"


def test_slab_wise_onnx_sliding_window_equals_one_pass(exported, scan, tmp_path):
    """The numpy sliding window cut into slabs gives the same labels as one whole-volume pass."""
    from medseg.deploy.preprocess import prepare
    from medseg.deploy.runner import open_export, read_case
    from medseg.dicom.cases import collect_cases

    export = open_export(exported["3d"][1])
    image, geom, _ = read_case(collect_cases(str(scan))[0], export.manifest)
    image = prepare(image, export.manifest)
    whole = export.predictor().labels(image, geom.shape)
    predictor = export.predictor()
    predictor.slab_bytes = 1  # one window position per slab
    assert np.array_equal(predictor.labels(image, geom.shape), whole)


def test_the_graph_ends_at_logits_and_threads_do_not_change_labels(exported, scan):
    """The numpy softmax, resizing and argmax cut into parts per thread give the labels of one thread; the
    graph holds no Softmax (onnxruntime's over the class axis cost most of a 118-class forward)."""
    import onnx

    from medseg.deploy.preprocess import prepare
    from medseg.deploy.runner import open_export, read_case
    from medseg.dicom.cases import collect_cases

    for name in ("2d", "3d"):
        folder = exported[name][1]
        assert json.loads((folder / "manifest.json").read_text())["output"] == "logits"
        assert "Softmax" not in {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}
        one, three = open_export(folder, threads=1), open_export(folder, threads=3)
        image, geom, _ = read_case(collect_cases(str(scan))[0], one.manifest)
        image = prepare(image, one.manifest)
        assert one.predictor().threads == 1 and three.predictor().threads == 3
        for tta in (False, True):  # without TTA, 2D slices are finished one per task (softmax, resampling)
            expect = one.predictor(tta=tta).labels(image, geom.shape)
            assert np.array_equal(three.predictor(tta=tta).labels(image, geom.shape), expect), (name, tta)


def test_an_export_whose_graph_ends_in_softmax_still_predicts_alike(exported, scan, tmp_path):
    """Exports written before the graph ended at the logits say output "probabilities"; they still load."""
    import onnx
    from onnx import helper

    from medseg.deploy.manifest import sha256

    folder = Path(shutil.copytree(exported["2d"][1], tmp_path / "export"))
    model = onnx.load(str(folder / "model.onnx"))
    last = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Softmax", [last], ["probabilities"], axis=1))
    model.graph.output[0].name = "probabilities"
    onnx.save(model, str(folder / "model.onnx"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["output"], manifest["models"][0]["sha256"] = "probabilities", sha256(folder / "model.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    expect = _onnx_predict(exported["2d"][1], scan, tmp_path / "logits")
    assert np.array_equal(_onnx_predict(folder, scan, tmp_path / "probabilities"), expect)


def test_a_tampered_model_file_is_refused_by_its_checksum(exported, tmp_path):
    from medseg.deploy.runner import open_export

    folder = Path(shutil.copytree(exported["2d"][1], tmp_path / "export"))
    data = bytearray((folder / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.onnx does not match the SHA-256 in .*manifest\.json"):
        open_export(folder)


def test_the_deploy_entry_point_refuses_in_one_line(exported, scan, tmp_path, capsys):
    """python -m medseg.deploy: a tampered export and a SEG asked for NIfTI input end with exit code 2 and
    one line; nothing is written."""
    from medseg.deploy.__main__ import main

    folder = Path(shutil.copytree(exported["2d"][1], tmp_path / "export"))
    assert main([str(folder), str(scan), str(tmp_path / "out"), "--format", "dicom_seg"]) == 2
    assert "needs DICOM input, but" in capsys.readouterr().err
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["models"][0]["file"] = "../model.onnx"  # a manifest may not point outside its folder
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(folder), str(scan), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "models/files must list plain file names" in err[0], err
    assert not list((tmp_path / "out").glob("*"))


LEAKS = "import json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai')"
LEAKS += " or m.startswith(('medseg.engine', 'medseg.models', 'medseg.data', 'medseg.tasks')))))"


@pytest.mark.slow
def test_predict_with_an_export_imports_no_training_code(exported, scan, cache_dir, tmp_path):
    """run.py mode=predict ckpt=<export> and python -m medseg.deploy, each in a fresh process."""
    folder = exported["2.5d"][1]
    run = f"""
import runpy, sys
sys.argv = ["run.py", "mode=predict", "ckpt={folder}", "predict.input={scan}", "predict.output_dir={tmp_path}/a",
            "hydra.run.dir={tmp_path}/run", "logger=none"]
try:
    runpy.run_path("{ROOT / "run.py"}", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
"""
    deploy = f"""
import runpy, sys
sys.argv = ["medseg.deploy", "{folder}", "{scan}", "{tmp_path}/b"]
try:
    runpy.run_module("medseg.deploy", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
"""
    env = {"PYTHONPATH": str(ROOT), "MEDSEG_CACHE": str(cache_dir), "WANDB_MODE": "offline", "PATH": "/usr/bin:/bin"}
    for script, out in ((run, "a"), (deploy, "b")):
        proc = subprocess.run(
            [sys.executable, "-c", script + LEAKS], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
        assert (tmp_path / out / scan.name).is_file()
    a = np.asarray(nib.load(str(tmp_path / "a" / scan.name)).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "b" / scan.name)).dataobj)
    assert np.array_equal(a, b)


# ---------------------------------------------------------------- DICOM in, DICOM SEG out
SPACING, ORIGIN = (0.7, 0.8, 2.0), (-12.0, 40.0, 75.0)
IOP = (1, 0, 0, 0, -1, 0)  # rows run anterior: the slice normal points to the feet (-z)


@pytest.fixture(scope="module")
def dicom_case(scan, tmp_path_factory) -> tuple[Path, Path]:
    """The scan (rounded to integers) as a DICOM series in shuffled files, and as NIfTI with the affine the
    series has (tests/dicom_series.expected_affine, computed independently of the reader)."""
    from tests.dicom_series import expected_affine, write_series

    volume = np.round(np.asarray(nib.load(str(scan)).dataobj)).astype(np.float32)
    root = tmp_path_factory.mktemp("dicom_case")
    write_series(root / "series", volume, SPACING, IOP, ORIGIN, slope=0.5, intercept=-100.0)
    nifti = root / "series.nii.gz"
    nib.save(nib.Nifti1Image(volume, expected_affine(SPACING, IOP, ORIGIN)), nifti)
    return root / "series", nifti


def test_a_dicom_series_is_read_as_the_same_volume_and_affine(dicom_case):
    from medseg.dicom.series import find_series, read_volume

    folder, nifti = dicom_case
    (series,) = find_series(folder)
    volume = read_volume(series, ["CT"])
    ref = nib.load(str(nifti))
    assert np.array_equal(volume.array, np.asarray(ref.dataobj))  # slope/intercept applied, slices in order
    assert np.allclose(volume.affine, ref.affine)  # spacing from the positions, not SliceThickness=99


def test_dicom_in_gives_the_masks_of_the_same_volume_as_nifti(exported, dicom_case, cache_dir, tmp_path):
    """Both paths: onnxruntime on the export, PyTorch on the checkpoint; a zip of the series too."""
    folder, nifti = dicom_case
    ckpt, export = exported["2.5d"]
    expect = _onnx_predict(export, nifti, tmp_path)
    assert len(np.unique(expect)) > 1
    got = _onnx_predict_to(export, folder, tmp_path / "dcm", "series.nii.gz")
    assert np.array_equal(got, expect)
    archive = Path(shutil.make_archive(str(tmp_path / "series"), "zip", folder))
    assert np.array_equal(_onnx_predict_to(export, archive, tmp_path / "zip", "series.nii.gz"), expect)
    from medseg.tasks.predict import run_predict

    cfg = _compose(cache_dir, tmp_path, "mode=predict", f"ckpt={ckpt}", f"predict.input={folder}")
    cfg.predict.output_dir = str(tmp_path / "torch_dcm")
    run_predict(cfg)
    torch_mask = nib.load(str(tmp_path / "torch_dcm" / "series.nii.gz"))
    assert np.array_equal(np.asarray(torch_mask.dataobj), expect)
    assert np.allclose(torch_mask.affine, nib.load(str(nifti)).affine)


def _onnx_predict_to(export: Path, source: Path, out: Path, name: str, fmt: str = "nifti") -> np.ndarray:
    from medseg.deploy.runner import open_export, predict_cases
    from medseg.dicom.cases import collect_cases

    predict_cases(open_export(export), collect_cases(str(source)), out, fmt)
    return np.asarray(nib.load(str(out / name)).dataobj)


def _seg_by_position(seg_path: Path, source: Path) -> np.ndarray:
    """Re-read a SEG with highdicom and place each frame by its ImagePositionPatient on the grid of the
    source series (columns, rows, slices sorted along the normal), independent of medseg's reader."""
    import highdicom as hd
    import pydicom

    sources = [pydicom.dcmread(p) for p in sorted(source.iterdir())]
    normal = np.cross(np.asarray(IOP[:3], float), np.asarray(IOP[3:], float))
    depths = sorted(float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)) for ds in sources)
    seg = hd.seg.segread(str(seg_path))
    names = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    assert names == {1: "disc", 2: "square", 3: "ring"}
    series = seg.ReferencedSeriesSequence
    referenced = {r.ReferencedSOPInstanceUID for s in series for r in s.ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in sources}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    out = np.zeros((sources[0].Columns, sources[0].Rows, len(sources)), dtype=np.int16)
    pixels = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    for f, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        depth = float(np.dot(np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float), normal))
        k = int(np.argmin([abs(d - depth) for d in depths]))
        assert abs(depths[k] - depth) < 1e-3
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[:, :, k][pixels[f].T > 0] = number
    return out


def test_dicom_seg_frames_placed_by_position_equal_the_nifti_mask(exported, dicom_case, tmp_path):
    folder, _ = dicom_case
    export = exported["2d"][1]
    mask = _onnx_predict_to(export, folder, tmp_path, "series.nii.gz", fmt="both")
    assert not np.array_equal(mask, mask[:, :, ::-1]), "a front-to-back mirror must be visible"
    assert sorted(np.unique(mask)) != [0]
    assert np.array_equal(_seg_by_position(tmp_path / "series.seg.dcm", folder), mask)


def test_a_folder_of_several_series_predicts_each(exported, dicom_case, tmp_path):
    from tests.dicom_series import write_series

    folder, nifti = dicom_case
    volume = np.asarray(nib.load(str(nifti)).dataobj)
    root = tmp_path / "study"
    shutil.copytree(folder, root / "a")
    write_series(root / "b", volume[:, :, :6], SPACING, IOP, ORIGIN, series_number=7, seed=1)
    from medseg.deploy.runner import open_export, predict_cases
    from medseg.dicom.cases import collect_cases

    cases = collect_cases(str(root))
    assert [c.name.split("_series")[1][:1] for c in cases] == ["1", "7"]
    written = predict_cases(open_export(exported["2d"][1]), cases, tmp_path / "out", "nifti")
    shapes = sorted(nib.load(str(p)).shape for p in written)
    assert shapes == [(30, 27, 6), (30, 27, 11)]


# ---------------------------------------------------------------- DICOM labelled cases in mode=evaluate
def _labelled(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image of whole numbers (exact in DICOM) and its label of the classes 1..3 (disc, square, ring)."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    label = np.zeros(shape, np.int16)
    label[(x - shape[0] // 3) ** 2 + (y - shape[1] // 2) ** 2 < 30] = 1
    label[(x >= 2 * shape[0] // 3) & (x < 2 * shape[0] // 3 + 6) & (y >= 3) & (y < 9) & (z > 1)] = 2
    r = (x - shape[0] // 2) ** 2 + (y - shape[1] // 2) ** 2
    label[(r > 90) & (r < 120) & (z < shape[2] - 2)] = 3
    noise = np.random.default_rng(seed).normal(0, 20, shape)
    return np.round(label * 60.0 + noise + 3 * z).astype(np.float32), label


@pytest.fixture(scope="module")
def labelled_inputs(tmp_path_factory) -> dict[str, Path]:
    """Two labelled cases three ways: an MSD folder (NIfTI with the series' affine), DICOM series with
    label.nii.gz in one folder per case, and DICOM series with a SEG (frames in reverse order) in a zip."""
    import pydicom

    from medseg.dicom.seg import write_seg
    from tests.dicom_series import expected_affine, write_series

    root = tmp_path_factory.mktemp("labelled")
    affine = expected_affine(SPACING, IOP, ORIGIN)
    normal = np.cross(np.asarray(IOP[:3], float), np.asarray(IOP[3:], float))
    training = []
    for i, shape in enumerate([(30, 27, 11), (26, 22, 7)]):
        name = f"case_{i}"
        image, label = _labelled(shape, i)
        for sub, array in (("imagesTr", image), ("labelsTr", label)):
            (root / "msd" / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), root / "msd" / sub / f"{name}.nii.gz")
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
        write_series(root / "with_nifti" / name / "series", image, SPACING, IOP, ORIGIN, seed=i)
        nib.save(nib.Nifti1Image(label, affine), root / "with_nifti" / name / "label.nii.gz")
        files = write_series(root / "with_seg" / "study" / name, image, SPACING, IOP, ORIGIN, seed=i + 5)
        sources = sorted(
            (pydicom.dcmread(p, stop_before_pixels=True) for p in files),
            key=lambda ds: -np.dot(ds.ImagePositionPatient, normal),
        )
        ordered = label[:, :, ::-1]  # sources from the last slice to the first: frames placed by position
        names = ["background", "disc", "square", "ring"]
        write_seg(root / "with_seg" / "study" / name / "label.seg.dcm", ordered, sources, names, "test")
    labels = {"0": "background", "1": "disc", "2": "square", "3": "ring"}
    (root / "msd" / "dataset.json").write_text(json.dumps({"labels": labels, "training": training}))
    archive = shutil.make_archive(str(root / "with_seg"), "zip", root / "with_seg")  # study/case_i/... inside
    return {"msd": root / "msd", "with_nifti": root / "with_nifti", "with_seg": Path(archive)}


def _evaluate(cache_dir: Path, ckpt: Path, source: Path, out: Path) -> tuple[list[str], dict]:
    from medseg.tasks.evaluate import run_evaluate

    run_evaluate(_compose(cache_dir, out, "mode=evaluate", f"ckpt={ckpt}", f"evaluate.input={source}"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary.pop("source") == str(source)
    return (out / "metrics.csv").read_text().splitlines(), summary


def test_dicom_labelled_cases_score_as_their_nifti(exported, labelled_inputs, cache_dir, tmp_path):
    """The same volumes and labels as NIfTI, as DICOM series with a NIfTI label, and as DICOM series with a
    DICOM SEG in a zip: the same metrics.csv and summary.json (HD95 in mm from the series' geometry)."""
    ckpt = exported["2.5d"][0]
    rows, summary = _evaluate(cache_dir, ckpt, labelled_inputs["msd"], tmp_path / "msd")
    assert summary["cases"] == 2 and summary["hd95_unit"] == "mm"
    assert len(rows) == 1 + 2 * 3 and 0 < summary["mean_dice"] < 1
    for name in ("with_nifti", "with_seg"):
        assert _evaluate(cache_dir, ckpt, labelled_inputs[name], tmp_path / name) == (rows, summary), name
    one_rows, one = _evaluate(cache_dir, ckpt, labelled_inputs["with_nifti"] / "case_1", tmp_path / "one")
    assert one_rows == rows[:1] + [r for r in rows if r.startswith("case_1,")]  # a single case folder
    assert one["per_case"] == {"case_1": summary["per_case"]["case_1"]}


# ---------------------------------------------------------------- data.spacing with DICOM in
def test_a_dicom_series_into_a_spacing_model_gives_the_checkpoint_masks(exported, dicom_case, cache_dir, tmp_path):
    """The series' affine (flipped rows) read by both paths: the PyTorch one through a temporary NIfTI."""
    folder, _ = dicom_case
    ckpt, export = exported["3d-spacing"]
    got = _onnx_predict_to(export, folder, tmp_path / "onnx", "series.nii.gz")
    from medseg.tasks.predict import run_predict

    cfg = _compose(cache_dir, tmp_path, "mode=predict", f"ckpt={ckpt}", f"predict.input={folder}")
    cfg.predict.output_dir = str(tmp_path / "torch")
    run_predict(cfg)
    expect = np.asarray(nib.load(str(tmp_path / "torch" / "series.nii.gz")).dataobj)
    assert got.shape == (30, 27, 11) and len(np.unique(expect)) > 1
    assert np.array_equal(got, expect), f"{int((got != expect).sum())} voxels differ"
