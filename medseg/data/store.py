"""The preprocessed case store: every case decoded once, kept as chunked, compressed, memory-mapped arrays.

    <cache_dir>/store/<layout>-<key>/
        store.json                  the settings the key was made from (written once)
        build.log                   one line per case written: time, pid, case id, seconds
        cases/<id>.image.b2nd       float image after the deterministic chain (C, *spatial)
        cases/<id>.label.b2nd       label map in the smallest integer type that holds its classes
        cases/<id>.fg.npz           up to data.store.fg_samples foreground voxel locations per class
        cases/<id>.json             metadata; written last, it is the case's commit marker
        locks/<id>.lock             per-case lock (fcntl.flock): one process writes, the others wait, then read

The key hashes the settings of the deterministic chain (layout, intensity, spacing, scale/size, mask
mapping, stored dtype and chunk plan) and the data source folder. Each case's metadata records the
size and mtime of every file it was built from; a case whose files changed is rebuilt (and the log says
which file), so a store never serves stale data. Only stat() is used, no hashing of contents.

Files are blosc2 NDArrays (`.b2nd`, as in nnU-Net v2): chunked and compressed (zstd + shuffle), opened
with mmap, so a 2D slice, a 2.5D slab or a 3D patch decompresses only the blocks it touches; the OS page
cache does the caching. docs/store.md has the measurements behind the format and the chunk plan.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config.schema import layout_value
from medseg.errors import ConfigError

log = logging.getLogger(__name__)

STORE_VERSION = 1
OPEN_HANDLES = 64  # memory-mapped arrays kept open per process (least recently used are closed)
IMAGE_DTYPES = ("float32", "float16")


# ---------------------------------------------------------------------------------------------- key
def store_settings(data_cfg: Any) -> dict[str, Any]:
    """Everything that changes what the deterministic chain writes for a case."""
    from omegaconf import OmegaConf

    def plain(value: Any) -> Any:
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    dims, axis = int(data_cfg.dims), int(data_cfg.slice_axis)
    resized = bool(data_cfg.image_size) or float(data_cfg.scale) != 1.0
    return {
        "version": STORE_VERSION,
        "layout": str(data_cfg.layout),
        "intensity": plain(data_cfg.intensity),
        "spacing": plain(data_cfg.spacing),
        "scale": float(data_cfg.scale),
        "image_size": plain(data_cfg.image_size),
        # a 2D run keeps the slice axis at full length when resizing; without resizing geometry is the same
        "resize_dims": [dims, axis if dims == 2 else None] if resized else None,
        "mask_values": plain(layout_value(data_cfg, "mask_values")),  # null where the layout has no such key
        "colour_map": plain(layout_value(data_cfg, "colour_map")),
        "image_dtype": image_dtype(data_cfg),
        "chunks": chunk_plan(data_cfg),
    }


def image_dtype(data_cfg: Any) -> str:
    dtype = str(_store_cfg(data_cfg).get("image_dtype", "float32"))
    if dtype not in IMAGE_DTYPES:
        raise ConfigError(f"data.store.image_dtype={dtype!r} must be one of {list(IMAGE_DTYPES)}")
    return dtype


def chunk_plan(data_cfg: Any) -> str:
    """'slices<axis>' for 2D training (one block per slice), 'cubes' for 3D patches."""
    return f"slices{int(data_cfg.slice_axis)}" if int(data_cfg.dims) == 2 else "cubes"


def _store_cfg(data_cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    node = OmegaConf.select(data_cfg, "store", default=None) if OmegaConf.is_config(data_cfg) else None
    if node is None:
        node = getattr(data_cfg, "store", None) or {}
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


def store_key(settings: dict[str, Any], source: str) -> str:
    text = json.dumps({"settings": settings, "source": source}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def fingerprint(case: dict[str, Any]) -> list[list[Any]]:
    """[path, size, mtime_ns] of every file the case reads (cheap: stat only)."""
    from medseg.data.checks import case_paths

    rows = []
    for path in case_paths(case):
        try:
            st = os.stat(path)
            rows.append([path, st.st_size, st.st_mtime_ns])
        except OSError:
            rows.append([path, -1, -1])
    return rows


# ---------------------------------------------------------------------------------------------- store
@dataclass
class BuildSummary:
    built: int
    reused: int
    failed: int
    seconds: float
    store_bytes: int
    source_bytes: int

    def line(self, root: Path) -> str:
        cases = self.built + self.reused + self.failed
        return (
            f"case store {root}: {cases} cases ({self.built} built, {self.reused} reused"
            f"{f', {self.failed} unreadable' if self.failed else ''}) in {self.seconds:.1f} s; "
            f"{self.store_bytes / 1e6:.1f} MB on disk beside {self.source_bytes / 1e6:.1f} MB of source files"
        )


class CaseStore:
    """One store folder: build missing cases, read metadata and memory-mapped arrays.

    Picklable (DataLoader workers get a copy): open array handles are per process and reopened lazily.
    """

    def __init__(self, root: Path, settings: dict[str, Any], fg_samples: int = 1000) -> None:
        self.root = Path(root)
        self.settings = settings
        self.fg_samples = int(fg_samples)
        self._meta: dict[str, dict] = {}
        self._handles: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._pid = os.getpid()
        self.last_summary: BuildSummary | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        return state

    # paths
    def case_file(self, case_id: str, part: str) -> Path:
        return self.root / "cases" / f"{case_id}.{part}"

    def lock_file(self, case_id: str) -> Path:
        return self.root / "locks" / f"{case_id}.lock"

    # state of a case
    def committed_meta(self, case: dict[str, Any], now: list | None = None) -> tuple[dict | None, str]:
        """(metadata, '') when the stored case is current; (None, why not) otherwise."""
        path = self.case_file(case["id"], "json")
        if not path.is_file():
            return None, "not built"
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None, "unreadable metadata"
        if meta.get("version") != STORE_VERSION:
            return None, f"store version {meta.get('version')} != {STORE_VERSION}"
        now = fingerprint(case) if now is None else now
        if meta.get("source") != now:
            old = {p: (s, m) for p, s, m in meta.get("source", [])}
            changed = next((p for p, s, m in now if old.get(p) != (s, m)), "the file list")
            return None, f"{changed} changed since it was stored"
        return meta, ""

    def meta(self, case_id: str) -> dict:
        """A case's metadata, without its source file list (kept per case for the whole run, so kept small)."""
        if case_id not in self._meta:
            self._meta[case_id] = slim(json.loads(self.case_file(case_id, "json").read_text()))
        return self._meta[case_id]

    def array(self, case_id: str, part: str) -> Any:
        """The memory-mapped blosc2 array `image` or `label` of a case (index it to read)."""
        blosc2 = _blosc2()

        if os.getpid() != self._pid:  # a forked worker: handles of the parent are not ours
            self._handles, self._pid = OrderedDict(), os.getpid()
        key = (case_id, part)
        handle = self._handles.get(key)
        if handle is None:
            handle = blosc2.open(str(self.case_file(case_id, f"{part}.b2nd")), mode="r", mmap_mode="r")
            self._handles[key] = handle
            if len(self._handles) > OPEN_HANDLES:
                self._handles.popitem(last=False)
        else:
            self._handles.move_to_end(key)
        return handle

    def image(self, case_id: str) -> Any:
        return self.array(case_id, "image")

    def label(self, case_id: str) -> Any:
        return self.array(case_id, "label")

    def foreground_locations(self, case_id: str) -> dict[int, np.ndarray]:
        """Class -> (n, spatial) voxel coordinates, a fixed random sample of that class's voxels."""
        with np.load(self.case_file(case_id, "fg.npz")) as z:
            return {int(k[1:]): z[k] for k in z.files}

    # building
    def ensure(
        self, cases: list[dict[str, Any]], data_cfg: Any, workers: int = 0, progress: bool = True
    ) -> BuildSummary:
        """Build every case that is missing or stale; return what was done."""
        started = time.perf_counter()
        (self.root / "cases").mkdir(parents=True, exist_ok=True)
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        todo, reused, reasons, source_bytes = [], 0, {}, 0
        for case in cases:
            now = fingerprint(case)
            source_bytes += sum(max(0, size) for _, size, _ in now)
            meta, why = self.committed_meta(case, now)
            if meta is None:
                todo.append(case)
                reasons[case["id"]] = why
            else:
                self._meta[case["id"]] = slim(meta)
                reused += 1
        stale = [(cid, why) for cid, why in reasons.items() if why != "not built"]
        for cid, why in stale[:5]:
            log.info("case store: rebuilding %s (%s)", cid, why)
        if len(stale) > 5:
            log.info("case store: rebuilding %d more cases whose files changed", len(stale) - 5)
        built_ids: set[str] = set()
        if todo:
            log.info("case store %s: building %d of %d cases", self.root, len(todo), len(cases))
            for case_id, wrote in self._build_all(todo, data_cfg, workers, progress):
                if wrote:
                    built_ids.add(case_id)
                self._meta.pop(case_id, None)
        failed_ids = {c["id"] for c in cases if "error" in self.meta(c["id"])}
        failed = len(failed_ids)  # an unreadable case counts as unreadable only, not also as built or reused
        built = len(built_ids - failed_ids)
        reused = len(cases) - built - failed
        summary = BuildSummary(
            built=built,
            reused=reused,
            failed=failed,
            seconds=time.perf_counter() - started,
            store_bytes=sum(self.case_bytes(c["id"]) for c in cases),
            source_bytes=source_bytes,
        )
        (log.info if built or failed else log.debug)(summary.line(self.root))
        self.last_summary = summary
        return summary

    def case_bytes(self, case_id: str) -> int:
        total = 0
        for part in ("image.b2nd", "label.b2nd", "fg.npz", "json"):
            with contextlib.suppress(OSError):
                total += self.case_file(case_id, part).stat().st_size
        return total

    def _build_all(self, todo: list[dict], data_cfg: Any, workers: int, progress: bool) -> Iterator[tuple[str, bool]]:
        from omegaconf import OmegaConf

        from medseg.progress import Progress

        cfg = OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg) else dict(data_cfg)
        # a bar on a terminal; in a log, a line per tenth of the cases once the build has run 10 s
        bar = Progress(len(todo), "preprocess", progress, log_after_s=10.0)
        pool = None
        try:
            if workers > 0 and len(todo) > 1:
                import multiprocessing as mp
                from concurrent.futures import ProcessPoolExecutor

                pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=_worker_context(mp))
            # first pass skips cases another process is writing (concurrent runs share the work);
            # the second waits for those and reads them
            for wait in (False, True):
                busy = []
                for case_id, status in self._run(pool, todo, cfg, wait):
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
                pool.shutdown()
            bar.close()

    def _run(self, pool: Any, cases: list[dict], cfg: dict, wait: bool) -> Iterator[tuple[str, str]]:
        args = [(str(self.root), self.settings, self.fg_samples, cfg, case, wait) for case in cases]
        if pool is None:
            for a in args:
                yield build_case(*a)
            return
        from concurrent.futures import as_completed

        for fut in as_completed([pool.submit(build_case, *a) for a in args]):
            yield fut.result()


