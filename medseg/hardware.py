"""Hardware presets at run time: hardware=auto picks cpu / 4gb / 8gb / 16gb+ / 24gb / 40gb / 48gb / 80gb from the
device, hardware.find_batch_size searches the largest micro-batch that fits on the GPU, and the CPU limits
(loader workers and PyTorch threads) are fitted to the CPUs this process may use.

The presets themselves are YAML files in conf/hardware/; this module only chooses and applies one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medseg.cpu_load import usable_cpus
from medseg.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

# (preset, upper bound in GiB of total CUDA memory). Cards report a little less than their label
# (an "8 GB" card shows about 7.8 GiB), so the bounds sit between the common sizes.
CUDA_PRESETS: tuple[tuple[str, float], ...] = (
    ("4gb", 7.0),
    ("8gb", 14.0),
    ("16gb+", 22.0),
    ("24gb", 38.0),
    ("40gb", 46.0),
    ("48gb", 70.0),
    ("80gb", float("inf")),
)


def pick_preset(cuda_gib: float | None) -> tuple[str, str]:
    """The preset for a device with `cuda_gib` GiB of CUDA memory (None = no CUDA), and why."""
    if cuda_gib is None:
        return "cpu", "no CUDA device is visible"
    lower = 0.0
    for name, upper in CUDA_PRESETS:
        if cuda_gib < upper:
            bounds = (
                f"{lower:g} <= {cuda_gib:.1f} GiB < {upper:g} GiB" if upper != float("inf") else f">= {lower:g} GiB"
            )
            return name, f"the CUDA device has {cuda_gib:.1f} GiB ({bounds})"
        lower = upper
    raise AssertionError("unreachable")


def cuda_memory_gib(device_index: int = 0) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(device_index).total_memory / 2**30


def command_line_keys(overrides: Iterable[str] | None = None) -> set[str]:
    """Config keys the user set on the command line (`key=value`, `+key=`, `++key=`)."""
    if overrides is None:
        overrides = []
        try:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.initialized():
                overrides = list(HydraConfig.get().overrides.task)
        except Exception:  # noqa: BLE001 - outside a Hydra run there are no command-line keys
            overrides = []
    keys = set()
    for item in overrides:
        key = str(item).split("=", 1)[0].lstrip("+~").strip()
        if key:
            keys.add(key)
    return keys


def experiment_keys(experiment: str | None = None) -> set[str]:
    """Keys the chosen `experiment=` recipe sets; a recipe's values win over the auto preset too."""
    if experiment is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.initialized():
                experiment = HydraConfig.get().runtime.choices.get("experiment")
        except Exception:  # noqa: BLE001 - outside a Hydra run there is no chosen experiment
            experiment = None
    if not experiment:
        return set()
    from medseg.runtime import conf_dir

    path = conf_dir() / "experiment" / f"{experiment}.yaml"
    if not path.is_file():
        return set()
    recipe = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    recipe.pop("defaults", None)
    return {key for key, _ in _flatten(recipe)}


def resolve_auto_hardware(
    cfg: DictConfig, overrides: Iterable[str] | None = None, experiment: str | None = None
) -> str | None:
    """With hardware.name=auto, apply the preset that fits this machine to `cfg` in place.

    Keys given on the command line (or in `overrides`) and keys set by the chosen experiment recipe keep
    their values. Returns the chosen
    preset, or None when hardware is not auto.
    """
    if cfg.hardware.name != "auto":
        return None
    from medseg.runtime import conf_dir

    requested = str(cfg.hardware.device)
    index = int(requested.split(":", 1)[1]) if requested.startswith("cuda:") else 0
    gib = None if requested == "cpu" else cuda_memory_gib(index)
    name, why = pick_preset(gib)
    path = conf_dir() / "hardware" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"hardware=auto chose {name} but {path} is missing; restore the preset or pick hardware=...")
    preset = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    user_keys = command_line_keys(overrides) | experiment_keys(experiment) | plan_keys(cfg)  # plan=auto's keys stay
    kept = []
    for key, value in _flatten(preset):
        if key in user_keys:
            kept.append(key)
            continue
        OmegaConf.update(cfg, key, value, merge=False)
    if requested not in ("auto", "cpu") and "hardware.device" not in user_keys:
        OmegaConf.update(cfg, "hardware.device", requested, merge=False)  # keep an explicit cuda:N
    log.info(
        "hardware=auto: preset %s because %s%s",
        name,
        why,
        f"; kept from the command line or recipe: {', '.join(sorted(kept))}" if kept else "",
    )
    apply_cpu_limits(cfg)  # the preset's loader workers may exceed this machine's CPUs
    return name


# ---------------------------------------------------------------------- CPU limits


