"""The dataset fingerprint: what a plan is made from, computed once per data source and kept as JSON in
the case store's folder (<store dir>/fingerprints/<layout>-<key>.json).

Per case: shape, voxel spacing (mm) and the shape after cropping to the non-zero region of the image;
per channel: foreground intensities (voxels labelled > 0, sampled evenly over the cases) giving the
0.5 / 99.5 percentiles, mean and standard deviation; per class: voxel counts; the channel names
(dataset.json's `channel_names` / `modality`; data=totalseg is CT), from which the plan picks the
normalisation. This is nnU-Net v2's DatasetFingerprintExtractor in content (docs/planning.md).

The fingerprint is taken from the source files as the layout reads them (image and label chain without
resampling or intensity scaling), not from the store's arrays: the plan chooses spacing and intensity,
which key the store. The cache key hashes the layout, the source folder, the label mapping settings and
the size and mtime of every case file, so editing a case computes a new fingerprint and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DataError

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
FOREGROUND_SAMPLES_TOTAL = 10_000_000  # nnU-Net's budget of foreground voxels over the whole dataset
SEED = 1234


def fingerprint_path(cfg: Any, cases: list[dict[str, Any]], root: Any) -> Path:
    """Where the fingerprint of these cases is kept: beside the case store, keyed by source and files."""
    from omegaconf import OmegaConf

    from medseg.data.store import source_identity as file_stats
    from medseg.data.store import store_dir

    data = cfg.data

    def plain(value: Any) -> Any:
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    key_source = {
        "version": FINGERPRINT_VERSION,
        "layout": str(data.layout),
        "source": str(Path(str(root)).resolve()) if root else "",
        "mask_values": plain(data.get("mask_values")),
        "colour_map": plain(data.get("colour_map")),
        "structures": plain(data.get("structures")),
        "files": [file_stats(c) for c in cases],
    }
    key = hashlib.sha1(json.dumps(key_source, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return store_dir(data, str(cfg.paths.cache_dir)) / "fingerprints" / f"{data.layout}-{key}.json"


def dataset_fingerprint(cfg: Any) -> dict[str, Any]:
    """The fingerprint of cfg.data's dataset: read from its JSON when there is one, else computed (every
    case decoded once) and written there."""
    from medseg.data.datamodule import read_checked_cases

    caseset = read_checked_cases(cfg)
    path = fingerprint_path(cfg, caseset.cases, caseset.root)
    if path.is_file():
        try:
            found = json.loads(path.read_text())
            if found.get("version") == FINGERPRINT_VERSION:
                log.info("dataset fingerprint: %s (kept from an earlier run)", path)
                return found
        except (OSError, json.JSONDecodeError):
            log.info("dataset fingerprint %s unreadable; computing it again", path)
    declared = None
    if caseset.class_names:
        declared = (len(caseset.class_names), caseset.extra.get("class_source", "the layout's class names"))
    fp = compute_fingerprint(cfg, caseset.cases, channel_names(cfg, caseset.root), declared)
    from medseg.io_utils import write_text

    write_text(path, json.dumps(fp, indent=1))
    log.info("dataset fingerprint: %d cases -> %s", fp["num_cases"], path)
    return fp


def channel_names(cfg: Any, root: Any) -> list[str] | None:
    """dataset.json's `channel_names` (nnU-Net v2) or `modality` (MSD), in channel order; totalseg is CT."""
    if str(cfg.data.layout) == "totalseg":
        return ["CT"]
    meta_path = Path(str(root)) / "dataset.json" if root else None
    if meta_path is None or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    names = meta.get("channel_names") or meta.get("modality")
    if not isinstance(names, dict):
        return None
    return [str(names[k]) for k in sorted(names, key=lambda k: int(k))]


