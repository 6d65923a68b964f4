"""The few lines a run prints first: mode, chosen config groups, command-line overrides and the run folder.

The full resolved config goes to config_tree.txt (printed too with print_config=true).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Groups in the order a reader looks for them; any other group follows.
ORDER = ("experiment", "model", "data", "hardware", "optimizer", "scheduler", "trainer", "logger", "hparams_search")


def run_header(
    mode: str,
    choices: Mapping[str, Any],
    overrides: Iterable[str],
    run_folder: str | Path,
    tree_file: str | Path | None = None,
) -> str:
    """A short header. `choices` maps config group -> option (Hydra's runtime.choices); Hydra's own
    groups (hydra/...) and unset optional groups are left out."""
    shown = {g: o for g, o in choices.items() if o is not None and not g.startswith("hydra") and g != "paths"}
    names = [g for g in ORDER if g in shown] + [g for g in shown if g not in ORDER]
    groups = [f"{g}={_option(shown[g])}" for g in names]
    lines = [f"medseg mode={mode}", f"  groups:     {' '.join(groups) if groups else '(defaults)'}"]
    given = [str(o) for o in overrides]
    lines.append(f"  overrides:  {' '.join(given) if given else '(none)'}")
    lines.append(f"  run folder: {display_path(run_folder)}")
    if tree_file is not None:
        lines.append(f"  config:     {display_path(tree_file)} (print_config=true prints it)")
    return "\n".join(lines)


def display_path(path: str | Path) -> str:
    """`path` relative to the working folder when it lies below it (shorter, and still pastes), else as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _option(option: Any) -> str:
    if isinstance(option, (list, tuple)):
        return "[" + ",".join(str(o) for o in option) + "]"
    return str(option)


def hydra_choices_and_overrides() -> tuple[dict[str, Any], list[str]]:
    """The chosen groups and the command-line overrides of the current Hydra run ({} and [] outside one)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}, []
    hc = HydraConfig.get()
    return dict(hc.runtime.choices), [str(o) for o in hc.overrides.task]
