"""Every model builds from its config, returns logits of the input's size, and trains a step on CPU."""

from __future__ import annotations

import logging

import pytest
import torch

from medseg.errors import ConfigError
from medseg.models.factory import build_model, describe_model

CLASSES = 3

# (config name, overrides that keep it tiny, dims it supports, input side). Sizes are the smallest
# each architecture accepts: UNETR patches are 16 pixels, SwinUNETR needs 64 (5 halvings).
MODELS = [
    ("unet", ["model.channels=[8,16,32]"], (2, 3), 32),
    ("attention_unet", ["model.channels=[8,16,32]"], (2, 3), 32),
    ("segresnet", ["model.init_filters=8", "model.blocks_down=[1,1,1]", "model.blocks_up=[1,1]"], (2, 3), 32),
    ("dynunet", ["model.filters=[8,16,32]"], (2, 3), 32),
    (
        "unetr",
        ["model.hidden_size=48", "model.mlp_dim=96", "model.num_heads=4", "model.feature_size=8"],
        (2, 3),
        32,
    ),
    ("swinunetr", ["model.feature_size=12", "model.depths=[1,1,1,1]", "model.num_heads=[1,1,1,1]"], (2,), 64),
    ("planned_unet", ["model.features_per_stage=[8,16,32]"], (2, 3), 32),
]
# 3D convolutions are slow on a shared CPU: 3D cases use 16^3 where the model allows it, and all but
# the default model's 3D case run with the slow tests.
CASES = [
    pytest.param(
        name,
        over,
        dims,
        side if dims == 2 or name in ("unetr", "swinunetr") else 16,
        id=f"{name}-{dims}d",
        marks=[pytest.mark.slow] if dims == 3 and name != "unet" else [],
    )
    for name, over, all_dims, side in MODELS
    for dims in all_dims
]


def _size_overrides(dims: int, side: int) -> list[str]:
    return [f"data.dims={dims}", f"data.image_size=[{side},{side}]", f"data.patch_size=[{side},{side},{side}]"]


def _build(compose, name: str, overrides: list[str], dims: int, side: int) -> torch.nn.Module:
    cfg = compose(f"model={name}", *overrides, *_size_overrides(dims, side))
    torch.manual_seed(0)
    return build_model(cfg.model, 1, CLASSES, dims)