def _worker_context(mp: Any) -> Any:
    """spawn: each worker starts a fresh interpreter (a second or two to import torch and MONAI, once per
    build). A fork of this process can deadlock in blosc2's thread pool once the store has been read here
    (seen when a 3D store was built after a 2D loader ran); forkserver, in Python 3.11, does not carry
    sys.path to its workers. build_case is top level with plain arguments, as spawn needs."""
    return mp.get_context("spawn")


def slim(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in ("source", "writer")}


# ---------------------------------------------------------------------------------------------- one case
_CHAINS: dict[str, Any] = {}


def build_case(
    root: str, settings: dict, fg_samples: int, data_cfg: dict, case: dict, wait: bool = True
) -> tuple[str, str]:
    """Decode, preprocess and write one case under its lock: (case id, 'built' | 'reused' | 'busy').

    'reused': another process wrote it meanwhile; 'busy': another process holds the lock and `wait` is false.
    """
    import fcntl

    store = CaseStore(Path(root), settings, fg_samples)
    case_id = case["id"]
    with open(store.lock_file(case_id), "a+") as lock:
        try:  # the lock is released when the file closes, also when the process dies
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return case_id, "busy"
        try:
            if store.committed_meta(case)[0] is not None:  # written by another process meanwhile
                return case_id, "reused"
            with contextlib.suppress(FileNotFoundError):
                store.case_file(case_id, "json").unlink()  # uncommit a stale entry before replacing its files
            for leftover in store.case_file(case_id, "json").parent.glob(f".{case_id}.*.tmp"):
                leftover.unlink(missing_ok=True)  # from a writer that was killed (we hold the lock now)
            started = time.perf_counter()
            item = _chain_for(data_cfg)(case)
            meta = _write_case(store, case, item, settings)
            meta["build_seconds"] = round(time.perf_counter() - started, 3)
            _write_atomic(store.case_file(case_id, "json"), json.dumps(meta).encode())
            with open(store.root / "build.log", "a") as f:
                f.write(
                    f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid={os.getpid()} case={case_id} s={meta['build_seconds']}\n"
                )
            return case_id, "built"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _chain_for(data_cfg: dict) -> Any:
    key = json.dumps(data_cfg, sort_keys=True, default=str)
    if key not in _CHAINS:
        from omegaconf import OmegaConf

        from medseg.data.datasets import GuardedChain
        from medseg.data.transforms import volume_transforms

        _CHAINS[key] = GuardedChain(volume_transforms(OmegaConf.create(data_cfg)))
    return _CHAINS[key]


