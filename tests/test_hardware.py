"""Hardware presets: every preset composes with every model; hardware=auto; the micro-batch search."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from medseg.errors import TrainingError
from medseg.hardware import (
    accumulation_for,
    find_max_batch_size,
    oom_probe,
    pick_preset,
    resolve_auto_hardware,
    search_micro_batch,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = sorted(p.stem for p in (CONF / "hardware").glob("*.yaml") if p.stem != "auto")
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def test_the_groups_hold_what_the_issue_lists():
    assert PRESETS == ["16gb+", "24gb", "40gb", "48gb", "4gb", "80gb", "8gb", "cpu"]
    assert {"unet", "attention_unet", "segresnet", "dynunet", "unetr", "swinunetr"} <= set(MODELS)
    assert {f"segformer_b{i}" for i in range(6)} <= set(MODELS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_with_every_model(compose, preset):
    expected = OmegaConf.load(CONF / "hardware" / f"{preset}.yaml")
    for model in MODELS:
        cfg = compose(f"hardware={preset}", f"model={model}", tiny=False)
        resolved = OmegaConf.to_container(cfg.model, resolve=True)  # every interpolation resolves
        assert resolved["grad_checkpointing"] is expected.hardware.grad_checkpointing, model
        assert resolved["width"] == expected.hardware.model_width, model
        if "bilinear" in resolved:
            assert resolved["bilinear"] is expected.hardware.bilinear_upsampling, model
        assert cfg.data.batch_size == expected.data.batch_size
        assert cfg.data.scale == expected.data.scale
        assert cfg.trainer.accumulate_grad_batches == expected.trainer.accumulate_grad_batches
        assert str(cfg.trainer.precision) == str(expected.trainer.precision)


def test_presets_follow_the_practitioner_settings(compose):
    facts = {}
    for preset in PRESETS:
        cfg = compose(f"hardware={preset}", tiny=False)
        facts[preset] = (
            cfg.data.batch_size,
            cfg.trainer.accumulate_grad_batches,
            str(cfg.trainer.precision),
            cfg.data.scale,
            cfg.model.bilinear,
        )
    assert facts["4gb"] == (1, 16, "16-mixed", 0.25, True)
    assert facts["8gb"][2:4] == ("16-mixed", 0.5) and 2 <= facts["8gb"][0] <= 4 and 2 <= facts["8gb"][1] <= 4
    assert facts["16gb+"] == (8, 2, "16-mixed", 0.75, False)
    assert facts["cpu"][0] in (1, 2) and facts["cpu"][1:3] == (4, "32")
    # the GPU presets keep the same effective batch
    assert {facts[p][0] * facts[p][1] for p in ("4gb", "8gb", "16gb+")} == {16}


def test_command_line_model_keys_win_over_the_preset(compose):
    cfg = compose("hardware=4gb", "model.bilinear=false", "model.grad_checkpointing=false", tiny=False)
    assert cfg.model.bilinear is False and cfg.model.grad_checkpointing is False


def test_4gb_preset_builds_a_bilinear_checkpointed_unet(compose):
    from medseg.models.factory import build_model

    cfg = compose("hardware=4gb", tiny=False)
    model = build_model(cfg.model, 1, 2, 2)
    assert model.grad_checkpointing is True
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())


@pytest.mark.parametrize(
    ("gib", "preset"),
    [(None, "cpu"), (3.8, "4gb"), (5.8, "4gb"), (7.8, "8gb"), (11.7, "8gb"), (15.7, "16gb+"), (23.6, "24gb")]
    + [(39.4, "40gb"), (47.5, "48gb"), (79.1, "80gb"), (139.8, "80gb")],
)
def test_pick_preset_by_cuda_memory(gib, preset):
    name, why = pick_preset(gib)
    assert name == preset
    assert ("no CUDA" in why) if gib is None else (f"{gib:.1f} GiB" in why)


def test_auto_picks_cpu_here_and_logs_why(compose, caplog):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = compose("hardware=auto", tiny=False)
    with caplog.at_level(logging.INFO, logger="medseg.hardware"):
        assert resolve_auto_hardware(cfg, overrides=["hardware=auto"]) == "cpu"
    assert "preset cpu because no CUDA device is visible" in caplog.text
    assert cfg.hardware.name == "cpu" and cfg.hardware.device == "cpu"
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches, str(cfg.trainer.precision)) == (2, 4, "32")


def test_auto_applies_the_gpu_preset_but_keeps_command_line_keys(compose, monkeypatch, caplog):
    monkeypatch.setattr("medseg.hardware.cuda_memory_gib", lambda device_index=0: 7.8)
    cfg = compose("hardware=auto", "data.batch_size=3", tiny=False)
    with caplog.at_level(logging.INFO, logger="medseg.hardware"):
        name = resolve_auto_hardware(cfg, overrides=["hardware=auto", "data.batch_size=3"])
    assert name == "8gb"
    assert cfg.data.batch_size == 3  # the user's value
    assert cfg.data.scale == 0.5 and str(cfg.trainer.precision) == "16-mixed"
    assert cfg.model.grad_checkpointing is False  # the model still reads the applied hardware keys
    assert "kept from the command line or recipe: data.batch_size" in caplog.text


def test_auto_keeps_the_values_of_an_experiment_recipe(compose, monkeypatch):
    monkeypatch.setattr("medseg.hardware.cuda_memory_gib", lambda device_index=0: 7.8)
    cfg = compose("hardware=auto", "experiment=totalseg_unet2d", tiny=False)
    assert resolve_auto_hardware(cfg, overrides=["hardware=auto"], experiment="totalseg_unet2d") == "8gb"
    assert cfg.data.batch_size == 16 and cfg.trainer.accumulate_grad_batches == 1  # the recipe's
    assert str(cfg.trainer.precision) == "16-mixed"  # the preset's
    assert cfg.hardware.num_workers == min(4, len(os.sched_getaffinity(0)))  # the preset's, capped at the CPUs


def test_auto_does_nothing_for_a_named_preset(compose):
    cfg = compose("hardware=8gb", tiny=False)
    assert resolve_auto_hardware(cfg, overrides=[]) is None
    assert cfg.hardware.name == "8gb"


# ------------------------------------------------------------------ micro-batch search


def _fits_up_to(limit: int, calls: list[int]):
    def fits(n: int) -> bool:
        calls.append(n)
        return n <= limit

    return fits


@pytest.mark.parametrize(("start", "limit", "upper"), [(1, 13, 64), (4, 4, 64), (8, 3, 64), (2, 100, 16), (5, 1, 8)])
def test_find_max_batch_size_finds_the_largest_that_fits(start, limit, upper):
    calls: list[int] = []
    assert find_max_batch_size(_fits_up_to(limit, calls), start, upper) == min(limit, upper)
    assert len(calls) <= 2 * upper.bit_length() + 1  # doubling then bisection, not a linear scan


def test_find_max_batch_size_when_nothing_fits():
    with pytest.raises(TrainingError, match="micro-batch of 1"):
        find_max_batch_size(lambda n: False, 4, 16)


def test_accumulation_keeps_the_effective_batch():
    assert accumulation_for(16, 1) == 16
    assert accumulation_for(16, 4) == 4
    assert accumulation_for(16, 5) == 3
    assert accumulation_for(16, 32) == 1


class _OOMAbove(torch.nn.Module):
    """A model that raises CUDA's out-of-memory error for batches above `limit`, like a real GPU would."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.conv = torch.nn.Conv2d(1, 2, 1)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.conv(x)


