"""medseg's planner against nnU-Net v2's own, on four dataset fingerprints, side by side.

    python -m medseg.benchmarks.plan_vs_nnunet [--nnunet-python /work/nnunet-venv/bin/python] [--quick]

nnU-Net is never imported by medseg: its planner runs in its own environment (the `bench` extra's
nnunetv2, installed into a separate venv so the project's torch stays as pinned), in a subprocess, on a
dataset_fingerprint.json + dataset.json written here (no images are needed to plan). The fingerprints:
- ct_totalseg: isotropic 1.5 mm CT shaped like TotalSegmentator (118 classes);
- mri_aniso: prostate-like MRI at about 0.6 x 0.6 x 3.6 mm;
- brain_slabs: thin slabs of brain MRI (1 mm in-plane, a dozen slices, brain mask cropping);
- images_2d: 2D grey images.
For nnU-Net's default 8 GB target (plain U-Net) the checks are: the same target spacing and number of
stages, the patch within one pooling step per axis, the batch within +-1. The residual-encoder presets
M / L / XL are planned at their own targets (8 / 24 / 40 GB) and printed too (--quick: 8 GB only).
Both plans are shown in medseg's axis order (nnU-Net reads a NIfTI reversed and transposes; undone here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_PYTHON = "/work/nnunet-venv/bin/python"
PLANNERS = {  # medseg network -> (nnU-Net planner class, its module, memory target in GB)
    "plain": ("ExperimentPlanner", "nnunetv2.experiment_planning.experiment_planners.default_experiment_planner", 8),
    "resenc_m": (
        "nnUNetPlannerResEncM",
        "nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners",
        8,
    ),
    "resenc_l": (
        "nnUNetPlannerResEncL",
        "nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners",
        24,
    ),
    "resenc_xl": (
        "nnUNetPlannerResEncXL",
        "nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners",
        40,
    ),
}


def _intensity(rng: np.random.Generator, mean: float, std: float) -> dict[str, float]:
    return {
        "mean": mean,
        "std": std,
        "median": mean,
        "min": mean - 5 * std,
        "max": mean + 5 * std,
        "percentile_00_5": mean - 2.6 * std,
        "percentile_99_5": mean + 2.6 * std,
    }


def fingerprints(seed: int = 0) -> dict[str, dict[str, Any]]:
    """The four test fingerprints in medseg's terms (axis order as MONAI reads a NIfTI: x, y, z)."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, Any]] = {}
    n = 200
    shapes = np.stack([rng.integers(230, 330, n), rng.integers(200, 300, n), rng.integers(100, 600, n)], 1)
    out["ct_totalseg"] = {
        "spacings": [[1.5, 1.5, 1.5]] * n,
        "shapes_after_crop": shapes.tolist(),
        "num_cases": n,
        "num_classes": 118,
        "channel_names": ["CT"],
        "foreground_intensity": [_intensity(rng, 60.0, 180.0)],
        "median_relative_size_after_cropping": 0.95,
    }
    n = 60
    inplane = rng.choice([0.55, 0.6, 0.625, 0.65], n)
    slices = rng.choice([3.0, 3.6, 3.6, 3.6, 4.0], n)
    spacings = np.stack([inplane, inplane, slices], 1)
    shapes = np.stack([rng.integers(300, 400, n), rng.integers(300, 400, n), rng.integers(20, 40, n)], 1)
    out["mri_aniso"] = {
        "spacings": spacings.tolist(),
        "shapes_after_crop": shapes.tolist(),
        "num_cases": n,
        "num_classes": 3,
        "channel_names": ["T2"],
        "foreground_intensity": [_intensity(rng, 400.0, 120.0)],
        "median_relative_size_after_cropping": 1.0,
    }
    n = 40
    shapes = np.stack([rng.integers(140, 170, n), rng.integers(170, 200, n), rng.integers(8, 14, n)], 1)
    out["brain_slabs"] = {
        "spacings": [[0.9375, 0.9375, 1.2]] * n,
        "shapes_after_crop": shapes.tolist(),
        "num_cases": n,
        "num_classes": 4,
        "channel_names": ["T1"],
        "foreground_intensity": [_intensity(rng, 300.0, 80.0)],
        "median_relative_size_after_cropping": 0.62,
    }
    n = 120
    shapes = np.stack([rng.integers(400, 700, n), rng.integers(500, 800, n)], 1)
    out["images_2d"] = {
        "spacings": [[1.0, 1.0]] * n,
        "shapes_after_crop": shapes.tolist(),
        "num_cases": n,
        "num_classes": 2,
        "channel_names": ["microscopy"],
        "foreground_intensity": [_intensity(rng, 120.0, 40.0)],
        "median_relative_size_after_cropping": 1.0,
    }
    return out