def busy_cpus(cpus: int) -> float:
    """How many of this process's CPUs other work keeps busy now: measured over a short sample from the kernel's
    CPU counters, leaving out this process and its children (medseg/cpu_load.py), not the lagging load average."""
    from medseg.cpu_load import busy_cpus_now

    return busy_cpus_now(cpus)


def cpu_limits(num_workers: int, num_threads: int | None, cpus: int, busy: float = 0.0) -> tuple[int, int]:
    """(loader workers, PyTorch intra-op threads) for `cpus` usable CPUs of which `busy` are taken by others.

    Workers are capped at `cpus`: more worker processes than CPUs only time-slice (and PyTorch warns).
    Threads: `num_threads` when given; else the CPUs left once the workers are counted, and no more than
    the CPUs other work leaves idle (at least 1). PyTorch's threads wait for each other at every operation,
    so one thread that shares its core with a busy process slows all of them: on a 2-core machine with one
    busy process beside it a training step ran 3x slower with 2 threads than with 1, and far slower under
    heavier sharing.
    """
    workers = min(max(0, int(num_workers)), cpus)
    if num_threads:
        threads = int(num_threads)
    else:
        threads = max(1, min(cpus - workers, round(cpus - busy)))
    if threads < 1:
        raise ConfigError(f"hardware.num_threads={num_threads} must be >= 1 (or null = automatic)")
    return workers, threads


def apply_cpu_limits(cfg: DictConfig, cpus: int | None = None, busy: float | None = None) -> tuple[int, int]:
    """Cap cfg.hardware.num_workers at the usable CPUs and set torch's thread count (hardware.num_threads,
    null = automatic). Logs a cap of the workers, and the automatic thread count with what other work keeps
    busy. Returns (workers, threads)."""
    import torch

    hw = cfg.hardware
    cpus = usable_cpus() if cpus is None else cpus
    if busy is None:  # measured (0.3 s) only for the automatic choice
        busy = 0.0 if hw.num_threads else busy_cpus(cpus)
    asked = int(hw.num_workers)
    workers, threads = cpu_limits(asked, hw.num_threads, cpus, busy)
    if workers != asked:
        OmegaConf.update(cfg, "hardware.num_workers", workers, merge=False)
        log.info(
            "hardware: %d loader workers asked, %d CPU(s) usable: using %d workers and %d PyTorch thread(s)",
            asked,
            cpus,
            workers,
            threads,
        )
    elif not hw.num_threads:  # automatic: say what was chosen and why
        log.info(
            "hardware: %d PyTorch thread(s): other work keeps %s CPU(s) busy now (measured, this process left out)"
            "%s; training re-measures as it runs; hardware.num_threads=N to fix the number",
            threads,
            f"all {cpus}" if busy >= cpus else f"about {busy:.1f} of {cpus}",
            f", {workers} go to loader workers" if workers else "",
        )
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return workers, threads


