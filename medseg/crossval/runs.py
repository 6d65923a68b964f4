"""The fold runs mode=crossval compares: found in crossval.runs, grouped into configurations, checked.

Each entry of crossval.runs is a multirun folder (its numbered job folders) or one run folder. Jobs
group into configurations by their command-line overrides other than data.fold (a multirun
`-m data.fold=0,1,2,3,4 model=unet,dynunet` gives two configurations of five folds). A configuration
must hold every fold 0..num_folds-1 once, each with complete out-of-fold predictions (oof/index.json);
a failed fold run, one without predictions or a missing fold stops crossval with one line naming it.
All configurations must predict the same cases with the same classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.crossval.oof import INDEX, OOF_DIR
from medseg.errors import ConfigError, DataError


@dataclass
class FoldRun:
    folder: Path
    fold: int
    index: dict[str, Any]

    @property
    def checkpoint(self) -> Path:
        return self.folder / str(self.index["checkpoint"])

    def case_file(self, case_id: str, part: str) -> Path:
        return self.folder / OOF_DIR / str(self.index["cases"][case_id][part])


@dataclass
class Configuration:
    name: str
    overrides: list[str]
    folds: dict[int, FoldRun] = field(default_factory=dict)

    @property
    def first(self) -> FoldRun:
        return self.folds[min(self.folds)]

    @property
    def slice_axis(self) -> int:
        return int(self.first.index["slice_axis"])

    def cases(self) -> dict[str, FoldRun]:
        """case id -> the fold run that predicted it (out of fold)."""
        return {case: run for run in self.folds.values() for case in run.index["cases"]}


def find_configurations(entries: list[str]) -> list[Configuration]:
    if not entries:
        raise ConfigError(
            "mode=crossval needs crossval.runs=[<fold multirun folder>, ...] (folders of -m data.fold=...)"
        )
    groups: dict[tuple[str, tuple[str, ...]], Configuration] = {}
    for entry in entries:
        root = Path(str(entry)).expanduser()
        if not root.is_dir():
            raise DataError(f"crossval.runs: {root} is not a folder; give the folder of a fold multirun")
        jobs = [root] if (root / ".hydra").is_dir() else sorted(p for p in root.iterdir() if (p / ".hydra").is_dir())
        if not jobs:
            raise DataError(
                f"crossval.runs: {root} holds no run folders (none with .hydra/); give a fold multirun folder"
            )
        for job in sorted(jobs, key=_job_order):
            overrides = _overrides(job)
            key = (str(root) if len(jobs) > 1 else "", tuple(o for o in overrides if not o.startswith("data.fold=")))
            config = groups.setdefault(key, Configuration("", list(key[1])))
            run = _fold_run(job, overrides)
            if run.fold in config.folds:
                raise DataError(
                    f"fold run {job} repeats fold {run.fold} of {config.folds[run.fold].folder}; list each fold once"
                )
            config.folds[run.fold] = run
    configs = list(groups.values())
    _name(configs)
    for config in configs:
        _check_complete(config)
    _check_same_cases(configs)
    return configs


def _fold_run(job: Path, overrides: list[str]) -> FoldRun:
    index_path = job / OOF_DIR / INDEX
    if not index_path.is_file():
        if not any((job / "checkpoints" / n).is_file() for n in ("best.pt", "last.pt")):
            raise DataError(
                f"fold run {job} failed (no checkpoint; see {job / 'run.log'}); rerun it, or leave its folder out of"
                " crossval.runs"
            )
        raise DataError(
            f"fold run {job} has no out-of-fold predictions ({OOF_DIR}/{INDEX}): it ran without data.fold, with"
            " crossval.oof=false, or stopped before the end; rerun it with data.fold=<k>"
        )
    try:
        index = json.loads(index_path.read_text())
        fold = int(index["fold"])
        cases = index["cases"]
        assert isinstance(cases, dict) and all(isinstance(v, dict) for v in cases.values())
        for key in ("checkpoint", "class_names", "num_classes", "slice_axis", "num_folds"):
            assert key in index, key
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise DataError(f"fold run {job}: {index_path} cannot be read; rerun that fold") from None
    if not cases:
        raise DataError(f"fold run {job} has no validation cases in {index_path}; rerun it with more cases")
    _inside(job, str(index["checkpoint"]), index_path)
    for entry in cases.values():
        for part in ("pred", "truth", "probs"):
            _inside(job / OOF_DIR, str(entry.get(part, "")), index_path)
    return FoldRun(job, fold, index)


def _inside(folder: Path, name: str, source: Path) -> None:
    """A file name read from index.json stays inside the run folder (it names no other place)."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise DataError(f"{source} names {name!r}, not a file inside its run folder; rerun that fold")


def _check_complete(config: Configuration) -> None:
    k = int(config.first.index["num_folds"])
    missing = sorted(set(range(k)) - set(config.folds))
    if missing:
        where = ", ".join(str(run.folder) for run in config.folds.values())
        raise DataError(
            f"configuration {config.name} lacks fold(s) {missing} of data.num_folds={k} ({where}); train them"
            f" (-m data.fold={','.join(map(str, missing))}) and list their folder in crossval.runs"
        )
    names = {json.dumps(run.index["class_names"]) for run in config.folds.values()}
    if len(names) > 1:
        raise DataError(f"configuration {config.name}: its folds predict different classes; train them on one dataset")


def _check_same_cases(configs: list[Configuration]) -> None:
    first, cases = configs[0], set(configs[0].cases())
    for config in configs[1:]:
        other = set(config.cases())
        if other != cases or config.first.index["class_names"] != first.first.index["class_names"]:
            diff = sorted(other ^ cases)[:3]
            raise DataError(
                f"configurations {first.name} and {config.name} predict different cases or classes"
                f"{' (' + ', '.join(diff) + ')' if diff else ''}; compare folds of one dataset and one split seed"
            )


def _overrides(job: Path) -> list[str]:
    import yaml

    path = job / ".hydra" / "overrides.yaml"
    try:
        value = yaml.safe_load(path.read_text()) if path.is_file() else []
    except (OSError, yaml.YAMLError):
        raise DataError(f"fold run {job}: {path} cannot be read") from None
    return [str(v) for v in value or []]


def _job_order(job: Path) -> tuple[int, str]:
    return (int(job.name), "") if job.name.isdigit() else (1 << 30, job.name)


def _name(configs: list[Configuration]) -> None:
    """Short distinct names: the folder's name, plus the overrides that differ between configurations."""
    common = set.intersection(*(set(c.overrides) for c in configs)) if configs else set()
    for config in configs:
        own = [o for o in config.overrides if o not in common]
        base = config.first.folder.parent.name if len(config.folds) > 1 else config.first.folder.name
        config.name = " ".join(own) if own else base
    seen: dict[str, int] = {}
    for config in configs:
        n = seen.get(config.name, 0)
        seen[config.name] = n + 1
        if n:
            config.name = f"{config.name} #{n + 1}"