def nnunet_files(fp: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """dataset_fingerprint.json and dataset.json as nnU-Net would have written them for these data: arrays
    reversed (SimpleITK's z, y, x), a 2D image as a one-slice volume with spacing 999 on that axis."""
    spacings = [list(reversed(s)) for s in fp["spacings"]]
    shapes = [list(reversed(s)) for s in fp["shapes_after_crop"]]
    if len(shapes[0]) == 2:
        spacings = [[999.0, *s] for s in spacings]
        shapes = [[1, *s] for s in shapes]
    fingerprint = {
        "spacings": spacings,
        "shapes_after_crop": shapes,
        "foreground_intensity_properties_per_channel": {str(i): v for i, v in enumerate(fp["foreground_intensity"])},
        "median_relative_size_after_cropping": fp["median_relative_size_after_cropping"],
    }
    ending = ".png" if len(fp["shapes_after_crop"][0]) == 2 else ".nii.gz"
    cases = {
        f"case_{i:04d}": {"images": [f"imagesTr/case_{i:04d}_0000{ending}"], "label": f"labelsTr/case_{i:04d}{ending}"}
        for i in range(fp["num_cases"])
    }
    dataset = {
        "channel_names": {str(i): c for i, c in enumerate(fp["channel_names"])},
        "labels": {"background": 0, **{f"class_{k}": k for k in range(1, fp["num_classes"])}},
        "numTraining": fp["num_cases"],
        "file_ending": ending,
        "overwrite_image_reader_writer": "NaturalImage2DIO" if ending == ".png" else "SimpleITKIO",
        "dataset": cases,
    }
    return fingerprint, dataset


_RUNNER = r"""
import importlib, json, sys
name, module, target, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
cls = getattr(importlib.import_module(module), name)
planner = cls(sys.argv[5], gpu_memory_target_in_gb=target)
plans = planner.plan_experiment()
json.dump(plans, open(out, "w"), default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
"""


def run_nnunet(python: str, fp: dict[str, Any], network: str, work: Path, dataset_id: int) -> dict[str, Any]:
    """nnU-Net's plans for this fingerprint, from its own planner class in its own environment."""
    name = f"Dataset{dataset_id:03d}_Bench"
    raw, pre, res = work / "raw", work / "preprocessed", work / "results"
    fingerprint, dataset = nnunet_files(fp)
    for folder in (raw / name, pre / name, res):
        folder.mkdir(parents=True, exist_ok=True)
    (raw / name / "dataset.json").write_text(json.dumps(dataset))
    (pre / name / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    cls, module, target = PLANNERS[network]
    out = work / f"{name}_{network}.json"
    env = {
        **os.environ,
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(pre),
        "nnUNet_results": str(res),
        "OMP_NUM_THREADS": "1",
        "nnUNet_n_proc_DA": "1",
    }
    proc = subprocess.run(
        [python, "-c", _RUNNER, cls, module, str(target), str(out), name],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nnU-Net's {cls} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def nnunet_in_medseg_order(plans: dict[str, Any], ndim: int) -> dict[str, dict[str, Any]]:
    """nnU-Net's configurations with spacing, patch and strides in medseg's axis order."""
    forward = plans["transpose_forward"]
    to_medseg = [2 - a for a in forward]  # transposed position -> medseg axis (nnU-Net reads reversed)
    out = {}
    for name in ("3d_fullres", "2d"):
        if name not in plans["configurations"]:
            continue
        c = plans["configurations"][name]
        axes = to_medseg if name == "3d_fullres" else to_medseg[1:]
        if ndim == 2:
            axes = [a - 1 for a in axes]  # the one-slice axis was nnU-Net's own
        order = np.argsort(axes)

        def put(values: list[Any], order: Any = order) -> list[Any]:
            return [values[i] for i in order]

        arch = c["architecture"]["arch_kwargs"]
        out[name] = {
            "target_spacing": put([float(s) for s in c["spacing"]]),
            "patch_size": put([int(p) for p in c["patch_size"]]),
            "batch_size": int(c["batch_size"]),
            "num_stages": int(arch["n_stages"]),
            "strides": [put(list(s)) for s in arch["strides"]],
            "features_per_stage": list(arch["features_per_stage"]),
            "normalization": c["normalization_schemes"],
        }
    return out


def medseg_plan(fp: dict[str, Any], network: str, memory_gb: float) -> dict[str, dict[str, Any]]:
    from medseg.planning.planner import make_plan

    plan = make_plan(fp, memory_gb, network=network)
    out = {}
    for name, c in plan["configurations"].items():
        spacing = c["target_spacing"]
        if name == "2d" and len(spacing) == 3:
            spacing = [s for a, s in enumerate(spacing) if a != c["slice_axis"]]
        out[name] = {**c, "target_spacing": spacing, "normalization": [n["scheme"] for n in c["normalization"]]}
    return out


def agreement(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, bool]:
    """The issue's criteria for one configuration."""
    pools = [int(round(np.log2(np.prod([s[a] for s in theirs["strides"]])))) for a in range(len(theirs["patch_size"]))]
    steps = [2**p for p in pools]
    return {
        "spacing": bool(np.allclose(ours["target_spacing"], theirs["target_spacing"], rtol=1e-3)),
        "stages": ours["num_stages"] == theirs["num_stages"],
        "patch": all(abs(o - t) <= s for o, t, s in zip(ours["patch_size"], theirs["patch_size"], steps, strict=True)),
        "batch": abs(ours["batch_size"] - theirs["batch_size"]) <= 1,
    }


def _fmt(values: Any) -> str:
    if isinstance(values, list):
        return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
    return str(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nnunet-python", default=os.environ.get("MEDSEG_NNUNET_PYTHON", DEFAULT_PYTHON))
    parser.add_argument("--quick", action="store_true", help="plain U-Net at 8 GB only (no ResEnc presets)")
    parser.add_argument("--json", default=None, help="also write the comparison here")
    args = parser.parse_args(argv)
    if not Path(args.nnunet_python).is_file():
        print(
            f"nnU-Net's python {args.nnunet_python} not found: python3 -m venv /work/nnunet-venv &&"
            " /work/nnunet-venv/bin/pip install 'medseg[bench]' (or nnunetv2==2.8.1)",
            file=sys.stderr,
        )
        return 2
    networks = ["plain"] if args.quick else list(PLANNERS)
    rows, failures, report = [], 0, []
    with tempfile.TemporaryDirectory(prefix="plan_vs_nnunet_") as tmp:
        for index, (fp_name, fp) in enumerate(fingerprints().items()):
            ndim = len(fp["shapes_after_crop"][0])
            for network in networks:
                target = PLANNERS[network][2]
                nn = nnunet_in_medseg_order(
                    run_nnunet(args.nnunet_python, fp, network, Path(tmp) / fp_name, 900 + index), ndim
                )
                ours = medseg_plan(fp, network, target)
                for config in ("3d_fullres", "2d"):
                    if config not in nn and config not in ours:
                        continue
                    if (config in nn) != (config in ours):
                        rows.append((fp_name, network, config, "only in " + ("nnU-Net" if config in nn else "medseg")))
                        failures += network == "plain"
                        continue
                    checks = agreement(ours[config], nn[config])
                    if network == "plain" and not all(checks.values()):
                        failures += 1
                    report.append(
                        {
                            "fingerprint": fp_name,
                            "network": network,
                            "memory_gb": target,
                            "configuration": config,
                            "medseg": ours[config],
                            "nnunet": nn[config],
                            "agreement": checks,
                        }
                    )
                    for who, c in (("nnU-Net", nn[config]), ("medseg", ours[config])):
                        rows.append(
                            (
                                fp_name,
                                f"{network} {target:g}GB",
                                config,
                                who,
                                _fmt(c["target_spacing"]),
                                _fmt(c["patch_size"]),
                                str(c["batch_size"]),
                                str(c["num_stages"]),
                                _fmt(c["features_per_stage"][-1:]) + " max",
                                "/".join(c["normalization"]),
                            )
                        )
                    rows.append(
                        (
                            "",
                            "",
                            "",
                            "agree",
                            *(("yes" if checks[k] else "NO") for k in ("spacing", "patch", "batch", "stages")),
                            "",
                            "",
                        )
                    )
    header = ("fingerprint", "planner", "config", "who", "spacing", "patch", "batch", "stages", "features", "norm")
    widths = [max(len(str(r[i])) for r in [header, *rows] if len(r) > i) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(v).ljust(widths[i]) for i, v in enumerate(r)))
    print(
        f"\n8 GB plain U-Net: {failures} configuration(s) outside the criteria (spacing and stages equal, patch"
        " within one pooling step per axis, batch within +-1)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
