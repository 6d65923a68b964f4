"""The quality benchmark holds every configuration to the same number of optimizer steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.benchmarks.plan_quality import compare, epochs_for


def test_the_steps_split_into_epochs_exactly() -> None:
    for steps in range(1, 130):
        for per_epoch in range(1, 40):
            epochs, batches = epochs_for(steps, per_epoch)
            assert epochs * batches == steps and batches <= per_epoch


@pytest.mark.slow
def test_each_configuration_trains_the_same_number_of_steps(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    results = compare(steps=5, quick=True, names=("default", "recipe_3d"), cache=tmp_path, output=out)
    for name, row in results.items():
        records = json.loads((out / name / "history.json").read_text())
        records = records if isinstance(records, list) else records["epochs"]
        assert row["steps"] == records[-1]["step"] == 5, name
        assert row["mean_dice"] is not None
