"""Peak memory and wall time of an ensemble prediction: one TotalSegmentator-shaped case with 1 and N models.

    python -m medseg.benchmarks.ensemble_memory [--shape 224 224 160] [--classes 118] [--models 5] [--repeats 3]
    python -m medseg.benchmarks.ensemble_memory --quick      # 96x96x40, 118 classes, 1 repeat

Each measurement runs in its own child process (`--child`), whose peak RSS the parent reads from
wait4 (ru_maxrss), so one run's memory never counts toward another's. A child builds its models (a
MONAI 2D U-Net with `--classes` outputs, untrained: the figure is about memory and time, not
accuracy), then predicts the case with medseg's streaming VolumePredictor, slice batches through
every model in turn with their probabilities summed in one buffer, into an integer mask on the
input's grid. Also measured, once: a fold run's out-of-fold probability file of that case
(uint8-quantised blosc2, oof.predict_case), its size and quantisation error, for the untrained
model's probabilities and for confident ones (softmax of 8 x one-hot + noise; a stand-in for a trained
model, whose probabilities are mostly near 0 or 1 and compress better). Prints medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _models(n: int, classes: int) -> list:
    import torch
    from monai.networks.nets import UNet

    models = []
    for i in range(n):
        torch.manual_seed(i)
        models.append(UNet(2, 1, classes, channels=(16, 32, 64), strides=(2, 2), num_res_units=1).eval())
    return models


def _predictor(models: list, classes: int, batch: int) -> object:
    import torch
    from omegaconf import OmegaConf

    from medseg.inference.predictor import VolumePredictor
    from medseg.precision import resolve_precision

    cfg = OmegaConf.create({"dims": 2, "slice_axis": 2, "patch_size": None, "pad_divisible": 16, "context_slices": 0})
    device = torch.device("cpu")
    return VolumePredictor(models, cfg, device, resolve_precision("32", device), batch_size=batch, num_classes=classes)


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(max(1, int(args.threads)))
    shape = tuple(args.shape)
    image = torch.rand(1, *shape)
    if args.models == 0:  # the baseline: interpreter, PyTorch, MONAI and the image, no model
        _models(0, args.classes)
        print("RESULT " + json.dumps({"seconds": 0.0, "voxels": int(image.numel())}), flush=True)
        return
    predictor = _predictor(_models(args.models, args.classes), args.classes, args.batch)
    start = time.perf_counter()
    if args.store:
        from medseg.crossval.oof import predict_case

        folder = Path(args.store)
        folder.mkdir(parents=True, exist_ok=True)
        _, size, error = predict_case(predictor, image, shape, 0.5, folder, "untrained")
        confident = _confident_probabilities(folder, shape, args.classes)
        out = {"seconds": time.perf_counter() - start, "bytes": size, "max_error": error, **confident}
    else:
        labels = predictor.labels(image, shape)
        out = {"seconds": time.perf_counter() - start, "voxels": int(labels.numel())}
    print("RESULT " + json.dumps(out), flush=True)


def _confident_probabilities(folder: Path, shape: tuple[int, ...], classes: int) -> dict:
    """Slice by slice: a label map of blobs, softmax(8 * one-hot + N(0, 0.5)), written as oof stores it."""
    import numpy as np

    from medseg.crossval.probabilities import ProbabilityWriter

    rng = np.random.default_rng(0)
    a, b, n = shape
    writer = ProbabilityWriter(folder / "confident_probs.b2nd", n, classes, (a, b))
    yy, xx = np.mgrid[0:a, 0:b]
    for t in range(n):
        labels = ((xx // 16 + yy // 16 * 3 + t // 8) % classes).astype(np.int64)
        logits = 8.0 * np.eye(classes, dtype=np.float32)[labels].transpose(2, 0, 1)
        logits += rng.normal(0, 0.5, size=logits.shape).astype(np.float32)
        e = np.exp(logits - logits.max(0, keepdims=True))
        writer.add(t, e / e.sum(0, keepdims=True))
    return {"confident_bytes": writer.close(), "confident_max_error": writer.max_error}


def _measure(argv: list[str]) -> tuple[dict, float]:
    """Run one child; (its result, its peak RSS in MB)."""
    cmd = [sys.executable, "-m", "medseg.benchmarks.ensemble_memory", "--child", *argv]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        _, status, usage = os.wait4(proc.pid, 0)
        log.seek(0)
        text = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child {' '.join(argv)} failed:\n{text[-3000:]}")
    line = next(x for x in text.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :]), usage.ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[224, 224, 160])
    parser.add_argument("--classes", type=int, default=118)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="slices per forward pass")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="96x96x40, 1 repeat")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    if args.quick:
        args.shape, args.repeats = [96, 96, 40], 1
    common = ["--shape", *map(str, args.shape), "--classes", str(args.classes), "--batch", str(args.batch)]
    common += ["--threads", str(args.threads)]
    size = "x".join(map(str, args.shape))
    print(f"one {size} case, {args.classes} classes, 2D U-Net, {args.batch} slices per pass, {args.threads} thread(s)")
    _, base = _measure([*common, "--models", "0"])
    print(f"  baseline (imports and the image, no model): peak RSS {base:7.0f} MB")
    figures = {}
    for n in (1, args.models):
        runs = [_measure([*common, "--models", str(n)]) for _ in range(args.repeats)]
        seconds = statistics.median(r["seconds"] for r, _ in runs)
        rss = statistics.median(m for _, m in runs)
        figures[n] = (seconds, rss)
        print(f"  {n} model(s): {seconds:7.1f} s   peak RSS {rss:7.0f} MB   (median of {args.repeats})")
    (t1, m1), (tn, mn) = figures[1], figures[args.models]
    print(
        f"  {args.models} models / 1 model: peak RSS x{mn / m1:.2f} (target <= 1.3), "
        f"time x{tn / t1:.2f} (linear would be x{args.models}); above the baseline: "
        f"{m1 - base:.0f} MB and {mn - base:.0f} MB"
    )
    with tempfile.TemporaryDirectory() as tmp:
        result, rss = _measure([*common, "--models", "1", "--store", tmp])
    float_bytes = 4 * args.classes * args.shape[0] * args.shape[1] * args.shape[2]
    print(
        f"  out-of-fold probabilities (uint8 blosc2, one chunk per slice); float32 would be {float_bytes / 1e9:.2f} GB:"
    )
    print(
        f"    untrained model: {result['bytes'] / 1e6:.1f} MB (x{float_bytes / result['bytes']:.0f} smaller), "
        f"max error {result['max_error']:.5f}; prediction + writing {result['seconds']:.1f} s, peak RSS {rss:.0f} MB"
    )
    print(
        f"    confident probabilities: {result['confident_bytes'] / 1e6:.1f} MB "
        f"(x{float_bytes / result['confident_bytes']:.0f} smaller), max error {result['confident_max_error']:.5f}"
    )


if __name__ == "__main__":
    main()