def test_search_with_injected_oom_sets_batch_and_accumulation(compose):
    from medseg.precision import Precision
    from medseg.tasks.build import build_loss

    cfg = compose("hardware=4gb", "hardware.find_batch_size=true", tiny=False)
    model = _OOMAbove(limit=6)
    sample = {"image": torch.randn(1, 8, 8), "label": torch.randint(0, 2, (1, 8, 8))}
    fits = oom_probe(model, build_loss(cfg.trainer.loss), sample, torch.device("cpu"), Precision("32", None, False))
    found = search_micro_batch(cfg, fits)
    assert found == (6, 3)  # 4gb: 1 x 16 -> 6 x 3 (effective 18, the closest to 16)
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches) == (6, 3)
    assert max(model.seen) > 6  # it did run into the injected out-of-memory error
    assert all(p.grad is None for p in model.parameters())  # probes leave no gradients behind


def test_search_is_skipped_without_cuda(compose, caplog):
    from medseg.hardware import fit_micro_batch

    cfg = compose("hardware.find_batch_size=true", tiny=False)
    before = (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches)
    loader = object()
    with caplog.at_level(logging.INFO, logger="medseg.hardware"):
        kept = fit_micro_batch(cfg, None, None, SimpleNamespace(train_loader=loader), torch.device("cpu"), None)
    assert kept is loader and (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches) == before
    assert "find_batch_size: needs a CUDA device" in caplog.text


