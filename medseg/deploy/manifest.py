"""The export folder's manifest.json: everything predict needs, as plain data, and the checksums of the
files it loads.

Nothing in the manifest is executed or names where to write; it is read with json and type-checked
here, and every file it lists must exist beside it with the SHA-256 it records (a changed model file is
refused before onnxruntime opens it).

An export of a crossval ensemble (format_version 2) may hold several configurations with their own
preprocessing (say 2D and 3D): its `configurations` list gives each one's model files and preprocessing
keys (GROUP_KEYS), read over the top-level keys (`views`); the top level describes the first configuration
and lists every file of every configuration in `models` / `files`, whose checksums are verified.
`postprocessing` lists the connected-component operation chosen per class by mode=crossval. Version 1
manifests (one configuration, no post-processing) still load; an older medseg refuses version 2 instead of
predicting without the rest of the ensemble or its post-processing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from medseg.errors import CheckpointError

FORMAT = "medseg-export"
FORMAT_VERSION = 2  # written when a manifest holds several configurations or post-processing, else 1
READABLE_VERSIONS = (1, 2)
OPERATIONS = ("largest_component", "largest_foreground")  # medseg/deploy/postprocess.py
GROUP_KEYS = (
    "name",
    "opset",
    "dynamic_spatial",
    "models",
    "files",
    "input",
    "output",
    "dims",
    "slice_axis",
    "context_slices",
    "pad_divisible",
    "patch_size",
    "sliding_window",
    "spacing",
    "scale",
    "image_size",
    "intensity",
    "tta",
)
PRESETS = ("none", "minmax", "zscore", "zscore_nonzero", "percentile", "ct", "ct_zscore", "imagenet")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_export(path: Any) -> bool:
    return path is not None and (Path(str(path)).expanduser() / "manifest.json").is_file()


def load_manifest(folder: Path) -> dict[str, Any]:
    """Read, type-check and verify an export folder's manifest (checksums included)."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read as JSON ({type(exc).__name__}); export the model again") from exc
    problem = _problem(manifest)
    if problem:
        raise CheckpointError(f"{path}: {problem}; export the model again")
    for entry in [*manifest["models"], *manifest.get("files", [])]:
        file = folder / entry["file"]
        if not file.is_file():
            raise CheckpointError(f"{file} is missing; the export folder is incomplete")
        if sha256(file) != entry["sha256"]:
            raise CheckpointError(
                f"{file} does not match the SHA-256 in {path}; the file was changed, export the model again"
            )
    return manifest