def read_case(data_cfg: Any, case: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(image (C, *spatial), label (*spatial), spacing) of one case as the layout reads it."""
    from medseg.data.image_loading import load_imaged
    from medseg.data.transforms import load_label_transforms

    item = {"image": case["image"], "label": case["label"]}
    for transform in [
        load_imaged(keys="image", image_only=True, ensure_channel_first=True),
        *load_label_transforms(data_cfg),
    ]:
        item = transform(item)
    image = item["image"]
    affine = np.asarray(getattr(image, "affine", np.eye(image.ndim)), dtype=np.float64)
    spatial = image.ndim - 1
    spacing = np.sqrt((affine[:spatial, :spatial] ** 2).sum(axis=0))
    label = np.asarray(item["label"])[0]
    return np.asarray(image), label, [float(s) for s in spacing]


def case_facts(image: np.ndarray, label: np.ndarray, samples: int, seed: int) -> dict[str, Any]:
    """Shape, cropped shape, class counts and foreground intensity samples of one decoded case."""
    shape = list(image.shape[1:])
    nonzero = np.any(image != 0, axis=0)
    if nonzero.any():
        where = np.nonzero(nonzero)
        cropped = [int(w.max() - w.min() + 1) for w in where]
    else:
        cropped = shape
    labels = label.astype(np.int64, copy=False)
    counts = np.bincount(labels.ravel()) if labels.size else np.zeros(1, np.int64)
    rng = np.random.default_rng(seed)
    foreground = labels > 0
    per_channel = []
    for c in range(image.shape[0]):
        values = image[c][foreground]
        if values.size > samples:
            values = rng.choice(values, samples, replace=True)  # nnU-Net samples with replacement too
        per_channel.append(values.astype(np.float64))
    return {"shape": shape, "cropped": cropped, "counts": counts.tolist(), "fg": per_channel}


def compute_fingerprint(
    cfg: Any,
    cases: list[dict[str, Any]],
    channels: list[str] | None,
    declared: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """Decode every case once (in hardware.num_workers threads) and summarise. With data.check, a case that
    does not load or is not consistent fails here with the data check's own message (as training would)."""
    from medseg.data.checks import check_volumes
    from medseg.data.datasets import describe_failure

    data_cfg = cfg.data
    samples = max(1, FOREGROUND_SAMPLES_TOTAL // max(1, len(cases)))
    workers = max(1, int(cfg.hardware.get("num_workers") or 1))

    def one(index_case: tuple[int, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any] | None, list[float]]:
        index, case = index_case
        try:
            image, label, spacing = read_case(data_cfg, case)
        except Exception as exc:  # noqa: BLE001 - the data check names the file and the reason
            return {"id": case.get("id"), "error": describe_failure(case, exc)}, None, []
        finite = np.isfinite(image)
        meta = {
            "id": case.get("id"),
            "image_shape": list(image.shape),
            "label_shape": [1, *label.shape],
            "check": {
                "n_nonfinite": int((~finite).sum()),
                "label_min": int(label.min()) if label.size else 0,
                "label_max": int(label.max()) if label.size else 0,
            },
        }
        if tuple(image.shape[1:]) != tuple(label.shape) or meta["check"]["n_nonfinite"]:
            return meta, None, spacing
        return meta, case_facts(image, label, samples, SEED + index), spacing

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, enumerate(cases)))
    if data_cfg.check:
        check_volumes([m for m, _, _ in results], data_cfg.num_classes, "dataset", cases, declared)
    facts = [(f, s) for _, f, s in results if f is not None]
    if not facts:
        raise DataError("no case of the dataset could be read for the fingerprint; run with data.check=true")
    num_channels = len(facts[0][0]["fg"])
    intensity = []
    for c in range(num_channels):
        values = np.concatenate([f["fg"][c] for f, _ in facts]) if facts else np.zeros(0)
        if values.size == 0:
            values = np.zeros(1)
        intensity.append(
            {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "median": float(np.median(values)),
                "min": float(values.min()),
                "max": float(values.max()),
                "percentile_00_5": float(np.percentile(values, 0.5)),
                "percentile_99_5": float(np.percentile(values, 99.5)),
            }
        )
    num_classes = max(len(f["counts"]) for f, _ in facts)
    counts = np.zeros(num_classes, dtype=np.int64)
    for f, _ in facts:
        counts[: len(f["counts"])] += f["counts"]
    relative = [float(np.prod(f["cropped"]) / max(1, np.prod(f["shape"]))) for f, _ in facts]
    names = channels if channels and len(channels) == num_channels else [f"channel_{c}" for c in range(num_channels)]
    return {
        "version": FINGERPRINT_VERSION,
        "layout": str(data_cfg.layout),
        "num_cases": len(facts),
        "case_ids": [str(m["id"]) for m, f, _ in results if f is not None],
        "shapes": [f["shape"] for f, _ in facts],
        "spacings": [s for _, s in facts],
        "shapes_after_crop": [f["cropped"] for f, _ in facts],
        "median_relative_size_after_cropping": float(np.median(relative)),
        "channel_names": names,
        "modality": "CT" if names and all(n.strip().lower() == "ct" for n in names) else "other",
        "foreground_intensity": intensity,
        "num_classes": max(int(num_classes), int(data_cfg.num_classes or 0), declared[0] if declared else 0, 2),
        "class_voxels": counts.tolist(),
    }
