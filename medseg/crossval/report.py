"""report.html of a crossval run: configurations x folds, the ensembles tried, post-processing decisions."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from medseg.report.render import REPORT_NAME, write_page


def write_crossval_report(out: Path, result: dict[str, Any]) -> Path:
    tried = result["candidates"]
    folds = sorted({f for c in tried for f in c["per_fold_dice"]}, key=int)
    context = {
        "title": "Cross-validation",
        "subtitle": f"{len(result['configurations'])} configuration(s), {len(folds)} folds, "
        f"{tried[0]['cases']} out-of-fold cases; best by mean Dice: {result['chosen']['name']}",
        "chosen": result["chosen"],
        "checkpoints": result["checkpoints"],
        "folds": folds,
        "cases": tried[0]["cases"],
        "configurations": [c for c in tried if len(c["members"]) == 1],
        "ensembles": [c for c in tried if len(c["members"]) > 1],
        "skipped": result["ensembles_skipped"],
        "postprocessing": result["postprocessing"],
        "written_at": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }
    return write_page(out / REPORT_NAME, "crossval.html.j2", context)