def test_search_never_exceeds_the_effective_batch(compose):
    cfg = compose("hardware=16gb+", "hardware.find_batch_size=true", tiny=False)
    assert search_micro_batch(cfg, lambda n: True) == (16, 1)


class ActivationCap:
    """A memory budget on the CPU: the activations a forward pass really allocates (every module's output
    tensors, summed) may not exceed `cap` bytes, else the pass fails with the error a GPU raises
    (torch.OutOfMemoryError), which the probe catches. Stands in for a GPU's memory, which this machine lacks."""

    def __init__(self, model: torch.nn.Module, cap: int) -> None:
        self.cap, self.used, self.peaks = cap, 0, []
        model.register_forward_pre_hook(self._start)
        model.register_forward_hook(self._end)
        for module in model.modules():
            if module is not model:
                module.register_forward_hook(self._count)

    def _start(self, module, inputs) -> None:
        self.used = 0

    def _end(self, module, inputs, out) -> None:
        self.peaks.append(self.used)

    def _count(self, module, inputs, out) -> None:
        tensors = out if isinstance(out, (list, tuple)) else [out]
        self.used += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
        if self.used > self.cap:
            raise torch.OutOfMemoryError(f"activations need more than {self.cap} bytes")


def test_the_search_finds_the_largest_micro_batch_under_a_real_memory_cap(compose):
    """The real probe (forward + backward of a UNet on the CPU), the real search and the loader it rebuilds;
    only the memory limit is a rule: the bytes the forward pass allocates may not exceed 5.5 samples' worth."""
    from medseg.data.datamodule import build_data
    from medseg.hardware import probe_and_rebuild
    from medseg.models.factory import build_model
    from medseg.precision import Precision
    from medseg.tasks.build import build_loss

    cfg = compose(
        "hardware.find_batch_size=true",
        "data.batch_size=1",
        "trainer.accumulate_grad_batches=8",
        "model.channels=[8,16]",
        "model.norm=batch",  # running statistics: the probes' forward passes must not leak into them
    )
    data = build_data(cfg)
    model = build_model(cfg.model, data.info.in_channels, data.info.num_classes, 2)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    meter = ActivationCap(model, cap=2**62)
    with torch.no_grad():
        model.eval()
        model(data.train_set[0]["image"][None])
    per_sample = meter.peaks[-1]  # activations grow linearly with the batch: so many bytes per sample
    meter.cap, meter.peaks = int(5.5 * per_sample), []
    loader = probe_and_rebuild(
        cfg, model, build_loss(cfg.trainer.loss), data, torch.device("cpu"), Precision("32", None, False)
    )
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches) == (5, 2)  # 1 x 8 -> 5 x 2 (effective 10)
    assert loader.batch_size == 5 and next(iter(loader))["image"].shape[0] == 5
    assert max(meter.peaks) == 5 * per_sample  # passes of 6 or more samples failed, as on a full GPU
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------- CPU limits


