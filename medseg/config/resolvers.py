"""OmegaConf resolvers the YAML files use; registered with the schema, before Hydra composes."""

from __future__ import annotations


def run_folder(mode: str, task_name: str) -> str:
    """The folder under outputs/ (or multirun/) a run writes to: training runs by task name (`train`, or an
    experiment recipe's name), every other mode by its own name, so predictions never mix with training runs."""
    return str(task_name) if str(mode) == "train" else str(mode)


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("run_folder", run_folder, replace=True)
    from medseg.planning.apply import plan_value

    OmegaConf.register_new_resolver("plan", plan_value, replace=True)  # plan=auto: ${plan:key,fallback}
