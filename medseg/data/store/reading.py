"""Reading a store: committed case records and memory-mapped blosc2 arrays, opened lazily per process."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.store.commit import case_folder, read_record, record_file
from medseg.data.store.identity import STORE_VERSION, changed_source, source_identity
from medseg.errors import DataError

OPEN_HANDLES = 64  # memory-mapped arrays kept open per process (least recently used are closed)
PARTS = ("image.b2nd", "label.b2nd", "fg.npz")


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
    """One store folder: committed case records and memory-mapped arrays.

    Picklable (DataLoader workers get a copy): open array handles are per process and reopened lazily.
    A case's metadata is read once per process and names the generation its arrays are read from, so
    every part of a case comes from the same build.
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

    @property
    def folder(self) -> Path:
        """The store's folder (files that describe the whole store, e.g. a dataset fingerprint, go here)."""
        return self.root

    # state of a case
    def committed_meta(self, case: dict[str, Any], now: list | None = None) -> tuple[dict | None, str]:
        """(metadata, '') when the stored case is current; (None, why not) otherwise."""
        if not record_file(self.root, case["id"]).is_file():
            return None, "not built"
        meta = read_record(self.root, case["id"])
        if meta is None:
            return None, "unreadable metadata"
        if meta.get("version") != STORE_VERSION:
            return None, f"store version {meta.get('version')} != {STORE_VERSION}"
        why = changed_source(meta.get("source"), source_identity(case) if now is None else now)
        if (
            not why
            and "error" not in meta
            and not (case_folder(self.root, case["id"]) / str(meta.get("generation"))).is_dir()
        ):
            why = "its stored files are missing"
        return (None, why) if why else (meta, "")

    def meta(self, case_id: str) -> dict:
        """A case's metadata, without its source file list (kept per case for the whole run, so kept small)."""
        if case_id not in self._meta:
            meta = read_record(self.root, case_id)
            if meta is None:
                raise DataError(f"case store {self.root}: case {case_id} is not built; run again to build it")
            self._meta[case_id] = slim(meta)
        return self._meta[case_id]

    def part_file(self, case_id: str, part: str) -> Path:
        """The file of `part` (image.b2nd, label.b2nd, fg.npz) in the generation this process reads."""
        return case_folder(self.root, case_id) / str(self.meta(case_id).get("generation")) / part

    def _open(self, case_id: str, part: str, opener: Any) -> Any:
        try:
            return opener(self.part_file(case_id, part))
        except FileNotFoundError:
            now = read_record(self.root, case_id) or {}
            if now.get("generation") != self.meta(case_id).get("generation"):
                raise DataError(
                    f"case store {self.root}: case {case_id} was rebuilt by another process while this one read it"
                    " (its source files or their identity changed); run again to read the new build"
                ) from None
            raise DataError(
                f"case store {self.root}: a file of case {case_id} is missing (removed by hand?); run again to"
                " rebuild it"
            ) from None

    def array(self, case_id: str, part: str) -> Any:
        """The memory-mapped blosc2 array `image` or `label` of a case (index it to read)."""
        if os.getpid() != self._pid:  # a forked worker: handles of the parent are not ours
            self._handles, self._pid = OrderedDict(), os.getpid()
        key = (case_id, part)
        handle = self._handles.get(key)
        if handle is None:
            blosc2 = blosc2_quiet()
            handle = self._open(case_id, f"{part}.b2nd", lambda p: blosc2.open(str(p), mode="r", mmap_mode="r"))
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

        def load(path: Path) -> dict[int, np.ndarray]:
            with np.load(path) as z:
                return {int(k[1:]): z[k] for k in z.files}

        return self._open(case_id, "fg.npz", load)

    def case_bytes(self, case_id: str) -> int:
        total = 0
        with contextlib.suppress(OSError):
            total += record_file(self.root, case_id).stat().st_size
            meta = read_record(self.root, case_id) or {}
            if meta.get("generation"):
                folder = case_folder(self.root, case_id) / meta["generation"]
                total += sum(f.stat().st_size for f in folder.iterdir())
        return total


def slim(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in ("source", "writer")}


@functools.cache
def blosc2_quiet() -> Any:
    """blosc2, without the thread-count notice its numexpr import logs to every run's console (once per
    process: Logger.setLevel clears every logger's cache, which cost 1 ms per item read)."""
    logging.getLogger("numexpr.utils").setLevel(logging.WARNING)
    import blosc2

    return blosc2
