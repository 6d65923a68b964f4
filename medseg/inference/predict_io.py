"""Predict's input and output steps, shared by a single model's predict and a crossval ensemble's: the
case as an image file (DICOM series through a temporary NIfTI), the image read as the model's input, the
output folder checked, overlays and a progress bar."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.datasets import plain
from medseg.dicom.cases import Case
from medseg.errors import DataError, MedsegError
from medseg.inference.image_io import overlay_png, read_geometry, representative_slice


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


def raw_image(path: Path) -> np.ndarray:
    from medseg.data.image_loading import load_image

    return np.asarray(load_image(image_only=True)(str(path)))


def ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedsegError(
            f"predict.output_dir={folder} cannot be created ({exc.strerror}); choose another folder"
        ) from exc
    if not os.access(folder, os.W_OK):
        raise MedsegError(f"predict.output_dir={folder} is not writable; choose another folder")


def progress(files: list[Path]) -> Any:
    if not sys.stderr.isatty() or len(files) < 2:
        return files
    from tqdm import tqdm

    return tqdm(files, desc="predict", unit="file")