def _write_case(store: CaseStore, case: dict, item: dict, settings: dict) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "version": STORE_VERSION,
        "id": case["id"],
        "source": fingerprint(case),
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
    _write_array(store.case_file(case["id"], "image.b2nd"), image, settings["chunks"])
    _write_array(store.case_file(case["id"], "label.b2nd"), label, settings["chunks"])
    locations = foreground_sample(label[0], store.fg_samples, seed=zlib.crc32(case["id"].encode()))
    _write_npz(store.case_file(case["id"], "fg.npz"), {f"c{k}": v for k, v in locations.items()})
    spatial = label.shape[1:]
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
            "spatial_shape": list(spatial),
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


def _blosc2() -> Any:
    """blosc2, without the thread-count notice its numexpr import logs to every run's console."""
    logging.getLogger("numexpr.utils").setLevel(logging.WARNING)
    import blosc2

    return blosc2


def _write_array(path: Path, array: np.ndarray, plan: str) -> None:
    blosc2 = _blosc2()

    chunks, blocks = chunks_for(array.shape, plan)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    cparams = {"codec": blosc2.Codec.ZSTD, "clevel": 3, "filters": [blosc2.Filter.SHUFFLE]}
    blosc2.asarray(array, urlpath=str(tmp), mode="w", chunks=chunks, blocks=blocks, cparams=cparams)
    _fsync_rename(tmp, path)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    _fsync_rename(tmp, path)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    _fsync_rename(tmp, path)


