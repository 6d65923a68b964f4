"""medseg's training loader with augment=nnunet against nnU-Net v2.8.1's own, side by side, one process each.

    python -m medseg.benchmarks.loader_vs_nnunet            # 2D 224^2 batch 32 and 3D 96x128x128 batch 2
    python -m medseg.benchmarks.loader_vs_nnunet --quick    # fewer cases and batches (a smoke run)

The same generated cases are written once into a cache folder in both formats: NIfTI in an MSD
folder (dataset.json, imagesTr, labelsTr) for medseg, nnU-Net's preprocessed numpy layout (<id>.npy,
<id>_seg.npy, <id>.pkl with class_locations) for nnU-Net. Timed:
- medseg: the train loader exactly as training builds it (data=msd, the case store already built,
  data.cache_rate=0 so every patch is read from the store), hardware.num_workers=0, augment=nnunet
  batched and, for comparison, per item (MONAI transforms);
- nnU-Net: nnUNetDataLoader with oversample 0.33, its initial patch size and
  nnUNetTrainer.get_training_transforms (its default augmentation; no deep-supervision target
  down-sampling, which medseg does not do either), run with /work/nnunet-venv's python in a subprocess.
  medseg never imports nnunetv2.
Both run single-threaded per process (--threads) after a warm-up, over the same number of samples.
Printed: samples/s each, the ratio medseg / nnU-Net; the issue's target is >= 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

NNUNET_PYTHON = os.environ.get("NNUNET_PYTHON", "/work/nnunet-venv/bin/python")
CLASSES = 4  # background + three structures

SETTINGS = {  # name: (dims, patch, batch, volume shape (H, W, D) as medseg reads it, cases)
    "2d": (2, [224, 224], 32, [256, 256, 24], 4),
    "3d": (3, [96, 128, 128], 2, [160, 192, 192], 4),
}


def generate_case(shape: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image with smooth background, noise and three touching / thin structures; label 0..3."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    label = np.zeros(shape, dtype=np.int16)
    centre = rng.uniform(-0.3, 0.3, size=3).astype(np.float32)
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
    label[r < 0.35] = 1
    label[(r >= 0.35) & (r < 0.45)] = 2  # a shell touching class 1
    tube = np.sqrt((grids[0] - centre[0] * 0.5) ** 2 + (grids[1] + 0.6) ** 2)
    label[tube < 0.05] = 3  # a thin tube
    image = 0.2 * grids[0] + 0.5 * label + rng.normal(0, 0.3, size=shape).astype(np.float32)
    image = (image - image.mean()) / image.std()
    return image.astype(np.float32), label


def write_data(cache: Path, name: str, quick: bool) -> tuple[Path, Path]:
    """The cases of setting `name`, once, as an MSD folder and as nnU-Net preprocessed numpy files."""
    import pickle

    import nibabel as nib

    dims, patch, batch, shape, cases = SETTINGS[name]
    tag = f"{name}_{'x'.join(map(str, shape))}_{cases}"
    msd, nn = cache / tag / "msd", cache / tag / "nnunet"
    done = cache / tag / "done"
    if done.is_file():
        return msd, nn
    for d in (msd / "imagesTr", msd / "labelsTr", nn):
        d.mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(cases):
        image, label = generate_case(shape, seed=i)
        cid = f"case_{i:03d}"
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(msd / "imagesTr" / f"{cid}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(msd / "labelsTr" / f"{cid}.nii.gz"))
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
        # nnU-Net: (C, Z, Y, X) with Z the slice axis (medseg slices along its last axis)
        data = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
        seg = np.ascontiguousarray(label.transpose(2, 0, 1)[None])
        np.save(nn / f"{cid}.npy", data)
        np.save(nn / f"{cid}_seg.npy", seg)
        np.savez(nn / f"{cid}.npz", data=data, seg=seg)  # nnU-Net lists cases by their .npz
        locations = {}
        rng = np.random.default_rng(i)
        for c in range(1, CLASSES):
            where = np.argwhere(seg == c)
            if len(where) > 10_000:  # nnU-Net keeps at most 10,000 per class
                where = where[rng.choice(len(where), 10_000, replace=False)]
            locations[c] = where
        with open(nn / f"{cid}.pkl", "wb") as f:
            pickle.dump({"class_locations": locations}, f)
    labels = {str(c): n for c, n in enumerate(["background", "core", "shell", "tube"])}
    (msd / "dataset.json").write_text(json.dumps({"training": training, "labels": labels}))
    done.write_text("ok")
    return msd, nn


def medseg_rate(
    root: Path, name: str, batched: bool, batches: int, warmup: int, threads: int, cache_dir: Path
) -> dict[str, Any]:
    import torch

    from medseg.benchmarks.data_loading import compose
    from medseg.data.datamodule import build_data

    dims, patch, batch, _, _ = SETTINGS[name]
    overrides = [
        "data=msd",
        f"data.root={root}",
        f"data.dims={dims}",
        f"data.patch_size=[{','.join(map(str, patch))}]",
        f"data.batch_size={batch}",
        "data.samples_per_volume=1",  # 3D: one patch per case in a batch, as nnU-Net draws them
        "augment=nnunet",
        f"data.augment.batched={str(batched).lower()}",
        "data.augment.device=cpu",
        "data.fg_oversample=0.33",
        "data.cache_rate=0",
        "data.val_percent=25",
        "hardware.num_workers=0",
        f"paths.cache_dir={cache_dir}",
        "trainer.progress_bar=false",
    ]
    cfg = compose(overrides)
    torch.set_num_threads(threads)
    loader = build_data(cfg).train_loader
    loader.sampler.set_epoch(0)

    def batches_forever() -> Any:
        epoch = 0
        while True:
            loader.sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    it = batches_forever()
    for _ in range(warmup):
        next(it)
    n, started = 0, time.perf_counter()
    for _ in range(batches):
        n += int(next(it)["image"].shape[0])
    seconds = time.perf_counter() - started
    return {"samples": n, "seconds": seconds, "samples_per_s": n / seconds}


NNUNET_SCRIPT = r"""
import json, sys, time
import numpy as np, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import LabelManager
import nnunetv2
patch = tuple(args["patch"])
if len(patch) == 2:  # nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size
    deg = 15.0 if max(patch) / min(patch) > 1.5 else 180.0
    mirror = (0, 1)
