"""mode=predict: segment files or a folder with a checkpoint; masks keep the input's geometry.

Each input is predicted slice by slice (slab by slab for 3D models) straight into an integer mask on
the input's own grid (see medseg/inference/predictor.py); no float volume per class is held.
predict.threshold applies to two-class models, exactly as in mode=evaluate.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

import medseg
from medseg.data.datasets import plain
from medseg.data.transforms import volume_transforms
from medseg.deploy.outputs import write_case
from medseg.dicom.cases import Case, check_output_format, collect_cases, trained_modalities
from medseg.errors import DataError, MedsegError
from medseg.inference.image_io import overlay_png, read_geometry, representative_slice
from medseg.inference.predictor import VolumePredictor, context_slices
from medseg.precision import resolve_precision
from medseg.runtime import run_dir, select_device
from medseg.tasks.restore import mirroring_at_test_time, restore_model

log = logging.getLogger(__name__)


def run_predict(cfg: DictConfig) -> None:
    from medseg.crossval.apply import crossval_file

    source = crossval_file(cfg.ckpt)
    if source is not None:  # ckpt= names the outcome of mode=crossval: its ensemble and post-processing
        from medseg.crossval.apply import run_predict_crossval

        return run_predict_crossval(cfg, source)
    pcfg = cfg.predict
    files = collect_cases(pcfg.input)  # files, or DICOM series (a folder of series, a zip)
    check_output_format(str(pcfg.output_format), files)
    device = select_device(cfg.hardware.device)
    restored = restore_model(cfg.ckpt, device)
    out_dir = Path(str(pcfg.output_dir)).expanduser() if pcfg.output_dir else run_dir(cfg) / "predictions"
    _ensure_writable(out_dir)
    data_cfg = restored.cfg.data
    predictor = VolumePredictor(
        restored.model,
        data_cfg,
        device,
        resolve_precision(restored.cfg.trainer.precision, device),
        tta=mirroring_at_test_time(pcfg.tta, restored),
        overlap=float(pcfg.overlap),
        batch_size=int(pcfg.batch_size),
        num_classes=restored.num_classes,
    )
    chain = volume_transforms(data_cfg, with_label=False)
    channels = restored.in_channels // (2 * context_slices(data_cfg) + 1)
    values = restored.ckpt.get("mask_values")
    written = 0
    modalities = trained_modalities(str(data_cfg.intensity.preset), cfg.export.modalities)
    for case in _progress(files):
        with image_file(case, modalities) as (path, volume):
            image, geom = load_input(path, chain, channels)
            labels = predictor.labels(image, geom.shape, float(pcfg.threshold)).numpy()
            name = case.name
            if pcfg.save:
                fmt, names = str(pcfg.output_format), restored.class_names
                write_case(out_dir, case, labels, geom, fmt, names, values, volume, medseg.__version__)
                written += 1
            if pcfg.viz:
                raw = _raw_image(path)
                write_overlay(out_dir / f"{name}_overlay.png", raw, labels, None, int(data_cfg.slice_axis))
    log.info("predicted %d file(s); %d mask(s) written to %s", len(files), written, out_dir)


@contextlib.contextmanager
def image_file(case: Case, modalities: list[str]) -> Iterator[tuple[Path, Any]]:
    """The case as an image file: its own file, or a DICOM series as a temporary NIfTI with the series'
    affine (read by medseg/dicom/series.py), with the series' volume."""
    if case.series is None:
        assert case.path is not None
        yield case.path, None
        return
    import nibabel as nib

    from medseg.dicom.series import read_volume

    volume = read_volume(case.series, modalities)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{case.name}.nii.gz"
        nib.save(nib.Nifti1Image(volume.array, volume.affine), str(path))
        yield path, volume


def load_input(path: Path, chain: Any, in_channels: int) -> tuple[Any, Any]:
    geom = read_geometry(path)
    try:
        image = plain(chain({"image": str(path)})["image"])
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path} cannot be read ({type(exc).__name__}); is it a valid image?") from exc
    if int(image.shape[0]) != in_channels:
        raise DataError(
            f"{path} has {image.shape[0]} channel(s) but the model expects {in_channels}; convert the image"
        )
    return image, geom


def write_overlay(path: Path, raw: np.ndarray, pred: np.ndarray, truth: np.ndarray | None, axis: int) -> None:
    """Overlay of a 2D image, or of the 3D slice with the most predicted foreground."""
    if raw.ndim == 3 and pred.ndim == 3:
        s = representative_slice(truth if truth is not None else pred, axis)
        raw, pred = np.take(raw, s, axis=axis), np.take(pred, s, axis=axis)
        truth = np.take(truth, s, axis=axis) if truth is not None else None
    if raw.ndim == 3:  # colour 2D image (W, H, C): show the mean
        raw = raw.mean(-1)
    overlay_png(path, raw.T, pred.T, truth.T if truth is not None else None)


def _raw_image(path: Path) -> np.ndarray:
    from medseg.data.image_loading import load_image

    return np.asarray(load_image(image_only=True)(str(path)))


def _ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedsegError(
            f"predict.output_dir={folder} cannot be created ({exc.strerror}); choose another folder"
        ) from exc
    if not os.access(folder, os.W_OK):
        raise MedsegError(f"predict.output_dir={folder} is not writable; choose another folder")


def _progress(files: list[Path]) -> Any:
    if not sys.stderr.isatty() or len(files) < 2:
        return files
    from tqdm import tqdm

    return tqdm(files, desc="predict", unit="file")
