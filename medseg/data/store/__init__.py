"""The preprocessed case store: every case decoded once, kept as chunked, compressed, memory-mapped arrays.

    <cache_dir>/store/<layout>-<key>/
        store.json                      the settings and data source the key was made from (written once)
        build.log                       one line per case written: time, pid, case id, seconds
        cases/<id>/record.json          the case's metadata; replaced last, atomically: the commit
        cases/<id>/<generation>/        image.b2nd, label.b2nd, fg.npz of the build the record names
        tmp/<id>/                       the folder a writer fills before it becomes a generation
        locks/<id>.lock                 per-case lock (fcntl.flock): one process writes, the others wait, then read

One job per module:
    identity.py   the store key (every setting that changes a case) and a case's source file identity
    locking.py    one writer per case
    commit.py     a case committed as one unit; a dead writer's leftovers found by exact names
    building.py   missing and stale cases through the deterministic chain
    builders.py   builder processes: threads per builder, ending with their parent
    reading.py    CaseStore: records and memory-mapped arrays

Files are blosc2 NDArrays (`.b2nd`, as in nnU-Net v2): chunked and compressed (zstd + shuffle), opened
with mmap, so a 2D slice, a 2.5D slab or a 3D patch decompresses only the blocks it touches; the OS page
cache does the caching. docs/store.md has the measurements behind the format, the chunk plan and the
cost of the identity check.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from medseg.data.store.building import build_case, chunks_for, ensure, foreground_sample, label_dtype
from medseg.data.store.identity import (
    NOT_IN_KEY,
    STORE_VERSION,
    source_identity,
    store_cfg,
    store_dir,
    store_key,
    store_settings,
    why_new,
)
from medseg.data.store.reading import BuildSummary, CaseStore
from medseg.errors import DataError

log = logging.getLogger("medseg.data.store")

_store_cfg = store_cfg  # the name other modules import

__all__ = [
    "NOT_IN_KEY",
    "STORE_VERSION",
    "BuildSummary",
    "CaseStore",
    "build_case",
    "chunks_for",
    "foreground_sample",
    "label_dtype",
    "open_store",
    "source_identity",
    "store_cfg",
    "store_dir",
    "store_key",
    "store_root",
    "store_settings",
]


def store_root(data_cfg: Any, cache_dir: str, source: Path | str | None, classes: list[str] | None = None) -> Path:
    """The folder of the store these settings, this data source and class list use (built or not)."""
    settings = store_settings(data_cfg, classes)
    return store_dir(data_cfg, cache_dir) / f"{settings['layout']}-{store_key(settings, _source_text(source))}"


def _source_text(source: Path | str | None) -> str:
    return str(Path(str(source)).resolve()) if source else ""


def open_store(
    data_cfg: Any,
    cache_dir: str,
    cases: list[dict[str, Any]],
    source: Path | str | None,
    workers: int | None = None,
    progress: bool = True,
    classes: list[str] | None = None,
) -> CaseStore:
    """The store for these settings and this data source, with every case of `cases` built and current.

    `source` is the dataset folder (CaseSet.root); `classes` the class list the layout read from the data
    (CaseSet.class_names), part of the key; `workers` defaults to data.store.workers, then 0.
    """
    settings = store_settings(data_cfg, classes)
    source_text = _source_text(source)
    root = store_root(data_cfg, cache_dir, source, classes)
    scfg = store_cfg(data_cfg)
    store = CaseStore(root, settings, int(settings["fg_samples"]))
    manifest = root / "store.json"
    if not manifest.is_file():
        _make_folder(root)
        log.info("new case store %s (%s)", root, why_new(root.parent, settings, source_text))
        from medseg.io_utils import write_text

        write_text(manifest, json.dumps({"settings": settings, "source": source_text}, indent=1))
    if workers is None:
        workers = int(scfg.get("workers") or 0)
    ensure(store, cases, data_cfg, workers=workers, progress=progress)
    return store


WRITABLE = "set data.store.dir to a writable folder"


def _make_folder(root: Path) -> None:
    """The store folder, or one line naming data.store.dir when it cannot be made or written."""
    import os

    base = root.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataError(
            f"case store folder {base} is not a folder (a file is in the way); set data.store.dir to a folder"
        ) from None
    except PermissionError:
        raise DataError(f"case store folder {base} cannot be written; {WRITABLE}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise DataError(f"case store folder {root} cannot be written; {WRITABLE}")
