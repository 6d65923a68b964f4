"""mode=export of a crossval result: one ONNX file per chosen model, the post-processing in the manifest, and
onnxruntime predicting the masks of `mode=predict ckpt=<crossval folder>` (docs/deploy.md)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import CheckpointError
from tests.deploy_models import MODELS, compose_cfg, variant

# crossval.json's chosen configurations as the demo models: two folds each (other seeds), 2D and 3D
FOLDS = {"model=2d": ("2d", (11, 12)), "model=3d": ("3d", (13, 14))}
POSTPROCESSING = {"disc": "largest_component", "square": None, "ring": "largest_foreground"}
CHOICES = {"one configuration": ["model=2d"], "2D + 3D": ["model=2d", "model=3d"]}


def _crossval_folder(root: Path, template: Path, configs: list[str]) -> Path:
    """A crossval folder as mode=crossval leaves it: crossval.json naming the chosen folds' checkpoints."""
    chosen = []
    for name in configs:
        kind, seeds = FOLDS[name]
        checkpoints = []
        for seed in seeds:
            dest = root / f"{kind}_fold{seed}"
            dest.mkdir(parents=True)
            checkpoints.append(str(variant(template, dest, MODELS[kind], seed=seed)))
        chosen.append({"name": name, "overrides": [name], "checkpoints": checkpoints})
    result = {
        "chosen": {"name": " + ".join(configs), "ensemble": len(configs) > 1, "configurations": chosen},
        "checkpoints": [p for c in chosen for p in c["checkpoints"]],
        "postprocessing": {name: {"operation": op, "dice_before": 0.5} for name, op in POSTPROCESSING.items()},
        "class_names": ["background", "disc", "square", "ring"],
    }
    (root / "cv").mkdir()
    (root / "cv" / "crossval.json").write_text(json.dumps(result))
    return root / "cv"


@pytest.fixture(scope="module")
def ensembles(exported, cache_dir, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """choice -> (crossval folder, its export folder written by mode=export ckpt=<crossval folder>)."""
    from medseg.tasks.export import run_export

    out = {}
    for choice, configs in CHOICES.items():
        root = tmp_path_factory.mktemp("crossval")
        folder = _crossval_folder(root, exported["2d"][0], configs)
        cfg = compose_cfg(cache_dir, root, "mode=export", f"ckpt={folder}", f"export.output_dir={root}/export")
        out[choice] = (folder, run_export(cfg))
    return out


def _components(mask: np.ndarray) -> int:
    from scipy.ndimage import generate_binary_structure, label

    return int(label(mask, structure=generate_binary_structure(mask.ndim, mask.ndim))[1])


@pytest.mark.parametrize("choice", list(CHOICES))
def test_an_exported_crossval_ensemble_predicts_as_the_crossval_folder(choice, ensembles, scan, cache_dir, tmp_path):
    import onnx

    from medseg.deploy.__main__ import main
    from medseg.deploy.postprocess import apply_postprocessing
    from medseg.deploy.predictor import ensemble_labels
    from medseg.deploy.preprocess import prepare
    from medseg.deploy.runner import open_export, read_case
    from medseg.dicom.cases import collect_cases
    from medseg.tasks.predict import run_predict

    folder, export = ensembles[choice]
    manifest = json.loads((export / "manifest.json").read_text())
    result = json.loads((folder / "crossval.json").read_text())
    files = sorted(p.name for p in export.glob("*.onnx"))
    assert files == sorted(m["file"] for m in manifest["models"]) and len(files) == len(result["checkpoints"])
    for entry in manifest["models"]:  # every model listed, checked and hashed
        onnx.checker.check_model(str(export / entry["file"]), full_check=True)
        assert entry["sha256"] == hashlib.sha256((export / entry["file"]).read_bytes()).hexdigest()
    assert manifest["postprocessing"] == [
        {"class": "disc", "operation": "largest_component"},
        {"class": "ring", "operation": "largest_foreground"},
    ]
    if len(CHOICES[choice]) == 1:  # one configuration: the folds at the top level, as a single model's file
        assert "configurations" not in manifest and manifest["dims"] == 2
    else:
        assert [(g["name"], g["dims"], len(g["models"])) for g in manifest["configurations"]] == [
            ("model=2d", 2, 2),
            ("model=3d", 3, 2),
        ]

    cfg = compose_cfg(cache_dir, tmp_path, "mode=predict", f"ckpt={folder}", f"predict.input={scan}")
    cfg.predict.output_dir = str(tmp_path / "torch")
    run_predict(cfg)
    expect = np.asarray(nib.load(str(tmp_path / "torch" / scan.name)).dataobj)
    assert main([str(export), str(scan), str(tmp_path / "onnx")]) == 0
    got = np.asarray(nib.load(str(tmp_path / "onnx" / scan.name)).dataobj)
    assert got.shape == (30, 27, 11) and len(np.unique(expect)) > 2
    assert np.array_equal(got, expect), f"{int((got != expect).sum())} voxels differ"

    # the post-processing did something: the raw ensemble mask had islands of disc, the written one has none
    opened = open_export(export)
    image, geom, _ = read_case(collect_cases(str(scan))[0], opened.manifest)
    images = [prepare(image, c.manifest) for c in opened.configurations]
    raw = ensemble_labels(opened.predictors(), images, geom.shape, 0.5)
    assert _components(raw == 1) > 1 and _components(got == 1) == 1
    assert np.array_equal(got, apply_postprocessing(raw, {1: "largest_component", 3: "largest_foreground"}))
    if len(images) > 1:  # the 3D configuration changed the 2D one's mask: both took part
        alone = ensemble_labels(opened.predictors()[:1], images[:1], geom.shape, 0.5)
        assert not np.array_equal(alone, raw)


def test_a_tampered_member_of_an_exported_ensemble_is_refused(ensembles, tmp_path):
    from medseg.deploy.runner import open_export

    export = Path(shutil.copytree(ensembles["2D + 3D"][1], tmp_path / "export"))
    member = export / "model_1_1.onnx"
    data = bytearray(member.read_bytes())
    data[len(data) // 2] ^= 0xFF
    member.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model_1_1\.onnx does not match the SHA-256 in .*manifest\.json"):
        open_export(export)


@pytest.mark.slow
def test_predicting_with_an_exported_ensemble_imports_no_torch_or_scipy(ensembles, scan, tmp_path):
    """python -m medseg.deploy with the 2D + 3D export and its post-processing, in a fresh process where torch,
    MONAI and scipy cannot be imported (as on a machine with only the deploy extra; nibabel takes scipy only
    when it is there), and which imports no training code."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    export = ensembles["2D + 3D"][1]
    script = f"""
import json, runpy, sys
for name in ("torch", "monai", "scipy"):
    sys.modules[name] = None  # an import of it raises ImportError
sys.argv = ["medseg.deploy", "{export}", "{scan}", "{tmp_path}/out"]
try:
    runpy.run_module("medseg.deploy", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
training = ("medseg.engine", "medseg.models", "medseg.data", "medseg.tasks", "medseg.crossval")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(training))))
"""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "out" / scan.name).is_file()
