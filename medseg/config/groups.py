"""Config-group options named on the command line must exist, checked before Hydra composes anything.

Hydra refuses an unknown option of a group that the defaults list always loads (`model=unett`), but it
silently skips one of an optional group (`experiment=pytorch-unet` ran the demo instead of the recipe,
`hparams_search=optun` ran a single job). Every group=option override is checked here against the
options conf/ and the ConfigStore offer, so a misspelt name is one line listing the options, before any
run folder exists.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

from medseg.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Options that take a search path of their own: the groups they add are not known here, so no check.
SEARCH_PATH_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str] | None:
    """The options of config group `group` (conf/<group>/*.yaml and ConfigStore entries); None if no group."""
    from hydra.core.config_store import ConfigStore

    options: set[str] = set()
    folder = conf_dir / group
    found = folder.is_dir()
    if found:
        options.update(p.stem for p in folder.glob("*.yaml"))
    node: object = ConfigStore.instance().repo
    for part in group.split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        found = True
        options.update(name[: -len(".yaml")] for name, v in node.items() if name.endswith(".yaml"))
    return sorted(options) if found else None


def check_group_options(args: Iterable[str], conf_dir: Path = CONF_DIR) -> None:
    """Raise ConfigError naming the group, the unknown option and the options, for the first bad one."""
    args = list(args)
    if any(a.split("=", 1)[0] in SEARCH_PATH_FLAGS for a in args):
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:  # noqa: BLE001 - Hydra reports its own syntax errors
            continue
        if override.is_delete():
            continue
        group = override.key_or_group
        if group.startswith("hydra/") or group == "hydra":
            continue
        options = group_options(group, conf_dir)
        if options is None:
            continue
        for value in _values(override):
            if value is None or value in options:
                continue
            close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
            hint = f"; did you mean {group}={close[0]}?" if close else ""
            raise ConfigError(f"{group}={value} is not an option of {group}: choose one of {', '.join(options)}{hint}")


def _values(override: object) -> list[str | None]:
    """The option names an override selects: one, a list ([wandb,csv]) or a sweep (a,b with -m)."""
    if override.is_sweep_override():  # type: ignore[attr-defined]
        return [_name(v) for v in override.sweep_string_iterator()]  # type: ignore[attr-defined]
    value = override.value()  # type: ignore[attr-defined]
    if isinstance(value, (list, tuple)):
        return [_name(v) for v in value]
    return [_name(value)]


def _name(value: object) -> str | None:
    if value is None or str(value) == "null":
        return None
    return str(value)
