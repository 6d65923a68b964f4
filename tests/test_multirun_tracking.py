"""A two-job multirun through run.py: two finished wandb runs in one group, no process left, no secret written."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import TINY

FAKE_KEY = "fk-multirun-0123456789abcdef"


def _processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (ours inherit it from the run.py subprocess)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


@pytest.mark.slow
def test_multirun_of_two_jobs_gives_two_finished_runs_in_one_group(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medseg.tracking.wandb_offline import offline_runs, read_offline_run

    marker = f"medseg-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("MEDSEG_TEST_MARKER", marker)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    run_cli(
        "hydra.mode=MULTIRUN",  # run_cli puts its own overrides first; -m would have to come before them
        *[o for o in TINY if not o.startswith("logger=")],
        "logger=wandb",
        "trainer.limit_train_batches=2",
        "trainer.log_images_every_n_epochs=0",
        "seed=1,2",
        f"logger.wandb.notes=key-{FAKE_KEY}",  # a secret typed on the command line
        check=True,
    )

    sweep = tmp_path / "multirun"
    folders = [offline_runs(sweep / str(job)) for job in (0, 1)]
    assert [len(f) for f in folders] == [1, 1]
    runs = [read_offline_run(f[0], wait_s=10) for f in folders]
    assert len({r.run_id for r in runs}) == 2
    assert [r.group for r in runs] == ["multirun", "multirun"]  # the sweep folder's name
    assert [r.config["seed"] for r in runs] == [1, 2]
    assert [r.exit_code for r in runs] == [0, 0]  # each job's run finished
    assert all(r.summary["best/epoch"] == 1 for r in runs)

    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_with(marker) == []

    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert leaks == []
    overrides = (sweep / "0" / ".hydra" / "overrides.yaml").read_text()
    assert "logger.wandb.notes=key-" in overrides and "WANDB_API_KEY" in overrides  # a reference, not the key
    assert runs[1].config["logger"]["wandb"]["notes"] == "key-***"
