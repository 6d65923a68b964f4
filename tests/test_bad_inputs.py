"""The bad-input suite: each row is one thing a user can get wrong (a config value, a data file, a
checkpoint, a storage URL). Every row must end with exit code 2 and one line `medseg: error: ...` naming
the problem, no traceback, and must leave an earlier run's checkpoints and history in the same run folder
byte for byte as they were (hydra.run.dir points at that finished run).

Rows run through run.py's own entry (`main` of run.py: argv parsing, Hydra, the one-line error printing)
inside the test process, which keeps the suite fast; test_rows_agree_with_a_real_process runs a few rows
as real `python run.py` processes to show that the exit code and the line are the same there.
The rows live in tables by subject (tests/bad_input_rows_*.py); what they share is tests/bad_inputs_harness.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from tests.bad_input_rows_checkpoints import CKPT_ROWS, STORED_ROWS
from tests.bad_input_rows_config import CONFIG_ROWS, LAYOUT_ROWS, PLAN_ROWS, STORE_ROWS
from tests.bad_input_rows_crossval import CROSSVAL_ROWS
from tests.bad_input_rows_data import FILE_ROWS
from tests.bad_input_rows_deploy import DEPLOY_ROWS
from tests.bad_input_rows_storage import SECRET_ROWS, STORAGE_ROWS
from tests.bad_inputs_harness import (
    RUN,
    Ctx,
    Outcome,
    Row,
    call_entry,
    snapshot,
)
from tests.conftest import ROOT


# ------------------------------------------------------------------ running run.py's entry in-process
@pytest.fixture(scope="module")
def entry() -> Callable[[], Any]:
    spec = importlib.util.spec_from_file_location("medseg_run_entry", ROOT / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    task = module.main
    while hasattr(task, "__wrapped__"):
        task = task.__wrapped__
    task.__module__ = "__main__"  # as when run.py runs as a script: Hydra looks for conf/ next to the file
    return module.main


@pytest.fixture(scope="module")
def finished(entry, tmp_path_factory, cache_dir) -> tuple[Path, Path, Path]:
    from medseg.data.examples import write_msd

    base = tmp_path_factory.mktemp("bad_inputs")
    run = base / "finished_run"
    done = call_entry(entry, [f"hydra.run.dir={run}", *RUN], cache_dir)
    assert done.code == 0, done.err[-2000:]
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "history.json").is_file()
    msd = write_msd(base / "msd", num_cases=4, num_classes=3)
    image = base / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((32, 32, 8)).astype(np.float32), np.eye(4)), image)
    return run, msd, image


ROWS = (
    CONFIG_ROWS
    + FILE_ROWS
    + CKPT_ROWS
    + STORED_ROWS
    + STORAGE_ROWS
    + SECRET_ROWS
    + LAYOUT_ROWS
    + STORE_ROWS
    + PLAN_ROWS
    + CROSSVAL_ROWS
    + DEPLOY_ROWS
)


def test_the_suite_has_enough_rows() -> None:
    assert len(ROWS) >= 118
    assert len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=r.marks) for r in ROWS])
def test_bad_input(row: Row, entry, finished, cache_dir: Path, tmp_path: Path) -> None:
    run, msd, image = finished
    ctx = Ctx(tmp=tmp_path, run=run, msd=msd, image=image)
    before = snapshot(run)
    try:
        args = row.setup(ctx)
        outcome = call_entry(entry, _in_run(run, args), cache_dir)
    finally:
        for close in ctx.cleanup:
            close()
    assert_one_line_error(outcome, row.expect)
    if row.config_error:
        assert "├──" not in outcome.out, "the config tree was printed before the config error"
    if row.check is not None:
        row.check(ctx, outcome)
    assert snapshot(run) == before, "the finished run's checkpoints or history changed"


def _in_run(run: Path, args: list[str]) -> list[str]:
    """Options (-m) first, then the finished run as hydra.run.dir, then the row's overrides."""
    options = [a for a in args if a.startswith("-")]
    return [*options, f"hydra.run.dir={run}", *(a for a in args if not a.startswith("-"))]


def assert_one_line_error(outcome: Outcome, expect: str) -> None:
    import re

    text = outcome.out + outcome.err
    assert "Traceback" not in text, text[-3000:]
    assert outcome.code == 2, text[-3000:]
    lines = [line for line in outcome.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("medseg: error: ")]
    assert len(errors) == 1, outcome.err[-3000:]
    assert re.search(expect, errors[0]), errors[0]


@pytest.mark.slow
def test_rows_agree_with_a_real_process(finished, cache_dir: Path, tmp_path: Path) -> None:
    """The same exit code and line from `python run.py` as a process, for a config, a file and a checkpoint row."""
    run, msd, image = finished
    ctx = Ctx(tmp=tmp_path, run=run, msd=msd, image=image)
    before = snapshot(run)
    env = {**os.environ, "MEDSEG_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    for row_id in ("batch-size-negative", "crafted-copyfile"):
        row = next(r for r in ROWS if r.id == row_id)
        args = row.setup(ctx)
        proc = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), *_in_run(run, args)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert_one_line_error(Outcome(proc.returncode, proc.stdout, proc.stderr), row.expect)
        if row.check is not None:
            row.check(ctx, Outcome(proc.returncode, proc.stdout, proc.stderr))
    assert snapshot(run) == before


def test_a_run_that_fails_before_training_leaves_no_folder_and_deletes_nothing_of_the_users(
    entry, cache_dir: Path, tmp_path: Path
) -> None:
    """A misspelt data.root: the run folder Hydra made for it is gone; a folder that already held a user's
    file keeps it (and Hydra's files of this run stay beside it)."""
    run = [o for o in RUN if not o.startswith("data.synthetic.")]  # keys of data=synthetic only
    bad = ["data=msd", f"data.root={tmp_path}/no_such_dataset", *run]
    fresh = tmp_path / "outputs" / "train" / "2026-01-01_00-00-00"
    outcome = call_entry(entry, [f"hydra.run.dir={fresh}", *bad], cache_dir)
    assert_one_line_error(outcome, r"no_such_dataset")
    assert not fresh.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    os.utime(mine / "notes.txt", (1e9, 1e9))  # written long before this run
    outcome = call_entry(entry, [f"hydra.run.dir={mine}", *bad], cache_dir)
    assert_one_line_error(outcome, r"no_such_dataset")
    assert (mine / "notes.txt").read_text() == "my notes" and (mine / ".hydra" / "config.yaml").is_file()
