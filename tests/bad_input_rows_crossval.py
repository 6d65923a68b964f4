"""Bad-input rows: cross-validation folders and their records."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from tests.bad_inputs_harness import (
    Ctx,
    Row,
    _args,
    _predict,
)


# ------------------------------------------------------------------ the rows: cross-validation
def _fold_folder(ctx: Ctx, with_checkpoint: bool) -> Path:
    """A fold multirun whose job 0 failed (no checkpoint) or ended without out-of-fold predictions."""
    job = ctx.tmp / "folds" / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- data.fold=0\n")
    if with_checkpoint:
        (job / "checkpoints").mkdir()
        shutil.copy(ctx.best, job / "checkpoints" / "best.pt")
    return job.parent


def _crossval_of(with_checkpoint: bool) -> Callable[[Ctx], list[str]]:
    return lambda ctx: ["mode=crossval", f"crossval.runs=[{_fold_folder(ctx, with_checkpoint)}]", "logger=none"]


def _missing_fold(ctx: Ctx) -> list[str]:
    from tests.crossval_runs import predicted, truth_volume, write_fold_runs

    truths = {f"case_{i}": truth_volume(i) for i in range(4)}
    preds = {k: predicted(t, 0, islands=False) for k, t in truths.items()}
    runs = write_fold_runs(ctx.tmp / "folds", "unet", preds, truths, num_folds=2, skip_folds=(1,))
    return ["mode=crossval", f"crossval.runs=[{runs}]", "logger=none"]


def _crossval_json(ctx: Ctx, text: str) -> Path:
    folder = ctx.tmp / "cv"
    folder.mkdir()
    (folder / "crossval.json").write_text(text)
    return folder


def _damaged_crossval(ctx: Ctx) -> list[str]:
    return _predict(_crossval_json(ctx, '{"chosen": {"name": "x"'), ctx)


def _evaluate_crossval(ctx: Ctx) -> list[str]:
    import json

    choice = {"chosen": {"name": "a", "configurations": [{"name": "a", "checkpoints": [str(ctx.best)]}]}}
    folder = _crossval_json(ctx, json.dumps({**choice, "postprocessing": {}}))
    return ["mode=evaluate", f"ckpt={folder}", "logger=none"]


CROSSVAL_ROWS = [
    Row("crossval-no-runs", _args("mode=crossval", "logger=none"), r"mode=crossval needs crossval\.runs=\["),
    Row(
        "crossval-runs-not-a-folder",
        _args("mode=crossval", "crossval.runs=[/nonexistent/folds]", "logger=none"),
        r"crossval\.runs: /nonexistent/folds is not a folder",
    ),
    Row("crossval-failed-fold", _crossval_of(False), r"fold run \S+/folds/0 failed \(no checkpoint; see \S+run\.log\)"),
    Row(
        "crossval-fold-without-predictions",
        _crossval_of(True),
        r"fold run \S+/folds/0 has no out-of-fold predictions \(oof/index\.json\)",
    ),
    Row("crossval-missing-fold", _missing_fold, r"configuration \S+ lacks fold\(s\) \[1\] of data\.num_folds=2"),
    Row(
        "crossval-max-ensemble",
        _args("crossval.max_ensemble=1"),
        r"crossval\.max_ensemble=1 must be",
        config_error=True,
    ),
    Row("predict-crossval-damaged", _damaged_crossval, r"crossval\.json cannot be read as the result of mode=crossval"),
    Row("evaluate-crossval-without-input", _evaluate_crossval, r"scores a crossval ensemble.*give evaluate\.input="),
]
