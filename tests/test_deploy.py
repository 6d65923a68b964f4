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
from tests.conftest import CONF, ROOT, TINY

MODELS = {
    # 2D with in-plane scale 0.5 (resizing in and out), 2.5D with context slices, 3D patches + sliding window
    "2d": {"data": {"scale": 0.5}},
    "2.5d": {"data": {"context_slices": 1}, "in_channels": 3},
    "3d": {"data": {"dims": 3, "patch_size": [16, 16, 8], "pad_divisible": 8}, "dims": 3},
}
FAST = ["model.channels=[4,8]", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
FAST += ["report.enabled=false", "report.overlay_cases=0", "trainer.log_images_every_n_epochs=0"]


def _compose(cache_dir: Path, out: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from medseg.config import register_configs

    register_configs()
    base = [*TINY, *FAST, f"paths.cache_dir={cache_dir}", f"paths.output_dir={out}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=base + list(overrides))


def _variant(trained: Path, dest: Path, spec: dict) -> Path:
    """The trained demo checkpoint turned into another demo model: its stored data settings changed and
    seeded weights of the right shape, with a sharpened head so that the masks hold several classes (one
    training step leaves near-uniform probabilities)."""
    import torch
    import yaml

    from medseg.models.unet import UNet

    payload = torch.load(trained, map_location="cpu", weights_only=True)
    cfg = yaml.safe_load(payload["config_yaml"])
    cfg["data"].update(spec["data"])
    payload["config_yaml"] = yaml.safe_dump(cfg)
    facts = payload["dataset"]
    facts["in_channels"], facts["dims"] = spec.get("in_channels", 1), spec.get("dims", 2)
    torch.manual_seed(len(dest.name))
    model = UNet(facts["in_channels"], facts["num_classes"], facts["dims"], channels=[4, 8])
    with torch.no_grad():
        model.head.weight.mul_(30.0)
    payload["model"] = model.state_dict()
    path = dest / "best.pt"
    torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def exported(cache_dir, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """The demo models as checkpoints and exports: name -> (best.pt, export folder)."""
    from medseg.tasks.export import run_export
    from medseg.tasks.train import run_train

    run = tmp_path_factory.mktemp("train")
    run_train(_compose(cache_dir, run))
    out = {}
    for name, spec in MODELS.items():
        dest = tmp_path_factory.mktemp(f"model_{name}")
        ckpt = _variant(run / "checkpoints" / "best.pt", dest, spec)
        cfg = _compose(cache_dir, dest, "mode=export", f"ckpt={ckpt}", f"export.output_dir={dest}/export")
        folder = run_export(cfg)
        out[name] = (ckpt, folder)
    return out


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    """A volume of a size no model was trained on (not divisible by 16, odd slice count)."""
    rng = np.random.default_rng(3)
    z, y, x = np.meshgrid(np.arange(11), np.arange(27), np.arange(30), indexing="ij")
    vol = ((x - 14) ** 2 + (y - 12) ** 2 < 60).astype(np.float32).transpose(2, 1, 0) * 200
    vol += rng.normal(0, 20, vol.shape).astype(np.float32) + 3 * z.transpose(2, 1, 0)
    path = tmp_path_factory.mktemp("scan") / "scan.nii.gz"
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([0.7, 0.8, 2.0, 1.0])), path)
    return path


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
    assert manifest["dims"] == (3 if name == "3d" else 2) and manifest["opset"] == 17
    assert manifest["context_slices"] == (1 if name == "2.5d" else 0)
    assert manifest["classes"]["names"] == ["background", "disc", "square", "ring"]
    import onnx

    onnx.checker.check_model(str(folder / "model.onnx"))
    tta = name == "3d"  # flip TTA over the slab-wise sliding window
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


def test_a_tampered_model_file_is_refused_by_its_checksum(exported, tmp_path):
    from medseg.deploy.runner import open_export

    folder = Path(shutil.copytree(exported["2d"][1], tmp_path / "export"))
    data = bytearray((folder / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.onnx does not match the SHA-256 in .*manifest\.json"):
        open_export(folder)


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
