"""mode=plan: the dataset fingerprint and the plan of every configuration for this run's memory budget.

    python run.py mode=plan data=msd data.root=/data/Task04_Hippocampus hardware=24gb [plan.network=resenc_l]

Prints the fingerprint and, per configuration (2d, 3d_fullres), every planned value with the estimated
memory per training step; writes plan.json in the run folder. Train the plan with plan=auto (the default
for data=msd / totalseg); any planned key given on the command line wins.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger("medseg")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        if value and isinstance(value[0], list):
            return " ".join("x".join(str(v) for v in row) for row in value)
        return "x".join(_fmt(v) for v in value) if value else "[]"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def fingerprint_lines(fp: dict[str, Any]) -> list[str]:
    import numpy as np

    spacings = np.asarray(fp["spacings"], dtype=float)
    shapes = np.asarray(fp["shapes"], dtype=float)
    cropped = np.asarray(fp["shapes_after_crop"], dtype=float)
    lines = [
        f"dataset fingerprint: {fp['num_cases']} cases, layout {fp['layout']}, channels {fp['channel_names']}"
        f" (modality {fp['modality']}), {fp['num_classes']} classes",
        f"  spacing (mm)        median {_fmt(np.median(spacings, 0).tolist())}, min {_fmt(spacings.min(0).tolist())},"
        f" max {_fmt(spacings.max(0).tolist())}",
        f"  shape               median {_fmt(np.median(shapes, 0).tolist())}, after crop to non-zero"
        f" {_fmt(np.median(cropped, 0).tolist())} ({fp['median_relative_size_after_cropping']:.2f} of the voxels)",
    ]
    for c, stats in enumerate(fp["foreground_intensity"]):
        lines.append(
            f"  foreground ch {c}     0.5% {stats['percentile_00_5']:.4g}, 99.5% {stats['percentile_99_5']:.4g},"
            f" mean {stats['mean']:.4g}, std {stats['std']:.4g}"
        )
    total = max(1, sum(fp["class_voxels"]))
    share = ", ".join(f"{i}: {v / total:.2%}" for i, v in enumerate(fp["class_voxels"][:12]))
    more = " ..." if len(fp["class_voxels"]) > 12 else ""
    lines.append(f"  class voxels        {share}{more}")
    return lines


def configuration_table(name: str, c: dict[str, Any]) -> list[str]:
    rows = [
        ("target spacing (mm)", c["target_spacing"]),
        ("patch size", c["patch_size"]),
        ("batch size", c["batch_size"]),
        ("stages", c["num_stages"]),
        ("strides per stage", c["strides"]),
        ("kernel sizes per stage", c["kernel_sizes"]),
        ("features per stage", c["features_per_stage"]),
        ("normalisation", "; ".join(_fmt(n) for n in c["normalization"])),
        ("median shape (resampled)", c["median_shape"]),
        ("estimated memory / step (GB)", f"{c['estimated_memory_gb']:.2f} of {c['memory_budget_gb']:g}"),
    ]
    if c.get("slice_axis") is not None:
        rows.insert(1, ("slice axis", c["slice_axis"]))
    width = max(len(k) for k, _ in rows)
    return [f"configuration {name}:"] + [f"  {k.ljust(width)}  {_fmt(v)}" for k, v in rows]


def run_plan(cfg: DictConfig) -> dict[str, Any]:
    from medseg.planning.apply import plan_document, write_plan_json
    from medseg.planning.fingerprint import dataset_fingerprint
    from medseg.runtime import run_dir

    fp = dataset_fingerprint(cfg)
    doc = plan_document(cfg)
    lines = fingerprint_lines(fp)
    lines.append(
        f"plan: {doc['network']} U-Net, memory budget {doc['memory_budget_gb']:g} GB"
        f" ({doc['memory_budget_source']}), axes in medseg's order"
    )
    for name, c in doc["configurations"].items():
        lines += configuration_table(name, c)
    out = run_dir(cfg) / "plan.json"
    write_plan_json(cfg, out)
    lines.append(f"plan.json: {out}  (train it: plan=auto; any key on the command line wins)")
    print("\n".join(lines), flush=True)
    return doc
