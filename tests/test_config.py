"""Every option of every config group composes; typos and wrong types fail at composition."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from tests.conftest import CONF

GROUPS = ["model", "data", "optimizer", "scheduler", "hardware", "logger", "trainer", "paths"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes(compose, group):
    assert options(group), f"conf/{group} has no options"
    for option in options(group):
        cfg = compose(f"{group}={option}")
        assert cfg.mode == "train"


def test_defaults_and_contract_keys(compose):
    cfg = compose(tiny=False)
    for key in ("mode", "seed", "ckpt", "task_name", "tags"):
        assert key in cfg
    # the user-facing contract of ARCHITECTURE.md
    for key in (
        "trainer.max_epochs",
        "data.batch_size",
        "trainer.accumulate_grad_batches",
        "optimizer.lr",
        "trainer.resume",
        "data.scale",
        "data.val_percent",
        "data.num_classes",
        "trainer.precision",
        "model.bilinear",
        "data.root",
        "predict.input",
        "predict.output_dir",
        "predict.threshold",
        "predict.viz",
        "predict.save",
    ):
        node, _, leaf = key.rpartition(".")
        assert leaf in OmegaConf.select(cfg, node), key


def test_typo_in_key_fails_at_composition(compose):
    with pytest.raises(ConfigCompositionException) as info:
        compose("trainer.max_epoch=3")
    assert "max_epoch" in str(info.value.__cause__ or info.value)


def test_wrong_type_fails_at_composition(compose):
    with pytest.raises(ConfigCompositionException):
        compose("trainer.max_epochs=abc")


def test_hardware_preset_sets_batch_and_precision(compose):
    cfg = compose("hardware=4gb", tiny=False)
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches, cfg.trainer.precision) == (1, 16, "16-mixed")
    assert cfg.data.scale == 0.25
    # the command line wins over the preset
    cfg = compose("hardware=4gb", "data.batch_size=3", tiny=False)
    assert cfg.data.batch_size == 3
