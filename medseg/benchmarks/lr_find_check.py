"""Does the lr_find suggestion hold up? On the demo data (or any overrides): run mode=lr_find, then train
the same number of epochs at the default learning rate and at the suggested one, and print both Dice.

    python -m medseg.benchmarks.lr_find_check [--epochs 10] [--lr-find DIR] [override ...]

--lr-find reuses the lr_find.json of an earlier mode=lr_find run instead of running one. On a busy shared
machine add hardware.num_threads=1 (for all runs alike), or the runs crawl.

Each step is a `run.py` process with its run folder under --out (default a temporary folder); the
figure compared is the best val/dice of each training run (history.json). Exit status 1 when the
suggested rate ends below the default one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], folder: Path) -> str:
    cmd = [sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={folder}", "logger=none", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def best_dice(folder: Path) -> float:
    history = json.loads((folder / "history.json").read_text())
    return max(r["val/dice"] for r in history if r.get("val/dice") is not None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="folder for the three runs")
    parser.add_argument("--lr-find", type=Path, default=None, help="a mode=lr_find run folder to reuse")
    parser.add_argument("overrides", nargs="*", help="run.py overrides for all three runs, e.g. data=msd")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="lr_find_check."))
    common = [*args.overrides, f"trainer.max_epochs={args.epochs}", "trainer.progress_bar=false"]

    sweep = args.lr_find
    if sweep is None:
        sweep = out / "lr_find"
        _run(["mode=lr_find", *args.overrides], sweep)
    result = json.loads((sweep / "lr_find.json").read_text())
    suggestion = result["suggestion"]
    if suggestion is None:
        print("lr_find gave no suggestion")
        return 1
    default_log = _run(common, out / "default")
    default_lr = float(re.search(r"lr (\S+) grad_norm", default_log).group(1)) if "lr " in default_log else None
    _run([*common, f"optimizer.lr={suggestion:.3e}"], out / "suggested")
    default, suggested = best_dice(out / "default"), best_dice(out / "suggested")
    print(f"lr_find rule: {result.get('rule')}; loss bottoms out at {result.get('loss_min_lr'):.3e}")
    print(f"default lr (first epoch {default_lr:.2e}): best val/dice {default:.4f} after {args.epochs} epochs")
    print(f"suggested lr {suggestion:.3e}: best val/dice {suggested:.4f} after {args.epochs} epochs")
    print(f"runs in {out}")
    return 0 if suggested >= default else 1


if __name__ == "__main__":
    sys.exit(main())
