"""Open an export folder and predict cases with it (no torch, no training code).

An export of a crossval ensemble predicts as `mode=predict ckpt=<crossval folder>` does: each configuration
prepares the image its own way, its folds' probabilities are averaged per batch, the configurations' per
output slice (medseg/deploy/predictor.py `ensemble_labels`), and the chosen post-processing is applied to
the integer mask (medseg/deploy/postprocess.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.cpu_load import usable_cpus
from medseg.deploy.manifest import load_manifest, postprocessing_ops, views
from medseg.deploy.outputs import volume_geometry, write_case
from medseg.deploy.postprocess import apply_postprocessing
from medseg.deploy.predictor import OnnxPredictor, ensemble_labels
from medseg.deploy.preprocess import prepare
from medseg.dicom.cases import Case, check_output_format
from medseg.dicom.series import read_volume
from medseg.errors import CheckpointError, DataError
from medseg.inference.image_io import NIFTI, Geometry, suffix_of

log = logging.getLogger(__name__)


@dataclass
class Configuration:
    """One configuration of an export: its manifest view (medseg/deploy/manifest.py `views`), the
    onnxruntime sessions of its model files (the folds, averaged per batch) and its window weights."""

    manifest: dict[str, Any]
    sessions: list[Any]
    window_weights: np.ndarray | None


@dataclass
class Export:
    folder: Path
    manifest: dict[str, Any]
    configurations: list[Configuration]
    threads: int = 1  # onnxruntime's intra-op threads; the predictor's numpy work uses as many

    def predictor(self, tta: bool | None = None, overlap: float | None = None, batch_size: int | None = None):
        """The predictor of the first (for most exports: the only) configuration."""
        return self.predictors(tta, overlap, batch_size)[0]

    def predictors(
        self, tta: bool | None = None, overlap: float | None = None, batch_size: int | None = None
    ) -> list[OnnxPredictor]:
        """One predictor per configuration; tta / overlap / batch_size override the manifest's for each."""
        out = []
        for conf in self.configurations:
            sw = conf.manifest["sliding_window"]
            out.append(
                OnnxPredictor(
                    conf.sessions,
                    conf.manifest,
                    conf.window_weights,
                    tta=bool(conf.manifest["tta"] if tta is None else tta),
                    overlap=float(sw["overlap"] if overlap is None else overlap),
                    batch_size=int(sw["batch_size"] if batch_size is None else batch_size),
                    threads=self.threads,
                )
            )
        return out


def open_export(folder: str | Path, threads: int | None = None) -> Export:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise CheckpointError(
            'predicting with an export folder needs onnxruntime; pip install "medseg[deploy]"'
        ) from exc

    path = Path(str(folder)).expanduser()
    if not (path / "manifest.json").is_file():
        raise CheckpointError(f"{path} is not an export folder (no manifest.json); run mode=export first")
    manifest = load_manifest(path)  # checks every file's SHA-256 before any is opened
    options = ort.SessionOptions()
    # onnxruntime's memory arena stays on: without it every pass allocated its buffers afresh. On the
    # 118-class benchmark CT (224x224x160, 2 threads, two runs each) the arena predicted in 25.8 s instead of
    # 29.8 s, at 889 MB peak RSS instead of 773 MB (PyTorch eager: 1315 MB). Letting its idle threads spin
    # or not made no difference there (25.4 s against 25.9 s), so onnxruntime's default is kept.
    if threads:
        options.intra_op_num_threads = int(threads)
    configurations = []
    for view in views(manifest):
        sessions = []
        for entry in view["models"]:
            try:
                sessions.append(
                    ort.InferenceSession(str(path / entry["file"]), options, providers=["CPUExecutionProvider"])
                )
            except Exception as exc:  # noqa: BLE001
                raise CheckpointError(f"{path / entry['file']} cannot be loaded by onnxruntime ({exc})") from exc
        weights = None
        for entry in view.get("files", []):
            if entry.get("role") == "window_weights":
                weights = np.load(path / entry["file"], allow_pickle=False).astype(np.float32)
        if view.get("patch_size") and int(view["dims"]) == 3 and weights is None:
            raise CheckpointError(f"{path}/manifest.json lists no window_weights for its 3D patches; export again")
        configurations.append(Configuration(view, sessions, weights))
    return Export(path, manifest, configurations, int(threads) if threads else usable_cpus())


def read_case(case: Case, manifest: dict[str, Any]) -> tuple[np.ndarray, Geometry, Any]:
    """A case as (image (C, *spatial) float32 as stored, its geometry, its DICOM volume or None)."""
    if case.series is not None:
        volume = read_volume(case.series, manifest["modalities"] or None)
        return volume.array[None], volume_geometry(volume), volume
    assert case.path is not None
    if suffix_of(case.path) not in NIFTI:
        raise DataError(f"{case.path}: the exported model reads NIfTI or DICOM; convert the image")
    import nibabel as nib

    try:
        img = nib.load(str(case.path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{case.path} cannot be read ({type(exc).__name__}); is it a valid image?") from exc
    image = data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
    geom = Geometry("nifti", tuple(int(s) for s in img.shape[:3]), img.affine, img.header)
    return image, geom, None


def input_affine(geom: Geometry, volume: Any) -> np.ndarray | None:
    """The affine data.spacing resampling reads: a NIfTI's as nibabel gives it; a DICOM series' as a NIfTI
    header stores it (float32), because the PyTorch path reads a series through a temporary NIfTI."""
    if volume is not None:
        return geom.header.get_best_affine()
    return None if geom.affine is None else np.asarray(geom.affine, dtype=np.float64)


def predict_cases(
    export: Export,
    cases: list[Case],
    out_dir: Path,
    output_format: str = "nifti",
    threshold: float | None = None,
    **settings: Any,
) -> list[Path]:
    check_output_format(output_format, cases)
    manifest = export.manifest
    predictors = export.predictors(**settings)
    confs = [c.manifest for c in export.configurations]
    ops = postprocessing_ops(manifest)
    cut = float(manifest["threshold"] if threshold is None else threshold)
    written: list[Path] = []
    for case in cases:
        image, geom, volume = read_case(case, manifest)
        affine = input_affine(geom, volume)
        images = []
        for conf in confs:  # each configuration reads the image through its own preprocessing
            channels = int(conf["input"]["channels"]) // (2 * int(conf["context_slices"]) + 1)
            if image.shape[0] != channels:
                raise DataError(f"{case.name} has {image.shape[0]} channel(s) but the model expects {channels}")
            images.append(prepare(image, conf, affine))
        labels = apply_postprocessing(ensemble_labels(predictors, images, geom.shape, cut, affine), ops)
        del images
        written += write_case(
            out_dir,
            case,
            labels,
            geom,
            output_format,
            manifest["classes"]["names"],
            manifest["classes"].get("mask_values"),
            volume,
            str(manifest["medseg_version"]),
        )
    log.info("predicted %d case(s) with onnxruntime; %d file(s) written to %s", len(cases), len(written), out_dir)
    return written
