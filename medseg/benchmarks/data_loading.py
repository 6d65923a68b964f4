"""Is data loading the bottleneck? Loader samples/s beside model-step samples/s, same batch, same process.

    python -m medseg.benchmarks.data_loading                      # demo data + a 117-class 2D setting
    python -m medseg.benchmarks.data_loading hardware=8gb --steps 50   # any config override

For each setting the train loader is built exactly as training builds it (layout reader, split,
checks, cached volumes, item transforms, hardware loader settings), warmed up for one pass, then
timed over `--steps` batches. The model step (forward, loss, backward, optimizer step) is timed on
one batch already on the device. A ratio loader/model above 1 means the loader keeps up.
The 117-class setting writes tiny TotalSegmentator-style data (117 structure files per subject)
into a temporary folder.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_CONF = Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from medseg.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO_CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=["logger=none", "print_config=false", *overrides])


def loader_rate(loader: Any, steps: int) -> tuple[float, int]:
    """Samples/s over `steps` batches after one warm-up pass (which fills any lazy cache)."""
    for _batch in loader:
        pass
    batches = itertools.islice(itertools.cycle([None]), steps)
    n, started, it = 0, time.perf_counter(), iter(loader)
    for _ in batches:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += int(batch["image"].shape[0])
    return n / (time.perf_counter() - started), n


def model_rate(cfg: Any, info: Any, batch: dict, steps: int, warmup: int) -> tuple[float, str]:
    import torch

    from medseg.engine.plain_step import plain_train_step
    from medseg.models.factory import build_model
    from medseg.precision import resolve_precision
    from medseg.runtime import select_device
    from medseg.tasks.build import build_loss, build_optimizer

    device = select_device(cfg.hardware.device)
    model = build_model(cfg.model, info.in_channels, info.num_classes, info.dims).to(device)
    loss_fn, optimizer = build_loss(cfg.trainer.loss), build_optimizer(cfg.optimizer, model)
    precision = resolve_precision(cfg.trainer.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
    images, labels = batch["image"].to(device), batch["label"].to(device)

    def step() -> None:
        plain_train_step(model, loss_fn, optimizer, scaler, precision, device, [(images, labels)])

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * images.shape[0] / (time.perf_counter() - started), f"{device.type}/{precision.name}"


def bench(name: str, overrides: list[str], steps: int, warmup: int) -> dict[str, Any]:
    from medseg.data.datamodule import build_data
    from medseg.runtime import seed_everything

    cfg = compose(overrides)
    seed_everything(int(cfg.seed))
    started = time.perf_counter()
    data = build_data(cfg)
    setup_s = time.perf_counter() - started
    loader_sps, _ = loader_rate(data.train_loader, steps)
    batch = next(iter(data.train_loader))
    model_sps, where = model_rate(cfg, data.info, batch, steps, warmup)
    row = {
        "setting": name,
        "classes": data.info.num_classes,
        "item": "x".join(str(s) for s in batch["image"].shape[1:]),
        "batch": int(batch["image"].shape[0]),
        "workers": int(cfg.hardware.num_workers),
        "setup_s": setup_s,
        "loader_sps": loader_sps,
        "model_sps": model_sps,
        "ratio": loader_sps / model_sps,
        "device": where,
    }
    print(
        f"{name:<22} classes {row['classes']:>3}  item {row['item']:<10} batch {row['batch']:>2}  "
        f"workers {row['workers']}  setup {setup_s:6.1f} s  loader {loader_sps:9.1f} samples/s  "
        f"model step {model_sps:8.1f} samples/s ({where})  loader/model {row['ratio']:6.1f}x",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from medseg.data.examples import write_totalseg

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed batches / model steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed model steps first")
    parser.add_argument("--structures", type=int, default=117, help="structures of the many-class setting")
    parser.add_argument("--subjects", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 24], help="volume size of that setting")
    args, overrides = parser.parse_known_args(argv)
    rows = [bench("demo (synthetic)", overrides, args.steps, args.warmup)]
    with tempfile.TemporaryDirectory(prefix="medseg_bench_") as tmp:
        root = write_totalseg(Path(tmp) / "ts", args.subjects, tuple(args.shape), args.structures)
        own = [o for o in overrides if not o.startswith("data.synthetic.")]  # keys of the demo layout only
        many = ["data=totalseg", f"data.root={root}", "data.val_percent=20", *own]
        rows.append(bench(f"totalseg {args.structures} classes", many, args.steps, args.warmup))
    slowest = min(r["ratio"] for r in rows)
    verdict = "data loading is not the bottleneck" if slowest > 1 else "data loading IS the bottleneck"
    print(f"lowest loader/model ratio {slowest:.1f}x: {verdict}")
    return rows


if __name__ == "__main__":
    main()
