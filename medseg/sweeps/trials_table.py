"""What a finished (or stopped) study leaves in its sweep folder: trials.csv and optimization_results.yaml."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from medseg.io_utils import write_text

log = logging.getLogger(__name__)


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, value(s), duration, start, params_<name>."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in t.params})
    rows = []
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        if t.values is not None and len(t.values) > 1:
            row.update({f"value_{i}": v for i, v in enumerate(t.values)})
        else:
            row["value"] = t.value
        row["duration_s"] = None if duration is None else round(duration, 3)
        row["datetime_start"] = t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None
        row.update({f"params_{name}": t.params.get(name) for name in names})
        rows.append(row)
    return rows


def write_trials_csv(path: str | Path, study: Any) -> Path:
    rows = trial_rows(study)
    fields = list(dict.fromkeys(key for row in rows for key in row)) or ["number", "state", "value", "duration_s"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    log.info("%d trials written to %s", len(rows), path)
    return write_text(path, buffer.getvalue())


def write_results(path: str | Path, study: Any, directions: list[str]) -> Path | None:
    """Best parameters and value (the stock sweeper's optimization_results.yaml, plus state counts)."""
    from omegaconf import OmegaConf
    from optuna.trial import TrialState

    states = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "trials": states}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        log.warning("study %s has no completed trial; no best parameters", study.study_name)
    elif len(directions) == 1:
        best = study.best_trial
        results.update({"best_trial": best.number, "best_params": dict(best.params), "best_value": best.value})
        log.info("best trial %d: value %s, params %s", best.number, best.value, best.params)
    else:
        results["solutions"] = [{"number": t.number, "params": t.params, "values": t.values} for t in study.best_trials]
    return write_text(path, OmegaConf.to_yaml(OmegaConf.create(results)))
