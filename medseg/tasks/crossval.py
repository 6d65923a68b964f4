"""mode=crossval: fold runs -> the best configuration or ensemble, and post-processing per class.

    python run.py -m data.fold=0,1,2,3,4                      # one configuration, five folds
    python run.py -m data.fold=0,1,2,3,4 data.dims=3 ...      # another
    python run.py mode=crossval crossval.runs=[multirun/train/<2D>,multirun/train/<3D>]

Steps (docs/crossval.md): find and check the fold runs (medseg/crossval/runs.py); score every
configuration and every ensemble of 2..crossval.max_ensemble configurations on all out-of-fold cases
(Dice, IoU, HD95; medseg/crossval/candidates.py); take the best by mean Dice; decide per class
whether keeping the largest component, or the largest foreground component, raises its out-of-fold
Dice (medseg/crossval/postprocess.py); write the post-processed masks, crossval.json and report.html.
Each candidate's scores are saved as soon as they are computed, so a rerun into the same folder
(hydra.run.dir) after a kill picks up where it stopped; a new folder starts over. crossval.json is
written last, whole, under a temporary name.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medseg.crossval.candidates import Candidate, candidates, case_masks, hd95_unit, score
from medseg.crossval.oof import read_mask, write_mask
from medseg.crossval.postprocess import Tally, apply_postprocessing
from medseg.crossval.runs import find_configurations
from medseg.io_utils import write_json
from medseg.runtime import run_dir

log = logging.getLogger(__name__)

RESULT = "crossval.json"


def run_crossval(cfg: DictConfig) -> float | None:
    ccfg = cfg.crossval
    out = run_dir(cfg)
    configs = find_configurations([str(r) for r in ccfg.runs])
    names = list(configs[0].first.index["class_names"])
    threshold = float(cfg.predict.threshold)
    slab, hd95 = int(ccfg.slab_slices), bool(ccfg.hd95)
    tried, skipped = candidates(configs, int(ccfg.max_ensemble))
    log.info(
        "crossval: %d configuration(s) (%s), %d candidate(s)",
        len(configs),
        "; ".join(f"{c.name}: {len(c.folds)} folds" for c in configs),
        len(tried),
    )
    results: list[dict[str, Any]] = []
    for i, candidate in enumerate(tried):
        result = score(candidate, out / "candidates" / folder_name(i, candidate.name), names, threshold, slab, hd95)
        results.append(result)
        log.info("  %-40s mean Dice %s", candidate.name, _f(result["summary"]["mean_dice"]))
    best_i = max(
        range(len(tried)),
        key=lambda i: (_num(results[i]["summary"]["mean_dice"]), -len(tried[i].members), -i),
    )
    best = tried[best_i]
    best_dir = out / "candidates" / folder_name(best_i, best.name)
    decisions = decide_postprocessing(best, best_dir, names, threshold, slab)
    ops = {names.index(n): d["operation"] for n, d in decisions.items() if d["operation"]}
    final = final_scores(best, best_dir, out / "final", names, ops, threshold, slab, hd95)
    result = {
        "chosen": {
            "name": best.name,
            "ensemble": best.is_ensemble,
            "mean_dice": results[best_i]["summary"]["mean_dice"],
            "mean_dice_after_postprocessing": final["summary"]["mean_dice"],
            "configurations": [
                {
                    "name": c.name,
                    "overrides": c.overrides,
                    "checkpoints": [str(c.folds[f].checkpoint.resolve()) for f in sorted(c.folds)],
                }
                for c in best.members
            ],
        },
        "checkpoints": [str(c.folds[f].checkpoint.resolve()) for c in best.members for f in sorted(c.folds)],
        "postprocessing": decisions,
        "class_names": names,
        "threshold": threshold,
        "configurations": {
            c.name: {
                "overrides": c.overrides,
                "folds": {str(f): str(c.folds[f].folder.resolve()) for f in sorted(c.folds)},
                "checkpoints": [str(c.folds[f].checkpoint.resolve()) for f in sorted(c.folds)],
                "slice_axis": c.slice_axis,
            }
            for c in configs
        },
        "candidates": [
            {
                "name": t.name,
                "members": [c.name for c in t.members],
                "folder": str(Path("candidates") / folder_name(i, t.name)),
                "per_fold_dice": r["per_fold_dice"],
                **{
                    k: r["summary"][k]
                    for k in ("mean_dice", "mean_iou", "mean_hd95", "hd95_unit", "hd95_missing", "cases")
                },
                "per_class": r["summary"]["per_class"],
            }
            for i, (t, r) in enumerate(zip(tried, results))
        ],
        "ensembles_skipped": skipped,
        "final": {
            k: final["summary"][k] for k in ("mean_dice", "mean_iou", "mean_hd95", "hd95_unit", "per_class", "cases")
        },
        "probabilities": configs[0].first.index.get("probabilities"),
    }
    from medseg.crossval.report import write_crossval_report

    try:
        result["report"] = str(write_crossval_report(out, result))
    except Exception as exc:  # noqa: BLE001 - the selection is made; a report failure is a warning
        log.warning("report not written: %s: %s", type(exc).__name__, exc)
    write_json(out / RESULT, result)
    log.info(
        "best: %s, mean Dice %s (%s after post-processing: %s); %s",
        best.name,
        _f(result["chosen"]["mean_dice"]),
        _f(final["summary"]["mean_dice"]),
        ", ".join(f"{n} {d['operation']}" for n, d in decisions.items() if d["operation"]) or "none",
        out / RESULT,
    )
    log.info("next:\n  python run.py mode=predict ckpt=%s predict.input=<images>", out)
    return result["final"]["mean_dice"]


def decide_postprocessing(
    best: Candidate, folder: Path, names: list[str], threshold: float, slab: int
) -> dict[str, dict[str, Any]]:
    tally = Tally(len(names))
    for case_id, mask in _saved_masks(best, folder, threshold, slab):
        run = best.members[0].cases()[case_id]
        tally.add(mask, read_mask(run.case_file(case_id, "truth")))
    return tally.decide(names)


def final_scores(
    best: Candidate,
    folder: Path,
    out: Path,
    names: list[str],
    ops: dict[int, str],
    threshold: float,
    slab: int,
    hd95: bool,
) -> dict[str, Any]:
    """The chosen candidate's masks post-processed (written to out/) and scored."""
    from medseg.inference.case_metrics import class_scores
    from medseg.inference.scores_summary import summarise

    rows: list[dict[str, Any]] = []
    count = 0
    for case_id, mask in _saved_masks(best, folder, threshold, slab):
        run = best.members[0].cases()[case_id]
        spacing = run.index["cases"][case_id].get("spacing")
        final = apply_postprocessing(mask, ops)
        write_mask(out / f"{case_id}_pred.nii.gz", final, spacing)
        truth = read_mask(run.case_file(case_id, "truth"))
        scores = class_scores(final, truth, len(names), hd95, spacing)
        rows += [{"case": case_id, "class": names[c], **s} for c, s in enumerate(scores, start=1)]
        count += 1
    summary = summarise(rows, names, "out-of-fold, post-processed", count, hd95_unit=hd95_unit(best))
    write_json(out / "scores.json", {"rows": rows, "summary": summary})
    return {"rows": rows, "summary": summary}


def _saved_masks(candidate: Candidate, folder: Path, threshold: float, slab: int) -> Any:
    """The candidate's masks: an ensemble's as written by its scoring, a configuration's from its fold runs."""
    if not candidate.is_ensemble:
        yield from case_masks(candidate, folder, threshold, slab)
        return
    for case_id in sorted(candidate.members[0].cases()):
        path = folder / f"{case_id}_pred.nii.gz"
        yield case_id, read_mask(path) if path.is_file() else _recompute(candidate, case_id, threshold, slab)


def _recompute(candidate: Candidate, case_id: str, threshold: float, slab: int) -> Any:
    from medseg.crossval.candidates import ensemble_mask

    return ensemble_mask(candidate, case_id, threshold, slab)


def folder_name(i: int, name: str) -> str:
    return f"{i:02d}_{re.sub(r'[^A-Za-z0-9._=-]+', '_', name)[:80]}"


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else float("-inf")


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"
