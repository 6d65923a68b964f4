"""Today's default training against the nnU-Net-style recipe, for the same number of optimizer steps.

    python -m medseg.benchmarks.plan_quality             # 600 steps per configuration
    python -m medseg.benchmarks.plan_quality --quick     # 60 steps, smaller data (a smoke run)
    python -m medseg.benchmarks.plan_quality --steps 2000 --configs default,recipe_2d

The data are generated once into a cache folder (an MSD folder: dataset.json, imagesTr, labelsTr) and
are harder than the demo's ellipsoids: a thin curved tube (a vessel), two structures that touch along a
curved boundary, a smooth multiplicative intensity inhomogeneity (bias field) and noise, per case a new
geometry. Configurations (each an ordinary set of overrides, printed):
- default:   today's defaults (2D U-Net 16-128 on whole slices, Adam + cosine, flips, Dice + CE);
- recipe_2d: recipe=nnunet (SGD 0.99 + poly, nnU-Net's augmentation batched, 1/3 foreground patches,
             deep supervision, mirroring at test time) with model=dynunet on 2D patches;
- recipe_3d: the same recipe with a 3D DynUNet on 3D patches (Gaussian sliding-window validation);
- planned_2d, planned_3d: plan=auto on top of recipe=nnunet, data.dims=2 / 3: the planner's batch, patch,
             spacing, network (plain U-Net, nnU-Net's topology) and normalisation for an 8 GB budget.
Every configuration takes `--steps` optimizer steps (epochs x batches per epoch, accumulation 1) and is
scored as training validates: per-case Dice on the same held-out cases, per class. Printed: Dice per
class, the mean, and the wall time of the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

CLASS_NAMES = ["background", "vessel", "organ_a", "organ_b"]


def generate_case(shape: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One case (H, W, D): a thin curved tube, two touching structures, a bias field and noise."""
    rng = np.random.default_rng(seed)
    h, w, d = shape
    y, x, z = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    label = np.zeros(shape, dtype=np.int16)
    # two structures that touch: an ellipsoid cut by a curved (sinusoidal) boundary into A and B
    cy, cx, cz = rng.uniform(-0.2, 0.2, 3)
    ay, ax, az = rng.uniform(0.35, 0.55, 3)
    inside = ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2 + ((z - cz) / az) ** 2 < 1
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(2, 4)
    boundary = cx + 0.12 * np.sin(freq * np.pi * y + phase)
    label[inside & (x < boundary)] = 2
    label[inside & (x >= boundary)] = 3
    # a thin curved tube (radius ~1.5 voxels in-plane) winding through the volume along z
    t = z
    ty = 0.6 * np.cos(np.pi * t * rng.uniform(0.8, 1.4) + rng.uniform(0, 2 * np.pi))
    tx = 0.6 * np.sin(np.pi * t * rng.uniform(0.8, 1.4) + rng.uniform(0, 2 * np.pi))
    radius = 1.6 * 2.0 / min(h, w)
    label[np.sqrt((y - ty) ** 2 + (x - tx) ** 2) < radius] = 1
    # intensities: classes close in value, B darker than A only slightly, vessel bright
    means = np.array([0.0, 1.0, 0.55, 0.4], dtype=np.float32)
    image = means[label]
    bias = np.exp(0.4 * (rng.uniform(-1, 1) * y + rng.uniform(-1, 1) * x + rng.uniform(-0.5, 0.5) * z))
    image = image * bias + 0.2 * bias
    image = image + rng.normal(0, 0.12, size=shape).astype(np.float32)
    return image.astype(np.float32), label


def write_data(cache: Path, shape: list[int], cases: int) -> Path:
    import nibabel as nib

    root = cache / f"plan_quality_{'x'.join(map(str, shape))}_{cases}"
    if (root / "dataset.json").is_file():
        return root
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(cases):
        image, label = generate_case(shape, seed=1000 + i)
        cid = f"case_{i:03d}"
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / f"{cid}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / f"{cid}.nii.gz"))
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    labels = {str(i): n for i, n in enumerate(CLASS_NAMES)}
    tmp = root / ".dataset.json.tmp"
    tmp.write_text(json.dumps({"training": training, "labels": labels}))
    tmp.rename(root / "dataset.json")
    return root


def configurations(shape: list[int], quick: bool) -> dict[str, list[str]]:
    """name -> the overrides of that configuration (batch and steps per epoch come from its own loader)."""
    h, w, d = shape
    p2 = [min(h, 48 if quick else 64), min(w, 48 if quick else 64)]
    p3 = [min(h, 32 if quick else 48), min(w, 32 if quick else 48), 16 if d < 32 else 32]
    recipe = ["recipe=nnunet", "model=dynunet", "model.filters=[16,32,64,128]", "model.deep_supervision=true"]
    return {
        "default": ["data.batch_size=8"],
        "recipe_2d": [*recipe, "model.deep_supr_num=2", f"data.patch_size=[{p2[0]},{p2[1]}]", "data.batch_size=8"],
        "recipe_3d": [
            *recipe,
            "model.deep_supr_num=2",
            "data.dims=3",
            f"data.patch_size=[{p3[0]},{p3[1]},{p3[2]}]",
            "data.batch_size=2",
            "data.samples_per_volume=1",
        ],
        # the planner's values on top of the recipe: batch, patch, spacing, network and normalisation planned
        "planned_2d": ["recipe=nnunet", "plan=auto", "data.dims=2"],
        "planned_3d": ["recipe=nnunet", "plan=auto", "data.dims=3", "data.samples_per_volume=1"],
    }


