"""Does the lr_find suggestion hold up? On the demo data (or any overrides), for each seed: run
mode=lr_find, then train the same number of epochs at the default learning rate and at the suggested one,
and print both Dice.

    python -m medseg.benchmarks.lr_find_check [--epochs 10] [--seeds 42 1 2] [--out DIR] [override ...]

The seed sets the data split, the initial weights and the augmentation, so each seed is a paired
comparison: on the demo data's 2 validation cases, best val/dice moves by about 0.03 between two runs of
the same seed with a different thread count, and by 0.2 between seeds. On a busy shared machine add
hardware.num_threads=1 (for all runs alike), or the runs crawl.

Each step is a `run.py` process with its run folder under --out (default a temporary folder); the
figure compared is the best val/dice of each training run (history.json). Exit status 1 when the
suggested rate's mean over the seeds ends below the default rate's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], folder: Path) -> None:
    cmd = [sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={folder}", "logger=none", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")


def check_seed(seed: int, epochs: int, overrides: list[str], out: Path) -> dict[str, float]:
    """lr_find, then a default-rate and a suggested-rate run, all with this seed."""
    folder = out / f"seed{seed}"
    common = [*overrides, f"seed={seed}", "trainer.progress_bar=false", "report.enabled=false"]
    _run(["mode=lr_find", *common], folder / "lr_find")
    result = json.loads((folder / "lr_find" / "lr_find.json").read_text())
    if result["suggestion"] is None:
        raise SystemExit(f"seed {seed}: lr_find gave no suggestion ({folder / 'lr_find'})")
    train = [*common, f"trainer.max_epochs={epochs}"]
    _run(train, folder / "default")
    _run([*train, f"optimizer.lr={result['suggestion']:.3e}"], folder / "suggested")
    default, suggested = (json.loads((folder / run / "history.json").read_text()) for run in ("default", "suggested"))
    return {
        "seed": seed,
        "default_lr": default[0]["lr"],
        "suggestion": result["suggestion"],
        "floor_lr": result["floor_lr"],
        "default": best_dice(default),
        "suggested": best_dice(suggested),
    }


def best_dice(history: list[dict]) -> float:
    return max(r["val/dice"] for r in history if r.get("val/dice") is not None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs")
    parser.add_argument("overrides", nargs="*", help="run.py overrides for every run, e.g. data=msd")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="lr_find_check."))
    rows = []
    print(f"best val/dice after {args.epochs} epochs; runs in {out}")
    print("seed  default lr  suggested lr  (floor at)  Dice default  Dice suggested  difference")
    for seed in args.seeds:
        r = check_seed(seed, args.epochs, args.overrides, out)
        rows.append(r)
        print(
            f"{seed:>4}  {r['default_lr']:>10.2e}  {r['suggestion']:>12.2e}  ({r['floor_lr']:.2e})"
            f"  {r['default']:>12.4f}  {r['suggested']:>14.4f}  {r['suggested'] - r['default']:>+10.4f}",
            flush=True,
        )
    default = statistics.mean(r["default"] for r in rows)
    suggested = statistics.mean(r["suggested"] for r in rows)
    wins = sum(r["suggested"] >= r["default"] for r in rows)
    print(
        f"mean  default {default:.4f}  suggested {suggested:.4f}  ({suggested - default:+.4f}); "
        f"the suggestion reached the default's Dice on {wins} of {len(rows)} seeds"
    )
    return 0 if suggested >= default else 1


if __name__ == "__main__":
    sys.exit(main())
