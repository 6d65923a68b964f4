"""Streaming whole-volume inference with onnxruntime: numpy in, class indices out.

A twin of medseg/inference/predictor.py (VolumePredictor) and of MONAI's Gaussian
`sliding_window_inference`, because the deployed path may not import torch, MONAI or training code
(see medseg/deploy/__init__.py). It follows the torch path step for step so that masks agree voxel for
voxel (tests/test_deploy.py compares them):
- 2D / 2.5D models run on batches of slices along the slice axis, each with its 2k+1 neighbours as
  channels (edges replicated), zero-padded symmetrically to a multiple of pad_divisible (DivisiblePad);
- 3D models with a patch size run a Gaussian sliding window slab by slab along the slice axis, each slab
  with exactly the windows a whole-volume pass places there (medseg/inference/slabs.py, shared); windows
  are blended with MONAI's own importance map, stored by mode=export as window_weights.npy, in MONAI's
  window order, and divided by the summed weights; a 3D model without a patch size sees the padded volume
  in one pass;
- softmax (earlier exports end their 2D graphs with it; their manifest says output "probabilities"),
  optional flip TTA (every combination of spatial axes), in-plane bilinear resizing
  and the streaming linear blend along the slice axis (medseg/deploy/resample.py), then argmax (or the
  two-class threshold). A model trained with data.spacing (manifest "spacing") is mapped back by the
  geometric inverse instead of a resize: in-plane sampling and the blend along the slice axis at the
  positions medseg/deploy/spacing_inverse.py (shared with the torch path) gives. The folds of one
  configuration (several model files) have their softmax probabilities averaged per batch;
  configurations with their own preprocessing (a crossval ensemble of 2D and 3D) each stream
  probability slices on the output grid, averaged slice by slice (`ensemble_labels`), as
  medseg/crossval/apply.py does.

Softmax, resizing and argmax run on `threads` threads, each on its own part of the array (numpy
releases the GIL in them): onnxruntime's graph only runs the network, and this per-voxel work over
every class (118 maps per slice for TotalSegmentator) would otherwise run on one core.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from medseg.deploy.resample import way_back
from medseg.deploy.spacing_inverse import back_transform
from medseg.inference.slabs import plan_slabs, window_starts, windows_within

SLAB_BYTES = 512 * 2**20


class OnnxPredictor:
    def __init__(
        self,
        sessions: Sequence[Any],
        manifest: dict[str, Any],
        window_weights: np.ndarray | None = None,
        tta: bool = False,
        overlap: float = 0.25,
        batch_size: int = 4,
        slab_bytes: int = SLAB_BYTES,
        threads: int = 1,
    ) -> None:
        self.sessions = list(sessions)
        self.names = [(s.get_inputs()[0].name, s.get_outputs()[0].name) for s in self.sessions]
        self.dims, self.axis = int(manifest["dims"]), int(manifest["slice_axis"])
        self.patch = list(manifest["patch_size"]) if manifest.get("patch_size") else None
        self.k = int(manifest["pad_divisible"])
        self.context = int(manifest.get("context_slices", 0))
        self.num_classes = int(manifest["classes"]["count"])
        self.spacing = list(manifest["spacing"]) if manifest.get("spacing") else None
        self.logits = manifest.get("output", "logits") == "logits"  # else the graph ends with its softmax
        self.weights = window_weights
        self.tta, self.overlap, self.batch_size, self.slab_bytes = tta, overlap, max(1, batch_size), slab_bytes
        self.threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def labels(
        self, image: np.ndarray, shape: tuple[int, ...], threshold: float | None = None, affine: Any = None
    ) -> np.ndarray:
        """image (C, *spatial) in the model's space -> class indices (int16) on the grid `shape`; `affine`
        (that grid's 4x4 affine) is needed by a model trained with data.spacing."""
        out = None
        for t, probs in self.probability_slices(image, shape, affine):
            if out is None:
                out = np.zeros((slice_count(image, shape, self.axis), *probs.shape[1:]), dtype=np.int16)
            out[t] = self._in_parts(lambda part: to_labels(part, threshold), probs, 1, axis=0)
        assert out is not None
        return from_slices(out, image.ndim == 3, self.axis)

    def probability_slices(
        self, image: np.ndarray, shape: tuple[int, ...], affine: Any = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(t, probabilities (K, a, b)) for each target slice t along the slice axis, in order, on the grid
        `shape` (a native 2D image is one slice), as VolumePredictor.probability_slices yields them."""
        native_2d = image.ndim == 3
        if native_2d:
            image, shape, axis = image[..., None], (*shape, 1), 2
        else:
            axis = self.axis
        transform = None
        if self.spacing and not native_2d:
            assert affine is not None, "a model trained with data.spacing maps back with the input's affine"
            transform = back_transform(affine, shape, self.spacing, image.shape[1:])
        along, in_plane = way_back(image.shape[1:], shape, axis, transform)
        for chunk in self._chunks(image, axis, in_plane):  # (K, n, a, b), in-plane on the way back already
            yield from along.feed(chunk)
        assert along.done(), "every target slice is written"

    # ------------------------------------------------------------------ chunks of probabilities
    def _chunks(
        self, image: np.ndarray, axis: int, in_plane: Callable[[np.ndarray], np.ndarray]
    ) -> Iterator[np.ndarray]:
        """Probabilities (K, n, a, b) of the next slices along the slice axis, in-plane through `in_plane`."""
        if self.dims == 3 and image.ndim == 4:
            for chunk in self._slabs_3d(image, axis):
                yield self._in_parts(in_plane, chunk, 0)
            return
        vol = np.moveaxis(image, axis + 1, 1)  # (C, S, a, b)
        count = vol.shape[1]
        for i in range(0, count, self.batch_size):
            x = slab_inputs(vol, range(i, min(count, i + self.batch_size)), self.context)
            if self.logits and len(self.sessions) == 1 and not self.tta:
                yield from self._slice_by_slice(x, in_plane)
            else:
                yield self._in_parts(in_plane, np.moveaxis(self._probabilities(x, self._forward), 0, 1), 0)

    def _slice_by_slice(self, x: np.ndarray, in_plane: Callable[[np.ndarray], np.ndarray]) -> Iterator[np.ndarray]:
        """One network pass over the slices `x`, then each slice's softmax and in-plane resampling as one task
        on the pool: a slice's class maps are still in the cache when they are resampled (4 x 118 x 256 x 256
        to 224 x 224 on 2 threads: 0.18 s against 0.29 s for softmax and resampling over the whole batch).
        Each value is computed by the same operations as in `_probabilities`."""
        x = x.astype(np.float32, copy=False)
        padded, before = divisible_pad(x, self.k)
        logits = self._forward(padded)
        size = x.shape[2:]

        def one(j: int) -> np.ndarray:
            probs = np.array(crop(logits[j : j + 1], before, size), dtype=np.float32, copy=True)
            softmax_in_place(probs)
            return in_plane(np.moveaxis(probs, 0, 1))  # (K, 1, a, b)

        jobs = range(logits.shape[0])
        yield from (self._pool.map(one, jobs) if self._pool is not None else map(one, jobs))

    def _slabs_3d(self, image: np.ndarray, axis: int) -> Iterator[np.ndarray]:
        size = image.shape[1:]
        padded, before = divisible_pad(image[None].astype(np.float32), self.k)
        if not self.patch:
            probs = self._probabilities(padded, self._forward, pad=False)
            yield np.moveaxis(crop(probs, before, size)[0], axis + 1, 1)
            return
        length, roi = padded.shape[axis + 2], int(self.patch[axis])
        rest = padded[0, 0].size // length
        budget = windows_within(self.slab_bytes, self.num_classes, rest, roi, self.overlap)
        lo, hi = before[axis], before[axis] + size[axis]
        for slab in plan_slabs(length, roi, self.overlap, budget):
            keep0, keep1 = max(slab.keep[0], lo), min(slab.keep[1], hi)
            if keep0 >= keep1:
                continue
            index = [slice(None)] * padded.ndim
            index[axis + 2] = slice(slab.read[0], slab.read[1])
            probs = self._probabilities(padded[tuple(index)], self._sliding_window, pad=False)
            index[axis + 2] = slice(keep0 - slab.read[0], keep1 - slab.read[0])
            probs = probs[tuple(index)]
            offsets = [0 if d == axis else b for d, b in enumerate(before)]
            sizes = [keep1 - keep0 if d == axis else s for d, s in enumerate(size)]
            yield np.moveaxis(crop(probs, offsets, sizes)[0], axis + 1, 1)

    def _probabilities(self, x: np.ndarray, forward: Any, pad: bool = True) -> np.ndarray:
        """Softmax of forward(x) (B, K, *spatial), averaged over flips with TTA and over ensemble members."""
        x = x.astype(np.float32, copy=False)
        size = x.shape[2:]
        padded, before = divisible_pad(x, self.k) if pad else (x, [0] * len(size))
        flips: list[tuple[int, ...]] = [()]
        if self.tta:
            axes = list(range(2, padded.ndim))
            flips += [c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]
        total = None
        for member in range(len(self.sessions)):
            for dims in flips:
                inp = np.ascontiguousarray(np.flip(padded, dims)) if dims else padded
                out = forward(inp, member)
                probs = self._softmax(out) if self.logits else out
                probs = np.flip(probs, dims) if dims else probs
                total = probs if total is None else total + probs
        assert total is not None
        count = len(flips) * len(self.sessions)
        probs = total / np.float32(count) if count > 1 else total
        return np.ascontiguousarray(crop(probs, before, size))

    def _softmax(self, logits: np.ndarray) -> np.ndarray:
        """softmax over axis 1 of (B, K, *spatial), each thread on its own rows of the first spatial axis."""
        x = np.array(logits, dtype=np.float32, copy=True)
        parts = _bounds(x.shape[2], self.threads)
        if self._pool is None or len(parts) == 1:
            softmax_in_place(x)
        else:
            list(self._pool.map(lambda ab: softmax_in_place(x[:, :, ab[0] : ab[1]]), parts))
        return x

    def _in_parts(self, fn: Callable[[np.ndarray], np.ndarray], array: np.ndarray, split: int, axis: int = 0):
        """fn on `threads` parts of `array` cut along axis `split`, joined again along `axis` of the results."""
        parts = _bounds(array.shape[split], self.threads)
        if self._pool is None or len(parts) == 1:
            return fn(array)
        index = [slice(None)] * array.ndim
        pieces = []
        for a, b in parts:
            index[split] = slice(a, b)
            pieces.append(array[tuple(index)])
        return np.concatenate(list(self._pool.map(fn, pieces)), axis=axis)

    def _forward(self, x: np.ndarray, member: int = 0) -> np.ndarray:
        name_in, name_out = self.names[member]
        return self.sessions[member].run([name_out], {name_in: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def _sliding_window(self, x: np.ndarray, member: int = 0) -> np.ndarray:
        """MONAI's sliding_window_inference(mode="gaussian") on one batch item, in numpy."""
        assert self.patch is not None and self.weights is not None
        roi = [int(r) for r in self.patch]
        pad = []
        for s, r in zip(x.shape[2:], roi):
            diff = max(r - s, 0)
            pad.append((diff // 2, diff - diff // 2))
        if any(p for pair in pad for p in pair):
            x = np.pad(x, [(0, 0), (0, 0), *pad])
        image_size = x.shape[2:]
        per_axis = [window_starts(s, r, self.overlap) if s != r else [0] for s, r in zip(image_size, roi)]
        starts = list(itertools.product(*per_axis))
        weights = self.weights.astype(np.float32)
        out = np.zeros((x.shape[0], self.num_classes, *image_size), dtype=np.float32)
        count = np.zeros(image_size, dtype=np.float32)
        for s in starts:
            count[tuple(slice(a, a + r) for a, r in zip(s, roi))] += weights
        for i in range(0, len(starts), self.batch_size):
            group = starts[i : i + self.batch_size]
            windows = [tuple(slice(a, a + r) for a, r in zip(s, roi)) for s in group]
            batch = np.concatenate([x[(slice(None), slice(None), *w)] for w in windows])
            logits = self._forward(batch, member)
            for j, w in enumerate(windows):
                out[(slice(None), slice(None), *w)] += logits[j : j + 1] * weights
        out /= count
        if any(p for pair in pad for p in pair):
            out = out[(slice(None), slice(None), *(slice(b, b + s - b - a) for (b, a), s in zip(pad, image_size)))]
        return out


def slab_inputs(vol: np.ndarray, slices: range, context: int) -> np.ndarray:
    """Model inputs (n, C*(2k+1), a, b) for `slices` of vol (C, S, a, b), neighbours channel by channel."""
    if context == 0:
        return np.moveaxis(vol[:, slices.start : slices.stop], 1, 0)
    offsets = np.arange(-context, context + 1)
    index = np.clip(np.asarray(list(slices))[:, None] + offsets, 0, vol.shape[1] - 1)
    picked = vol[:, index]  # (C, n, 2k+1, a, b)
    n, c = index.shape[0], vol.shape[0]
    return np.moveaxis(picked, 1, 0).reshape(n, c * (2 * context + 1), *vol.shape[2:])


def divisible_pad(x: np.ndarray, k: int) -> tuple[np.ndarray, list[int]]:
    """Zero-pad spatial axes of (B, C, *spatial) to multiples of k, the extra voxel after (DivisiblePad)."""
    before = [((-s) % k) // 2 for s in x.shape[2:]]
    pads = [(0, 0), (0, 0)] + [(b, (-s) % k - b) for s, b in zip(x.shape[2:], before)]
    if not any(p for pair in pads for p in pair):
        return x, before
    return np.pad(x, pads), before


def crop(probs: np.ndarray, before: Sequence[int], size: Sequence[int]) -> np.ndarray:
    return probs[(slice(None), slice(None), *(slice(b, b + s) for b, s in zip(before, size)))]


def softmax_in_place(x: np.ndarray) -> None:
    """Softmax over axis 1 of a float32 array (or a view of one), in place: no temporary of its size."""
    x -= x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)


def _bounds(length: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) of up to `parts` near-equal pieces of range(length)."""
    edges = np.linspace(0, length, min(parts, max(1, length)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def slice_count(image: np.ndarray, shape: tuple[int, ...], axis: int) -> int:
    """Target slices along the slice axis (1 for a native 2D image)."""
    return 1 if image.ndim == 3 else int(shape[axis])


def from_slices(stack: np.ndarray, native_2d: bool, axis: int) -> np.ndarray:
    """A (S, a, b) stack of target slices back to the grid's own axis order ((W, H) for a native 2D image)."""
    if native_2d:
        return stack[0]
    return np.ascontiguousarray(np.moveaxis(stack, 0, axis))


def ensemble_labels(
    predictors: Sequence[OnnxPredictor],
    images: Sequence[np.ndarray],
    shape: tuple[int, ...],
    threshold: float | None,
    affine: Any = None,
) -> np.ndarray:
    """Class indices on `shape` (whose 4x4 affine is `affine`) from configurations that each read the image
    through their own preprocessing (`images`, one per predictor): each target slice's probabilities are
    averaged over them as they arrive, as medseg/crossval/apply.py's EnsemblePredictor does, then turned
    into labels and dropped."""
    if len(predictors) == 1:
        return predictors[0].labels(images[0], shape, threshold, affine)
    first = predictors[0]
    streams = [p.probability_slices(image, shape, affine) for p, image in zip(predictors, images)]
    out = None
    for parts in zip(*streams):
        t = parts[0][0]
        assert all(p[0] == t for p in parts), "configurations emit the same target slices in order"
        probs = sum(p[1] for p in parts) / len(parts)  # the PyTorch path's sum and division, in float32
        if out is None:
            out = np.zeros((slice_count(images[0], shape, first.axis), *probs.shape[1:]), dtype=np.int16)
        out[t] = first._in_parts(lambda part: to_labels(part, threshold), probs, 1, axis=0)
    assert out is not None
    return from_slices(out, images[0].ndim == 3, first.axis)


def to_labels(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Argmax for multi-class; for two classes, foreground where its probability exceeds `threshold`."""
    if probs.shape[0] == 2 and threshold is not None:
        return (probs[1] > np.float32(threshold)).astype(np.int16)
    return probs.argmax(0).astype(np.int16)