def views(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One manifest per configuration: each configuration's keys over the top-level ones."""
    groups = manifest.get("configurations")
    if not groups:
        return [manifest]
    return [{**manifest, **group} for group in groups]


def postprocessing_ops(manifest: dict[str, Any]) -> dict[int, str]:
    """{class index: operation} from the manifest's postprocessing list (checked by load_manifest)."""
    names = manifest["classes"]["names"]
    return {names.index(e["class"]): e["operation"] for e in manifest.get("postprocessing") or []}


def _int_list(value: Any, n: int | None = None) -> bool:
    ok = isinstance(value, list) and all(isinstance(v, int) and v >= 1 for v in value)
    return ok and (n is None or len(value) == n)


def _problem(m: Any) -> str | None:
    """What is wrong with a manifest (None when it is well-formed)."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        return f"not a {FORMAT} manifest"
    if m.get("format_version") not in READABLE_VERSIONS:
        return f"format_version {m.get('format_version')!r} is not one of {', '.join(map(str, READABLE_VERSIONS))}"
    groups = m.get("configurations")
    if groups is not None:
        if m["format_version"] < 2 or not (isinstance(groups, list) and groups):
            return "configurations must be a non-empty list (format_version 2)"
        listed = [e for e in [*(m.get("models") or []), *(m.get("files") or [])] if isinstance(e, dict)]
        for i, group in enumerate(groups):
            if not isinstance(group, dict) or set(group) - set(GROUP_KEYS) or not isinstance(group.get("name"), str):
                return f"configurations[{i}] must be a named object of {', '.join(GROUP_KEYS[1:])}"
            problem = _view_problem({**m, **group})
            if problem:
                return f"configurations[{i}] ({group['name']}): {problem}"
            if any(e not in listed for e in [*group["models"], *(group.get("files") or [])]):
                return f"configurations[{i}] ({group['name']}) names a file that the top-level models/files do not list"
        if len({v.get("slice_axis") for v in views(m)}) > 1:
            return "the configurations predict along different slice axes"
    return _view_problem(m) or _postprocessing_problem(m)


def _postprocessing_problem(m: dict[str, Any]) -> str | None:
    ops = m.get("postprocessing") or []
    names = m["classes"]["names"]
    if not isinstance(ops, list):
        return "postprocessing must be a list"
    seen = set()
    for e in ops:
        if not (isinstance(e, dict) and e.get("class") in names[1:] and e.get("operation") in OPERATIONS):
            return f"postprocessing {e!r} must name a foreground class and one of {', '.join(OPERATIONS)}"
        if e["class"] in seen:
            return f"postprocessing names class {e['class']!r} twice"
        seen.add(e["class"])
    if ops and m["format_version"] < 2:
        return "postprocessing needs format_version 2"
    return None


def _view_problem(m: dict[str, Any]) -> str | None:
    """What is wrong with the keys of one configuration (over the top level)."""
    files = [*(m.get("models") or []), *(m.get("files") or [])]
    if not m.get("models") or not all(
        isinstance(e, dict)
        and isinstance(e.get("file"), str)
        and "/" not in e["file"]
        and "\\" not in e["file"]
        and not e["file"].startswith(".")
        and isinstance(e.get("sha256"), str)
        for e in files
    ):
        return "models/files must list plain file names with their sha256"
    classes = m.get("classes")
    if not (isinstance(classes, dict) and isinstance(classes.get("count"), int) and classes["count"] >= 2):
        return "classes.count must be an integer >= 2"
    names = classes.get("names")
    if not (isinstance(names, list) and len(names) == classes["count"] and all(isinstance(n, str) for n in names)):
        return "classes.names must name every class"
    if m.get("dims") not in (2, 3) or m.get("slice_axis") not in (0, 1, 2):
        return "dims must be 2 or 3 and slice_axis 0, 1 or 2"
    if not (isinstance(m.get("pad_divisible"), int) and m["pad_divisible"] >= 1):
        return "pad_divisible must be an integer >= 1"
    if not (isinstance(m.get("context_slices"), int) and 0 <= m["context_slices"] <= 32):
        return "context_slices must be an integer in [0, 32]"
    if m.get("patch_size") is not None and not _int_list(m["patch_size"], 3):
        return "patch_size must be three integers >= 1 or null"
    if m.get("image_size") is not None and not _int_list(m["image_size"], 2):
        return "image_size must be two integers >= 1 or null"
    spacing = m.get("spacing")
    if spacing is not None and not (
        isinstance(spacing, list)
        and len(spacing) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in spacing)
    ):
        return "spacing must be three numbers > 0 (mm) or null"
    if not (isinstance(m.get("scale"), (int, float)) and 0 < m["scale"] <= 1):
        return "scale must be in (0, 1]"
    intensity = m.get("intensity")
    if not (isinstance(intensity, dict) and intensity.get("preset") in PRESETS):
        return f"intensity.preset must be one of {', '.join(PRESETS)}"
    inputs = m.get("input")
    if not (isinstance(inputs, dict) and isinstance(inputs.get("channels"), int) and inputs["channels"] >= 1):
        return "input.channels must be an integer >= 1"
    if m.get("output", "logits") not in ("logits", "probabilities"):
        return "output must be logits or probabilities"
    mods = m.get("modalities")
    if not (isinstance(mods, list) and all(isinstance(v, str) for v in mods)):
        return "modalities must be a list of DICOM modality codes"
    return None


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    problem = _problem(manifest)
    assert problem is None, problem
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
