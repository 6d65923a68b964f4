"""Reading input geometry and writing masks and overlays in the input's own format and geometry.

Arrays here are in MONAI's axis order: NIfTI as stored (x, y, z); 2D images (width, height) as
MONAI's PIL reader returns them, transposed back to (height, width) when written.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DataError
from medseg.io_utils import atomic_write

NIFTI = (".nii.gz", ".nii")
IMAGES_2D = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class Geometry:
    kind: str  # "nifti" | "image2d"
    shape: tuple[int, ...]  # spatial shape in MONAI order
    affine: Any = None
    header: Any = None


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    for ext in NIFTI + IMAGES_2D:
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def stem_of(path: Path) -> str:
    return path.name[: len(path.name) - len(suffix_of(path))]


def collect_inputs(spec: str | None) -> list[Path]:
    if not spec:
        raise DataError("predict.input is not set; give a file or a folder of images")
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and suffix_of(p) in NIFTI + IMAGES_2D)
        if not files:
            raise DataError(f"predict.input={path} holds no NIfTI/PNG/JPG/TIF files")
        return files
    if path.is_file():
        if suffix_of(path) not in NIFTI + IMAGES_2D:
            raise DataError(f"predict.input={path}: unsupported file type; use NIfTI, PNG, JPG or TIF")
        return [path]
    raise DataError(f"predict.input={path} does not exist; check the path")


def read_geometry(path: Path) -> Geometry:
    try:
        if suffix_of(path) in NIFTI:
            import nibabel as nib

            img = nib.load(str(path))
            return Geometry("nifti", tuple(int(s) for s in img.shape[:3]), img.affine, img.header)
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
        return Geometry("image2d", (width, height))
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path} cannot be read ({type(exc).__name__}: {exc}); is it a valid image?") from exc


def save_mask(path: Path, labels: np.ndarray, geom: Geometry, values: list[int] | None = None) -> Path:
    """Write a label map with the input's geometry; `values` maps class index -> stored value."""
    out = labels.astype(np.int64)
    if values:
        out = np.asarray(values, dtype=np.int64)[out]
    if geom.kind == "nifti":
        import nibabel as nib

        dtype = np.uint8 if out.max(initial=0) < 256 else np.uint16
        header = geom.header.copy()
        header.set_data_dtype(dtype)
        header["scl_slope"], header["scl_inter"] = 1, 0
        img = nib.Nifti1Image(out.astype(dtype), geom.affine, header)
        data = img.to_bytes()
        if path.name.endswith(".gz"):
            data = gzip.compress(data, compresslevel=6)
        return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    from PIL import Image

    arr = out.T.astype(np.uint8 if out.max(initial=0) < 256 else np.uint16)
    return atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
    ],
    dtype=np.uint8,
)


def colour(labels: np.ndarray) -> np.ndarray:
    idx = labels.astype(np.int64)
    base = PALETTE[idx % len(PALETTE)]
    return np.where((idx > 0)[..., None], base, 0).astype(np.uint8)


def overlay_png(path: Path, image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None) -> Path:
    """2D overlay (height, width): prediction in class colours; truth, when given, as outlines."""
    from PIL import Image

    img = image.astype(np.float32)
    lo, hi = float(np.percentile(img, 1)), float(np.percentile(img, 99))
    grey = np.clip((img - lo) / (hi - lo + 1e-8), 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
    mask = pred > 0
    rgb[mask] = (0.55 * rgb[mask] + 0.45 * colour(pred)[mask]).astype(np.uint8)
    if truth is not None:
        edge = _edges(truth)
        rgb[edge] = [255, 255, 255]
    return atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))


def _edges(labels: np.ndarray) -> np.ndarray:
    lab = labels.astype(np.int64)
    edge = np.zeros(lab.shape, dtype=bool)
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    return edge & (lab > 0)


def representative_slice(labels: np.ndarray, axis: int) -> int:
    """Index of the slice along `axis` with the most foreground (the middle one if none)."""
    other = tuple(a for a in range(labels.ndim) if a != axis)
    counts = (labels > 0).sum(axis=other)
    return int(counts.argmax()) if counts.max() > 0 else labels.shape[axis] // 2
