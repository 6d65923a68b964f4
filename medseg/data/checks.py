"""Checks on the data before any training: one error listing the first bad cases and the fix.

Two passes: `check_files` (cheap, before decoding: every listed file exists) and `check_volumes`
(on what the case store recorded while decoding each case: readable, shapes agree, finite voxels,
label values in range, data.num_classes consistent with the labels and the layout). The second pass
reads only the stored metadata, so a run on a ready store rescans no voxel.
"""

from __future__ import annotations

from typing import Any

from medseg.errors import DataError

MAX_LISTED = 5


def case_paths(case: dict[str, Any]) -> list[str]:
    """Every file a case reads (multi-channel images and per-structure labels are lists)."""
    paths: list[str] = []
    for key in ("image", "label"):
        value = case.get(key)
        paths += [str(v) for v in value] if isinstance(value, (list, tuple)) else ([str(value)] if value else [])
    return paths


def check_files(cases: list[dict[str, Any]], what: str) -> None:
    """Raise one DataError naming the first cases whose files are missing."""
    from pathlib import Path

    problems = []
    for case in cases:
        missing = [p for p in case_paths(case) if not Path(p).is_file()]
        if missing:
            extra = f" and {len(missing) - 1} more file(s)" if len(missing) > 1 else ""
            problems.append(f"{case['id']}: missing file {missing[0]}{extra}")
    raise_problems(problems, what, "restore the files, or remove those cases from the dataset")


def raise_problems(problems: list[str], what: str, fix: str) -> None:
    if not problems:
        return
    listed = "; ".join(problems[:MAX_LISTED])
    more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    raise DataError(f"{len(problems)} bad {what} case(s): {listed}{more}. Fix: {fix}")


def check_volumes(
    metas: list[dict[str, Any]],
    num_classes: int | None,
    what: str,
    cases: list[dict[str, Any]] | None = None,
    declared: tuple[int, str] | None = None,
) -> int:
    """Validate every case from its store metadata; return the number of classes (inferred when not given).

    `num_classes` is data.num_classes (None = infer); `declared` is (count, source) when the layout
    names its classes (dataset.json labels, structure files), used when num_classes is None.
    """
    if num_classes is not None and declared is not None and declared[0] != num_classes:
        raise DataError(
            f"data.num_classes={num_classes} disagrees with {declared[1]} ({declared[0]} classes incl. background); "
            f"set data.num_classes={declared[0]} or null"
        )
    limit, limit_source = (num_classes, f"data.num_classes={num_classes}") if num_classes is not None else (None, "")
    if limit is None and declared is not None:
        limit, limit_source = declared[0], f"the {declared[0]} classes of {declared[1]}"
    problems: list[str] = []
    too_high: list[str] = []
    max_label = 0
    for i, meta in enumerate(metas):
        case = meta.get("id", str(i))
        where = _where(cases[i] if cases is not None and i < len(cases) else meta)
        if "error" in meta:
            problems.append(f"{case}: {meta['error']}")
            continue
        image_shape, label_shape = tuple(meta["image_shape"][1:]), tuple(meta["label_shape"][1:])
        if image_shape != label_shape:
            problems.append(
                f"{case}: image shape {image_shape} != label shape {label_shape} ({where}); "
                "the label must be on the image's grid"
            )
            continue
        check = meta["check"]
        if check["n_nonfinite"]:
            problems.append(
                f"{case}: image has {check['n_nonfinite']} NaN/Inf voxel(s) ({where}); clean or re-export the image"
            )
        lo, hi = int(check["label_min"]), int(check["label_max"])
        if lo < 0:
            problems.append(f"{case}: negative label value {lo} ({where}); labels must be class indices >= 0")
        if limit is not None and hi >= limit:
            msg = f"{case}: label value {hi} outside [0, {limit}) of {limit_source} ({where})"
            (too_high if num_classes is not None else problems).append(msg)
        max_label = max(max_label, hi)
    if too_high and not problems:
        raise DataError(
            f"data.num_classes={num_classes} disagrees with the labels: {len(too_high)} {what} case(s) hold values "
            f"up to {max_label} (first: {too_high[0]}); set data.num_classes={max_label + 1} or null to infer it"
        )
    problems += too_high
    raise_problems(problems, what, "repair or remove the cases listed, then run again")
    if num_classes is not None:
        return num_classes
    return limit if limit is not None else max(2, max_label + 1)


def _where(case: dict[str, Any]) -> str:
    label = case.get("label")
    image = case.get("image")
    image = image[0] if isinstance(image, (list, tuple)) else image
    label = f"{len(label)} structure files" if isinstance(label, (list, tuple)) else label
    return f"image {image}, label {label}" if image else "path unknown"