def epochs_for(steps: int, per_epoch: int) -> tuple[int, int]:
    """(epochs, batches per epoch) giving exactly `steps` optimizer steps with at most `per_epoch` batches an
    epoch (accumulation 1): the fewest epochs that divide `steps`."""
    epochs = max(1, math.ceil(steps / max(1, per_epoch)))
    while steps % epochs:
        epochs += 1
    return epochs, steps // epochs


def batches_per_epoch(overrides: list[str]) -> tuple[int, int]:
    """(batch size, micro-batches per epoch) of a configuration, from its train loader as a run builds it
    (for plan=auto the plan decides both: the batch size, and in 2D the slices of the planned slice axis)."""
    from medseg.benchmarks.data_loading import compose
    from medseg.data.datamodule import build_data

    cfg = compose(overrides)
    return int(cfg.data.batch_size), len(build_data(cfg).train_loader)


def run_configuration(
    name: str, spec: list[str], root: Path, steps: int, out_dir: Path, cache_dir: Path
) -> dict[str, Any]:
    from medseg.benchmarks.data_loading import compose
    from medseg.tasks.train import run_train

    val_percent = 25.0
    base = [
        "data=msd",
        f"data.root={root}",
        f"data.val_percent={val_percent}",
        "data.intensity.preset=zscore",
        "trainer.accumulate_grad_batches=1",
        "trainer.progress_bar=false",
        "trainer.log_images_every_n_epochs=0",
        "report.enabled=false",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={out_dir / name}",
        "hardware.num_workers=0",
    ]
    overrides = [*base, *spec]
    batch, per_epoch = batches_per_epoch(overrides)
    epochs, per_epoch = epochs_for(steps, per_epoch)
    overrides += [f"trainer.max_epochs={epochs}", f"trainer.limit_train_batches={per_epoch}"]
    overrides += [f"trainer.val_every_n_epochs={epochs}"]  # validate once, at the end
    cfg = compose(overrides)
    started = time.perf_counter()
    run_train(cfg)
    seconds = time.perf_counter() - started
    history = json.loads((out_dir / name / "history.json").read_text())
    record = (history if isinstance(history, list) else history["epochs"])[-1]
    dice = {c: record.get(f"val/dice/{c}") for c in CLASS_NAMES[1:]}
    return {
        "overrides": spec,
        "batch": batch,
        "steps": record.get("step"),
        "dice": dice,
        "mean_dice": record.get("val/dice"),
        "seconds": seconds,
    }


def compare(
    steps: int = 600,
    quick: bool = False,
    names: tuple[str, ...] | None = None,
    cache: str | Path | None = None,
    output: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    cache_dir = Path(cache or os.environ.get("MEDSEG_CACHE", "~/.cache/medseg")).expanduser()
    shape = [64, 64, 24] if quick else [96, 96, 48]
    cases = 8 if quick else 16
    root = write_data(cache_dir / "benchmarks", shape, cases)
    out_dir = Path(output or cache_dir / "plan_quality_runs" / time.strftime("%Y%m%d_%H%M%S"))
    specs = configurations(shape, quick)
    results = {}
    for name in names or tuple(specs):
        if name not in specs:
            raise SystemExit(f"unknown configuration {name!r}; choose from {sorted(specs)}")
        results[name] = run_configuration(name, specs[name], root, steps, out_dir, cache_dir)
        print(format_row(name, results[name]), flush=True)
    return results


def format_row(name: str, r: dict[str, Any]) -> str:
    dice = " ".join(f"{c} {_fmt(v)}" for c, v in r["dice"].items())
    return (
        f"{name:10s} steps {r['steps']} batch {r['batch']}: Dice {dice} | mean {_fmt(r['mean_dice'])}"
        f" | {r['seconds']:.0f} s"
        f"   [{' '.join(r['overrides'])}]"
    )


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 steps on smaller data")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per configuration")
    names = "default,recipe_2d,recipe_3d,planned_2d,planned_3d"
    parser.add_argument("--configs", default="", help=f"comma-separated subset: {names}")
    parser.add_argument("--cache", default=None)
    args = parser.parse_args(argv)
    steps = args.steps or (60 if args.quick else 600)
    names = tuple(n for n in args.configs.split(",") if n) or None
    compare(steps, args.quick, names, args.cache)


if __name__ == "__main__":
    main()