def _fsync_rename(tmp: Path, path: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------------------------------- entry point
def store_dir(data_cfg: Any, cache_dir: str) -> Path:
    base = _store_cfg(data_cfg).get("dir")
    return Path(str(base or Path(str(cache_dir)) / "store")).expanduser()


def open_store(
    data_cfg: Any,
    cache_dir: str,
    cases: list[dict[str, Any]],
    source: Path | str | None,
    workers: int | None = None,
    progress: bool = True,
) -> CaseStore:
    """The store for these settings and this data source, with every case of `cases` built and current.

    `source` is the dataset folder (CaseSet.root); `workers` defaults to data.store.workers, then 0.
    """
    settings = store_settings(data_cfg)
    source_text = str(Path(str(source)).resolve()) if source else ""
    key = store_key(settings, source_text)
    root = store_dir(data_cfg, cache_dir) / f"{settings['layout']}-{key}"
    scfg = _store_cfg(data_cfg)
    store = CaseStore(root, settings, int(scfg.get("fg_samples") or 1000))
    manifest = root / "store.json"
    if not manifest.is_file():
        root.mkdir(parents=True, exist_ok=True)
        log.info("new case store %s (%s)", root, why_new(root.parent, settings, source_text))
        _write_atomic(manifest, json.dumps({"settings": settings, "source": source_text}, indent=1).encode())
    if workers is None:
        workers = int(scfg.get("workers") or 0)
    store.ensure(cases, data_cfg, workers=workers, progress=progress)
    return store


SETTING_NAMES = {
    "chunks": "data.dims/data.slice_axis (chunk plan)",
    "resize_dims": "data.dims/data.slice_axis (resizing)",
    "image_dtype": "data.store.image_dtype",
    "version": "store format version",
}


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
        diff = [
            k
            for k in sorted(set(settings) | set(other.get("settings", {})))
            if settings.get(k) != other["settings"].get(k)
        ]
        if [k for k in diff if k != "resize_dims"]:
            diff = [k for k in diff if k != "resize_dims"]  # follows from scale/image_size: named by them
        if best is None or len(diff) < len(best):
            best = diff
    if best is None:
        return "no store of this data source yet"
    return "settings differ from the existing store in: " + ", ".join(SETTING_NAMES.get(k, f"data.{k}") for k in best)
