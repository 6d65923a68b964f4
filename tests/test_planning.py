"""Planning (issue 21): the fingerprint is computed once, the plan follows nnU-Net v2's rules, fits its
budget, refuses impossible ones, and is ordinary config (command-line keys win)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from medseg.benchmarks.plan_vs_nnunet import fingerprints
from medseg.errors import ConfigError
from medseg.planning.planner import make_plan
from tests.conftest import CONF, ROOT

# nnU-Net v2.8.1's own ExperimentPlanner at its default 8 GB target on the benchmark's fingerprints, as
# `python -m medseg.benchmarks.plan_vs_nnunet` printed them (spacing, patch and batch in medseg's axis order).
NNUNET_8GB = {
    ("ct_totalseg", "3d_fullres"): ([1.5, 1.5, 1.5], [112, 112, 128], 2, 5),
    ("ct_totalseg", "2d"): ([1.5, 1.5], [320, 256], 29, 7),
    ("mri_aniso", "3d_fullres"): ([0.625, 0.625, 3.0], [256, 256, 28], 2, 7),
    ("mri_aniso", "2d"): ([0.625, 0.625], [384, 384], 22, 7),
    ("brain_slabs", "3d_fullres"): ([0.9375, 0.9375, 1.2], [160, 192, 12], 2, 6),
    ("brain_slabs", "2d"): ([0.9375, 0.9375], [160, 192], 20, 6),
    ("images_2d", "2d"): ([1.0, 1.0], [640, 768], 4, 8),
}
PRESETS = sorted(
    float(yaml.safe_load(p.read_text())["hardware"]["memory_gb"])
    for p in (CONF / "hardware").glob("*.yaml")
    if (yaml.safe_load(p.read_text()).get("hardware", {}).get("memory_gb"))
)


@pytest.mark.parametrize(("name", "config"), list(NNUNET_8GB))
def test_plan_agrees_with_nnunet_at_8gb(name: str, config: str) -> None:
    spacing, patch, batch, stages = NNUNET_8GB[(name, config)]
    c = make_plan(fingerprints()[name], 8)["configurations"][config]
    ours = (
        c["target_spacing"]
        if config == "3d_fullres" or len(c["target_spacing"]) == 2
        else [s for a, s in enumerate(c["target_spacing"]) if a != c["slice_axis"]]
    )
    assert np.allclose(ours, spacing, rtol=1e-3)
    assert c["num_stages"] == stages
    steps = [int(np.prod([s[a] for s in c["strides"]])) for a in range(len(patch))]
    assert all(abs(o - t) <= s for o, t, s in zip(c["patch_size"], patch, steps, strict=True))
    assert abs(c["batch_size"] - batch) <= 1


def test_anisotropic_axis_pools_later_and_takes_in_plane_kernels() -> None:
    c = make_plan(fingerprints()["mri_aniso"], 8)["configurations"]["3d_fullres"]
    z = [s[2] for s in c["strides"]]
    assert z[:3] == [1, 1, 1] and 2 in z  # the 3 mm axis waits until the 0.6 mm axes have pooled
    assert c["kernel_sizes"][0] == [3, 3, 1]  # in-plane convolutions first
    assert c["features_per_stage"][-1] == 320 and c["features_per_stage"][0] == 32


@pytest.mark.parametrize("memory_gb", PRESETS)
@pytest.mark.parametrize("network", ["plain", "resenc_m", "resenc_l", "resenc_xl"])
def test_each_preset_plan_fits_its_budget(memory_gb: float, network: str) -> None:
    for name, fp in fingerprints().items():
        for config, c in make_plan(fp, memory_gb, network=network)["configurations"].items():
            assert c["batch_size"] >= 2, (name, config)
            assert c["estimated_memory_gb"] <= memory_gb, (name, config, c["estimated_memory_gb"])
    assert {4.0, 8.0, 24.0, 40.0, 48.0, 80.0} <= set(PRESETS)


def test_larger_budget_plans_larger_patches() -> None:
    fp = fingerprints()["ct_totalseg"]
    sizes = [np.prod(make_plan(fp, gb)["configurations"]["3d_fullres"]["patch_size"]) for gb in (4, 8, 24, 80)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_impossible_budget_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"hardware\.memory_gb=0\.1"):
        make_plan(fingerprints()["ct_totalseg"], 0.1)
    with pytest.raises(ConfigError, match=r"plan\.memory_gb=0\.2: a plan needs a memory budget of at least"):
        make_plan(fingerprints()["ct_totalseg"], 0.2, budget_key="plan.memory_gb")
    c = make_plan(fingerprints()["ct_totalseg"], 0.25)["configurations"]["3d_fullres"]  # the smallest budget
    assert c["estimated_memory_gb"] <= 0.25 and c["num_stages"] >= 3


def test_ct_is_clipped_and_zscored_others_per_case() -> None:
    fps = fingerprints()
    ct = make_plan(fps["ct_totalseg"], 8)["configurations"]["3d_fullres"]["normalization"][0]
    stats = fps["ct_totalseg"]["foreground_intensity"][0]
    assert ct == {
        "scheme": "ct",
        "clip": [stats["percentile_00_5"], stats["percentile_99_5"]],
        "mean": stats["mean"],
        "std": stats["std"],
    }
    brain = make_plan(fps["brain_slabs"], 8)["configurations"]["2d"]["normalization"][0]
    assert brain == {"scheme": "zscore", "nonzero_mask": True}  # cropping to the brain removes > 1/4


def test_ct_zscore_preset_clips_to_the_window_then_zscores() -> None:
    import torch
    from omegaconf import OmegaConf

    from medseg.data.transforms import intensity_transforms

    cfg = OmegaConf.create({"preset": "ct_zscore", "ct_window": [-100.0, 300.0], "mean": [50.0], "std": [80.0]})
    image = torch.linspace(-1000, 1000, 101).reshape(1, 101)
    out = {"image": image.clone()}
    for t in intensity_transforms(cfg):
        out = t(out)
    expected = (image.clamp(-100, 300) - 50) / 80
    assert torch.allclose(torch.as_tensor(out["image"]), expected, atol=1e-5)
    nonzero = OmegaConf.create({"preset": "zscore_nonzero"})
    brain = torch.zeros(1, 10)
    brain[0, 3:7] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = {"image": brain.clone()}
    for t in intensity_transforms(nonzero):
        out = t(out)
    inside = brain[0, 3:7]
    assert torch.allclose(torch.as_tensor(out["image"])[0, 3:7], (inside - inside.mean()) / inside.std(unbiased=False))
    assert torch.as_tensor(out["image"])[0, :3].abs().max() == 0


# ------------------------------------------------------------------------- fingerprint, computed once
def test_fingerprint_is_computed_once_and_reused(compose, monkeypatch) -> None:
    import medseg.planning.fingerprint as fpmod
    from medseg.data.layouts import read_cases

    cfg = compose("data.synthetic.num_cases=4")
    decoded = []
    original = fpmod.read_case

    def counting(data_cfg, case):
        decoded.append(case["id"])
        return original(data_cfg, case)

    monkeypatch.setattr(fpmod, "read_case", counting)
    first = fpmod.dataset_fingerprint(cfg)
    assert len(decoded) == 4
    cases = read_cases(cfg.data, str(cfg.paths.cache_dir)).cases
    path = fpmod.fingerprint_path(cfg, cases, Path(cases[0]["label"]).parents[1])
    assert path.is_file() and path.parent.parent.name == "store"  # kept beside the case store
    stamp = path.stat().st_mtime_ns
    second = fpmod.dataset_fingerprint(cfg)
    assert len(decoded) == 4 and second == first and path.stat().st_mtime_ns == stamp
    # the figures, against an independent reading of the files
    labels = [np.asarray(nib.load(c["label"]).dataobj).astype(int) for c in cases]
    images = [nib.load(c["image"]) for c in cases]
    counts = np.bincount(np.concatenate([lab.ravel() for lab in labels]), minlength=4)
    assert first["class_voxels"] == counts.tolist()
    assert first["spacings"] == [[float(z) for z in im.header.get_zooms()[:3]] for im in images]
    assert first["shapes"] == [list(lab.shape) for lab in labels]
    fg = np.concatenate([np.asarray(im.dataobj)[lab > 0] for im, lab in zip(images, labels, strict=True)])
    assert first["foreground_intensity"][0]["mean"] == pytest.approx(float(fg.mean()), rel=1e-5)
    assert first["foreground_intensity"][0]["percentile_99_5"] == pytest.approx(np.percentile(fg, 99.5), rel=1e-5)
    # a changed case file is a new fingerprint; an unchanged one is not
    os.utime(cases[1]["image"], ns=(stamp, stamp + 10**9))
    fpmod.dataset_fingerprint(cfg)
    assert len(decoded) == 8


# ------------------------------------------------------------------------- the plan is config
def test_plan_auto_sets_config_values_and_command_line_wins(compose) -> None:
    from omegaconf import OmegaConf

    from medseg.planning.apply import current_plan

    small = ("data.synthetic.num_cases=4", "data.synthetic.shape=[32,32,8]", "data.dims=3")
    cfg = compose("plan=auto", *small, tiny=False)
    plan = current_plan(cfg)["configurations"]["3d_fullres"]
    assert cfg.model._target_ == "medseg.models.planned.PlannedUNet"
    assert list(cfg.data.patch_size) == plan["patch_size"]
    assert cfg.data.batch_size == plan["batch_size"]
    assert OmegaConf.to_container(cfg.model.strides) == plan["strides"]
    assert list(cfg.model.features_per_stage) == plan["features_per_stage"]
    assert list(cfg.data.spacing) == pytest.approx(plan["target_spacing"])
    assert cfg.trainer.accumulate_grad_batches == 1
    mine = compose("plan=auto", *small, "data.batch_size=3", "model.features_per_stage=[8,16,32,64]", tiny=False)
    assert mine.data.batch_size == 3 and list(mine.model.features_per_stage) == [8, 16, 32, 64]
    assert list(mine.data.patch_size) == plan["patch_size"]  # the rest is still planned
    # modes that do not plan see the fallbacks (the checkpoint brings the trained values)
    assert compose("plan=auto", *small, "mode=predict", tiny=False).data.patch_size is None


def test_cfg_job_prints_the_planned_values_and_a_command_line_key_wins(compose, run_cli, tmp_path: Path) -> None:
    """`--cfg job` shows what the run will train: the plan's values, resolved (Hydra alone printed
    `${plan:...}`), with a key given on the command line in place of the planned one; nothing is run."""
    from medseg.planning.apply import current_plan

    small = ("data.synthetic.num_cases=4", "data.synthetic.shape=[32,32,8]", "data.dims=3")
    plan = current_plan(compose("plan=auto", *small, tiny=False))["configurations"]["3d_fullres"]
    proc = run_cli("plan=auto", *small, "data.batch_size=3", "+db_password=hunter2", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hunter2" not in proc.stdout + proc.stderr  # resolved, and secrets masked as in the run's files
    shown = yaml.safe_load(proc.stdout)
    assert shown["model"]["_target_"] == "medseg.models.planned.PlannedUNet"
    assert shown["data"]["patch_size"] == plan["patch_size"] and shown["model"]["strides"] == plan["strides"]
    assert shown["data"]["batch_size"] == 3
    assert not (tmp_path / "run").exists()


def test_default_plans_msd_and_not_the_demo(compose) -> None:
    from medseg.planning.apply import apply_default_plan

    demo = compose()
    assert apply_default_plan(demo, overrides=[]) == "none"
    assert demo.model._target_ == "medseg.models.unet.UNet"
    msd = compose("data=msd", "data.root=/nowhere", "data.batch_size=5")
    assert apply_default_plan(msd, overrides=["data=msd", "data.root=/nowhere", "data.batch_size=5"]) == "auto"
    assert msd.model._target_ == "medseg.models.planned.PlannedUNet"
    assert msd.plan.name == "auto" and msd.data.batch_size == 5
    assert str(msd.data._get_node("patch_size")._value()).startswith("${plan:")
    own = compose("data=msd", "data.root=/nowhere", "model.channels=[4,8]")
    apply_default_plan(own, overrides=["data=msd", "model.channels=[4,8]"])
    assert own.model._target_ == "medseg.models.unet.UNet"  # a key of the configured model keeps it


# ------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_mode_plan_then_planned_training_then_predict_and_evaluate(run_cli, tmp_path: Path) -> None:
    tiny = ["data.synthetic.num_cases=4", "data.synthetic.shape=[32,32,8]", "data.val_percent=25", "logger=none"]
    proc = run_cli("mode=plan", *tiny)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "configuration 2d:" in proc.stdout and "estimated memory / step" in proc.stdout
    doc = json.loads((tmp_path / "run" / "plan.json").read_text())
    for key in ("target_spacing", "patch_size", "batch_size", "strides", "features_per_stage", "normalization"):
        assert key in doc["configurations"]["2d"]
    train = run_cli(
        "plan=auto",
        *tiny,
        "data.batch_size=2",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.progress_bar=false",
        "hydra.run.dir=" + str(tmp_path / "t"),
    )
    assert train.returncode == 0, train.stderr[-3000:]
    log = (tmp_path / "t" / "run.log").read_text() if (tmp_path / "t" / "run.log").exists() else train.stderr
    assert "plan: auto (plain, 2d" in log + train.stderr + train.stdout
    assert (tmp_path / "t" / "plan.json").is_file()
    ckpt = tmp_path / "t" / "checkpoints" / "last.pt"
    evaluate = run_cli("mode=evaluate", f"ckpt={ckpt}", "logger=none", *tiny[:2])
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    import torch

    stored = yaml.safe_load(torch.load(ckpt, weights_only=True)["config_yaml"])
    assert stored["model"]["_target_"] == "medseg.models.planned.PlannedUNet"
    assert stored["data"]["batch_size"] == 2  # the command line beat the plan
    assert isinstance(stored["model"]["strides"], list)


NNUNET_PYTHON = os.environ.get("MEDSEG_NNUNET_PYTHON", "/work/nnunet-venv/bin/python")


@pytest.mark.slow
@pytest.mark.skipif(not Path(NNUNET_PYTHON).is_file(), reason=f"nnU-Net's environment {NNUNET_PYTHON} is absent")
def test_benchmark_runs_nnunet_and_agrees(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "cmp.json"
    args = ["--quick", "--json", str(out), "--nnunet-python", NNUNET_PYTHON]
    proc = subprocess.run(
        [sys.executable, "-m", "medseg.benchmarks.plan_vs_nnunet", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert len(report) == 7 and all(all(r["agreement"].values()) for r in report)


def test_hardware_auto_keeps_the_planned_keys(compose) -> None:
    from medseg.hardware import resolve_auto_hardware

    small = ("data.synthetic.num_cases=4", "data.synthetic.shape=[32,32,8]")
    cfg = compose("plan=auto", "hardware=auto", *small, tiny=False)
    planned_batch = cfg.data.batch_size
    assert resolve_auto_hardware(cfg, overrides=["plan=auto", "hardware=auto", *small]) == "cpu"
    assert cfg.trainer.accumulate_grad_batches == 1  # the cpu preset says 4; the plan's whole batch stays
    assert cfg.data.batch_size == planned_batch and cfg.data.scale == 1.0
    assert str(cfg.data._get_node("batch_size")._value()).startswith("${plan:")
