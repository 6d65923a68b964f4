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


# ---------------------------------------------------------------- each data layout owns its keys
LAYOUTS = ["msd", "folder", "totalseg", "uwmgi", "synthetic"]
OWN_KEYS = {  # the keys only some layouts have, and which
    "images_dir": {"folder"},
    "masks_dir": {"folder"},
    "mask_suffix": {"folder"},
    "colour_map": {"folder"},
    "mask_values": {"folder", "msd"},
    "structures": {"totalseg"},
    "synthetic": {"synthetic"},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_has_the_shared_keys_and_only_its_own(compose, layout):
    from medseg.config.schema import LAYOUT_SCHEMAS, DataConfig

    cfg = compose(f"data={layout}", tiny=False)
    assert OmegaConf.get_type(cfg.data) is LAYOUT_SCHEMAS[layout] and cfg.data.layout == layout
    shared = set(OmegaConf.structured(DataConfig))
    assert shared <= set(cfg.data)
    assert set(cfg.data) - shared == {key for key, owners in OWN_KEYS.items() if layout in owners}
    text = (CONF / "data" / f"{layout}.yaml").read_text()
    assert "unused by" not in text  # no other layout's keys restated
    assert "batch_size" not in text and "store:" not in text  # shared keys live in conf/data/base.yaml


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_layouts_schema_defaults_are_its_yaml_values(layout):
    """A restored checkpoint and evaluate build a layout's data config from its schema: it must say what
    conf/data/base.yaml + conf/data/<layout>.yaml (and data.augment's default, conf/augment/flips.yaml) say."""
    from medseg.config.schema import LAYOUT_SCHEMAS

    schema = OmegaConf.to_container(OmegaConf.structured(LAYOUT_SCHEMAS[layout]))
    base = OmegaConf.load(CONF / "data" / "base.yaml")
    own = OmegaConf.load(CONF / "data" / f"{layout}.yaml")
    assert [str(d) for d in own.pop("defaults")] == [f"/medseg_data_{layout}@_here_", "base", "_self_"]
    yaml_values = OmegaConf.to_container(OmegaConf.merge(base, own))
    yaml_values["augment"] = OmegaConf.to_container(OmegaConf.load(CONF / "augment" / "flips.yaml"))  # its group
    assert set(yaml_values) == set(schema), "every key of the schema has its default and comment in conf/data"

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    flat = dict(leaves(schema))
    for key, value in leaves(yaml_values):
        assert flat[key] == value, f"data={layout}: {key} is {value!r} in YAML, {flat[key]!r} in the schema"


def test_layout_keys_work_on_the_command_line_as_before(compose):
    assert compose("data=folder", "data.mask_suffix=_mask", "data.images_dir=im").data.mask_suffix == "_mask"
    assert compose("data=folder", "data.colour_map=[[0,0,0],[255,0,0]]").data.colour_map[1] == [255, 0, 0]
    assert compose("data=totalseg", "data.structures=[liver,spleen]").data.structures == ["liver", "spleen"]
    assert compose("data=msd", "data.mask_values=[0,255]").data.mask_values == [0, 255]
    assert compose("data.synthetic.num_cases=3").data.synthetic.num_cases == 3
    assert compose("experiment=pytorch_unet").data.mask_suffix == "_mask"


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["data=msd", "data.mask_suffix=x"], "data.mask_suffix is a key of data=folder, not of data=msd"),
        (["data=folder", "data.structures=[liver]"], "data.structures is a key of data=totalseg, not of data=folder"),
        (["data=uwmgi", "data.synthetic.num_cases=3"], "data.synthetic is a key of data=synthetic, not of data=uwmgi"),
        (["data.mask_values=[0,255]"], "data.mask_values is a key of data=msd and data=folder, not of data=synthetic"),
    ],
)
def test_a_key_of_another_layout_is_refused_in_one_line_naming_its_layout(compose, overrides, line):
    from medseg.cli import describe_user_error

    with pytest.raises(ConfigCompositionException) as info:
        compose(*overrides, tiny=False)
    message = describe_user_error(info.value)
    assert message is not None and message.startswith(line) and "\n" not in message
    with pytest.raises(ConfigCompositionException) as info:  # a typo stays a typo
        compose("data=folder", "data.mask_suffx=x", tiny=False)
    assert "is a key of" not in describe_user_error(info.value)
