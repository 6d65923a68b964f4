"""Training at the scale of TotalSegmentator: preprocessing, memory, start-up, loader speed, evaluate memory.

    python -m medseg.benchmarks.scale --subjects 4 16 64
    python -m medseg.benchmarks.scale --subjects 2 3 --shape 48 48 32 --structures 5 --steps 3   # a quick check

Generates TotalSegmentator-shaped subjects once into a cache folder (default 224x224x160 at 1.5 mm,
`ct.nii.gz` int16 + 117 binary masks `segmentations/<structure>.nii.gz`; a handful of distinct subjects,
copied with fresh mtimes up to the largest N) and reuses them across runs. For each N it prints:

- preprocessing: `run.py mode=preprocess` in a subprocess (data.store.workers=2); seconds per subject
  from the build's own timer, and the store's size on disk beside the raw .nii.gz files;
- training memory: a `run.py mode=train` subprocess (0 loader workers, so the figure is the training
  process itself) polled every 0.1 s: peak RSS and peak USS (private memory; RSS also counts the
  memory-mapped store's shared file pages);
- start to the first optimizer step with a ready store: the same subprocess, wall time from its process
  start to the end of the first `optimizer.step()` (a global optimizer step hook writes it);
- loader samples/s in this process, training transforms on, 0 and 2 workers, for 2D slices and 96^3
  3D patches, beside model-step samples/s of the same batch;
- evaluate: a `run.py mode=evaluate` subprocess on the trained checkpoint for one subject (all classes),
  peak RSS and USS (run once, for the largest N, unless --evaluate-each).

Each figure is printed with the target from issue 12 beside it. Timings mean something only on a quiet
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DISTINCT = 8  # distinct generated subjects; the rest are copies with fresh mtimes
SPACING = 1.5


def synthetic_subject(shape: tuple[int, int, int], n_structures: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume (HU) and a uint8 label map of `n_structures` ellipsoids of varied size.

    Body ellipse of soft tissue (40 HU) in air (-1000 HU), two lungs (-850 HU), Gaussian noise (sd 20 HU)
    as in a real scan; structure k is an ellipsoid with its own HU offset. A few structures are large
    (organ-sized), most are small (vessels, glands, vertebrae), as in TotalSegmentator.
    """
    rng = np.random.default_rng(seed)
    h, w, d = shape
    zz = np.arange(d)[None, None, :]
    yy = np.arange(w)[None, :, None]
    xx = np.arange(h)[:, None, None]
    body = ((xx - h / 2) / (0.45 * h)) ** 2 + ((yy - w / 2) / (0.35 * w)) ** 2 <= 1
    hu = np.where(body, 40, -1000).astype(np.float32)
    hu = np.broadcast_to(hu, shape).copy()
    for side in (-1, 1):
        lung = ((xx - h / 2 - side * 0.2 * h) / (0.15 * h)) ** 2 + ((yy - w / 2) / (0.2 * w)) ** 2 + (
            (zz - 0.7 * d) / (0.25 * d)
        ) ** 2 <= 1
        hu[lung] = -850
    label = np.zeros(shape, dtype=np.uint8)
    for k in range(1, n_structures + 1):
        large = rng.random() < 0.12
        radii = rng.uniform(0.08, 0.2, 3) * np.array(shape) if large else rng.uniform(2, 9, 3)
        centre = rng.uniform(0.25, 0.75, 3) * np.array(shape)
        lo = np.maximum(0, np.floor(centre - radii).astype(int))
        hi = np.minimum(shape, np.ceil(centre + radii + 1).astype(int))
        gx, gy, gz = (np.arange(lo[i], hi[i]) for i in range(3))
        inside = (
            ((gx[:, None, None] - centre[0]) / radii[0]) ** 2
            + ((gy[None, :, None] - centre[1]) / radii[1]) ** 2
            + ((gz[None, None, :] - centre[2]) / radii[2]) ** 2
        ) <= 1
        box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        label[box][inside] = k
        hu[box][inside] = float(rng.uniform(-100, 400) if rng.random() < 0.8 else rng.uniform(500, 1200))
    hu += rng.normal(0, 20, shape).astype(np.float32)
    return np.clip(hu, -1024, 3071).astype(np.int16), label