def _train_step(model: torch.nn.Module, dims: int, side: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One SGD step; returns the training-mode output and the parameters before the step."""
    from monai.losses import DiceCELoss

    images = torch.randn(2, 1, *([side] * dims))
    labels = torch.randint(0, CLASSES, (2, 1, *([side] * dims)))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    out = model(images)
    logits = out[0] if isinstance(out, list) else out
    loss = DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels)
    loss.backward()
    assert torch.isfinite(loss)
    optimizer.step()
    return out, before


@pytest.mark.parametrize(("name", "overrides", "dims", "side"), CASES)
def test_model_builds_predicts_input_size_and_trains_a_step(compose, name, overrides, dims, side):
    model = _build(compose, name, overrides, dims, side)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 1, *([side] * dims)))
    assert logits.shape == (1, CLASSES, *([side] * dims))

    _, before = _train_step(model, dims, side)
    changed = [k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert len(changed) > len(before) // 2, f"{name}: only {len(changed)} of {len(before)} tensors updated"


def test_dynunet_deep_supervision_gives_full_size_heads_in_training_only(compose):
    model = _build(
        compose,
        "dynunet",
        ["model.filters=[8,16,32,64]", "model.deep_supervision=true", "model.deep_supr_num=2"],
        2,
        32,
    )
    out, _ = _train_step(model, 2, 32)
    assert isinstance(out, list) and len(out) == 3
    assert all(o.shape == (2, CLASSES, 32, 32) for o in out)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, CLASSES, 32, 32)


def test_dynunet_deep_supervision_too_deep_is_a_config_error(compose):
    cfg = compose("model=dynunet", "model.filters=[8,16,32]", "model.deep_supervision=true", "model.deep_supr_num=3")
    with pytest.raises(ConfigError, match="deep_supr_num"):
        build_model(cfg.model, 1, CLASSES, 2)


def test_deep_supervision_wraps_the_loss_and_trains_end_to_end(compose, tmp_path):
    import json

    from medseg.tasks.build import build_train_loss
    from medseg.tasks.train import run_train

    cfg = compose(
        "model=dynunet",
        "model.filters=[8,16,32]",
        "model.deep_supervision=true",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2",
    )
    model = build_model(cfg.model, 1, CLASSES, 2)
    assert type(build_train_loss(cfg.trainer.loss, model)).__name__ == "DeepSupervised"
    best = run_train(cfg)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    record = history[-1] if isinstance(history, list) else history["epochs"][-1]
    assert record["val/dice"] == pytest.approx(best)
    assert 0.0 <= record["train/dice"] <= 1.0  # metrics from the full-resolution head
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_unet_width_and_bilinear(compose):
    full = _build(compose, "unet", [], 2, 32)
    half = _build(compose, "unet", ["model.width=0.5"], 2, 32)
    ratio = sum(p.numel() for p in half.parameters()) / sum(p.numel() for p in full.parameters())
    assert 0.2 < ratio < 0.3  # conv weights scale with width squared
    bilinear = _build(compose, "unet", ["model.bilinear=true"], 2, 32)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in bilinear.modules())
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in full.modules())


@pytest.mark.parametrize(
    ("name", "overrides", "inner"),
    [
        ("unet", ["model.channels=[8,16,32]"], torch.nn.Conv2d),
        ("segresnet", ["model.init_filters=8", "model.blocks_down=[1,1,1]", "model.blocks_up=[1,1]"], torch.nn.Conv2d),
    ],
)
def test_grad_checkpointing_recomputes_blocks_and_keeps_gradients(compose, name, overrides, inner):
    grads, calls = {}, {}
    for flag in (False, True):
        model = _build(compose, name, [*overrides, f"model.grad_checkpointing={str(flag).lower()}"], 2, 32)
        assert model.grad_checkpointing is flag
        count = [0]
        for m in model.modules():
            if isinstance(m, inner):
                m.register_forward_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        torch.manual_seed(1)
        x = torch.randn(2, 1, 32, 32)
        model.train()
        model(x).square().mean().backward()
        calls[flag] = count[0]
        grads[flag] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert calls[True] > calls[False]  # convolutions inside checkpointed blocks run again in backward
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-4, atol=1e-6)


def test_a_checkpointed_model_copies_independently(compose):
    import copy

    model = _build(compose, "segresnet", [*MODELS[2][1], "model.grad_checkpointing=true"], 2, 32).train()
    twin = copy.deepcopy(model)  # as early stopping and EMA do
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
    x = torch.randn(1, 1, 32, 32)
    assert not torch.allclose(model(x), twin(x))
    twin.set_grad_checkpointing(False)
    assert model.grad_checkpointing is True and twin.grad_checkpointing is False


def test_describe_model_logs_architecture_and_parameter_counts(compose, caplog):
    model = _build(compose, "attention_unet", ["model.channels=[8,16,32]"], 2, 32)
    next(model.parameters()).requires_grad_(False)  # one frozen tensor: trainable < total
    with caplog.at_level(logging.INFO, logger="medseg.models.factory"):
        facts = describe_model(model, compose("model=attention_unet").model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert facts["architecture"] == "AttentionUNet"
    assert (facts["params_total"], facts["params_trainable"]) == (total, trainable)
    assert trainable < total
    assert f"{total:,} parameters ({trainable:,} trainable)" in caplog.text and "AttentionUNet" in caplog.text


def test_unetr_without_an_input_size_is_a_config_error(compose):
    cfg = compose("model=unetr", "data.dims=2", "data.image_size=null")
    with pytest.raises(ConfigError, match="data.image_size"):
        build_model(cfg.model, 1, CLASSES, 2)


def test_unetr_resizes_other_input_sizes(compose):
    model = _build(compose, "unetr", MODELS[4][1], 2, 32).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 48, 40)).shape == (1, CLASSES, 48, 40)


def test_swinunetr_rejects_sizes_it_cannot_halve_five_times(compose):
    model = _build(compose, "swinunetr", MODELS[5][1], 2, 64).eval()
    with pytest.raises(ConfigError, match="divisible by 32"), torch.no_grad():
        model(torch.randn(1, 1, 48, 48))


@pytest.mark.slow
def test_swinunetr_3d(compose):
    model = _build(compose, "swinunetr", MODELS[5][1], 3, 64)
    out, _ = _train_step(model, 3, 64)
    assert out.shape == (2, CLASSES, 64, 64, 64)


# ------------------------------------------------------------------ SegFormer (optional extra)


def test_segformer_b0_logits_at_input_size_and_trains(compose):
    pytest.importorskip("transformers")
    model = _build(compose, "segformer_b0", [], 2, 64)
    assert describe_model(model, compose("model=segformer_b0").model)["architecture"] == "SegFormer-b0"
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, CLASSES, 64, 64)
    _, before = _train_step(model, 2, 64)
    changed = [k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert len(changed) > len(before) // 2


def test_segformer_sizes_follow_the_mit_variants(compose):
    pytest.importorskip("transformers")
    sizes = {}
    for variant in ("b0", "b1", "b2", "b3", "b4", "b5"):
        cfg = compose(f"model=segformer_{variant}")
        sizes[variant] = (list(cfg.model.hidden_sizes), list(cfg.model.depths), cfg.model.decoder_hidden_size)
    assert sizes["b0"] == ([32, 64, 160, 256], [2, 2, 2, 2], 256)
    assert sizes["b2"] == ([64, 128, 320, 512], [3, 4, 6, 3], 768)
    assert sizes["b5"] == ([64, 128, 320, 512], [3, 6, 40, 3], 768)


def test_segformer_is_2d_only(compose):
    pytest.importorskip("transformers")
    cfg = compose("model=segformer_b0")
    with pytest.raises(ConfigError, match="2D only"):
        build_model(cfg.model, 1, CLASSES, 3)


def test_segformer_pretrained_path_loads_local_weights(compose, tmp_path):
    pytest.importorskip("transformers")
    source = _build(compose, "segformer_b0", [], 2, 64)
    source.net.save_pretrained(str(tmp_path / "weights"))
    torch.save(source.net.state_dict(), tmp_path / "weights.pt")
    for path in (tmp_path / "weights", tmp_path / "weights.pt"):
        cfg = compose("model=segformer_b0", f"model.pretrained_path={path}")
        loaded = build_model(cfg.model, 1, CLASSES + 2, 2)  # another number of classes: new classifier
        a, b = source.net.state_dict(), loaded.net.state_dict()
        same = [k for k in a if a[k].shape == b[k].shape and torch.equal(a[k], b[k])]
        assert len(same) == len(a) - 2  # all but the classifier weight and bias
        assert b["decode_head.classifier.weight"].shape[0] == CLASSES + 2


def test_segformer_missing_pretrained_path_is_a_checkpoint_error(compose, tmp_path):
    pytest.importorskip("transformers")
    from medseg.errors import CheckpointError

    cfg = compose("model=segformer_b0", f"model.pretrained_path={tmp_path / 'nope'}")
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model(cfg.model, 1, CLASSES, 2)


def test_segformer_without_transformers_names_the_extra(compose, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    cfg = compose("model=segformer_b0")
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[segformer\]"'):
        build_model(cfg.model, 1, CLASSES, 2)
