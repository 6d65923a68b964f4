"""From per case and per class rows to evaluate's summary, metrics.csv and the console lines.

The means follow the Dice definition training validation uses (`val/dice`): per-case Dice is the
mean over the foreground classes that have a score; `mean_dice` is the mean over cases of per-case
Dice (a case without any scored class is left out); per-class figures are means over the cases where
the class has a score. IoU and HD95 are averaged the same way.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from medseg.io_utils import write_json, write_text

log = logging.getLogger(__name__)

METRICS = ("dice", "iou", "hd95")
COLUMNS = ["case", "class", "dice", "iou", "hd95", "hd95_missing"]
HD95_RULE = "a structure in the truth that is never predicted scores the image diagonal (counted in hd95_missing)"


def summarise(
    rows: list[dict[str, Any]], names: list[str], source: str, n_cases: int, hd95_unit: str = "mm"
) -> dict[str, Any]:
    cases = list(dict.fromkeys(r["case"] for r in rows))
    per_case = {case: {m: nanmean([r[m] for r in rows if r["case"] == case]) for m in METRICS} for case in cases}
    per_class: dict[str, dict[str, Any]] = {}
    for name in names[1:]:
        mine = [r for r in rows if r["class"] == name]
        per_class[name] = {m: nanmean([r[m] for r in mine]) for m in METRICS}
        per_class[name]["hd95_missing"] = sum(int(r.get("hd95_missing", 0)) for r in mine)
    ranked = sorted(((n, v["dice"]) for n, v in per_class.items() if v["dice"] is not None), key=lambda p: -p[1])
    k = min(5, len(ranked) // 2)  # best and worst never name the same class (3 classes: one best, one worst)
    return {
        "source": source,
        "cases": n_cases,
        "mean_dice": nanmean([v["dice"] for v in per_case.values()]),
        "mean_iou": nanmean([v["iou"] for v in per_case.values()]),
        "mean_hd95": nanmean([v["hd95"] for v in per_case.values()]),
        "hd95_unit": hd95_unit,
        "hd95_missing": sum(int(r.get("hd95_missing", 0)) for r in rows),
        "hd95_rule": HD95_RULE,
        "per_class": per_class,
        "per_case": per_case,
        "best_classes": ranked[:k],
        "worst_classes": ranked[::-1][:k],
    }


def nanmean(values: list[float | None]) -> float | None:
    finite = [float(v) for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else None


def write_results(folder: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """metrics.csv and summary.json, each written whole under a temporary name and renamed."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    write_text(folder / "metrics.csv", buf.getvalue())
    write_json(folder / "summary.json", summary)


def log_summary(s: dict[str, Any]) -> None:
    log.info("evaluate on %s (%d cases): mean Dice %s", s["source"], s["cases"], _f(s["mean_dice"]))
    unit = s.get("hd95_unit", "")
    for name, v in s["per_class"].items():
        missing = f"  missing in {v['hd95_missing']} case(s)" if v.get("hd95_missing") else ""
        log.info(
            "  %-20s Dice %s  IoU %s  HD95 %s %s%s", name, _f(v["dice"]), _f(v["iou"]), _f(v["hd95"]), unit, missing
        )
    if s["best_classes"]:
        log.info("  best: %s", ", ".join(f"{n} {d:.3f}" for n, d in s["best_classes"]))
        log.info("  worst: %s", ", ".join(f"{n} {d:.3f}" for n, d in s["worst_classes"]))
    if s.get("hd95_missing"):
        log.info("  HD95: %d structure(s) never predicted scored the image diagonal", s["hd95_missing"])


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
