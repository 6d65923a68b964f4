"""Layout readers: find the cases of a dataset folder as a list of {id, image, label} dicts.

Each reader takes the data config and returns a CaseSet. The `data.layout` key picks the reader
from READERS; a folder that does not match the chosen layout raises a DataError saying so.
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
    return read_msd_folder(_root(data_cfg))


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
            image, label = root / entry["image"], root / entry["label"]
            cases.append({"id": _stem(label), "image": str(image), "label": str(label)})
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
    return CaseSet(cases=cases, class_names=_msd_class_names(meta.get("labels")), root=root)


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
    for ext in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


READERS: dict[str, Callable[[Any, str], CaseSet]] = {
    "synthetic": read_synthetic,
    "msd": read_msd,
}
