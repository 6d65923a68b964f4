"""The built-in demo data: deterministic NIfTI volumes, read through the MSD path, split by case."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np

from medseg.data.layouts import read_cases
from medseg.data.split import split_cases
from medseg.data.synthetic import ensure_synthetic


def digest(folder):
    h = hashlib.sha1()
    for path in sorted(folder.rglob("*.nii.gz")):
        h.update(np.asarray(nib.load(path).dataobj).tobytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_in_msd_layout(tmp_path):
    a = ensure_synthetic(tmp_path / "a", 3, [24, 24, 6], 4, seed=0)
    b = ensure_synthetic(tmp_path / "b", 3, [24, 24, 6], 4, seed=0)
    assert digest(a) == digest(b)
    meta = json.loads((a / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "disc", "2": "square", "3": "ring"}
    label = np.asarray(nib.load(a / "labelsTr" / "synth_000.nii.gz").dataobj)
    assert label.shape == (24, 24, 6) and set(np.unique(label)) == {0, 1, 2, 3}


def test_cases_split_by_case_with_fixed_seed(compose):
    cfg = compose("data.synthetic.num_cases=10", "data.val_percent=30")
    caseset = read_cases(cfg.data, str(cfg.paths.cache_dir))
    assert caseset.class_names == ["background", "disc", "square", "ring"]
    train, val = split_cases(caseset.cases, cfg.data, seed=1)
    assert len(val) == 3 and len(train) == 7
    assert not {c["id"] for c in train} & {c["id"] for c in val}
    again = split_cases(caseset.cases, cfg.data, seed=1)[1]
    assert [c["id"] for c in again] == [c["id"] for c in val]
