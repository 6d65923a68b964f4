"""Streaming whole-volume inference: an image in the model's input space in, class indices on the
label's (or the original image's) grid out.

The volume is processed along the slice axis (data.slice_axis) and never held as a float volume per
class:
- 2D models run on batches of slices (with data.context_slices=k each slice brings its 2k+1
  neighbours as channels, edges replicated, as in training); a native 2D image is one slice;
- 3D models run MONAI's Gaussian sliding window slab by slab along the slice axis, each slab with
  exactly the windows a whole-volume pass would use for its voxels (see `slabs.py`); a 3D model
  without data.patch_size sees the whole volume in one pass, so its (K, *volume) output is the
  memory limit there, as in training's validation.
Each chunk of slice probabilities is resized in-plane to the target grid, blended along the slice
axis when its length differs (see `resample.py`), turned into class indices slice by slice, and
dropped. A model trained with data.spacing needs the input's affine (`affine=`): its grid is Spacingd's,
and the way back samples it where each input voxel's centre lies (the geometric inverse), not a resize.
Inputs are padded to data.pad_divisible the way validation pads them (MONAI DivisiblePad: symmetric,
zeros) and cropped back, so evaluate sees what validation sees. Optional flip test-time augmentation
averages the probabilities over flips of each spatial axis (for 3D, of each slab).

Ensembles: `model` may be a sequence of models sharing one data config (the folds of one
configuration). Each batch of slices (each 3D slab) runs through every model in turn and their
softmax probabilities are summed into one buffer and divided by their count, so memory grows with
the models' weights only, never with a probability volume per model. `probability_slices` yields the
averaged probabilities one target slice at a time, for callers that average several configurations
(see medseg/crossval/ensemble.py) or keep them (a fold run's out-of-fold probabilities).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medseg.inference.resample import way_back
from medseg.inference.slabs import plan_slabs, windows_within
from medseg.precision import Precision

SLAB_BYTES = 512 * 2**20  # float output of one 3D slab; larger slabs re-run fewer border windows


def context_slices(data_cfg: Any) -> int:
    """data.context_slices of a (possibly older) run config; 0 when the key is absent."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(data_cfg, DictConfig):
        return int(OmegaConf.select(data_cfg, "context_slices", default=0) or 0)
    return int(data_cfg.get("context_slices", 0) or 0)