def test_cpu_limits_cap_workers_and_leave_the_rest_to_torch():
    from medseg.hardware import cpu_limits

    assert cpu_limits(4, None, cpus=2) == (2, 1)  # 8gb preset on 2 cores: 2 workers, 1 thread
    assert cpu_limits(0, None, cpus=2) == (0, 2)  # cpu preset: loading in the main process, both cores
    assert cpu_limits(2, None, cpus=16) == (2, 14)
    assert cpu_limits(8, 3, cpus=4) == (4, 3)  # an explicit hardware.num_threads wins
    # other work on the same CPUs: fewer threads, so none waits on a core it shares
    assert cpu_limits(0, None, cpus=2, busy=1.1) == (0, 1)
    assert cpu_limits(0, None, cpus=2, busy=9.0) == (0, 1)
    assert cpu_limits(0, None, cpus=8, busy=3.0) == (0, 5)
    assert cpu_limits(0, None, cpus=2, busy=0.3) == (0, 2)
    assert cpu_limits(0, 2, cpus=2, busy=9.0) == (0, 2)  # the user's choice stands


def _write_proc(root: Path, machine: tuple[int, int], own: int, child: int | None = None) -> None:
    """A /proc with 2 CPUs: /proc/stat (busy, idle ticks), this process's own ticks and one live child's."""
    busy, idle = machine
    (root / "self" / "task" / "1").mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0\ncpu1 0 0 0 0\nintr 0\n")
    rest = "0 " * 9  # fields 5-13, then utime stime cutime cstime
    (root / "self" / "stat").write_text(f"1 (py thon) R 0 {rest}{own} 0 0 0 20 0 1\n")
    (root / "self" / "task" / "1" / "children").write_text("" if child is None else "77")
    if child is not None:
        (root / "77").mkdir(exist_ok=True)
        (root / "77" / "stat").write_text(f"77 (worker) R 1 {rest}{child} 0 0 0 20 0 1\n")


def test_busy_cpus_leave_out_this_process_and_ignore_the_lagging_load_average(tmp_path, monkeypatch):
    """Both CPUs were busy, all of it this process (and its loader worker): nothing else is running, so the
    automatic rule takes both CPUs, whatever a load average still remembers of the job before."""
    from medseg.cpu_load import busy_between, snapshot
    from medseg.hardware import cpu_limits

    monkeypatch.setattr(os, "getloadavg", lambda: (2.8, 2.8, 2.8))  # the previous job, still in the average
    _write_proc(tmp_path, (1000, 5000), own=300, child=100)
    before = snapshot(tmp_path)
    _write_proc(tmp_path, (1000 + 200, 5000), own=300 + 150, child=100 + 50)  # 1 s: 200 busy ticks of 200
    after = snapshot(tmp_path)
    assert before is not None and after is not None and after.machine_cpus == 2
    assert busy_between(before, after, cpus=2) == 0.0
    assert cpu_limits(0, None, 2, busy_between(before, after, cpus=2)) == (0, 2)
    _write_proc(tmp_path, (1200 + 150, 5000 + 50), own=450 + 50, child=150 + 0)  # another job: 100 of 200 ticks
    busy = busy_between(after, snapshot(tmp_path), cpus=2)
    assert busy == pytest.approx(1.0)
    assert cpu_limits(0, None, 2, busy) == (0, 1)


def test_the_counters_of_this_machine_count_this_process_and_its_children():
    """On the real /proc: CPU time this process and a child spend shows up as their own, not as other work."""
    import subprocess
    import sys

    from medseg.cpu_load import snapshot

    first = snapshot()
    if first is None:
        pytest.skip("no /proc/stat on this platform")
    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<1.5: pass"])
    try:
        end = time.time() + 0.6
        while time.time() < end:
            sum(i * i for i in range(1000))
        during = snapshot()
    finally:
        child.wait()
    assert during is not None and during.own > first.own and during.total > first.total and during.busy > first.busy


def test_adaptive_threads_follow_the_load_while_training(caplog):
    """hardware.num_threads=null: a neighbour job starts, then ends; the thread count follows within the run."""
    from medseg.cpu_load import CpuSnapshot
    from medseg.engine.adaptive_threads import AdaptiveThreads

    readings = iter(
        [
            CpuSnapshot(busy=0, total=0, own=0, machine_cpus=2),
            CpuSnapshot(busy=4000, total=4000, own=2000, machine_cpus=2),  # another job took half the machine
            CpuSnapshot(busy=8000, total=8000, own=6000, machine_cpus=2),  # it ended: only this process ran
        ]
    )
    clock = iter([0.0, 25.0, 50.0])
    adapt = AdaptiveThreads(cpus=2, workers=0, every_s=20.0, measure=lambda: next(readings), clock=lambda: next(clock))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with caplog.at_level(logging.INFO, logger="medseg.engine.adaptive_threads"):
            adapt.on_fit_start(None)
            adapt.on_train_step(None, {})
            assert torch.get_num_threads() == 1
            adapt.on_epoch_end(None, {})
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert adapt.changes == [(2, 1, 1.0), (1, 2, 0.0)]
    assert "PyTorch threads 2 -> 1: other work kept about 1.0 of 2 CPU(s) busy over the last 25 s" in caplog.text


