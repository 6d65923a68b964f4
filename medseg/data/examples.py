"""Tiny datasets written in each layout's real file formats, for tests and benchmarks.

The content comes from the synthetic generator (shapes with class-specific intensity), so a model
can learn it; the files are what real data looks like on disk: NIfTI with nibabel, PNG with Pillow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.data.synthetic import make_case

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _save_nifti(path: Path, array: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))


def write_msd(
    root: Path,
    num_cases: int = 6,
    shape: tuple[int, int, int] = (32, 32, 8),
    num_classes: int = 3,
    channels: int = 1,
    style: str = "msd",
    seed: int = 0,
) -> Path:
    """MSD (`training` list; several channels as one 4D NIfTI) or nnU-Net v2 (`_0000`, `_0001` files)."""
    root = Path(root)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(num_cases):
        image, label = make_case(np.random.default_rng([seed, i]), list(shape), num_classes)
        case = f"case_{i:03d}"
        stack = [image * (c + 1) for c in range(channels)]
        if style == "nnunet":
            for c, channel in enumerate(stack):
                _save_nifti(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", channel)
        else:
            data = np.stack(stack, axis=-1) if channels > 1 else image
            _save_nifti(root / "imagesTr" / f"{case}.nii.gz", data)
        _save_nifti(root / "labelsTr" / f"{case}.nii.gz", label)
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    names = ["background"] + [f"organ{c}" for c in range(1, num_classes)]
    if style == "nnunet":
        meta = {
            "channel_names": {str(c): f"mod{c}" for c in range(channels)},
            "labels": {n: i for i, n in enumerate(names)},
            "numTraining": num_cases,
            "file_ending": ".nii.gz",
        }
    else:
        meta = {
            "name": "tiny",
            "modality": {str(c): f"mod{c}" for c in range(channels)},
            "labels": {str(i): n for i, n in enumerate(names)},
            "numTraining": num_cases,
            "training": training,
        }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def write_folder(
    root: Path,
    num_cases: int = 6,
    size: tuple[int, int] = (32, 32),
    mask_suffix: str = "_mask",
    mode: str = "binary255",
    rgb_image: bool = True,
    seed: int = 0,
) -> Path:
    """2D PNG pairs in imgs/ and masks/; mode: binary255 (0/255), index (0..2) or colour (RGB table)."""
    from PIL import Image

    root = Path(root)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    classes = 2 if mode == "binary255" else 3
    h, w = size
    for i in range(num_cases):
        image, label = make_case(np.random.default_rng([seed, i]), [h, w, 6], classes)
        # slice 1 lies inside every shape's depth range of the generator
        grey = (np.clip(image[..., 1], 0, 1) * 255).astype(np.uint8)  # (H, W)
        lab = label[..., 1]
        pixels = np.stack([grey, grey // 2, 255 - grey], axis=-1) if rgb_image else grey
        Image.fromarray(pixels).save(root / "imgs" / f"img_{i:03d}.png")
        if mode == "binary255":
            mask = Image.fromarray((lab > 0).astype(np.uint8) * 255)
        elif mode == "colour":
            mask = Image.fromarray(COLOURS[lab])
        else:
            mask = Image.fromarray(lab.astype(np.uint8))
        mask.save(root / "masks" / f"img_{i:03d}{mask_suffix}.png")
    return root


COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=np.uint8)
COLOUR_MAP = COLOURS.tolist()  # the data.colour_map for these masks


def structure_names(n: int) -> list[str]:
    return [f"structure_{i:03d}" for i in range(n)]


def write_totalseg(
    root: Path,
    num_subjects: int = 4,
    shape: tuple[int, int, int] = (32, 32, 8),
    num_structures: int = 3,
    seed: int = 0,
) -> Path:
    """Subject folders sXXXX/ct.nii.gz (HU-like values) + sXXXX/segmentations/<structure>.nii.gz."""
    root = Path(root)
    names = structure_names(num_structures)
    rng = np.random.default_rng(seed)
    h, w, d = shape
    for s in range(num_subjects):
        subject = root / f"s{s:04d}"
        ct = rng.normal(-800, 50, size=shape).astype(np.float32)
        label = np.zeros(shape, dtype=np.int16)
        # a grid of small boxes, one per structure, so each structure is present and learnable
        cols = int(np.ceil(np.sqrt(num_structures)))
        cell_h, cell_w = max(1, h // cols), max(1, w // cols)
        for k in range(num_structures):
            r, c = divmod(k, cols)
            y0, x0 = r * cell_h, c * cell_w
            y1, x1 = y0 + max(1, cell_h * 2 // 3), x0 + max(1, cell_w * 2 // 3)
            z0 = int(rng.integers(0, max(1, d // 2)))
            label[y0:y1, x0:x1, z0:] = k + 1
            ct[label == k + 1] = -200 + 600 * (k + 1) / num_structures + rng.normal(0, 20)
        _save_nifti(subject / "ct.nii.gz", ct)
        for k, name in enumerate(names):
            _save_nifti(subject / "segmentations" / f"{name}.nii.gz", (label == k + 1).astype(np.uint8))
    return root
