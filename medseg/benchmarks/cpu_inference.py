"""CPU predict on one TotalSegmentator-shaped CT: PyTorch eager against onnxruntime, in one command.

    python -m medseg.benchmarks.cpu_inference [--quick] [--shape 224 224 160] [--structures 117]
        [--threads 2] [--repeats 3] [--work DIR] [--no-int8]

Trains the `totalseg_unet2d` recipe (118 classes, slices resized to 256x256) for one step on a small
set (the weights are near their initialisation: the figures are about time and memory, not accuracy),
exports it (mode=export), writes one CT of --shape, then predicts it in a fresh child process per
variant and run, each with the same thread count:
- eager: `run.py mode=predict ckpt=last.pt` (PyTorch);
- onnxruntime: `run.py mode=predict ckpt=<export folder>` (the same entry, no torch imported);
- onnxruntime-int8 (benchmark only, not offered by mode=export): the export statically quantised by
  onnxruntime.quantization (QDQ, per-channel weights, calibrated on slices of the CT), with its mean
  Dice against the fp32 onnxruntime mask over the classes either predicts.
Prints the median wall time and peak RSS (the child's own ru_maxrss from wait4) of each, and the
ratios to eager. --quick: a 96x96x32 CT and one run each (a smoke test of the command, not figures).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _child(cmd: list[str], work: Path, name: str, cache: Path) -> tuple[float, float]:
    """Run one child; (wall seconds, peak RSS in MB). Raises SystemExit with its log on failure."""
    env = {**os.environ, "MEDSEG_CACHE": str(cache), "WANDB_MODE": "offline"}
    log = work / f"{name}.log"
    start = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed:\n{log.read_text()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


def _run_py(work: Path, name: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={work / name}", "logger=none", *args]


def _quantise(export: Path, dest: Path, ct: Path) -> Path:
    """A copy of the export with model.onnx statically quantised to int8 (QDQ), checksums renewed."""
    import nibabel as nib
    from onnxruntime.quantization import CalibrationDataReader

    from medseg.deploy.manifest import load_manifest, sha256
    from medseg.deploy.preprocess import prepare

    manifest = load_manifest(export)
    scan = nib.load(str(ct))
    image = prepare(np.asarray(scan.dataobj, dtype=np.float32)[None], manifest, scan.affine)
    picks = np.linspace(0, image.shape[-1] - 1, 8).round().astype(int)

    class Slices(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": np.ascontiguousarray(image[None, :, :, :, k])} for k in picks])

        def get_next(self):  # noqa: ANN201 - onnxruntime's interface
            return next(self.items, None)

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(export, dest)
    pre = dest / "pre.onnx"
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser warns once per normalisation weight
    here = Path.cwd()
    os.chdir(dest)  # the quantiser leaves temporary files in the working folder
    try:
        _quantise_files(export, pre, dest, Slices())
    finally:
        os.chdir(here)
    pre.unlink()
    for stray in [*dest.glob("*.data"), *dest.glob("sym_shape_infer_temp*")]:
        stray.unlink()
    manifest["models"][0]["sha256"] = sha256(dest / "model.onnx")
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return dest


def _quantise_files(export: Path, pre: Path, dest: Path, reader: Any) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(export / "model.onnx"), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(dest / "model.onnx"),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    scores = []
    for c in np.union1d(np.unique(a), np.unique(b)):
        if c == 0:
            continue
        x, y = a == c, b == c
        scores.append(2 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))
    return float(np.mean(scores)) if scores else 1.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medseg-cpu-inference")
    parser.add_argument("--shape", type=int, nargs=3, default=[224, 224, 160])
    parser.add_argument("--structures", type=int, default=117)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="runs per variant (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="96x96x32, one run each: checks the command works")
    parser.add_argument("--no-int8", action="store_true", help="leave out the quantised variant")
    args = parser.parse_args(argv)
    if args.quick:
        args.shape = [96, 96, 32]
    args.repeats = args.repeats or (1 if args.quick else 3)
    import nibabel as nib

    from medseg.data.examples import write_totalseg

    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    small = work / f"small_{args.structures}"
    if not (small / "s0002" / "ct.nii.gz").is_file():
        write_totalseg(small, num_subjects=3, shape=(32, 32, 8), num_structures=args.structures)
    ckpt = work / f"train_{args.structures}" / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        train = [
            "experiment=totalseg_unet2d",
            f"data.root={small}",
            "data.batch_size=2",
            "data.val_percent=34",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1",
            "trainer.log_images_every_n_epochs=0",
            "report.enabled=false",
            "hardware=cpu",
        ]
        _child(_run_py(work, f"train_{args.structures}", *train), work, "train", cache)
    export = work / f"export_{args.structures}"
    if not (export / "manifest.json").is_file():
        _child(
            _run_py(work, "export_run", "mode=export", f"ckpt={ckpt}", f"export.output_dir={export}"),
            work,
            "export",
            cache,
        )
    shape = "x".join(map(str, args.shape))
    ct = work / f"ct_{shape}.nii.gz"
    if not ct.is_file():
        rng = np.random.default_rng(0)
        volume = rng.normal(-800, 50, size=tuple(args.shape)).astype(np.float32)
        h, w, d = args.shape
        volume[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4, d // 8 : 7 * d // 8] += 700  # a body-like block
        nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 1.5, 1.0])), ct)
    threads = f"hardware.num_threads={args.threads}"
    variants = {
        "eager": lambda out: _run_py(
            work, "eager", "mode=predict", f"ckpt={ckpt}", threads, f"predict.input={ct}", f"predict.output_dir={out}"
        ),
        "onnxruntime": lambda out: _run_py(
            work, "ort", "mode=predict", f"ckpt={export}", threads, f"predict.input={ct}", f"predict.output_dir={out}"
        ),
    }
    if not args.no_int8:
        int8 = _quantise(export, work / f"export_{args.structures}_int8", ct)
        variants["onnxruntime-int8"] = lambda out: _run_py(
            work, "ort8", "mode=predict", f"ckpt={int8}", threads, f"predict.input={ct}", f"predict.output_dir={out}"
        )
    results: dict[str, tuple[float, float]] = {}
    masks: dict[str, np.ndarray] = {}
    for name, command in variants.items():
        runs = []
        for r in range(args.repeats):
            out = work / f"pred_{name}"
            runs.append(_child(command(out), work, f"{name}_{r}", cache))
        results[name] = (statistics.median(s for s, _ in runs), statistics.median(m for _, m in runs))
        masks[name] = np.asarray(nib.load(str(work / f"pred_{name}" / ct.name)).dataobj)
    base_s, base_mb = results["eager"]
    print(
        f"predict, one {shape} CT, {args.structures + 1} classes, {args.threads} thread(s), median of {args.repeats}:"
    )
    for name, (seconds, mb) in results.items():
        line = f"  {name:17s} {seconds:7.1f} s  {mb:7.0f} MB peak RSS"
        line += f"   speed-up x{base_s / seconds:.2f}, memory x{mb / base_mb:.2f}"
        if name != "eager":
            same = float((masks[name] == masks["eager"]).mean())
            line += f", voxels equal to eager {100 * same:.2f}%"
        if name == "onnxruntime-int8":
            line += f", Dice vs fp32 onnxruntime {_dice(masks[name], masks['onnxruntime']):.4f}"
        print(line)


if __name__ == "__main__":
    main()