else:
    deg = 30.0
    mirror = (0, 1, 2)
rot = (-deg / 360 * 2 * np.pi, deg / 360 * 2 * np.pi)
initial = get_patch_size(patch, rot, rot, rot, (0.85, 1.25))
transforms = nnUNetTrainer.get_training_transforms(patch, rot, None, mirror, False)
labels = LabelManager({"background": 0, "core": 1, "shell": 2, "tube": 3}, regions_class_order=None)
ds = nnUNetDatasetNumpy(args["folder"])
dl = nnUNetDataLoader(ds, args["batch"], initial, patch, labels, 0.33, None, None, transforms=transforms)
for _ in range(args["warmup"]):
    next(dl)
n, t = 0, time.perf_counter()
for _ in range(args["batches"]):
    n += next(dl)["data"].shape[0]
dt = time.perf_counter() - t
print(json.dumps({"samples": n, "seconds": dt, "samples_per_s": n / dt, "initial_patch": [int(v) for v in initial],
                  "version": getattr(nnunetv2, "__version__", "2.8.1"), "torch": torch.__version__}))
"""


def nnunet_rate(folder: Path, name: str, batches: int, warmup: int, threads: int) -> dict[str, Any]:
    dims, patch, batch, _, _ = SETTINGS[name]
    args = {"folder": str(folder), "patch": patch, "batch": batch, "batches": batches, "warmup": warmup}
    args["threads"] = threads
    env = {**os.environ, "nnUNet_raw": str(folder), "nnUNet_preprocessed": str(folder), "nnUNet_results": str(folder)}
    env["OMP_NUM_THREADS"] = str(threads)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [NNUNET_PYTHON, "-c", NNUNET_SCRIPT, json.dumps(args)], capture_output=True, text=True, env=env, timeout=3600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nnU-Net's loader failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_loaders(
    settings: tuple[str, ...] = ("2d", "3d"),
    batches: dict[str, int] | None = None,
    warmup: int = 2,
    threads: int = 1,
    cache: str | Path | None = None,
    per_item: bool = True,
    quick: bool = False,
    repeats: int = 1,
) -> dict[str, dict[str, Any]]:
    """Samples/s of medseg's loader (augment=nnunet, batched and per item) and nnU-Net's, per setting.

    With `repeats` > 1 the loaders take turns (nnU-Net, medseg batched, medseg per item, again ...) and the
    medians are reported, so that a shared machine's changing load falls on all of them.
    Returns {setting: {"medseg_batched": {...}, "medseg_per_item": {...}, "nnunet": {...}, "ratio": float}}
    where ratio = medseg batched / nnU-Net samples per second (medians).
    """
    cache_dir = Path(cache or os.environ.get("MEDSEG_CACHE", "~/.cache/medseg")).expanduser() / "loader_vs_nnunet"
    batches = batches or {"2d": 4 if quick else 20, "3d": 4 if quick else 10}
    results: dict[str, dict[str, Any]] = {}
    for name in settings:
        msd, nn = write_data(cache_dir, name, quick)
        runs: dict[str, list[dict[str, Any]]] = {"nnunet": [], "medseg_batched": [], "medseg_per_item": []}
        for _ in range(max(1, repeats)):
            runs["nnunet"].append(nnunet_rate(nn, name, batches[name], warmup, threads))
            runs["medseg_batched"].append(medseg_rate(msd, name, True, batches[name], warmup, threads, cache_dir))
            if per_item:
                runs["medseg_per_item"].append(medseg_rate(msd, name, False, batches[name], warmup, threads, cache_dir))
        row: dict[str, Any] = {key: _median(values) for key, values in runs.items() if values}
        row["ratio"] = row["medseg_batched"]["samples_per_s"] / row["nnunet"]["samples_per_s"]
        results[name] = row
        print(format_row(name, row), flush=True)
    return results


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = sorted(r["samples_per_s"] for r in runs)
    return {**runs[0], "samples_per_s": float(np.median(rates)), "all_samples_per_s": rates}


def format_row(name: str, row: dict[str, Any]) -> str:
    dims, patch, batch, _, _ = SETTINGS[name]
    parts = [f"{name} patch {'x'.join(map(str, patch))} batch {batch}:"]
    parts.append(f"nnU-Net {row['nnunet']['samples_per_s']:.2f}")
    parts.append(f"medseg batched {row['medseg_batched']['samples_per_s']:.2f}")
    if "medseg_per_item" in row:
        parts.append(f"medseg per item (MONAI) {row['medseg_per_item']['samples_per_s']:.2f}")
    parts.append(f"samples/s (medians of {len(row['nnunet']['all_samples_per_s'])});")
    parts.append(f"medseg batched / nnU-Net = {row['ratio']:.2f}x (target >= 2)")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 timed batches per setting")
    parser.add_argument("--settings", default="2d,3d", help="comma-separated: 2d, 3d")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (both loaders)")
    parser.add_argument("--no-per-item", action="store_true", help="skip medseg's per-item MONAI chain")
    parser.add_argument("--cache", default=None, help="folder for the generated data (default $MEDSEG_CACHE)")
    parser.add_argument("--repeats", type=int, default=None, help="turns per loader, medians (default 3; quick 1)")
    args = parser.parse_args(argv)
    compare_loaders(
        tuple(s for s in args.settings.split(",") if s),
        threads=args.threads,
        cache=args.cache,
        per_item=not args.no_per_item,
        quick=args.quick,
        repeats=args.repeats or (1 if args.quick else 3),
    )


if __name__ == "__main__":
    sys.exit(main())