def generate(cache: Path, n: int, shape: tuple[int, int, int], structures: int) -> Path:
    """src/ with n subject folders (reused across runs); returns src/."""
    import nibabel as nib

    src = cache / "src"
    src.mkdir(parents=True, exist_ok=True)
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    names = [f"structure_{k:03d}" for k in range(1, structures + 1)]
    for i in range(n):
        subject = src / f"s{i:04d}"
        if (subject / "done").is_file():
            continue
        tmp = src / f".tmp-s{i:04d}"
        shutil.rmtree(tmp, ignore_errors=True)
        if i < DISTINCT:
            hu, label = synthetic_subject(shape, structures, seed=i)
            (tmp / "segmentations").mkdir(parents=True)
            nib.save(nib.Nifti1Image(hu, affine), str(tmp / "ct.nii.gz"))
            for k, name in enumerate(names, start=1):
                mask = (label == k).astype(np.uint8)
                nib.save(nib.Nifti1Image(mask, affine), str(tmp / "segmentations" / f"{name}.nii.gz"))
        else:
            shutil.copytree(src / f"s{i % DISTINCT:04d}", tmp, copy_function=shutil.copyfile)  # fresh mtimes
            (tmp / "done").unlink()
        (tmp / "done").write_text("")
        tmp.rename(subject)
    return src


