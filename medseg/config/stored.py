"""A checkpoint's stored config is data: what may be taken from it, and how each value is checked.

A checkpoint carries the config of its training run as YAML text. A file someone hands us must not
choose what runs, where we write or what we allocate, so the text is parsed as plain YAML (no
OmegaConf interpolation, no resolver, no YAML tags) and only the keys of STORED_KEYS are taken; the
rest of the text is never looked at. Each taken value is checked as a command-line value is (the
ranges of medseg.config.validate), and a value holding `${...}` is refused: a real checkpoint holds
its resolved config. The model config is checked by medseg.models.stored_model (allow-listed
classes, their own constructor keywords, plain values).

Nothing on the list is a path, a folder or a file name: paths.*, data.root, data.store.dir,
data.split_file, images_dir / masks_dir / mask_suffix, hydra.*, logger.* and output folders always
come from the run's own config.

To let a checkpoint carry a new architecture or preprocessing key, add one row to STORED_KEYS and,
for a number, a Range with the same key to medseg/config/validate.py (tests/test_trust.py checks
that every numeric row has one and that the key exists in the schema).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medseg.config.inert import refuse_interpolation, stored_value_error
from medseg.errors import CheckpointError, ConfigError

_ABSENT = object()
NAME = re.compile(r"[^\x00-\x1f/\\]{1,200}")  # a class name: printable, no path separator
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")  # a structure name: selects <name>.nii.gz only
WORD = re.compile(r"[A-Za-z0-9_]{1,64}")
MAX_NAMES = 1024


def ranged(value: Any) -> str | None:
    """Numbers: type and range are checked by medseg.config.validate, as on the command line."""
    return None


def one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def word(value: Any) -> str | None:
    return None if isinstance(value, str) and WORD.fullmatch(value) else "must be a plain word"


def layout(value: Any) -> str | None:
    from medseg.data.layouts import READERS

    return one_of(*READERS)(value)


def precision(value: Any) -> str | None:
    from medseg.precision import CHOICES

    return one_of(*CHOICES)(value)


def names(pattern: re.Pattern[str]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None:
            return None
        ok = isinstance(value, list) and len(value) <= MAX_NAMES
        if ok and all(isinstance(v, str) and pattern.fullmatch(v) and v.strip(".") for v in value):
            return None
        return f"must be null or a list of at most {MAX_NAMES} names matching {pattern.pattern}"

    return check


@dataclass(frozen=True)
class StoredKey:
    key: str  # dotted, as in the composed config
    check: Callable[[Any], str | None] = ranged  # what the value must be, or None when it is fine


STORED_KEYS: tuple[StoredKey, ...] = (
    # the training run's split, so evaluate scores its validation cases (older checkpoints)
    StoredKey("seed"),
    StoredKey("data.val_percent"),
    StoredKey("data.fold"),
    StoredKey("data.num_folds"),
    # what the network was trained on and how inputs reach it
    StoredKey("trainer.precision", precision),
    StoredKey("data.layout", layout),
    StoredKey("data.dims"),
    StoredKey("data.slice_axis"),
    StoredKey("data.num_classes"),
    StoredKey("data.class_names", names(NAME)),
    StoredKey("data.scale"),
    StoredKey("data.image_size"),
    StoredKey("data.spacing"),
    StoredKey("data.patch_size"),
    StoredKey("data.pad_divisible"),
    StoredKey("data.context_slices"),
    StoredKey("data.intensity.preset", word),
    StoredKey("data.intensity.ct_window"),
    StoredKey("data.intensity.percentiles"),
    StoredKey("data.intensity.mean"),
    StoredKey("data.intensity.std"),
    StoredKey("data.store.image_dtype", one_of("float32", "float16")),
    StoredKey("data.augment.test_time_mirroring", flag),  # the recipe's default for predict.tta
    # how label files become classes (structure names only select files inside this run's data.root)
    StoredKey("data.mask_values"),
    StoredKey("data.colour_map"),
    StoredKey("data.structures", names(PLAIN_NAME)),
    # the built-in demo data, generated again under this run's paths.cache_dir
    StoredKey("data.synthetic.num_cases"),
    StoredKey("data.synthetic.shape"),
    StoredKey("data.synthetic.num_classes"),
    StoredKey("data.synthetic.seed"),
)


def read_stored_config(text: Any, source: str) -> dict[str, Any]:
    """The allow-listed, checked values of a stored config as plain nested data (model included)."""
    plain = parse_stored_yaml(text, source)
    taken: dict[str, Any] = {}
    for row in STORED_KEYS:
        value = _lookup(plain, row.key)
        if value is _ABSENT:
            continue
        refuse_interpolation(value, row.key, source)
        problem = row.check(value)
        if problem:
            raise stored_value_error(source, row.key, value, problem)
        _put(taken, row.key, value)
    if "model" not in plain:
        raise CheckpointError(f"checkpoint {source} holds no model config; it may be damaged or not from mode=train")
    from medseg.models.stored_model import stored_model_config

    taken["model"] = stored_model_config(plain["model"], source)
    check_ranges(taken, source)
    return taken


def stored_config_text(text: Any, source: str) -> str:
    """What a checkpoint's config gives medseg, as YAML (for reports): the taken keys only."""
    import yaml

    return yaml.safe_dump(read_stored_config(text, source), sort_keys=False)


