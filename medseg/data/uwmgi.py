"""UW-Madison GI tract layout: train.csv with run-length-encoded masks + PNG slices per case and day.

    <root>/train.csv                                   id,class,segmentation
    <root>/train/case<N>/case<N>_day<M>/scans/slice_<K>_<W>_<H>_<pw>_<ph>.png

Each case-day's slices are stacked once into a NIfTI volume (image and merged label map) under the
cache folder (msd_volumes); the uwmgi reader of medseg/data/layouts.py reads them through the same MSD
reader as every other volume dataset; training takes 2D slices of them. Classes: 0 background,
1 stomach, 2 small bowel, 3 large bowel. Cases carry their subject (case<N>), so the split never puts
days of one patient on both sides.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from medseg.errors import DataError

CLASSES = ["background", "stomach", "small_bowel", "large_bowel"]
SLICE = re.compile(r"slice_(\d+)")


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Kaggle run-length encoding ("start length ...", 1-based, row-major) to a (H, W) bool mask."""
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    numbers = [int(x) for x in rle.split()]
    for start, length in zip(numbers[0::2], numbers[1::2]):
        flat[start - 1 : start - 1 + length] = True
    return flat.reshape(shape)


def rle_encode(mask: np.ndarray) -> str:
    """The inverse of rle_decode (used to write example data)."""
    pixels = np.concatenate([[0], mask.reshape(-1).astype(np.uint8), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[0::2]
    return " ".join(str(x) for x in runs)


def msd_volumes(root: Path, cache_dir: str) -> Path:
    """The dataset as NIfTI volumes in the MSD layout under the cache folder (converted once per train.csv)."""
    table, scans = root / "train.csv", root / "train"
    if not table.is_file() or not scans.is_dir():
        raise DataError(f"data=uwmgi expects {table} and {scans}/case*/case*_day*/scans/*.png; check data.root")
    # the conversion is named by the identity of every file it reads (size, mtime, ctime, inode, as the case
    # store's): a replaced slice or table converts again, also when a copy kept the mtime
    from medseg.data.store.identity import file_identity

    sources = [table, *sorted(scans.glob("case*/case*_day*/scans/*.png"))]
    digest = hashlib.sha1(json.dumps([str(root.resolve()), file_identity(sources)]).encode()).hexdigest()
    volumes = Path(os.path.expanduser(str(cache_dir))) / "uwmgi" / digest[:12]
    if not (volumes / "dataset.json").is_file():
        _convert(table, scans, volumes)
    return volumes


def _convert(table: Path, scans: Path, dest: Path) -> None:
    import nibabel as nib
    from PIL import Image

    masks: dict[str, dict[str, str]] = defaultdict(dict)
    with table.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("class") not in CLASSES:
                raise DataError(f"{table}: unknown class {row.get('class')!r}; expected one of {CLASSES[1:]}")
            masks[row["id"]][row["class"]] = row.get("segmentation") or ""
    days = sorted(p for p in scans.glob("case*/case*_day*") if (p / "scans").is_dir())
    if not days:
        raise DataError(f"no case*/case*_day*/scans folders under {scans}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        training = []
        for day in days:
            slices = sorted((day / "scans").glob("slice_*.png"), key=lambda p: int(SLICE.match(p.name).group(1)))
            images, labels = [], []
            for path in slices:
                image = np.asarray(Image.open(path), dtype=np.float32)  # (H, W), 16-bit grey
                label = np.zeros(image.shape, dtype=np.uint8)
                key = f"{day.name}_slice_{int(SLICE.match(path.name).group(1)):04d}"
                for cls, rle in masks.get(key, {}).items():
                    if rle:
                        label[rle_decode(rle, image.shape)] = CLASSES.index(cls)
                images.append(image)
                labels.append(label)
            if not images or len({im.shape for im in images}) != 1:
                raise DataError(f"{day}: slices are missing or differ in size; one size per case and day")
            affine = np.diag([1.5, 1.5, 3.0, 1.0])
            name = f"{day.name}.nii.gz"
            nib.save(nib.Nifti1Image(np.stack(images, -1), affine), tmp / "imagesTr" / name)
            nib.save(nib.Nifti1Image(np.stack(labels, -1), affine), tmp / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        meta = {"name": "uwmgi", "labels": {str(i): n for i, n in enumerate(CLASSES)}, "training": training}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, dest)
        except OSError:  # converted by a parallel job meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_example(root: Path, cases: int = 3, days: int = 1, slices: int = 6, size: tuple[int, int] = (40, 48)) -> Path:
    """A tiny dataset in the real UW-Madison layout (16-bit PNG slices, RLE masks in train.csv)."""
    from PIL import Image

    root = Path(root)
    rows = []
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    for c in range(cases):
        rng = np.random.default_rng(c)
        for d in range(days):
            folder = root / "train" / f"case{c + 1}" / f"case{c + 1}_day{d}" / "scans"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(1, slices + 1):
                label = np.zeros((h, w), dtype=np.uint8)
                for cls in range(1, 4):
                    cy, cx = rng.uniform(8, h - 8), rng.uniform(8, w - 8)
                    label[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(9, 30)] = cls
                image = (rng.normal(3000, 300, (h, w)) + 6000.0 * label).clip(0, 65535).astype(np.uint16)
                Image.fromarray(image).save(folder / f"slice_{k:04d}_{w}_{h}_1.50_1.50.png")
                for cls in CLASSES[1:]:
                    rle = rle_encode(label == CLASSES.index(cls))
                    rows.append({"id": f"case{c + 1}_day{d}_slice_{k:04d}", "class": cls, "segmentation": rle})
    with (root / "train.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "class", "segmentation"])
        writer.writeheader()
        writer.writerows(rows)
    return root
