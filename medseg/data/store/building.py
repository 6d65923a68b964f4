"""Building a store: every missing or stale case through the deterministic chain, under its lock, into
its generation folder (commit.py), in builder processes (builders.py) or in the calling process."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.store.commit import commit_case, start_case
from medseg.data.store.identity import STORE_VERSION, source_identity
from medseg.data.store.locking import case_lock
from medseg.data.store.reading import BuildSummary, CaseStore, blosc2_quiet, slim

log = logging.getLogger("medseg.data.store")


def ensure(
    store: CaseStore, cases: list[dict[str, Any]], data_cfg: Any, workers: int = 0, progress: bool = True
) -> BuildSummary:
    """Build every case that is missing or stale; return (and keep in store.last_summary) what was done."""
    started = time.perf_counter()
    for sub in ("cases", "locks", "tmp"):
        (store.root / sub).mkdir(parents=True, exist_ok=True)
    todo, reused, reasons, source_bytes = [], 0, {}, 0
    for case in cases:
        now = source_identity(case)
        source_bytes += sum(max(0, row[1]) for row in now)
        meta, why = store.committed_meta(case, now)
        if meta is None:
            todo.append(case)
            reasons[case["id"]] = why
        else:
            store._meta[case["id"]] = slim(meta)
            reused += 1
    stale = [(cid, why) for cid, why in reasons.items() if why != "not built"]
    for cid, why in stale[:5]:
        log.info("case store: rebuilding %s (%s)", cid, why)
    if len(stale) > 5:
        log.info("case store: rebuilding %d more cases whose files changed", len(stale) - 5)
    built_ids: set[str] = set()
    if todo:
        log.info("case store %s: building %d of %d cases", store.root, len(todo), len(cases))
        for case_id, wrote in _build_all(store, todo, data_cfg, workers, progress):
            if wrote:
                built_ids.add(case_id)
            store._meta.pop(case_id, None)
    failed_ids = {c["id"] for c in cases if "error" in store.meta(c["id"])}
    failed = len(failed_ids)  # an unreadable case counts as unreadable only, not also as built or reused
    built = len(built_ids - failed_ids)
    reused = len(cases) - built - failed
    summary = BuildSummary(
        built=built,
        reused=reused,
        failed=failed,
        seconds=time.perf_counter() - started,
        store_bytes=sum(store.case_bytes(c["id"]) for c in cases),
        source_bytes=source_bytes,
    )
    (log.info if built or failed else log.debug)(summary.line(store.root))
    store.last_summary = summary
    return summary


def _build_all(
    store: CaseStore, todo: list[dict], data_cfg: Any, workers: int, progress: bool
) -> Iterator[tuple[str, bool]]:
    from omegaconf import OmegaConf

    from medseg.data.store.builders import builder_pool
    from medseg.progress import Progress

    cfg = OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg) else dict(data_cfg)
    # a bar on a terminal; in a log, a line per tenth of the cases once the build has run 10 s
    bar = Progress(len(todo), "preprocess", progress, log_after_s=10.0)
    pool = builder_pool(min(workers, len(todo))) if workers > 0 and len(todo) > 1 else None
    try:
        # first pass skips cases another process is writing (concurrent runs share the work);
        # the second waits for those and reads them
        for wait in (False, True):
            busy = []
            for case_id, status in _run(store, pool, todo, cfg, wait):
                if status == "busy":
                    busy.append(case_id)
                    continue
                bar.update()
                yield case_id, status == "built"
            todo = [c for c in todo if c["id"] in set(busy)]
            if not todo:
                break
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()


def _run(store: CaseStore, pool: Any, cases: list[dict], cfg: dict, wait: bool) -> Iterator[tuple[str, str]]:
    args = [(str(store.root), store.settings, store.fg_samples, cfg, case, wait) for case in cases]
    if pool is None:
        for a in args:
            yield build_case(*a)
        return
    from concurrent.futures import as_completed

    for fut in as_completed([pool.submit(build_case, *a) for a in args]):
        yield fut.result()


# ---------------------------------------------------------------------------------------------- one case
_CHAINS: dict[str, Any] = {}


def build_case(
    root: str, settings: dict, fg_samples: int, data_cfg: dict, case: dict, wait: bool = True
) -> tuple[str, str]:
    """Decode, preprocess and commit one case under its lock: (case id, 'built' | 'reused' | 'busy').

    'reused': another process committed it meanwhile; 'busy': another process holds the lock and `wait` is
    false. Top level with plain arguments, as spawned builders need.
    """
    store = CaseStore(Path(root), settings, fg_samples)
    case_id = case["id"]
    with case_lock(store.root, case_id, wait) as locked:
        if not locked:
            return case_id, "busy"
        committed, _ = store.committed_meta(case)
        if committed is not None:  # written by another process meanwhile
            return case_id, "reused"
        tmp = start_case(store.root, case_id)  # a killed writer's leftovers of this case go (we hold the lock)
        started = time.perf_counter()
        source = source_identity(case)  # before reading: a file changed during the build is seen next time
        item = _chain_for(data_cfg)(case)
        meta = _write_case(tmp, store, case, item, settings, source)
        meta["build_seconds"] = round(time.perf_counter() - started, 3)
        commit_case(store.root, case_id, None if "error" in meta else tmp, meta)
        shutil.rmtree(tmp, ignore_errors=True)  # still there when the case could not be read
        with open(store.root / "build.log", "a") as f:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            f.write(f"{stamp} pid={os.getpid()} case={case_id} s={meta['build_seconds']}\n")
        return case_id, "built"


def _chain_for(data_cfg: dict) -> Any:
    key = json.dumps(data_cfg, sort_keys=True, default=str)
    if key not in _CHAINS:
        from omegaconf import OmegaConf

        from medseg.data.datasets import GuardedChain
        from medseg.data.transforms import volume_transforms

        _CHAINS[key] = GuardedChain(volume_transforms(OmegaConf.create(data_cfg)))
    return _CHAINS[key]


def _write_case(folder: Path, store: CaseStore, case: dict, item: dict, settings: dict, source: list) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "version": STORE_VERSION,
        "id": case["id"],
        "source": source,
        "writer": {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()},
    }
    if "_error" in item:
        meta["error"] = item["_error"]
        return meta
    image = np.ascontiguousarray(item["image"].numpy())
    label = item["label"].numpy()
    n_nonfinite = int((~np.isfinite(image)).sum())
    lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
    label = label.astype(label_dtype(lo, hi))
    image = image.astype(settings["image_dtype"])
    _write_array(folder / "image.b2nd", image, settings["chunks"])
    _write_array(folder / "label.b2nd", label, settings["chunks"])
    locations = foreground_sample(label[0], store.fg_samples, seed=zlib.crc32(case["id"].encode()))
    with open(folder / "fg.npz", "wb") as f:
        np.savez(f, **{f"c{k}": v for k, v in locations.items()})
    fg = label[0] > 0
    flags = [np.any(fg, axis=tuple(d for d in range(fg.ndim) if d != a)).astype(int).tolist() for a in range(fg.ndim)]
    meta.update(
        {
            "image_shape": list(image.shape),
            "label_shape": list(label.shape),
            "image_dtype": str(image.dtype),
            "label_dtype": str(label.dtype),
            "geometry": item.get("_geometry", {}),
            "foreground_slices": flags,  # per spatial axis: 1 where the slice holds foreground
            "class_voxels": np.bincount(label[0].ravel().clip(0)).tolist() if label.size else [],
            "check": {"n_nonfinite": n_nonfinite, "label_min": lo, "label_max": hi},
            "spatial_shape": list(label.shape[1:]),
        }
    )
    return meta


def label_dtype(lo: int, hi: int) -> Any:
    """The smallest integer type holding [lo, hi] (a negative label is kept so the data check can name it)."""
    for dtype in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return dtype
    return np.int64


def foreground_sample(label: np.ndarray, n: int, seed: int) -> dict[int, np.ndarray]:
    """Up to n voxel coordinates per foreground class, drawn once with a seed fixed by the case id."""
    flat = label.ravel()
    idx = np.flatnonzero(flat > 0)
    if idx.size == 0:
        return {}
    cls = flat[idx]
    order = np.argsort(cls, kind="stable")
    idx, cls = idx[order], cls[order]
    classes, starts = np.unique(cls, return_index=True)
    ends = [*starts[1:], idx.size]
    rng = np.random.default_rng(seed)
    coord_dtype = np.uint16 if max(label.shape) < 65536 else np.int64
    out = {}
    for c, a, b in zip(classes, starts, ends):
        chosen = idx[a:b] if b - a <= n else idx[a:b][np.sort(rng.choice(b - a, size=n, replace=False))]
        out[int(c)] = np.stack(np.unravel_index(chosen, label.shape), axis=1).astype(coord_dtype)
    return out


def chunks_for(shape: tuple[int, ...], plan: str) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(chunks, blocks) for a (C, *spatial) array; see docs/store.md for the measurements."""
    spatial = shape[1:]
    if len(spatial) == 2:  # native 2D image: one chunk
        return tuple(shape), None
    if plan.startswith("slices"):
        axis = int(plan[len("slices") :])
        chunks, blocks = list(shape), list(shape)
        chunks[axis + 1] = min(8, shape[axis + 1])
        blocks[axis + 1] = 1  # one block per slice: a slice decompresses exactly its own pixels
        return tuple(chunks), tuple(blocks)
    chunks = (shape[0], *(min(64, s) for s in spatial))
    blocks = (shape[0], *(min(32, s) for s in spatial))
    return chunks, blocks


def _write_array(path: Path, array: np.ndarray, plan: str) -> None:
    """One array into the case's tmp folder (made durable and visible by commit_case, with the others)."""
    blosc2 = blosc2_quiet()
    chunks, blocks = chunks_for(array.shape, plan)
    cparams = {"codec": blosc2.Codec.ZSTD, "clevel": 3, "filters": [blosc2.Filter.SHUFFLE]}
    blosc2.asarray(array, urlpath=str(path), mode="w", chunks=chunks, blocks=blocks, cparams=cparams)
