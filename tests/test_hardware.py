"""Hardware presets: every preset composes with every model; hardware=auto; the micro-batch search."""

from __future__ import annotations

import logging
import os
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
    found = search_micro_batch(cfg, fits, SimpleNamespace(type="cuda"))
    assert found == (6, 3)  # 4gb: 1 x 16 -> 6 x 3 (effective 18, the closest to 16)
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches) == (6, 3)
    assert max(model.seen) > 6  # it did run into the injected out-of-memory error
    assert all(p.grad is None for p in model.parameters())  # probes leave no gradients behind


def test_search_is_skipped_without_cuda(compose):
    cfg = compose("hardware.find_batch_size=true", tiny=False)
    before = (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches)
    assert search_micro_batch(cfg, lambda n: True, torch.device("cpu")) is None
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches) == before


def test_search_never_exceeds_the_effective_batch(compose):
    cfg = compose("hardware=16gb+", "hardware.find_batch_size=true", tiny=False)
    assert search_micro_batch(cfg, lambda n: True, SimpleNamespace(type="cuda")) == (16, 1)


def test_fit_micro_batch_rebuilds_the_loader_and_leaves_the_weights(compose, monkeypatch):
    import medseg.hardware as hw
    from medseg.data.datamodule import build_data
    from medseg.models.factory import build_model
    from medseg.precision import Precision
    from medseg.tasks.build import build_loss

    cfg = compose(
        "hardware.find_batch_size=true",
        "data.batch_size=1",
        "trainer.accumulate_grad_batches=4",
        "model.channels=[8,16]",
        "model.norm=batch",  # running statistics: the probes' forward passes must not leak into them
    )
    data = build_data(cfg)
    model = build_model(cfg.model, data.info.in_channels, data.info.num_classes, 2)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    search = hw.search_micro_batch
    # the real probe runs on the CPU; the search believes it is on a GPU
    monkeypatch.setattr(hw, "search_micro_batch", lambda c, fits, device: search(c, fits, SimpleNamespace(type="cuda")))
    loader = hw.fit_micro_batch(
        cfg, model, build_loss(cfg.trainer.loss), data, torch.device("cpu"), Precision("32", None, False)
    )
    assert loader.batch_size == 4 and cfg.data.batch_size == 4 and cfg.trainer.accumulate_grad_batches == 1
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


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


def test_busy_cpus_is_the_load_on_this_process_share(monkeypatch):
    import medseg.hardware as hardware

    monkeypatch.setattr(hardware.os, "getloadavg", lambda: (12.0, 0.0, 0.0))
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 16)
    assert hardware.busy_cpus(4) == 3.0  # a quarter of the machine's CPUs carries a quarter of its load


def test_usable_cpus_is_the_affinity_mask(monkeypatch):
    import medseg.hardware as hardware

    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    assert hardware.usable_cpus() == 2


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