def dataset_root(cache: Path, src: Path, n: int) -> Path:
    """data-<n>/ with links to the first n subjects (a separate data source, so a separate store)."""
    root = cache / f"data-{n}"
    root.mkdir(exist_ok=True)
    for i in range(n):
        link = root / f"s{i:04d}"
        if not link.exists():
            link.symlink_to(src / f"s{i:04d}", target_is_directory=True)
    return root


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class PeakMemory:
    """Peak RSS and USS of a process, polled in a thread (USS: private pages, from /proc/<pid>/smaps)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        import psutil

        self.proc, self.interval = psutil.Process(pid), interval
        self.rss = self.uss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                info = self.proc.memory_full_info()
                self.rss, self.uss = max(self.rss, info.rss), max(self.uss, info.uss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return
            time.sleep(self.interval)

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        return self.rss / 1e6, self.uss / 1e6


def run_tracked(cmd: list[str], env: dict, cwd: Path, timeout: int) -> tuple[subprocess.CompletedProcess, float, float]:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = PeakMemory(proc.pid)
    out, _ = proc.communicate(timeout=timeout)
    rss, uss = peak.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{out[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, ""), rss, uss


def first_step_child(marker: str, argv: list[str]) -> None:
    """Run run.py with `argv`; write the seconds from process start to the first optimizer step to `marker`."""
    import runpy

    import psutil
    from torch.optim.optimizer import register_optimizer_step_post_hook

    start = psutil.Process().create_time()
    done = {"yes": False}

    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        if not done["yes"]:
            done["yes"] = True
            Path(marker).write_text(json.dumps({"first_step_s": time.time() - start}))

    register_optimizer_step_post_hook(hook)
    sys.argv = [str(ROOT / "run.py"), *argv]
    runpy.run_path(str(ROOT / "run.py"), run_name="__main__")


def common(root: Path, cache: Path) -> list[str]:
    return [
        "data=totalseg",
        f"data.root={root}",
        f"paths.cache_dir={cache / 'medseg'}",
        "logger=none",
        "print_config=false",
        "trainer.progress_bar=false",
    ]


def loader_rate(loader: Any, steps: int, warmup: int = 2) -> float:
    """Samples/s over `steps` batches after `warmup` untimed ones (epochs restart as needed)."""

    def batches() -> Any:
        while True:
            yield from loader

    it = batches()
    for _ in range(warmup):
        next(it)
    n, started = 0, time.perf_counter()
    for _ in range(steps):
        n += int(next(it)["image"].shape[0])
    return n / (time.perf_counter() - started)


def loader_figures(overrides: list[str], steps: int, patch: list[int]) -> dict[str, float]:
    from medseg.benchmarks.data_loading import compose, model_rate
    from medseg.data.datamodule import build_data
    from medseg.runtime import seed_everything

    out: dict[str, float] = {}
    settings = {
        "2d": ["data.dims=2", "data.batch_size=8"],
        "3d": ["data.dims=3", f"data.patch_size=[{','.join(map(str, patch))}]", "data.samples_per_volume=2"]
        + ["data.batch_size=1"],
    }
    for kind, extra in settings.items():
        for workers in (0, 2):
            persistent = f"hardware.persistent_workers={workers > 0}"  # worker start-up is not loading
            cfg = compose([*overrides, *extra, f"hardware.num_workers={workers}", persistent])
            seed_everything(int(cfg.seed))
            data = build_data(cfg)
            out[f"{kind}_w{workers}"] = loader_rate(data.train_loader, steps)
            if workers == 0:
                batch = next(iter(data.train_loader))
                out[f"{kind}_model"], _ = model_rate(cfg, data.info, batch, max(1, steps // 4), 1)
            del data
    return out


def bench_n(n: int, root: Path, cache: Path, args: argparse.Namespace, evaluate: bool) -> dict[str, Any]:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])  # this medseg
    env.pop("HYDRA_FULL_ERROR", None)
    work = cache / "runs" / f"n{n}-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    base = common(root, cache)
    row: dict[str, Any] = {"N": n}

    # 1. preprocessing into the store
    cmd = [sys.executable, str(ROOT / "run.py"), "mode=preprocess", f"hydra.run.dir={work}/pre", *base]
    proc, _, _ = run_tracked([*cmd, "data.store.workers=2"], env, work, args.timeout)
    built = re.search(r"case store (\S+): \d+ cases \((\d+) built.*? in ([\d.]+) s;", proc.stdout)
    if built is None:
        raise RuntimeError(f"no summary in the preprocess output:\n{proc.stdout[-2000:]}")
    n_built, seconds = int(built.group(2)), float(built.group(3))
    row["pre_s_per_subject"] = seconds / n_built if n_built else float("nan")
    row["store_mb"] = folder_bytes(Path(built.group(1)) / "cases") / 1e6
    row["raw_mb"] = sum(folder_bytes(d.resolve()) for d in root.iterdir()) / 1e6

    # 2. training: memory and start to first optimizer step (store ready)
    marker = work / "first_step.json"
    train = [
        "mode=train",
        f"hydra.run.dir={work}/train",
        *base,
        "hardware.num_workers=0",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={args.train_batches}",
        "trainer.limit_val_batches=1",
        "trainer.log_images_every_n_epochs=0",
    ]
    child = [sys.executable, "-m", "medseg.benchmarks.scale", "--first-step-child", str(marker), "--", *train]
    _, row["train_rss_mb"], row["train_uss_mb"] = run_tracked(child, env, work, args.timeout)
    row["first_step_s"] = json.loads(marker.read_text())["first_step_s"]

    # 3. loader and model-step rates in this process
    row.update(loader_figures([*base, "data.val_percent=20"], args.steps, args.patch))

    # 4. evaluate one subject with every class
    if evaluate:
        one = cache / "eval-1"
        one.mkdir(exist_ok=True)
        if not (one / "s0000").exists():
            (one / "s0000").symlink_to(root / "s0000", target_is_directory=True)
        ckpt = work / "train" / "checkpoints" / "last.pt"
        ev = [sys.executable, str(ROOT / "run.py"), "mode=evaluate", f"ckpt={ckpt}", f"evaluate.input={one}"]
        ev += [f"hydra.run.dir={work}/eval", f"paths.cache_dir={cache / 'medseg'}", "logger=none"]
        started = time.perf_counter()
        _, row["eval_rss_mb"], row["eval_uss_mb"] = run_tracked(ev, env, work, args.timeout)
        row["eval_s"] = time.perf_counter() - started
    return row


TARGETS = {
    "pre_s_per_subject": "-",
    "store_ratio": "<= 1.5x raw",
    "train_rss_mb": "64 vs 4 subjects: <= +10 %",
    "first_step_s": "<= 15 s at 64, < 2x the 4-subject figure",
    "2d_w0": ">= 150 per worker",
    "2d_w2": ">= 150 per worker",
    "3d_w0": ">= 20 per worker",
    "3d_w2": ">= 20 per worker",
    "eval_rss_mb": "<= 1500 MB",
}


def report(rows: list[dict[str, Any]]) -> None:
    fmt = lambda v, spec=".1f": "-" if v is None or v != v else format(v, spec)  # noqa: E731
    print("\nscale benchmark (times from a shared machine are noise; see docs/store.md)")
    for r in rows:
        r["store_ratio"] = r["store_mb"] / r["raw_mb"] if r["raw_mb"] else float("nan")
        print(f"\nN = {r['N']} subjects")
        lines = [
            ("preprocessing", f"{fmt(r['pre_s_per_subject'], '.2f')} s/subject (2 workers)", "pre_s_per_subject"),
            (
                "store size",
                f"{fmt(r['store_mb'])} MB beside {fmt(r['raw_mb'])} MB raw = {fmt(r['store_ratio'], '.2f')}x",
                "store_ratio",
            ),
            (
                "training peak RSS",
                f"{fmt(r['train_rss_mb'], '.0f')} MB (USS {fmt(r['train_uss_mb'], '.0f')} MB)",
                "train_rss_mb",
            ),
            ("start to first step", f"{fmt(r['first_step_s'])} s (subprocess run.py, ready store)", "first_step_s"),
            (
                "loader 2D, 0 workers",
                f"{fmt(r['2d_w0'])} samples/s (model step {fmt(r['2d_model'])} samples/s)",
                "2d_w0",
            ),
            ("loader 2D, 2 workers", f"{fmt(r['2d_w2'])} samples/s = {fmt(r['2d_w2'] / 2)} per worker", "2d_w2"),
            (
                "loader 3D patches, 0 workers",
                f"{fmt(r['3d_w0'])} patches/s (model step {fmt(r['3d_model'])} patches/s)",
                "3d_w0",
            ),
            (
                "loader 3D patches, 2 workers",
                f"{fmt(r['3d_w2'])} patches/s = {fmt(r['3d_w2'] / 2)} per worker",
                "3d_w2",
            ),
        ]
        if "eval_rss_mb" in r:
            lines.append(
                (
                    "evaluate, one subject",
                    f"{fmt(r['eval_rss_mb'], '.0f')} MB peak RSS (USS {fmt(r['eval_uss_mb'], '.0f')} MB), "
                    f"{fmt(r['eval_s'])} s",
                    "eval_rss_mb",
                )
            )
        for name, value, key in lines:
            print(f"  {name:<26} {value:<58} target {TARGETS[key]}")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        growth = 100 * (b["train_rss_mb"] / a["train_rss_mb"] - 1)
        print(
            f"\n{b['N']} vs {a['N']} subjects: training peak RSS {fmt(growth)} % "
            f"(USS {fmt(100 * (b['train_uss_mb'] / a['train_uss_mb'] - 1))} %; target <= +10 %), "
            f"start to first step {fmt(b['first_step_s'] / a['first_step_s'], '.2f')}x (target < 2x)"
        )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--first-step-child"]:
        first_step_child(argv[1], argv[3:])
        return []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--shape", type=int, nargs=3, default=[224, 224, 160])
    parser.add_argument("--structures", type=int, default=117)
    parser.add_argument("--patch", type=int, nargs=3, default=[96, 96, 96], help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=None, help="default: $MEDSEG_CACHE or ~/.cache/medseg, /scale")
    parser.add_argument("--steps", type=int, default=30, help="timed loader batches per setting")
    parser.add_argument("--train-batches", type=int, default=3, help="training batches of the train subprocess")
    parser.add_argument("--evaluate-each", action="store_true", help="run the evaluate figure for every N")
    parser.add_argument("--timeout", type=int, default=3600)
    args = parser.parse_args(argv)
    base = args.cache or Path(os.environ.get("MEDSEG_CACHE", "~/.cache/medseg")).expanduser() / "scale"
    cache = base / f"{'x'.join(map(str, args.shape))}-{args.structures}"
    started = time.perf_counter()
    src = generate(cache, max(args.subjects), tuple(args.shape), args.structures)
    print(f"{max(args.subjects)} subjects ready in {src} ({time.perf_counter() - started:.0f} s)", flush=True)
    rows = []
    for i, n in enumerate(args.subjects):
        root = dataset_root(cache, src, n)
        last = i == len(args.subjects) - 1
        rows.append(bench_n(n, root, cache, args, evaluate=args.evaluate_each or last))
        print(json.dumps(rows[-1]), flush=True)
    report(rows)
    return rows


if __name__ == "__main__":
    main()
