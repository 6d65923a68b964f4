"""What a store and a stored case are: the key of a store folder and the identity of a case's source files.

The key hashes every data setting that can change what a case holds. It is built by exclusion: the whole
data config goes in except the keys of NOT_IN_KEY, each of which acts per item, per split or per run and
never on a stored case (the reason is written beside it). A key that nobody classified (a new layout key,
a new preprocessing option) is therefore in the key: at worst a store is built again, never shared with
settings that differ. The class list the layout resolved from the files (TotalSegmentator's structure
files when data.structures is null, dataset.json's labels) and the data source folder are in it too.

A case's source identity is, per file it reads: path, size, mtime, ctime and inode. ctime is set by the
kernel on every write, rename or metadata change and cannot be set back by a program, so a file replaced
by `cp -p`, `rsync -a` or `tar x` (same size, mtime restored) is seen as changed; the inode catches a file
renamed over another. Only stat() is called, no file is read (docs/store.md has the measured cost).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError

STORE_VERSION = 2  # 2: source identity with ctime and inode; a case is a generation folder named by its record
IMAGE_DTYPES = ("float32", "float16")

# data config keys that never change what a stored case holds (everything else is in the key)
NOT_IN_KEY: dict[str, str] = {
    "root": "the data source folder is in the key, resolved",
    "dims": "in the key as the chunk plan and the resize geometry it implies",
    "slice_axis": "in the key as the chunk plan and the resize geometry it implies",
    "num_classes": "checked against the stored labels; never changes them",
    "class_names": "names for logs and reports; the layout's own class list is in the key",
    "batch_size": "batching",
    "val_batch_size": "batching",
    "shuffle": "item order",
    "val_percent": "the split picks cases; each case is stored on its own",
    "split_file": "the split picks cases; each case is stored on its own",
    "fold": "the split picks cases; each case is stored on its own",
    "num_folds": "the split picks cases; each case is stored on its own",
    "patch_size": "cut from the stored case per item",
    "samples_per_volume": "cut from the stored case per item",
    "pos_neg_ratio": "cut from the stored case per item",
    "fg_oversample": "cut from the stored case per item",
    "pad_divisible": "item transform (padding of each item)",
    "context_slices": "cut from the stored case per item",
    "drop_empty_slices": "index over the stored per-slice flags",
    "foreground_slice_ratio": "index over the stored per-slice flags",
    "cache_rate": "how much of the store this process holds in RAM",
    "check": "checks the stored figures",
    "augment": "random item transforms",
    "store": "where and with how many processes; image_dtype and fg_samples are in the key",
}

SETTING_NAMES = {
    "chunks": "data.dims/data.slice_axis (chunk plan)",
    "resize_dims": "data.dims/data.slice_axis (resizing)",
    "image_dtype": "data.store.image_dtype",
    "fg_samples": "data.store.fg_samples",
    "classes": "the layout's class list",
    "version": "store format version",
}


def _plain(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def store_settings(data_cfg: Any, classes: list[str] | None = None) -> dict[str, Any]:
    """Everything that changes what a stored case holds (see the module docstring)."""
    data = dict(_plain(data_cfg))
    dims, axis = int(data["dims"]), int(data["slice_axis"])
    resized = bool(data.get("image_size")) or float(data.get("scale", 1.0)) != 1.0
    settings = {k: v for k, v in data.items() if k not in NOT_IN_KEY}
    settings.update(
        {
            "version": STORE_VERSION,
            # a 2D run keeps the slice axis at full length when resizing; without resizing geometry is the same
            "resize_dims": [dims, axis if dims == 2 else None] if resized else None,
            "image_dtype": image_dtype(data_cfg),
            "chunks": chunk_plan(data_cfg),
            "fg_samples": fg_samples(data_cfg),
            "classes": list(classes) if classes else None,
        }
    )
    return settings


def image_dtype(data_cfg: Any) -> str:
    dtype = str(store_cfg(data_cfg).get("image_dtype", "float32"))
    if dtype not in IMAGE_DTYPES:
        raise ConfigError(f"data.store.image_dtype={dtype!r} must be one of {list(IMAGE_DTYPES)}")
    return dtype


def fg_samples(data_cfg: Any) -> int:
    return int(store_cfg(data_cfg).get("fg_samples") or 1000)


def chunk_plan(data_cfg: Any) -> str:
    """'slices<axis>' for 2D training (one block per slice), 'cubes' for 3D patches."""
    return f"slices{int(data_cfg.slice_axis)}" if int(data_cfg.dims) == 2 else "cubes"


def store_cfg(data_cfg: Any) -> dict[str, Any]:
    """data.store as a plain dict ({} when absent)."""
    from omegaconf import OmegaConf

    node = OmegaConf.select(data_cfg, "store", default=None) if OmegaConf.is_config(data_cfg) else None
    if node is None:
        node = (data_cfg.get("store") if isinstance(data_cfg, dict) else getattr(data_cfg, "store", None)) or {}
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


def store_key(settings: dict[str, Any], source: str) -> str:
    text = json.dumps({"settings": settings, "source": source}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def store_dir(data_cfg: Any, cache_dir: str) -> Path:
    """The folder holding the stores (one subfolder per layout and key)."""
    base = store_cfg(data_cfg).get("dir")
    return Path(str(base or Path(str(cache_dir)) / "store")).expanduser()


# ---------------------------------------------------------------------------------------------- source files
def source_identity(case: dict[str, Any]) -> list[list[Any]]:
    """[path, size, mtime_ns, ctime_ns, inode] of every file the case reads, in order (stat only)."""
    from medseg.data.checks import case_paths

    return file_identity(case_paths(case))


def file_identity(paths: Iterable[str | Path]) -> list[list[Any]]:
    """[path, size, mtime_ns, ctime_ns, inode] of each file (-1s for a file that cannot be stat'ed)."""
    rows: list[list[Any]] = []
    for path in map(str, paths):
        try:
            st = os.stat(path)
            rows.append([path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
        except OSError:
            rows.append([path, -1, -1, -1, -1])
    return rows


def changed_source(stored: list[list[Any]] | None, now: list[list[Any]]) -> str | None:
    """Why the stored source identity is not the current one (None when equal)."""
    stored = stored or []
    if stored == now:
        return None
    if [r[0] for r in stored] != [r[0] for r in now]:
        return "its list of source files differs from the stored one"
    old = {row[0]: row[1:] for row in stored}
    for path, *ident in now:
        if old.get(path) != ident:
            return f"{path} changed since it was stored"
    return "its source files changed since it was stored"


def why_new(parent: Path, settings: dict[str, Any], source: str) -> str:
    """Which settings differ from the closest existing store of the same data source."""
    best: list[str] | None = None
    for manifest in parent.glob("*/store.json"):
        try:
            other = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if other.get("source") != source:
            continue
        theirs = other.get("settings", {})
        diff = [k for k in sorted(set(settings) | set(theirs)) if settings.get(k) != theirs.get(k)]
        if [k for k in diff if k != "resize_dims"]:
            diff = [k for k in diff if k != "resize_dims"]  # follows from scale/image_size: named by them
        if best is None or len(diff) < len(best):
            best = diff
    if best is None:
        return "no store of this data source yet"
    return "settings differ from the existing store in: " + ", ".join(SETTING_NAMES.get(k, f"data.{k}") for k in best)
