"""Layout readers: find the cases of a dataset folder as a list of {id, image, label} dicts.

Each reader takes the data config and returns a CaseSet. The `data.layout` key picks the reader
from READERS; a folder that does not match the chosen layout raises a DataError saying so, and
names the layout the folder looks like when that can be told.

- msd:       dataset.json + imagesTr/ + labelsTr/ (MSD `training` list or nnU-Net v2 `_0000` channels)
- folder:    data.root/<images_dir> and data.root/<masks_dir>, masks matched by file stem (+ mask_suffix)
- totalseg:  subject folders sXXXX/ct.nii.gz + sXXXX/segmentations/<structure>.nii.gz; the label is
             the list of structure masks, merged into one label map by the volume transforms
- uwmgi:     UW-Madison GI train.csv + PNG slices, converted once into the MSD layout (medseg/data/uwmgi.py)
- synthetic: the built-in demo data, written once in the MSD layout
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import DataError


@dataclass
class CaseSet:
    """The cases of a dataset and what the layout says about them."""

    cases: list[dict[str, Any]]
    class_names: list[str] | None = None
    root: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_cases(data_cfg: Any, cache_dir: str) -> CaseSet:
    layout = data_cfg.layout
    if layout not in READERS:
        raise DataError(f"data.layout={layout!r} is not known; choose one of {sorted(READERS)}")
    caseset = READERS[layout](data_cfg, cache_dir)
    if not caseset.cases:
        raise DataError(f"no cases found for data.layout={layout} under {caseset.root}; check data.root")
    return caseset


def _root(data_cfg: Any) -> Path:
    if not data_cfg.root:
        raise DataError(f"data.root is not set; give the dataset folder for data={data_cfg.layout}")
    root = Path(str(data_cfg.root)).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={root} is not a folder; check the path")
    return root


def read_synthetic(data_cfg: Any, cache_dir: str) -> CaseSet:
    from medseg.data.synthetic import ensure_synthetic, synthetic_root

    syn = data_cfg.synthetic
    if syn.num_classes < 2 or syn.num_cases < 2:
        raise DataError("data.synthetic needs num_classes >= 2 and num_cases >= 2")
    args = (syn.num_cases, list(syn.shape), syn.num_classes, syn.seed)
    root = Path(str(data_cfg.root)).expanduser() if data_cfg.root else synthetic_root(cache_dir, *args)
    ensure_synthetic(root, *args)
    return read_msd_folder(root)


def read_msd(data_cfg: Any, cache_dir: str) -> CaseSet:
    root = _root(data_cfg)
    if not (root / "dataset.json").is_file():
        raise DataError(layout_mismatch(root, "msd", "dataset.json, imagesTr/ and labelsTr/", data_cfg))
    return read_msd_folder(root)


def read_msd_folder(root: Path) -> CaseSet:
    """MSD (`training` list in dataset.json) or nnU-Net v2 (`channel_names`, `file_ending`)."""
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found: data=msd expects dataset.json, imagesTr/ and labelsTr/ in data.root")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{meta_path} is not valid JSON ({exc}); fix or regenerate it") from exc
    cases: list[dict[str, Any]] = []
    if meta.get("training"):
        for entry in meta["training"]:
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise DataError(f"{meta_path}: every `training` entry needs `image` and `label`; fix {entry!r}")
            label = root / entry["label"]
            cases.append({"id": _stem(label), "image": _msd_image(root, entry["image"]), "label": str(label)})
    else:
        ending = meta.get("file_ending", ".nii.gz")
        channels = sorted(int(k) for k in meta.get("channel_names", meta.get("modality", {"0": ""})))
        labels_dir = root / "labelsTr"
        if not labels_dir.is_dir():
            raise DataError(f"{labels_dir} not found: data=msd expects labelsTr/ beside dataset.json")
        for label in sorted(labels_dir.glob(f"*{ending}")):
            case_id = label.name[: -len(ending)]
            images = [str(root / "imagesTr" / f"{case_id}_{c:04d}{ending}") for c in channels]
            cases.append({"id": case_id, "image": images if len(images) > 1 else images[0], "label": str(label)})
    extra = {"class_source": f"the `labels` of {meta_path}"}
    return CaseSet(cases=cases, class_names=_msd_class_names(meta.get("labels")), root=root, extra=extra)


def _msd_image(root: Path, rel: str) -> str | list[str]:
    """One 3D/4D file, or (nnU-Net style) the `_0000`, `_0001`, ... channel files beside where it would be."""
    path = root / rel
    if path.exists():
        return str(path)
    ending = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    base = path.name[: -len(ending)] if ending else path.name
    channels = sorted(path.parent.glob(f"{base}_[0-9][0-9][0-9][0-9]{ending}"))
    if channels:
        return [str(c) for c in channels] if len(channels) > 1 else str(channels[0])
    return str(path)  # missing: named by the file check


def _msd_class_names(labels: dict[str, Any] | None) -> list[str] | None:
    if not labels:
        return None
    first_key = next(iter(labels))
    if first_key.isdigit():  # MSD: {"0": "background", "1": "tumour"}
        pairs = {int(k): str(v) for k, v in labels.items()}
    else:  # nnU-Net v2: {"background": 0, "tumour": 1}; region lists are not class indices
        pairs = {int(v): str(k) for k, v in labels.items() if isinstance(v, int)}
    return [pairs.get(i, f"class_{i}") for i in range(max(pairs) + 1)]


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


SUFFIXES_2D = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SUFFIXES = (".nii.gz", ".nii", *SUFFIXES_2D)


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(SUFFIXES)


def read_folder(data_cfg: Any, cache_dir: str) -> CaseSet:
    """Image/mask folder pairs; a mask is `<image stem><mask_suffix>.<any supported ext>`."""
    root = _root(data_cfg)
    images_dir, masks_dir = root / str(data_cfg.images_dir), root / str(data_cfg.masks_dir)
    if not images_dir.is_dir() or not masks_dir.is_dir():
        expected = f"{data_cfg.images_dir}/ and {data_cfg.masks_dir}/ (data.images_dir, data.masks_dir)"
        raise DataError(layout_mismatch(root, "folder", expected, data_cfg))
    suffix = str(data_cfg.mask_suffix or "")
    masks: dict[str, Path] = {}
    for mask in sorted(p for p in masks_dir.iterdir() if _is_image_file(p)):
        stem = _stem(mask)
        if suffix and stem.endswith(suffix):
            stem = stem[: -len(suffix)]
        if stem in masks:
            raise DataError(f"{masks_dir}: two masks for {stem!r} ({masks[stem].name}, {mask.name}); keep one")
        masks[stem] = mask
    cases, unmatched = [], []
    for image in sorted(p for p in images_dir.iterdir() if _is_image_file(p)):
        mask = masks.get(_stem(image))
        if mask is None:
            unmatched.append(image.name)
        else:
            cases.append({"id": _stem(image), "image": str(image), "label": str(mask)})
    if unmatched:
        raise DataError(
            f"{len(unmatched)} image(s) in {images_dir} have no mask in {masks_dir} (first: {unmatched[:5]}); "
            f"masks must be named <image stem>{suffix}<ext>; set data.mask_suffix or add the masks"
        )
    extra: dict[str, Any] = {}
    if cases and data_cfg.mask_values is None and not data_cfg.colour_map:
        values = detect_mask_values([Path(c["label"]) for c in cases[:3]])
        if values:
            extra["mask_values"] = values
    names, source = folder_class_names(root)
    if source:
        extra["class_source"] = source
    return CaseSet(cases=cases, class_names=names, root=root, extra=extra)


# Where a folder dataset names its classes: the field's dataset.json (MSD / nnU-Net `labels`), the
# `labelmap.txt` of a CVAT or Pascal VOC mask export (`name:r,g,b:parts:actions`), or `classes.txt`
# (one name per line); background first in each.
FOLDER_NAME_FILES = ("dataset.json", "labelmap.txt", "classes.txt")


def folder_class_names(root: Path) -> tuple[list[str] | None, str | None]:
    """The class names a folder dataset gives in data.root, with the file they came from; (None, None) if none."""
    for name in FOLDER_NAME_FILES:
        path = root / name
        if not path.is_file():
            continue
        try:
            text = path.read_text()
            if name == "dataset.json":
                labels = json.loads(text).get("labels") if text.strip() else None
                names = _msd_class_names(labels) if isinstance(labels, dict) else None
            else:
                lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
                names = [ln.split(":", 1)[0].strip() if name == "labelmap.txt" else ln for ln in lines] or None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, ValueError) as exc:
            raise DataError(f"{path} cannot be read as class names ({exc}); fix it or set data.class_names") from exc
        if names:
            return names, f"the class names in {path}"
    return None, None


def detect_mask_values(masks: list[Path]) -> list[int] | None:
    """[0, 255] when 2D masks store a binary mask as 0/255 (the common PNG convention), else None."""
    import numpy as np
    from PIL import Image

    seen: set[int] = set()
    for path in masks:
        if not path.name.lower().endswith(SUFFIXES_2D):
            return None
        try:
            with Image.open(path) as im:
                if im.mode == "P":  # palette indices are class indices already (or data.colour_map)
                    return None
                seen |= {int(v) for v in np.unique(np.asarray(im.convert("L")))}
        except OSError:
            return None  # unreadable: reported by the data check
    return [0, 255] if seen <= {0, 255} and 255 in seen else None


TOTALSEG_IMAGE = "ct.nii.gz"
TOTALSEG_MASKS = "segmentations"


def read_totalseg(data_cfg: Any, cache_dir: str) -> CaseSet:
    """TotalSegmentator: one binary NIfTI per structure, merged into one label map per subject."""
    root = _root(data_cfg)
    subjects = sorted(
        d for d in root.iterdir() if d.is_dir() and ((d / TOTALSEG_IMAGE).exists() or (d / TOTALSEG_MASKS).is_dir())
    )
    if not subjects:
        expected = f"subject folders <id>/{TOTALSEG_IMAGE} + <id>/{TOTALSEG_MASKS}/<structure>.nii.gz"
        raise DataError(layout_mismatch(root, "totalseg", expected, data_cfg))
    if data_cfg.structures:
        names = [str(n) for n in data_cfg.structures]
    else:
        found: set[str] = set()
        for d in subjects:
            found |= {_stem(p) for p in (d / TOTALSEG_MASKS).glob("*.nii*")}
        names = sorted(found)
        if not names:
            raise DataError(f"no <structure>.nii.gz files under {root}/*/{TOTALSEG_MASKS}/; check data.root")
    cases = [
        {
            "id": d.name,
            "image": str(d / TOTALSEG_IMAGE),
            "label": [_structure_file(d / TOTALSEG_MASKS, n) for n in names],
        }
        for d in subjects
    ]
    source = "data.structures" if data_cfg.structures else f"the structure files under {root}/*/{TOTALSEG_MASKS}/"
    extra = {"structures": names, "class_source": source}
    return CaseSet(cases=cases, class_names=["background", *names], root=root, extra=extra)


def _structure_file(folder: Path, name: str) -> str:
    plain = folder / f"{name}.nii"
    return str(plain) if plain.is_file() else str(folder / f"{name}.nii.gz")


def guess_layout(root: Path, images_dir: str = "imgs", masks_dir: str = "masks") -> str | None:
    """Which layout a folder looks like (msd, totalseg, folder), or None."""
    if not root.is_dir():
        return None
    if (root / "dataset.json").is_file() or (root / "imagesTr").is_dir():
        return "msd"
    subdirs = [d for d in root.iterdir() if d.is_dir()]
    if any((d / TOTALSEG_IMAGE).exists() or (d / TOTALSEG_MASKS).is_dir() for d in subdirs[:50]):
        return "totalseg"
    if (root / images_dir).is_dir() and (root / masks_dir).is_dir():
        return "folder"
    names = {d.name.lower() for d in subdirs}
    if names & {"imgs", "images", "image"} and names & {"masks", "mask", "labels", "label"}:
        return "folder"
    return None


def layout_mismatch(root: Path, chosen: str, expected: str, data_cfg: Any) -> str:
    """The one-line error for a data.root that does not match data=<chosen>."""
    from medseg.config.schema import layout_value

    images_dir = str(layout_value(data_cfg, "images_dir", "imgs"))  # the folder layout's names, if chosen
    masks_dir = str(layout_value(data_cfg, "masks_dir", "masks"))
    guess = guess_layout(root, images_dir, masks_dir)
    if guess and guess != chosen:
        hint = f"it looks like the {guess} layout; use data={guess}"
        if guess == "folder" and not ((root / images_dir).is_dir()):
            hint += " and set data.images_dir / data.masks_dir to its folder names"
    else:
        hint = "check data.root"
    return f"data.root={root} does not match data={chosen} (expected {expected}); {hint}"


def read_uwmgi(data_cfg: Any, cache_dir: str) -> CaseSet:
    """UW-Madison GI: the case-day volumes converted once into the MSD layout; a case's subject is its patient."""
    from medseg.data.uwmgi import msd_volumes

    root = _root(data_cfg)
    caseset = read_msd_folder(msd_volumes(root, cache_dir))
    for case in caseset.cases:
        case["subject"] = case["id"].split("_")[0]
    caseset.root = root
    return caseset


READERS: dict[str, Callable[[Any, str], CaseSet]] = {
    "synthetic": read_synthetic,
    "msd": read_msd,
    "folder": read_folder,
    "totalseg": read_totalseg,
    "uwmgi": read_uwmgi,
}