def _flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(tree, dict):
        return [(prefix, tree)]
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        out.extend(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


# ---------------------------------------------------------------------- micro-batch search


def find_max_batch_size(fits: Callable[[int], bool], start: int, upper: int) -> int:
    """The largest micro-batch in [1, upper] for which `fits(n)` is true.

    Doubles from `start` until a size does not fit (or `upper` is reached), then bisects between the
    last size that fitted and the first that did not. Assumes that if n fits, every smaller size fits.
    """
    upper = max(1, int(upper))
    n = min(max(1, int(start)), upper)
    if fits(n):
        good, bad = n, None
        while good < upper:
            trial = min(good * 2, upper)
            if fits(trial):
                good = trial
            else:
                bad = trial
                break
        if bad is None:
            return good
    else:
        bad, good = n, 0
        while good == 0:
            trial = bad // 2
            if trial < 1:
                raise TrainingError("out of memory with a micro-batch of 1; lower data.scale or choose a smaller model")
            if fits(trial):
                good = trial
            else:
                bad = trial
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def accumulation_for(effective_batch: int, micro_batch: int) -> int:
    """Micro-batches per optimizer step so that micro x accumulation stays close to `effective_batch`."""
    return max(1, round(effective_batch / max(1, micro_batch)))


def oom_probe(
    model: Any, loss_fn: Any, sample: dict[str, Any], device: Any, precision: Any, memory_format: Any = None
) -> Callable[[int], bool]:
    """fits(n): one forward and backward pass on a batch of n copies of `sample`; False on CUDA out-of-memory."""
    import torch

    def fits(n: int) -> bool:
        images = sample["image"].unsqueeze(0).repeat(n, *([1] * sample["image"].dim())).to(device)
        labels = sample["label"].unsqueeze(0).repeat(n, *([1] * sample["label"].dim())).to(device)
        if memory_format is not None:
            images = images.contiguous(memory_format=memory_format)
        model.train()
        try:
            with precision.autocast(device):
                loss = loss_fn(model(images), labels)
            loss.backward()
            ok = True
        except torch.OutOfMemoryError:
            ok = False
        finally:
            model.zero_grad(set_to_none=True)
            loss = None  # noqa: F841 - drop the graph before freeing the cache
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        log.info("find_batch_size: micro-batch %d %s", n, "fits" if ok else "runs out of memory")
        return ok

    return fits


def search_micro_batch(cfg: DictConfig, fits: Callable[[int], bool], per_item: int = 1) -> tuple[int, int] | None:
    """Run the search for hardware.find_batch_size and update cfg's batch size and accumulation.

    `fits(n)` probes n samples; a loaded item holds `per_item` of them (3D: data.samples_per_volume patches
    per volume), so data.batch_size becomes the largest whole number of items that fits.
    Returns (data.batch_size, accumulation), or None when hardware.find_batch_size is off.
    """
    if not cfg.hardware.find_batch_size:
        return None
    per_item = max(1, int(per_item))
    batch, accumulate = int(cfg.data.batch_size), int(cfg.trainer.accumulate_grad_batches)
    micro = batch * per_item
    effective = micro * accumulate
    # Above the effective batch the accumulation could not keep it; stop the search there.
    upper = max(per_item, min(int(cfg.hardware.max_batch_size) * per_item, effective))
    best = max(1, find_max_batch_size(fits, micro, upper) // per_item)
    new_accumulate = accumulation_for(effective, best * per_item)
    OmegaConf.update(cfg, "data.batch_size", best, merge=False)
    OmegaConf.update(cfg, "trainer.accumulate_grad_batches", new_accumulate, merge=False)
    per = f" x {per_item} samples per volume" if per_item > 1 else ""
    log.info(
        "find_batch_size: batch %d%s x accumulation %d (effective %d; the preset had %d x %d)",
        best,
        per,
        new_accumulate,
        best * per_item * new_accumulate,
        batch,
        accumulate,
    )
    return best, new_accumulate


def fit_micro_batch(cfg: DictConfig, model: Any, loss_fn: Any, data: Any, device: Any, precision: Any) -> Any:
    """hardware.find_batch_size for a training run on a CUDA device (see `probe_and_rebuild`); elsewhere the
    loader is kept: only a GPU raises an out-of-memory error the search can probe for."""
    if getattr(device, "type", str(device)) != "cuda":
        log.info(
            "find_batch_size: needs a CUDA device; keeping micro-batch %d x %d",
            int(cfg.data.batch_size),
            int(cfg.trainer.accumulate_grad_batches),
        )
        return data.train_loader
    return probe_and_rebuild(cfg, model, loss_fn, data, device, precision)


def probe_sample(train_set: Any) -> dict[str, Any]:
    """One training item as the model sees it: with batched augmentation an item is the raw store region
    (possibly the larger read region, labels as stored), which the batch step cuts to the patch."""
    sample = train_set[0]
    if isinstance(sample, list):  # 3D patch sampling returns several patches per volume
        sample = sample[0]
    augment = getattr(train_set, "batch_augment", None)
    if augment is not None:
        batch = augment({"image": [sample["image"]], "label": [sample["label"]]})
        sample = {"image": batch["image"][0], "label": batch["label"][0]}
    return sample


def probe_and_rebuild(cfg: DictConfig, model: Any, loss_fn: Any, data: Any, device: Any, precision: Any) -> Any:
    """Search the largest micro-batch with real forward/backward probes on `device`, update cfg, and return the
    train loader (rebuilt for the new micro-batch). The model's weights and norm statistics are left as they were."""
    import torch

    from medseg.data.datamodule import make_loader

    memory_format = torch.channels_last if cfg.hardware.channels_last and int(cfg.data.dims) == 2 else None
    before = int(cfg.data.batch_size)
    sample = probe_sample(data.train_set)
    saved = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    per_item = int(getattr(data.train_set, "items_per_index", 1) or 1)
    probe = oom_probe(model, loss_fn, sample, device, precision, memory_format)
    found = search_micro_batch(cfg, probe, per_item)
    model.load_state_dict(saved)
    if found is None or found[0] == before:
        return data.train_loader
    return make_loader(data.train_set, found[0], True, data.loader_kwargs, int(cfg.seed))


def plan_keys(cfg: Any) -> set[str]:
    """The keys plan=auto sets (conf/plan/auto.yaml), when the run is planned: hardware=auto keeps them."""
    if str(OmegaConf.select(cfg, "plan.name", default="none")) != "auto":
        return set()
    from medseg.runtime import conf_dir

    auto = OmegaConf.to_container(OmegaConf.load(conf_dir() / "plan" / "auto.yaml"), resolve=False)
    auto.pop("defaults", None)
    return {key for key, _ in _flatten(auto)}