class VolumePredictor:
    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module],
        data_cfg: Any,
        device: torch.device,
        precision: Precision,
        tta: bool = False,
        overlap: float = 0.25,
        batch_size: int = 4,
        num_classes: int | None = None,
        slab_bytes: int = SLAB_BYTES,
    ) -> None:
        self.models = [m.eval() for m in ([model] if isinstance(model, nn.Module) else model)]
        if not self.models:
            raise ValueError("VolumePredictor needs at least one model")
        self.device, self.precision = device, precision
        self.dims, self.axis = int(data_cfg.dims), int(data_cfg.slice_axis)
        self.patch = list(data_cfg.patch_size) if data_cfg.patch_size else None
        self.k = int(data_cfg.pad_divisible)
        self.context = context_slices(data_cfg)
        self.tta, self.overlap, self.batch_size = tta, overlap, max(1, batch_size)
        self.num_classes, self.slab_bytes = num_classes, slab_bytes
        self.spacing = list(data_cfg.spacing) if data_cfg.get("spacing") else None

    @torch.no_grad()
    def labels(
        self,
        image: torch.Tensor,
        shape: tuple[int, ...],
        threshold: float | None = None,
        affine: Any = None,
    ) -> torch.Tensor:
        """image (C, *spatial) -> class indices (int16, CPU) of `shape`, the grid to predict on.

        `threshold` applies to two-class models (see `to_labels`); None = argmax. `affine`: the 4x4 affine
        of that grid, needed by a model trained with data.spacing (see `probability_slices`).
        """
        out = None
        for t, probs in self.probability_slices(image, shape, affine):
            if out is None:
                out = torch.zeros((slice_count(image, shape, self.axis), *probs.shape[1:]), dtype=torch.int16)
            out[t] = to_labels(probs, threshold).to(torch.int16)
        assert out is not None
        return from_slices(out, image.ndim == 3, self.axis)

    @torch.no_grad()
    def probability_slices(
        self, image: torch.Tensor, shape: tuple[int, ...], affine: Any = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(t, probabilities (K, a, b)) for each target slice t along the slice axis, in order, on the grid
        `shape`; the other spatial axes keep their order (a native 2D image is one slice of shape (W, H)).

        With data.spacing, the image is on Spacingd's grid and `affine` (the target grid's, as the volume
        chain read it) places each target voxel on it (medseg/deploy/spacing_inverse.py)."""
        native_2d = image.ndim == 3
        if native_2d:  # one slice along a new last axis
            image, shape, axis = image[..., None], (*shape, 1), 2
        else:
            axis = self.axis
        transform = self._back_transform(image, shape, affine, native_2d)
        along, in_plane = way_back(image.shape[1:], shape, axis, transform)
        for chunk in self._chunks(image, axis):  # (K, n, a, b) in the model's space
            yield from along.feed(in_plane(chunk))
        assert along.done(), "every target slice is written"

    def _back_transform(self, image: torch.Tensor, shape: tuple[int, ...], affine: Any, native_2d: bool) -> Any:
        """Target voxel -> model-grid coordinate (data.spacing), or None: a resize by shape."""
        if not self.spacing or native_2d:
            return None
        if affine is None:
            raise ValueError("a model trained with data.spacing maps its prediction back with the input's affine")
        from medseg.deploy.spacing_inverse import back_transform

        return back_transform(affine, shape, self.spacing, image.shape[1:])

    def _chunks(self, image: torch.Tensor, axis: int) -> Iterator[torch.Tensor]:
        """Probabilities (K, n, a, b) for consecutive slices along `axis`, cropped of padding."""
        if self.dims == 3 and image.ndim == 4:
            yield from self._slabs_3d(image, axis)
            return
        vol = image.movedim(axis + 1, 1)  # (C, S, a, b)
        count = vol.shape[1]
        for i in range(0, count, self.batch_size):
            x = slab_inputs(vol, range(i, min(count, i + self.batch_size)), self.context)
            yield self._probabilities(x, lambda inp, model: model(inp)).movedim(0, 1)

    def _slabs_3d(self, image: torch.Tensor, axis: int) -> Iterator[torch.Tensor]:
        size = image.shape[1:]
        padded, before = divisible_pad(image[None].to(self.device).float(), self.k)
        if not self.patch:
            probs = self._probabilities(padded, lambda inp, model: model(inp), pad=False)
            yield self._crop(probs, before, size)[0].movedim(axis + 1, 1)
            return
        length, roi = padded.shape[axis + 2], int(self.patch[axis])
        rest = padded[0, 0].numel() // length
        budget = windows_within(self.slab_bytes, self.num_classes or 1, rest, roi, self.overlap)
        lo, hi = before[axis], before[axis] + size[axis]
        for slab in plan_slabs(length, roi, self.overlap, budget):
            keep0, keep1 = max(slab.keep[0], lo), min(slab.keep[1], hi)
            if keep0 >= keep1:  # only padding
                continue
            sub = padded.narrow(axis + 2, slab.read[0], slab.read[1] - slab.read[0])
            probs = self._probabilities(sub, self._sliding_window, pad=False)
            probs = probs.narrow(axis + 2, keep0 - slab.read[0], keep1 - keep0)
            offsets = [0 if d == axis else b for d, b in enumerate(before)]
            sizes = [keep1 - keep0 if d == axis else s for d, s in enumerate(size)]
            yield self._crop(probs, offsets, sizes)[0].movedim(axis + 1, 1)

    def _probabilities(
        self, x: torch.Tensor, forward: Callable[[torch.Tensor, nn.Module], torch.Tensor], pad: bool = True
    ) -> torch.Tensor:
        """Softmax of forward(x, model) (B, C, *spatial), averaged over the models and, with TTA, over flips,
        on the CPU. One running sum holds the probabilities; each model's output is dropped once added.

        With `pad`, x is padded to data.pad_divisible and the result cropped back; 3D slabs are cut
        from an already padded volume and keep the window positions of a whole-volume pass."""
        x = x.to(self.device).float()
        size = x.shape[2:]
        padded, before = divisible_pad(x, self.k) if pad else (x, [0] * len(size))
        flips: list[tuple[int, ...]] = [()]
        if self.tta:
            axes = list(range(2, padded.ndim))
            flips += [c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]
        total = None
        for model, dims in itertools.product(self.models, flips):
            inp = padded.flip(dims) if dims else padded
            with self.precision.autocast(self.device):
                logits = forward(inp, model)
            probs = torch.softmax(logits.float(), dim=1)
            probs = probs.flip(dims) if dims else probs
            total = probs if total is None else total.add_(probs)
            del logits, probs
        assert total is not None
        runs = len(flips) * len(self.models)
        probs = total.div_(runs) if runs > 1 else total
        return self._crop(probs, before, size).cpu()

    def _sliding_window(self, x: torch.Tensor, model: nn.Module) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        assert self.patch is not None
        return sliding_window_inference(x, self.patch, self.batch_size, model, overlap=self.overlap, mode="gaussian")

    @staticmethod
    def _crop(probs: torch.Tensor, before: list[int], size: Any) -> torch.Tensor:
        index = tuple(slice(b, b + s) for b, s in zip(before, size))
        return probs[(slice(None), slice(None), *index)]


def slice_count(image: torch.Tensor, shape: tuple[int, ...], axis: int) -> int:
    """Target slices along the slice axis (1 for a native 2D image)."""
    return 1 if image.ndim == 3 else int(shape[axis])


def from_slices(stack: torch.Tensor, native_2d: bool, axis: int) -> torch.Tensor:
    """A (S, a, b) stack of target slices back to the grid's own axis order ((W, H) for a native 2D image)."""
    if native_2d:
        return stack[0]
    return stack.movedim(0, axis).contiguous()


