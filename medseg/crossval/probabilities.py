"""Class probabilities of one case on disk: uint8-quantised, one blosc2 chunk per slice.

A float32 volume of 118 classes at 224x224x160 is 3.8 GB. Stored here as uint8 (p * 255, rounded;
the error of each value is at most 1/510 = 0.00196) in a blosc2 NDArray (`.b2nd`, zstd + bit
shuffle), laid out (slices, classes, a, b) along the predictor's slice axis, one chunk per slice: a
writer adds slice after slice as the streaming predictor emits them, and a reader takes a slab of
slices without decoding the rest. Neither ever holds more than one slab.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

SCALE = 255  # stored value = round(p * SCALE)
MAX_ERROR = 0.5 / SCALE


def _blosc2() -> Any:
    logging.getLogger("numexpr.utils").setLevel(logging.WARNING)
    import blosc2

    return blosc2


def quantise(probs: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(probs * SCALE), 0, SCALE).astype(np.uint8)


def dequantise(stored: np.ndarray) -> np.ndarray:
    return stored.astype(np.float32) / SCALE


class ProbabilityWriter:
    """Write (K, a, b) probability slices in order into `path` (a temporary name until `close`)."""

    def __init__(self, path: Path, slices: int, classes: int, plane: tuple[int, int]) -> None:
        blosc2 = _blosc2()
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        shape = (slices, classes, *plane)
        cparams = {"codec": blosc2.Codec.ZSTD, "clevel": 3, "filters": [blosc2.Filter.BITSHUFFLE]}
        self.array = blosc2.empty(
            shape, dtype=np.uint8, chunks=(1, *shape[1:]), urlpath=str(self.tmp), mode="w", cparams=cparams
        )
        self.written = 0
        self.max_error = 0.0

    def add(self, t: int, probs: np.ndarray) -> None:
        q = np.ascontiguousarray(quantise(probs))
        self.max_error = max(self.max_error, float(np.abs(dequantise(q) - probs).max(initial=0.0)))
        self.array[t] = q[None]
        self.written += 1

    def close(self) -> int:
        """Finish the file under its real name; returns its size in bytes."""
        assert self.written == self.array.shape[0], "every slice is written"
        del self.array
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.path)
        return self.path.stat().st_size

    def discard(self) -> None:
        self.array = None
        if self.tmp.exists():
            self.tmp.unlink()


def open_probabilities(path: Path) -> Any:
    """The stored (S, K, a, b) uint8 array, memory-mapped; index it by slabs of slices."""
    return _blosc2().open(str(path), mode="r", mmap_mode="r")
