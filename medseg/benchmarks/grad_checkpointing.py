"""Peak memory of one training step with and without gradient checkpointing.

    python -m medseg.benchmarks.grad_checkpointing [--model unet] [--size 256] [--batch 4] [--dims 2]

Each setting runs in its own subprocess (a fresh allocator, so one measurement cannot hide the
other). On CUDA it reports torch.cuda.max_memory_allocated during the step; on CPU the peak resident
set size (ru_maxrss) of the step's process, and its growth over the RSS before the step.
The model comes from conf/model/<name>.yaml with the data's channels and the given size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from typing import Any

MB = 2**20


def _current_rss() -> int:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def measure(model_name: str, size: int, batch: int, dims: int, classes: int, checkpointing: bool, device: str) -> dict:
    """One training step in this process; returns the memory figures in bytes."""
    import torch
    from hydra import compose, initialize_config_dir

    from medseg.config import register_configs
    from medseg.models.factory import build_model
    from medseg.runtime import conf_dir

    register_configs()
    overrides = [f"model={model_name}", f"model.grad_checkpointing={str(checkpointing).lower()}", f"data.dims={dims}"]
    if dims == 3:
        overrides.append(f"data.patch_size=[{size},{size},{size}]")
    else:
        overrides.append(f"data.image_size=[{size},{size}]")
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, 1, classes, dims).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    images = torch.randn(batch, 1, *([size] * dims), device=device)
    labels = torch.randint(0, classes, (batch, *([size] * dims)), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _current_rss()
    out = model(images)
    loss = loss_fn(out[0] if isinstance(out, list) else out, labels)
    loss.backward()
    optimizer.step()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "device": device,
        "checkpointing": checkpointing,
        "before": before,
        "peak": peak,
        "step": peak - before,
        "grad_checkpointing": bool(getattr(model, "grad_checkpointing", False)),
    }


def _run_worker(args: argparse.Namespace, checkpointing: bool) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "medseg.benchmarks.grad_checkpointing",
        "--worker",
        "--checkpointing" if checkpointing else "--no-checkpointing",
        f"--model={args.model}",
        f"--size={args.size}",
        f"--batch={args.batch}",
        f"--dims={args.dims}",
        f"--classes={args.classes}",
        f"--device={args.device}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet", help="a conf/model/ name")
    parser.add_argument("--size", type=int, default=256, help="image side (2D) or patch side (3D)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=False, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        result = measure(args.model, args.size, args.batch, args.dims, args.classes, args.checkpointing, args.device)
        print(json.dumps(result))
        return result

    off, on = _run_worker(args, False), _run_worker(args, True)
    what = "CUDA max allocated" if args.device.startswith("cuda") else "peak RSS"
    shape = "x".join([str(args.size)] * args.dims)
    print(f"model={args.model}, batch {args.batch} x 1 x {shape}, {args.device} ({what}, one training step)")
    print(f"{'':24}{'peak MiB':>12}{'step MiB':>12}")
    for name, r in (("without checkpointing", off), ("with checkpointing", on)):
        print(f"{name:24}{r['peak'] / MB:12.1f}{r['step'] / MB:12.1f}")
    ratio_peak = on["peak"] / off["peak"]
    ratio_step = on["step"] / off["step"] if off["step"] > 0 else float("nan")
    print(f"{'with / without':24}{ratio_peak:12.2f}{ratio_step:12.2f}")
    return {"without": off, "with": on, "ratio_peak": ratio_peak, "ratio_step": ratio_step}


if __name__ == "__main__":
    main()