def slab_inputs(vol: torch.Tensor, slices: range, context: int) -> torch.Tensor:
    """Model inputs (n, C*(2k+1), a, b) for `slices` of vol (C, S, a, b).

    Each slice comes with its k neighbours on either side, edges replicated; channels are ordered
    channel by channel (all 2k+1 slices of channel 0, then of channel 1, ...)."""
    if context == 0:
        return vol[:, slices.start : slices.stop].movedim(1, 0)
    offsets = torch.arange(-context, context + 1)
    index = (torch.as_tensor(list(slices))[:, None] + offsets).clamp(0, vol.shape[1] - 1)  # (n, 2k+1)
    picked = vol[:, index]  # (C, n, 2k+1, a, b)
    n, c = index.shape[0], vol.shape[0]
    return picked.movedim(1, 0).reshape(n, c * (2 * context + 1), *vol.shape[2:])


def divisible_pad(x: torch.Tensor, k: int) -> tuple[torch.Tensor, list[int]]:
    """Zero-pad the spatial axes of x (B, C, *spatial) up to multiples of k, split evenly with the
    extra voxel after (MONAI DivisiblePad's symmetric method, as validation pads); also returns the
    padding before each axis."""
    before, pads = [], []
    for s in x.shape[2:]:
        extra = (-s) % k
        before.append(extra // 2)
    for s, b in zip(reversed(x.shape[2:]), reversed(before)):
        pads += [b, (-s) % k - b]
    if not any(pads):
        return x, before
    return F.pad(x, pads), before


def to_labels(probs: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Argmax for multi-class; for two classes, foreground where its probability exceeds `threshold`."""
    if probs.shape[0] == 2 and threshold is not None:
        return (probs[1] > threshold).to(torch.int64)
    return probs.argmax(0)
