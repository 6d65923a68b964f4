"""On a GPU: each hardware preset's plan trains within its memory budget.

For every preset with hardware.memory_gb, the plain U-Net plan of a TotalSegmentator-shaped CT fingerprint
(3d_fullres and 2d) is built (PlannedUNet, deep supervision), and a few SGD steps run at the planned batch
and patch in mixed precision with Dice + cross-entropy under the training loss's deep supervision, as training does. The
peak of torch.cuda.max_memory_allocated must stay within the budget. Skipped without CUDA (or a card
smaller than the budget).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.gpu
CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = {
    p.stem: float(yaml.safe_load(p.read_text())["hardware"]["memory_gb"])
    for p in sorted((CONF / "hardware").glob("*.yaml"))
    if yaml.safe_load(p.read_text()).get("hardware", {}).get("memory_gb")
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("preset", sorted(PRESETS, key=PRESETS.get))
@pytest.mark.parametrize("config", ["3d_fullres", "2d"])
def test_preset_plan_trains_within_its_budget(preset: str, config: str) -> None:
    from monai.losses import DiceCELoss

    from medseg.benchmarks.plan_vs_nnunet import fingerprints
    from medseg.losses.deep_supervision import DeepSupervised
    from medseg.models.planned import PlannedUNet
    from medseg.planning.planner import make_plan

    budget = PRESETS[preset]
    if torch.cuda.get_device_properties(0).total_memory < budget * 1e9:
        pytest.skip(f"the GPU has less than {budget:g} GB")
    fp = fingerprints()["ct_totalseg"]
    c = make_plan(fp, budget)["configurations"][config]
    classes = int(fp["num_classes"])
    dims = len(c["patch_size"])
    device = torch.device("cuda")
    model = PlannedUNet(1, classes, dims, c["features_per_stage"], c["strides"], c["kernel_sizes"]).to(device)
    loss_fn = DeepSupervised(DiceCELoss(to_onehot_y=True, softmax=True), "nnunet")  # as training builds it
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    scaler = torch.amp.GradScaler("cuda")
    model.train()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        images = torch.randn(c["batch_size"], 1, *c["patch_size"], device=device)
        labels = torch.randint(0, classes, (c["batch_size"], 1, *c["patch_size"]), device=device).float()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = loss_fn(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() / 1e9
    print(
        f"{preset} {config}: batch {c['batch_size']} patch {c['patch_size']}: peak {peak:.2f} GB of {budget:g}"
        f" (estimate {c['estimated_memory_gb']:.2f})"
    )
    assert peak <= budget, f"{preset} {config}: peak {peak:.2f} GB > {budget:g} GB"
