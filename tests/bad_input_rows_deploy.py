"""Bad-input rows: DICOM input and export folders."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import nibabel as nib
import numpy as np

from tests.bad_input_rows_crossval import _crossval_json
from tests.bad_inputs_harness import (
    Ctx,
    Outcome,
    Row,
    _edit_checkpoint,
    _predict,
)
from tests.conftest import ROOT


# ------------------------------------------------------------------ the rows: DICOM input, export folders
def _dicom(change: dict[str, Any], *extra: str) -> Callable[[Ctx], list[str]]:
    """predict.input = a DICOM series (tests/dicom_series.py) written with `change`."""

    def setup(ctx: Ctx) -> list[str]:
        from tests.dicom_series import write_series

        volume = np.round(np.random.default_rng(0).random((32, 32, 6)) * 100).astype(np.float32)
        folder = ctx.tmp / "dicom"
        if change.get("mixed"):
            uid = "1.2.826.0.1.3680043.8.498.77"
            write_series(folder / "a", volume, series_uid=uid)
            write_series(folder / "b", volume[:16], series_uid=uid, depths=[100.0 + k for k in range(6)])
        else:
            write_series(folder, volume, **change)
        return [*_predict(ctx.best, ctx)[:-2], f"predict.input={folder}", "logger=none", *extra]

    return setup


def _dicom_labelled(problem: str) -> Callable[[Ctx], list[str]]:
    """evaluate.input = a folder of DICOM case folders (tests/dicom_series.py) with `problem` in case_0."""

    def setup(ctx: Ctx) -> list[str]:
        from medseg.dicom.seg import write_seg
        from tests.dicom_series import expected_affine, write_series

        volume = np.round(np.random.default_rng(0).random((32, 32, 6)) * 100).astype(np.float32)
        label = (volume > 50).astype(np.int16)
        case = ctx.tmp / "dicom" / "case_0"
        files = write_series(case / "series", volume)
        if problem == "two-series":
            write_series(case / "other", volume, series_number=2)
        grid = label[:, :, :5] if problem == "label-shape" else label
        origin = (-10.0, 20.0, 35.0 if problem == "label-affine" else 30.0)  # write_series' default: z 30
        if problem != "no-label":
            nib.save(nib.Nifti1Image(grid, expected_affine((0.8, 0.9, 2.5), origin=origin)), case / "label.nii.gz")
        if problem in ("two-labels", "seg-of-another-series", "seg-off-grid"):
            import pydicom

            other = files
            if problem != "two-labels":  # another series, or the same series UID 1 mm off its slices
                uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID) if problem == "seg-off-grid" else None
                other = write_series(ctx.tmp / "elsewhere", volume, origin=(-10.0, 20.0, 31.0), series_uid=uid)
            sources = sorted((pydicom.dcmread(f) for f in other), key=lambda ds: float(ds.ImagePositionPatient[2]))
            write_seg(case / "seg.dcm", label, sources, ["background", "disc"], "test")
            if problem != "two-labels":
                (case / "label.nii.gz").unlink()
        return ["mode=evaluate", f"ckpt={ctx.best}", f"evaluate.input={case.parent}", "logger=none"]

    return setup


def _tampered_export(ctx: Ctx) -> list[str]:
    folder = ctx.tmp / "export"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "mode=export", f"ckpt={ctx.best}", f"export.output_dir={folder}"]
        + [f"hydra.run.dir={ctx.tmp}/export_run", "logger=none"],
        env={**os.environ, "MEDSEG_CACHE": str(ctx.tmp / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = folder / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-100] ^= 0x01
    model.write_bytes(bytes(data))
    return ["mode=predict", f"ckpt={folder}", f"predict.input={ctx.image}", "logger=none"]


def _export_with_spacing(spacing: Any) -> Callable[[Ctx], list[str]]:
    """An export folder whose manifest is well-formed but for its spacing (the manifest is checked before
    any model file is opened, so none is needed)."""

    def setup(ctx: Ctx) -> list[str]:
        import json

        folder = ctx.tmp / "export"
        folder.mkdir()
        manifest = {
            "format": "medseg-export",
            "format_version": 1,
            "models": [{"file": "model.onnx", "sha256": "0" * 64}],
            "files": [],
            "input": {"name": "image", "channels": 1},
            "classes": {"count": 2, "names": ["background", "fg"]},
            "dims": 3,
            "slice_axis": 2,
            "context_slices": 0,
            "pad_divisible": 16,
            "patch_size": None,
            "image_size": None,
            "spacing": spacing,
            "scale": 1.0,
            "intensity": {"preset": "zscore"},
            "modalities": ["CT"],
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return ["mode=predict", f"ckpt={folder}", f"predict.input={ctx.image}", "logger=none"]

    return setup


def _export_crossval(ctx: Ctx, crossval: str) -> list[str]:
    folder = _crossval_json(ctx, crossval)
    return ["mode=export", f"ckpt={folder}", f"export.output_dir={ctx.tmp}/export", "logger=none"]


def _crossval_along_two_axes(ctx: Ctx) -> list[str]:
    """crossval.json choosing two configurations whose checkpoints predict along different slice axes."""
    import json

    import yaml

    def axis_0(payload: dict[str, Any]) -> None:
        cfg = yaml.safe_load(payload["config_yaml"])
        cfg["data"]["slice_axis"] = 0
        payload["config_yaml"] = yaml.safe_dump(cfg)

    other = _edit_checkpoint(ctx, axis_0, "axis0.pt")
    configs = [{"name": "a", "checkpoints": [str(ctx.best)]}, {"name": "b", "checkpoints": [str(other)]}]
    return _export_crossval(
        ctx, json.dumps({"chosen": {"name": "a + b", "configurations": configs}, "postprocessing": {}})
    )


def _no_export_written(ctx: Ctx, outcome: Outcome) -> None:
    assert not (ctx.tmp / "export").exists() or not list((ctx.tmp / "export").iterdir())


def _ensemble_manifest(change: Callable[[dict[str, Any]], None]) -> Callable[[Ctx], list[str]]:
    """An export folder of a two-configuration ensemble whose manifest is well-formed but for `change` (the
    manifest is checked before any model file is opened, so none is needed)."""

    def setup(ctx: Ctx) -> list[str]:
        import json

        folder = ctx.tmp / "export"
        folder.mkdir()
        keys = {"input": {"name": "image", "channels": 1}, "dims": 2, "slice_axis": 2, "context_slices": 0}
        keys |= {"pad_divisible": 16, "patch_size": None, "image_size": None, "spacing": None, "scale": 1.0}
        keys |= {"intensity": {"preset": "minmax"}, "files": []}
        models = [{"file": f"model_{i}_0.onnx", "sha256": "0" * 64} for i in range(2)]
        manifest = {
            "format": "medseg-export",
            "format_version": 2,
            "models": models,
            "classes": {"count": 2, "names": ["background", "fg"]},
            "modalities": ["CT"],
            "postprocessing": [{"class": "fg", "operation": "largest_component"}],
            **keys,
            "configurations": [{"name": n, **keys, "models": [m]} for n, m in zip("ab", models)],
        }
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return ["mode=predict", f"ckpt={folder}", f"predict.input={ctx.image}", "logger=none"]

    return setup


def _set_postprocessing(manifest: dict[str, Any]) -> None:
    manifest["postprocessing"] = [{"class": "fg", "operation": "largest_hole"}]


def _unlisted_member(manifest: dict[str, Any]) -> None:
    manifest["configurations"][1]["models"] = [{"file": "model_9_0.onnx", "sha256": "0" * 64}]


DEPLOY_ROWS = [
    Row("dicom-gantry-tilt", _dicom({"tilt": 0.5}), r"dicom \(series .*\): gantry tilt: slices are not stacked"),
    Row(
        "dicom-uneven-spacing",
        _dicom({"depths": [0.0, 2.5, 5.0, 8.5, 10.0, 12.5]}),
        r"dicom \(series .*\): uneven spacing: slice steps from 1\.5 to 3\.5 mm",
    ),
    Row(
        "dicom-missing-slice",
        _dicom({"depths": [0.0, 2.5, 5.0, 10.0, 12.5, 15.0]}),
        r"dicom \(series .*\): a slice is missing between positions 35\.00 and 40\.00 mm \(spacing 2\.5 mm\)",
    ),
    Row("dicom-mixed-series", _dicom({"mixed": True}), r"dicom \(series .*\): mixed series: .*one series per folder"),
    Row(
        "dicom-modality",
        _dicom({"modality": "MR"}, "export.modalities=[CT]"),
        r"modality MR, but the model was trained on CT images",
    ),
    Row(
        "dicom-seg-for-nifti",
        lambda ctx: [*_predict(ctx.best, ctx), "predict.output_format=dicom_seg"],
        r"predict\.output_format=dicom_seg needs DICOM input, but .*scan\.nii\.gz is not DICOM",
    ),
    Row(
        "dicom-evaluate-no-label",
        _dicom_labelled("no-label"),
        r"dicom/case_0/series holds DICOM images but no label; put label\.nii\.gz \(on the series. grid\) or a DICOM",
    ),
    Row(
        "dicom-evaluate-two-series",
        _dicom_labelled("two-series"),
        r"case folder \S+/dicom/case_0 holds 2 DICOM image series beside its label label\.nii\.gz; put exactly one",
    ),
    Row(
        "dicom-evaluate-two-labels",
        _dicom_labelled("two-labels"),
        r"dicom/case_0 holds 2 labels \(label\.nii\.gz, seg\.dcm\); keep one label per case folder",
    ),
    Row(
        "dicom-evaluate-seg-of-another-series",
        _dicom_labelled("seg-of-another-series"),
        r"case_0: \S+seg\.dcm references series [0-9.]+, not the case's series [0-9.]+; give the SEG made on this",
    ),
    Row(
        "dicom-evaluate-seg-off-grid",
        _dicom_labelled("seg-off-grid"),
        r"case_0: frame 1 of \S+seg\.dcm lies on no slice of the series \(position .*\); give a SEG on the series",
    ),
    Row(
        "dicom-evaluate-label-shape",
        _dicom_labelled("label-shape"),
        r"case_0: label \S+label\.nii\.gz has shape \(32, 32, 5\) but the series \(32, 32, 6\) .*series' grid",
    ),
    Row(
        "dicom-evaluate-label-affine",
        _dicom_labelled("label-affine"),
        r"case_0: label \S+label\.nii\.gz has another affine \(origin, direction or spacing\) than the series",
    ),
    Row(
        "export-tampered-model",
        _tampered_export,
        r"export/model\.onnx does not match the SHA-256 in .*manifest\.json; the file was changed",
    ),
    Row(
        "export-manifest-spacing",
        _export_with_spacing([1.0, 0.0, 1.5]),
        r"export/manifest\.json: spacing must be three numbers > 0 \(mm\) or null; export the model again",
    ),
    Row(
        "export-crossval-damaged",
        lambda ctx: _export_crossval(ctx, '{"chosen": {"name": "x"'),
        r"cv/crossval\.json cannot be read as the result of mode=crossval; rerun crossval",
        check=_no_export_written,
    ),
    Row(
        "export-crossval-slice-axes",
        _crossval_along_two_axes,
        r"cv/crossval\.json: the chosen configurations predict along different slice axes",
        check=_no_export_written,
    ),
    Row(
        "export-manifest-postprocessing",
        _ensemble_manifest(_set_postprocessing),
        r"export/manifest\.json: postprocessing .*largest_hole.* must name a foreground class and one of"
        r" largest_component, largest_foreground; export the model again",
    ),
    Row(
        "export-manifest-unlisted-member",
        _ensemble_manifest(_unlisted_member),
        r"export/manifest\.json: configurations\[1\] \(b\) names a file that the top-level models/files do not list",
    ),
]