def test_usable_cpus_is_the_affinity_mask(monkeypatch):
    import os

    from medseg.cpu_load import usable_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    assert usable_cpus() == 2


def test_apply_cpu_limits_updates_the_config_sets_threads_and_logs_once(compose, caplog):
    from medseg.hardware import apply_cpu_limits

    cfg = compose("hardware=8gb", "hardware.device=cpu")
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="medseg.hardware"):
            assert apply_cpu_limits(cfg, cpus=1, busy=0.0) == (1, 1)
            assert apply_cpu_limits(cfg, cpus=1, busy=0.0) == (1, 1)  # already capped: nothing more to say
        assert cfg.hardware.num_workers == 1 and torch.get_num_threads() == 1
        assert caplog.text.count("4 loader workers asked, 1 CPU(s) usable") == 1
        cfg = compose("hardware.num_threads=2")
        assert apply_cpu_limits(cfg, cpus=8, busy=0.0) == (0, 2) and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_gpu_preset_on_this_machine_loads_without_pytorch_worker_warnings(compose):
    """The 8gb preset asks for 4 workers; on a machine with fewer usable CPUs PyTorch warns at every loader
    start unless they are capped (on a machine with 4 or more the check passes either way)."""
    import warnings

    from medseg.data.datamodule import build_data
    from medseg.hardware import apply_cpu_limits

    cfg = compose("hardware=8gb", "hardware.device=cpu", "trainer.precision=32", "hardware.persistent_workers=false")
    before = torch.get_num_threads()
    try:
        apply_cpu_limits(cfg)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = build_data(cfg)
            next(iter(data.train_loader))
    finally:
        torch.set_num_threads(before)
    assert not [w for w in caught if "worker" in str(w.message)], [str(w.message) for w in caught]
    assert data.train_loader.num_workers == min(4, len(os.sched_getaffinity(0)))


def test_num_threads_has_a_default_everywhere(compose):
    from medseg.config.schema import HardwareConfig

    assert HardwareConfig().num_threads is None
    for preset in ("cpu", "4gb", "8gb", "16gb+", "auto"):
        assert compose(f"hardware={preset}").hardware.num_threads is None


def test_the_automatic_thread_count_is_logged_with_its_reason(compose, caplog):
    from medseg.hardware import apply_cpu_limits

    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="medseg.hardware"):
            assert apply_cpu_limits(compose(), cpus=2, busy=1.2) == (0, 1)
            assert apply_cpu_limits(compose(), cpus=2, busy=0.1) == (0, 2)
    finally:
        torch.set_num_threads(before)
    assert "1 PyTorch thread(s): other work keeps about 1.2 of 2 CPU(s) busy now" in caplog.text
    assert "2 PyTorch thread(s): other work keeps about 0.1 of 2 CPU(s) busy now" in caplog.text


def test_the_search_counts_3d_patches_per_volume(compose):
    """3D patches: a loaded volume brings samples_per_volume patches, so data.batch_size (volumes) is the
    largest whole number of volumes whose patches fit, and the effective batch counts patches."""
    cfg = compose("hardware=4gb", "hardware.find_batch_size=true", "data.batch_size=1", tiny=False)
    probed: list[int] = []

    def fits(n: int) -> bool:
        probed.append(n)
        return n <= 7  # 7 patches fit: 3 volumes of 2 patches

    assert search_micro_batch(cfg, fits, per_item=2) == (3, 5)  # 1 x 2 x 16 = 32 patches -> 3 x 2 x 5 = 30
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches) == (3, 5)
    assert min(probed) == 2 and max(probed) <= 32
