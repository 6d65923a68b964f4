"""The few lines a run prints first: mode, chosen config groups, command-line overrides and the run folder.

Predict and evaluate take the model, the data's preprocessing and the plan from the checkpoint, so their
header names those from the checkpoint (checkpoint_summary) and leaves out the config groups that only
describe training (model, data, optimizer, ...) unless the command line chose them.
The full resolved config goes to config_tree.txt (printed too with print_config=true).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Groups in the order a reader looks for them; any other group follows.
ORDER = ("experiment", "model", "data", "hardware", "optimizer", "scheduler", "trainer", "logger", "hparams_search")
# Groups that describe how a checkpoint was trained: a run that takes its model from a checkpoint shows the
# checkpoint's values instead of these groups' defaults (a group chosen on the command line is still shown).
TRAINING_GROUPS = ("experiment", "model", "data", "optimizer", "scheduler", "trainer", "hparams_search", "plan")


def run_header(
    mode: str,
    choices: Mapping[str, Any],
    overrides: Iterable[str],
    run_folder: str | Path,
    tree_file: str | Path | None = None,
    checkpoint: list[tuple[str, str]] | None = None,
) -> str:
    """A short header. `choices` maps config group -> option (Hydra's runtime.choices); Hydra's own
    groups (hydra/...) and unset optional groups are left out. `checkpoint`: (name, value) lines from
    checkpoint_summary; with it, training-only groups not chosen on the command line are left out."""
    given = [str(o) for o in overrides]
    shown = {g: o for g, o in choices.items() if o is not None and not g.startswith("hydra") and g != "paths"}
    if checkpoint is not None:
        typed = {o.split("=", 1)[0].lstrip("+~") for o in given}
        shown = {g: o for g, o in shown.items() if g not in TRAINING_GROUPS or g in typed}
    names = [g for g in ORDER if g in shown] + [g for g in shown if g not in ORDER]
    groups = [f"{g}={_option(shown[g])}" for g in names]
    lines = [f"medseg mode={mode}"]
    for name, value in checkpoint or []:
        lines.append(f"  {name + ':':<11} {value}")
    lines.append(f"  groups:     {' '.join(groups) if groups else '(defaults)'}")
    lines.append(f"  overrides:  {' '.join(given) if given else '(none)'}")
    lines.append(f"  run folder: {display_path(run_folder)}")
    if tree_file is not None:
        lines.append(f"  config:     {display_path(tree_file)} (print_config=true prints it)")
    return "\n".join(lines)


def checkpoint_summary(path: str | Path) -> list[tuple[str, str]]:
    """(name, value) header lines for a checkpoint: the file and its epoch, its model, its data and its plan.

    Read as data (weights_only, tensors memory-mapped, the stored config through medseg.config.stored);
    a file that cannot be read gives only the checkpoint line: the task itself then says what is wrong.
    """
    lines = [("checkpoint", display_path(path))]
    if Path(str(path)).expanduser().is_dir():  # a crossval or export folder: its own task describes it
        return lines
    import torch

    from medseg.config.stored import read_stored_config

    try:
        payload = torch.load(Path(str(path)).expanduser(), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the task reports an unreadable checkpoint in its own words
        return lines
    if not isinstance(payload, dict):
        return lines
    if isinstance(payload.get("epoch"), int):
        best = payload.get("best_score")
        score = f", {payload.get('monitor', 'best')} {best:.4f}" if isinstance(best, float) else ""
        lines[0] = ("checkpoint", f"{display_path(path)} (epoch {payload['epoch']}{score})")
    try:
        stored = read_stored_config(payload.get("config_yaml"), str(path)) if payload.get("config_yaml") else {}
    except Exception:  # noqa: BLE001 - a crafted config is refused by the task, with its own line
        stored = {}
    model = payload.get("model_facts") if isinstance(payload.get("model_facts"), dict) else {}
    if model.get("architecture"):
        params = model.get("params_total")
        lines.append(("model", f"{model['architecture']}" + (f", {params:,} parameters" if params else "")))
    data = stored.get("data") if isinstance(stored.get("data"), dict) else {}
    dataset = payload.get("dataset") if isinstance(payload.get("dataset"), dict) else {}
    if data or dataset:
        parts = [str(data.get("layout", "?"))]
        if dataset.get("dims"):
            parts.append(f"{dataset['dims']}D")
        names = dataset.get("class_names") or data.get("class_names") or []
        if dataset.get("num_classes"):
            parts.append(
                f"{dataset['num_classes']} classes" + (f" ({', '.join(map(str, names[:6]))})" if names else "")
            )
        for key, label in (("spacing", "spacing"), ("image_size", "size"), ("patch_size", "patch"), ("scale", "scale")):
            if data.get(key) is not None:
                parts.append(f"{label} {data[key]}")
        lines.append(("data", " · ".join(parts)))
    lines.append(("plan", _plan(payload)))
    return lines


def _plan(payload: dict[str, Any]) -> str:
    """The plan the checkpoint was trained with (plan=auto writes one into it), or that it has none."""
    plan = payload.get("plan")
    if isinstance(plan, dict) and plan:
        name = plan.get("name") or plan.get("preset") or plan.get("hardware")
        keys = ", ".join(f"{k}={v}" for k, v in plan.items() if isinstance(v, (int, float, str)) and k != "name")
        return " · ".join(str(p) for p in (name, keys[:200]) if p)
    return "none (trained without plan=auto)"


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
