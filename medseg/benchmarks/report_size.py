"""Size of report.html and the time to write it, for a long run with many classes.

    python -m medseg.benchmarks.report_size [--epochs 50 --classes 118 --cases 50 --folder DIR]

Builds a run folder the way training and evaluate leave it: history.json (one record per epoch with
every per-class Dice and IoU), label_map.json, the composed config, metrics.csv and summary.json from
evaluate (every case x class) and three overlay figures of 3 CT-like 512 px slices each. Then writes the
report (run report of the evaluate folder, which carries everything) and prints its size and time.
"""

from __future__ import annotations

import argparse
import csv
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_run(folder: Path, epochs: int, classes: int, cases: int) -> Path:
    """A training run folder and an evaluate folder beside it; returns the evaluate folder."""
    from omegaconf import OmegaConf

    from medseg.engine.image_panels import labelled_figure, save_png
    from medseg.io_utils import write_json, write_text
    from medseg.report.overlays import FOLDER

    rng = np.random.default_rng(0)
    names = ["background"] + [f"structure_{i:03d}" for i in range(1, classes)]
    run, ev = folder / "run", folder / "eval"
    history = []
    for e in range(1, epochs + 1):
        level = 1 - 0.8 * np.exp(-e / 10)
        record: dict[str, Any] = {
            "epoch": e,
            "step": e * 100,
            "lr": 1e-3 * 0.5 * (1 + np.cos(np.pi * e / epochs)),
            "train/loss": 1.5 * (1 - level) + 0.1,
            "val/loss": 1.6 * (1 - level) + 0.15,
            "train/dice": level,
            "val/dice": level - 0.05,
            "val/dice_pooled": level - 0.03,
            "train/grad_norm": float(rng.uniform(0.5, 2)),
            "train/samples_per_s": 120.0,
            "time/epoch_s": 60.0,
        }
        for n in names:
            record[f"val/dice/{n}"] = float(np.clip(level + rng.normal(0, 0.1), 0, 1))
            record[f"val/iou/{n}"] = record[f"val/dice/{n}"] * 0.8
        record["best/val/dice"] = max(r["val/dice"] for r in [*history, record])
        history.append(record)
    write_json(run / "history.json", history)
    write_json(run / "label_map.json", {str(i): n for i, n in enumerate(names)})
    cfg = {"mode": "train", "data": {"layout": "totalseg", "spacing": [1.5, 1.5, 1.5], "slice_axis": 2}}
    cfg["trainer"] = {"monitor": "val/dice", "monitor_mode": "max", "precision": "bf16-mixed"}
    write_text(run / ".hydra" / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(cfg)))
    write_json(
        run / "run_facts.json",
        {
            "dataset": {"train_cases": 960, "val_cases": cases, "num_classes": classes, "dims": 3, "in_channels": 1},
            "model": {"architecture": "UNet", "params_total": 31_000_000},
            "device": "cuda:0",
            "precision": "bf16-mixed",
        },
    )
    overlays = []
    for role in ("best", "median", "worst"):
        rows = []
        for _ in range(3):
            rows.append(_phantom_slice(rng, classes))
        file = f"{role}_case.png"
        save_png(run / FOLDER / file, labelled_figure(rows, ["slice"] * 3, names, f"{role} case"))
        overlays.append({"role": role, "case": f"case_{role}", "dice": 0.5, "file": file, "slices": [10, 20, 30]})
    write_json(run / FOLDER / "overlays.json", {"scored_cases": 16, "overlays": overlays})

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["case", "class", "dice", "iou", "hd95"])
    writer.writeheader()
    per_class: dict[str, dict[str, float]] = {}
    for c in range(cases):
        for n in names[1:]:
            d = float(rng.uniform(0.3, 1.0))
            writer.writerow(
                {"case": f"s{c:04d}", "class": n, "dice": d, "iou": d * 0.8, "hd95": float(rng.uniform(1, 30))}
            )
    for n in names[1:]:
        per_class[n] = {"dice": 0.7, "iou": 0.56, "hd95": 9.0}
    write_text(ev / "metrics.csv", buf.getvalue())
    write_json(
        ev / "summary.json", {"source": "validation split", "cases": cases, "mean_dice": 0.7, "per_class": per_class}
    )
    mode_cfg = {"mode": "evaluate", "ckpt": str(run / "checkpoints" / "best.pt")}
    write_text(ev / ".hydra" / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(mode_cfg)))
    return ev


def _phantom_slice(rng: np.random.Generator, classes: int, size: int = 512) -> tuple[np.ndarray, ...]:
    """A CT-like 512 px slice: smooth tissue with scanner noise, 12 elliptic structures, a prediction that
    misses some of each structure's rim."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = 0.3 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.08) + rng.normal(0, 0.03, (size, size))
    truth = np.zeros((size, size), dtype=np.int64)
    for label in rng.choice(np.arange(1, classes), size=12, replace=False):
        cx, cy, rx, ry = (
            rng.uniform(0.25, 0.75),
            rng.uniform(0.25, 0.75),
            rng.uniform(0.03, 0.1),
            rng.uniform(0.03, 0.1),
        )
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        truth[inside] = label
        image[inside] += rng.uniform(0.2, 0.6)
    shrunk = np.roll(truth, 3, axis=0)
    pred = np.where(shrunk == truth, truth, 0)
    return image.astype(np.float32), truth, pred


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--classes", type=int, default=118, help="classes including background")
    parser.add_argument("--cases", type=int, default=50, help="evaluated cases (metrics.csv rows = cases x classes)")
    parser.add_argument("--folder", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    args = parser.parse_args(argv)

    from medseg.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        ev = make_run(folder, args.epochs, args.classes, args.cases)
        start = time.perf_counter()
        path = write_report(ev)
        seconds = time.perf_counter() - start
        size = path.stat().st_size
    result = {"epochs": args.epochs, "classes": args.classes, "cases": args.cases, "mb": size / 1e6, "seconds": seconds}
    print(
        f"report.html for {args.epochs} epochs, {args.classes} classes, {args.cases} evaluated cases: "
        f"{size / 1e6:.2f} MB written in {seconds:.2f} s (imports included)"
    )
    return result


if __name__ == "__main__":
    main()
