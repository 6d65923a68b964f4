"""The report of a sweep (Optuna study) or plain Hydra multirun: every trial, the best, how the
parameters relate to the objective, the top trials' curves and links to each trial's own report."""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from pathlib import Path
from typing import Any

from medseg.report import figures
from medseg.report.render import REPORT_NAME, write_page
from medseg.report.sources import read_config, read_history

log = logging.getLogger(__name__)

TOP_TRIALS = 5


def is_sweep_folder(folder: Path) -> bool:
    """A multirun folder: job sub-folders with .hydra/, or an Optuna study database."""
    return (folder / "optuna.db").is_file() or any(folder.glob("*/.hydra/overrides.yaml"))


def write_sweep_report(folder: str | Path, output: str | Path | None = None, top_trials: int = TOP_TRIALS) -> Path:
    folder = Path(folder)
    trials = job_trials(folder)
    study = load_study(folder)
    importance, importance_note = None, "A plain multirun has no Optuna study; importance needs one."
    if study is not None:
        merge_study(trials, study)
        importance, importance_note = param_importances(study)
    monitor, mode = _monitor(folder, trials)
    if study is not None:
        mode = "max" if study.direction.name == "MAXIMIZE" else "min"
    for t in trials:
        if t["value"] is None and t["history"]:
            t["value"] = _final_best(t["history"], monitor, mode)
    params = sorted({p for t in trials for p in t["params"]})
    ranked = sorted((t for t in trials if _finite(t["value"])), key=lambda t: t["value"], reverse=(mode == "max"))
    best = ranked[0] if ranked else None
    parallel = figures.parallel_coordinates(trials, params, monitor)
    top = ranked[: max(1, int(top_trials))]
    context = {
        "title": f"medseg sweep report: {folder.name}",
        "subtitle": f"{folder} · {'Optuna study ' + study.study_name if study is not None else 'Hydra multirun'}"
        f" · objective {monitor} ({'maximised' if mode == 'max' else 'minimised'})",
        "written_at": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "objective": monitor,
        "params": params,
        "trials": trials,
        "best": best,
        "counts": _counts(trials),
        "parallel": figures.fragment(parallel, "parallel-plot") if parallel is not None else "",
        "importance": figures.fragment(figures.importance_bars(importance, importance_note), "importance-plot")
        if importance
        else "",
        "importance_note": importance_note,
        "importance_caveat": importance_caveat(_counts_complete(trials), len(params)) if importance else "",
        "curves": figures.fragment(figures.trial_curves(top, monitor), "trials-plot") if top else "",
        "top_n": len(top),
    }
    return write_page(Path(output) if output else folder / REPORT_NAME, "sweep.html.j2", context)


def job_trials(folder: Path) -> list[dict[str, Any]]:
    """One record per job folder (<n>/.hydra/overrides.yaml), numbered by folder name."""
    from medseg.sweeps.jobs_table import job_rows

    trials = []
    for row in job_rows(folder):
        job_dir = folder / row["job"]
        history = read_history(job_dir)
        number: Any = int(row["job"]) if str(row["job"]).isdigit() else row["job"]
        failure = failure_reason(job_dir / "run.log")
        status = "complete" if history and not failure else ("failed" if failure else "no history")
        trials.append(
            {
                "number": number,
                "dir": job_dir,
                "params": _params(row.get("overrides", "")),
                "status": status,
                "value": None,
                "epochs": history[-1].get("epoch") if history else None,
                "duration": sum(r.get("time/epoch_s") or 0.0 for r in history) if history else None,
                "failure": failure,
                "history": history,
                "link": f"{row['job']}/{REPORT_NAME}" if (job_dir / REPORT_NAME).is_file() else None,
            }
        )
    return trials


def failure_reason(run_log: Path) -> str | None:
    """The last ERROR line of a job's run.log (what the job printed when it failed)."""
    try:
        lines = run_log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    errors = [line for line in lines if "[ERROR]" in line]
    if not errors:
        return None
    return re.sub(r"^\[[^\]]*\]\[ERROR\]\s*", "", errors[-1]).strip()[:400]


