"""The demo models of the deploy tests, as checkpoints and export folders (shared by tests/test_deploy.py and
tests/test_deploy_ensemble.py through the session fixtures in tests/conftest.py: trained once per session)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from tests.conftest import CONF, TINY

MODELS = {
    # 2D with in-plane scale 0.5 (resizing in and out), 2.5D with context slices, 3D patches + sliding window
    "2d": {"data": {"scale": 0.5}},
    "2.5d": {"data": {"context_slices": 1}, "in_channels": 3},
    "3d": {"data": {"dims": 3, "patch_size": [16, 16, 8], "pad_divisible": 8}},
    # data.spacing: the scan (0.7 x 0.8 x 2.0 mm) is resampled to another grid and predicted back onto its own;
    # the 3D one as plan=auto sets up a CT model (its clipped z-score)
    "3d-spacing": {
        "data": {
            "dims": 3,
            "patch_size": [16, 16, 8],
            "pad_divisible": 8,
            "spacing": [1.0, 1.1, 1.5],
            "intensity": {"preset": "ct_zscore", "ct_window": [-50.0, 250.0], "mean": [100.0], "std": [80.0]},
        }
    },
    "2d-spacing": {"data": {"spacing": [1.0, 1.1, 1.5]}},
}
FAST = ["model.channels=[4,8]", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
FAST += ["report.enabled=false", "report.overlay_cases=0", "trainer.log_images_every_n_epochs=0"]


def compose_cfg(cache_dir: Path, out: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from medseg.config import register_configs

    register_configs()
    base = [*TINY, *FAST, f"paths.cache_dir={cache_dir}", f"paths.output_dir={out}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=base + list(overrides))


def variant(trained: Path, dest: Path, spec: dict, seed: int | None = None) -> Path:
    """The trained demo checkpoint turned into another demo model: its stored data settings changed and
    seeded weights of the right shape (seed: by default the length of dest's name), with a sharpened head so
    that the masks hold several classes (one training step leaves near-uniform probabilities)."""
    import torch
    import yaml

    from medseg.models.unet import UNet

    payload = torch.load(trained, map_location="cpu", weights_only=True)
    cfg = yaml.safe_load(payload["config_yaml"])
    for key, value in spec["data"].items():
        cfg["data"][key] = {**cfg["data"][key], **value} if isinstance(value, dict) else value
    payload["config_yaml"] = yaml.safe_dump(cfg)
    facts = payload["dataset"]
    facts["in_channels"], facts["dims"] = spec.get("in_channels", 1), int(cfg["data"].get("dims", 2))
    torch.manual_seed(len(dest.name) if seed is None else seed)
    model = UNet(facts["in_channels"], facts["num_classes"], facts["dims"], channels=[4, 8])
    with torch.no_grad():
        model.head.weight.mul_(30.0)
    payload["model"] = model.state_dict()
    path = dest / "best.pt"
    torch.save(payload, path)
    return path


def export_models(cache_dir, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """The demo models as checkpoints and exports: name -> (best.pt, export folder)."""
    from medseg.tasks.export import run_export
    from medseg.tasks.train import run_train

    run = tmp_path_factory.mktemp("train")
    run_train(compose_cfg(cache_dir, run))
    out = {}
    for name, spec in MODELS.items():
        dest = tmp_path_factory.mktemp(f"model_{name}")
        ckpt = variant(run / "checkpoints" / "best.pt", dest, spec)
        cfg = compose_cfg(cache_dir, dest, "mode=export", f"ckpt={ckpt}", f"export.output_dir={dest}/export")
        folder = run_export(cfg)
        out[name] = (ckpt, folder)
    return out


def write_scan(tmp_path_factory) -> Path:
    """A volume of a size no model was trained on (not divisible by 16, odd slice count)."""
    rng = np.random.default_rng(3)
    z, y, x = np.meshgrid(np.arange(11), np.arange(27), np.arange(30), indexing="ij")
    vol = ((x - 14) ** 2 + (y - 12) ** 2 < 60).astype(np.float32).transpose(2, 1, 0) * 200
    vol += rng.normal(0, 20, vol.shape).astype(np.float32) + 3 * z.transpose(2, 1, 0)
    path = tmp_path_factory.mktemp("scan") / "scan.nii.gz"
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([0.7, 0.8, 2.0, 1.0])), path)
    return path
