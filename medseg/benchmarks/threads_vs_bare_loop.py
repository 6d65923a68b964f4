"""A bare PyTorch loop, then medseg's training, back to back in one process: same network, data and batches.

    python -m medseg.benchmarks.threads_vs_bare_loop [--quick] [--epochs 3 --repeats 3 --cases 12 --size 64]
    python -m medseg.benchmarks.threads_vs_bare_loop --quick --multirun   # medseg as two trials of run.py -m

This is the situation where the 1-minute load average misled the automatic thread rule: the bare loop
has just kept every CPU busy, and medseg starts right after it in the same process (as the next trial of
a multirun does). Each round runs the bare loop over medseg's own train loader (the same model from the
model factory, the same loss and optimizer, all usable CPUs as PyTorch threads), then medseg's
`run_train` with hardware.num_threads=null, after `apply_cpu_limits` as `run.py` calls it. Training
throughput is compared epoch for epoch (medseg's train/samples_per_s from history.json, which times the
training epoch only, not validation or checkpoints). Medians over epochs and rounds; the first epoch of
each side is a warm-up and left out. Printed: samples/s of both, their ratio (target >= 0.98), the
threads medseg chose and the load average at that moment (what the old rule would have read).

--multirun: medseg's side is a Hydra multirun of two identical trials (`run.py -m ... seed=S,S`, one process,
the trials back to back right after the bare loop), each trial's samples/s against the bare loop's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def compose(overrides: list[str]) -> Any:
    from medseg.benchmarks.data_loading import compose as compose_config

    return compose_config(overrides)


def bare_epochs(cfg: Any, epochs: int, threads: int | None = None) -> list[float]:
    """Samples/s per epoch of a plain loop over medseg's own loader, model, loss and optimizer, with `threads`
    PyTorch threads (None: all usable CPUs, what a hand-written script gets by default)."""
    import torch

    from medseg.data.datamodule import build_data
    from medseg.hardware import usable_cpus
    from medseg.models.factory import build_model
    from medseg.tasks.build import build_optimizer, build_train_loss

    torch.set_num_threads(threads or usable_cpus())
    torch.manual_seed(int(cfg.seed))
    data = build_data(cfg)
    info = data.info
    model = build_model(cfg.model, info.in_channels, info.num_classes, info.dims)
    loss_fn = build_train_loss(cfg.trainer.loss, model)
    optimizer = build_optimizer(cfg.optimizer, model)
    model.train()
    rates = []
    for _ in range(epochs):
        seen, started = 0, time.perf_counter()
        for batch in data.train_loader:
            images, labels = batch["image"], batch["label"]
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen += images.shape[0]
        rates.append(seen / (time.perf_counter() - started))
    return rates


def medseg_epochs(cfg: Any) -> tuple[list[float], int, float]:
    """Training samples/s per epoch of run_train, the threads the automatic rule chose, the load average then."""
    import torch

    from medseg.hardware import apply_cpu_limits
    from medseg.tasks.train import run_train

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    apply_cpu_limits(cfg)  # as run.py does before every job: hardware.num_threads=null is automatic
    threads = torch.get_num_threads()
    run_train(cfg)
    history = json.loads((Path(cfg.paths.output_dir) / "history.json").read_text())
    return [r["train/samples_per_s"] for r in history], threads, load


def multirun_trials(base: list[str], sweep: Path, epochs: int) -> list[list[float]]:
    """Training samples/s per epoch of each of two identical trials of `run.py -m` (one Hydra process)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    seed = next((o.split("=", 1)[1] for o in base if o.startswith("seed=")), "0")
    cmd = [sys.executable, str(root / "run.py"), "-m", *base, "logger=none", f"seed={seed},{seed}"]
    done = subprocess.run([*cmd, f"hydra.sweep.dir={sweep}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the multirun failed:\n{done.stderr[-3000:]}")
    return [
        [r["train/samples_per_s"] for r in json.loads((sweep / str(j) / "history.json").read_text())][:epochs]
        for j in (0, 1)
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="a small run: 2 rounds of 3 epochs on 32x32 slices")
    parser.add_argument("--multirun", action="store_true", help="medseg as two trials of one run.py -m process")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. model.channels=[8,16]")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats, args.cases, args.size = 3, 2, 8, 32
    with tempfile.TemporaryDirectory(prefix="medseg_threads_") as tmp:
        base = [
            f"data.synthetic.num_cases={args.cases}",
            f"data.synthetic.shape=[{args.size},{args.size},8]",
            "data.val_percent=25",
            "data.shuffle=false",  # both sides see the batches in the same order
            f"trainer.max_epochs={args.epochs}",
            "trainer.progress_bar=false",
            "trainer.log_images_every_n_epochs=0",
            "report.enabled=false",
            "hardware.num_threads=null",
            f"paths.cache_dir={tmp}/cache",
            *args.overrides,
        ]
        if args.multirun:
            return _multirun(base, Path(tmp), args)
        bare, ours, same, chosen, loads = [], [], [], [], []
        for r in range(args.repeats):
            bare += bare_epochs(compose([*base, f"paths.output_dir={tmp}/bare{r}"]), args.epochs)[1:]
            rates, threads, load = medseg_epochs(compose([*base, f"paths.output_dir={tmp}/medseg{r}"]))
            ours += rates[1:]
            chosen.append(threads)
            loads.append(load)
            # the loop's own cost: a bare loop at the thread count medseg chose
            same += bare_epochs(compose([*base, f"paths.output_dir={tmp}/same{r}"]), args.epochs, threads)[1:]
    result = {
        "bare_samples_per_s": statistics.median(bare),
        "medseg_samples_per_s": statistics.median(ours),
        "bare_same_threads_samples_per_s": statistics.median(same),
        "medseg_threads": chosen,
        "load_average_at_start": loads,
    }
    result["ratio"] = result["medseg_samples_per_s"] / result["bare_samples_per_s"]
    result["ratio_same_threads"] = result["medseg_samples_per_s"] / result["bare_same_threads_samples_per_s"]
    print(
        f"U-Net 2D on {args.size}x{args.size} slices of {args.cases} synthetic cases, {args.epochs} epochs x"
        f" {args.repeats} rounds (first epoch of each side left out); {os.cpu_count()} CPU(s) on this machine"
    )
    print(f"bare loop   : {result['bare_samples_per_s']:8.1f} samples/s  (epochs: {_list(bare)})")
    print(f"medseg      : {result['medseg_samples_per_s']:8.1f} samples/s  (epochs: {_list(ours)})")
    print(
        f"medseg chose {chosen} PyTorch thread(s) right after the bare loop; the 1-minute load average then was "
        f"{', '.join(f'{v:.1f}' for v in loads)}"
    )
    print(f"bare loop at medseg's thread count: {result['bare_same_threads_samples_per_s']:8.1f} samples/s")
    alone = result["ratio_same_threads"]
    print(f"ratio medseg/bare: {result['ratio']:.3f}   (the loop alone, same threads: {alone:.3f})")
    return result


def _multirun(base: list[str], tmp: Path, args: Any) -> dict[str, Any]:
    bare: list[float] = []
    trials: list[list[float]] = [[], []]
    for r in range(args.repeats):
        bare += bare_epochs(compose([*base, f"paths.output_dir={tmp}/bare{r}"]), args.epochs)[1:]
        for j, rates in enumerate(multirun_trials(base, tmp / f"sweep{r}", args.epochs)):
            trials[j] += rates[1:]
    result = {"bare_samples_per_s": statistics.median(bare)}
    print(
        f"U-Net 2D on {args.size}x{args.size} slices, {args.epochs} epochs x {args.repeats} rounds"
        " (first epoch of each side left out)"
    )
    print(f"bare loop        : {result['bare_samples_per_s']:8.1f} samples/s  (epochs: {_list(bare)})")
    for j, rates in enumerate(trials):
        result[f"trial{j}_samples_per_s"] = statistics.median(rates)
        result[f"trial{j}_ratio"] = result[f"trial{j}_samples_per_s"] / result["bare_samples_per_s"]
        print(
            f"multirun trial {j} : {result[f'trial{j}_samples_per_s']:8.1f} samples/s  (epochs: {_list(rates)})"
            f"  ratio to the bare loop {result[f'trial{j}_ratio']:.3f}"
        )
    return result


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