def check_ranges(values: dict[str, Any], source: str) -> None:
    """The ranges of a command-line value (medseg.config.validate), said of the checkpoint."""
    from medseg.config.validate import validate_config

    try:
        validate_config(OmegaConf.create(values))
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {source}: its stored {exc}; the file may be crafted or damaged") from None


def sanitised_config(taken: dict[str, Any], source: str = "checkpoint") -> DictConfig:
    """Restored.cfg: every data key of the stored layout's schema (its defaults: no folder, no store dir) with
    the taken values over it, plus seed, trainer.precision and the model. Nothing else is there to be read.
    A taken key that the layout does not have is left out: checkpoints written before each layout had its
    own keys hold every layout's keys (null or unused there)."""
    from omegaconf.errors import OmegaConfBaseException

    from medseg.config.schema import data_schema, layout_keys

    stored = taken.get("data", {})
    layout = str(stored.get("layout", "synthetic"))  # checked against the known layouts when taken
    own = {key: value for key, value in stored.items() if key in layout_keys(layout)}
    try:
        data = OmegaConf.merge(OmegaConf.structured(data_schema(layout)), own)
    except OmegaConfBaseException as exc:  # a value of the wrong type, as the schema refuses it on the command line
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {source}: its stored data.{exc.full_key}: {first}; the file may be crafted or damaged"
        ) from None
    cfg = OmegaConf.create(
        {
            "seed": taken.get("seed", 0),
            "trainer": {"precision": taken.get("trainer", {}).get("precision", "32")},
            "model": taken["model"],
        }
    )
    cfg.data = data
    return cfg


def data_for_run(run_data: Any, stored_cfg: Any) -> DictConfig:
    """This run's data config (its folders, store and file names) with the checkpoint's preprocessing
    laid over it: how evaluate reads the training run's validation cases, or a labelled folder.

    When this run chose another layout than the checkpoint's (`mode=evaluate ckpt=... data.root=...` with
    the default data group), the result has the checkpoint layout's keys: its schema, this run's values
    of the keys that layout has, then the checkpoint's."""
    from medseg.config.schema import data_schema, layout_keys

    stored = stored_preprocessing(stored_cfg)
    layout = stored.get("layout")
    if layout is None or layout == run_data.layout:
        return OmegaConf.merge(run_data, stored)
    shared = [key for key in run_data if key in layout_keys(layout) and key != "layout"]
    return OmegaConf.merge(OmegaConf.structured(data_schema(layout)), OmegaConf.masked_copy(run_data, shared), stored)


def stored_preprocessing(cfg: Any) -> dict[str, Any]:
    """The data values of STORED_KEYS in a sanitised config, nested, to lay over this run's data config."""
    out: dict[str, Any] = {}
    for row in STORED_KEYS:
        if row.key.startswith("data."):
            value = OmegaConf.select(cfg, row.key, default=_ABSENT)
            if value is not _ABSENT:
                _put(out, row.key[len("data.") :], OmegaConf.to_object(value) if OmegaConf.is_config(value) else value)
    return out


def parse_stored_yaml(text: Any, source: str) -> dict[str, Any]:
    """YAML text -> plain Python data with the safe loader (no tags, no interpolation, no resolver)."""
    import yaml

    if not isinstance(text, str):
        raise CheckpointError(f"checkpoint {source} holds no config; it may be damaged or not from mode=train")
    try:
        plain = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CheckpointError(
            f"checkpoint {source}: its stored config cannot be read ({type(exc).__name__}); it may be damaged"
        ) from exc
    if not isinstance(plain, dict):
        raise CheckpointError(f"checkpoint {source}: its stored config is not a mapping; it may be damaged")
    return plain


def _lookup(node: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        out = out.setdefault(part, {})
    out[leaf] = value