def load_study(folder: Path) -> Any | None:
    """The Optuna study in <sweep>/optuna.db (the one named like the folder when it holds several)."""
    db = folder / "optuna.db"
    if not db.is_file():
        return None
    import optuna

    # quiet while reading only: the verbosity is process-wide, and a sweep run later in this process
    # (the next multirun, a test) still prints its own lines
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db.resolve()}"
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if not names:
            return None
        name = folder.name if folder.name in names else names[0]
        return optuna.load_study(study_name=name, storage=storage)
    except Exception as exc:  # noqa: BLE001 - an unreadable database leaves the job folders' view
        log.warning("Optuna study in %s not read (%s); reporting the job folders only", db, exc)
        return None
    finally:
        optuna.logging.set_verbosity(verbosity)


def merge_study(trials: list[dict[str, Any]], study: Any) -> None:
    """Study trials override the folders' view: state, objective, parameters, duration (job number = trial number)."""
    by_number = {t["number"]: t for t in trials}
    for st in study.get_trials(deepcopy=False):
        t = by_number.get(st.number)
        if t is None:  # no folder (e.g. another worker's trial): still listed
            t = {"number": st.number, "dir": None, "params": {}, "epochs": None, "failure": None, "history": []}
            t["link"] = None
            trials.append(t)
        t["status"] = st.state.name.lower()
        t["value"] = st.value if st.values is not None and len(st.values) == 1 else None
        t["params"] = {**t["params"], **dict(st.params)}
        if st.duration is not None:
            t["duration"] = st.duration.total_seconds()
    trials.sort(key=lambda t: (not isinstance(t["number"], int), t["number"]))


TRIALS_PER_PARAM = 10  # below this many completed trials per parameter, importance is mostly noise


def importance_caveat(complete: int, n_params: int) -> str:
    """A warning under the importance chart when it rests on too few trials to mean much."""
    needed = TRIALS_PER_PARAM * max(1, n_params)
    if complete >= needed:
        return ""
    return (
        f"Drawn from only {complete} completed trial{'s' if complete != 1 else ''} over {n_params} parameter"
        f"{'s' if n_params != 1 else ''}: with this few, the bars mostly reflect chance. Read them as a hint;"
        f" about {needed} trials ({TRIALS_PER_PARAM} per parameter) make them worth trusting."
    )


def _counts_complete(trials: list[dict[str, Any]]) -> int:
    return sum(1 for t in trials if t.get("status") == "complete")


def param_importances(study: Any) -> tuple[dict[str, float] | None, str]:
    """Optuna's own evaluators: fANOVA (its default), else mean decrease in impurity; or why neither ran.

    Optuna 2.x's fANOVA fails on the tree layout of recent scikit-learn (ValueError in _FanovaTree), so
    the random-forest impurity evaluator of the same module is the fallback; the chart names the one used."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return None, f"Parameter importance needs at least two completed trials ({len(complete)} so far)."
    errors = []
    for name, evaluator in (
        ("fANOVA", optuna.importance.FanovaImportanceEvaluator(seed=0)),
        ("mean decrease in impurity", optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)),
    ):
        try:
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)), name
        except (ValueError, RuntimeError, ImportError, IndexError) as exc:
            errors.append(f"{name}: {exc}")
    return None, "Optuna could not evaluate parameter importance (" + "; ".join(errors) + ")."


def _params(overrides: str) -> dict[str, Any]:
    """key=value overrides as parameters, numbers parsed (a plain multirun's swept values)."""
    out: dict[str, Any] = {}
    for part in overrides.split():
        key, sep, value = part.partition("=")
        if not sep:
            continue
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def _monitor(folder: Path, trials: list[dict[str, Any]]) -> tuple[str, str]:
    for t in trials:
        if t.get("dir") is not None:
            _, cfg = read_config(t["dir"])
            trainer = cfg.get("trainer")
            if isinstance(trainer, dict) and trainer.get("monitor"):
                return str(trainer["monitor"]), str(trainer.get("monitor_mode", "max"))
    return "val/dice", "max"


def _final_best(history: list[dict[str, Any]], monitor: str, mode: str) -> float | None:
    values = [r[monitor] for r in history if _finite(r.get(monitor))]
    if not values:
        return None
    return float(max(values) if mode == "max" else min(values))


def _counts(trials: list[dict[str, Any]]) -> str:
    states: dict[str, int] = {}
    for t in trials:
        states[t["status"]] = states.get(t["status"], 0) + 1
    return f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
