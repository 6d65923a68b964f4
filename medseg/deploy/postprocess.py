"""The post-processing mode=crossval chose, in numpy: a twin of medseg/crossval/postprocess.py, because the
deployed predictor may not import scipy (its extra is numpy, onnxruntime, nibabel and the DICOM libraries).

The same two operations per class (`largest_component`, `largest_foreground`), both decided from the raw
labels, each class within its own bounding box, and the same connectivity as scipy.ndimage.label with
generate_binary_structure(ndim, ndim): full (26 neighbours in 3D, 8 in 2D). Components come from a
vectorised union-find over the voxel pairs of the half-neighbourhood (13 offsets in 3D, 4 in 2D): each round
hooks the larger root of every joined pair onto the smaller, then compresses paths until every voxel points
at its root. A component's root is its first voxel in C order, which is the order in which scipy numbers
components, so a tie between equally large components is broken as scipy.ndimage breaks it (the lowest
label wins argmax). tests/test_deploy_postprocess.py compares both on random and structured masks.
Memory: one int64 index per foreground voxel of the box and, per offset, the joined pairs (int32/int64).
"""

from __future__ import annotations

import itertools

import numpy as np

OPERATIONS = ("largest_component", "largest_foreground")


def half_offsets(ndim: int) -> list[tuple[int, ...]]:
    """The neighbour offsets of full connectivity that come later in C order (each pair counted once)."""
    return [d for d in itertools.product((-1, 0, 1), repeat=ndim) if d > (0,) * ndim]


def component_roots(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices of the True voxels in C order, the component root of each as a position in that list)."""
    flat = np.flatnonzero(mask)
    n = flat.size
    if n == 0:
        return flat, np.zeros(0, dtype=np.int64)
    dtype = np.int32 if n < 2**31 else np.int64
    index = np.full(mask.shape, -1, dtype=dtype)
    index.reshape(-1)[flat] = np.arange(n, dtype=dtype)
    pairs = []
    for offset in half_offsets(mask.ndim):
        a = tuple(slice(0, s - d) if d >= 0 else slice(-d, s) for s, d in zip(mask.shape, offset))
        b = tuple(slice(d, s) if d >= 0 else slice(0, s + d) for s, d in zip(mask.shape, offset))
        both = mask[a] & mask[b]
        if both.any():
            pairs.append((index[a][both], index[b][both]))
    parent = np.arange(n, dtype=dtype)
    if not pairs:
        return flat, parent
    u = np.concatenate([p[0] for p in pairs])
    v = np.concatenate([p[1] for p in pairs])
    del pairs
    while True:
        pu, pv = parent[u], parent[v]
        joined = pu != pv
        if not joined.any():
            return flat, parent
        lo, hi = np.minimum(pu[joined], pv[joined]), np.maximum(pu[joined], pv[joined])
        np.minimum.at(parent, hi, lo)  # roots only decrease: the loop ends
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up


def largest_component_mask(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest connected component (all of `mask` when it has one or none)."""
    flat, roots = component_roots(mask)
    if flat.size == 0:
        return mask.copy()
    sizes = np.bincount(roots)
    if np.count_nonzero(sizes) <= 1:
        return mask.copy()
    keep = np.zeros(mask.size, dtype=bool)
    keep[flat[roots == int(sizes.argmax())]] = True  # argmax: the first root in C order among equal sizes
    return keep.reshape(mask.shape)


def apply_postprocessing(labels: np.ndarray, ops: dict[int, str]) -> np.ndarray:
    """labels with each class's operation applied, decided on and computed from the raw labels."""
    ops = {int(c): op for c, op in ops.items() if op}
    if not ops:
        return labels
    out = labels.copy()
    keep_fg = largest_component_mask(labels > 0) if "largest_foreground" in ops.values() else None
    for c, op in ops.items():
        box = _box(labels == c)
        if box is None:
            continue
        inside = labels[box] == c
        if op == "largest_component":
            drop = inside & ~largest_component_mask(inside)
        elif op == "largest_foreground":
            assert keep_fg is not None
            drop = inside & ~keep_fg[box]
        else:
            raise ValueError(f"unknown post-processing operation {op!r}")
        out[box][drop] = 0
    return out


def _box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the True voxels (as scipy.ndimage.find_objects gives it), None when there are none."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)
