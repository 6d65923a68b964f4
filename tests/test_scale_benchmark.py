"""The scale benchmark runs end to end at a tiny size and prints every figure beside its target."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_scale_benchmark_prints_every_figure(tmp_path: Path, capsys, monkeypatch) -> None:
    from medseg.benchmarks.scale import generate, main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["--subjects", "2", "3", "--shape", "32", "32", "16", "--structures", "5", "--patch", "16", "16", "16"]
    rows = main([*args, "--steps", "2", "--train-batches", "1", "--cache", str(tmp_path)])
    assert [r["N"] for r in rows] == [2, 3]
    for r in rows:
        assert r["store_mb"] > 0 and r["raw_mb"] > 0 and r["train_rss_mb"] > 0 and r["train_uss_mb"] > 0
        assert 0 < r["first_step_s"] < 600
        assert all(r[k] > 0 for k in ("2d_w0", "2d_w2", "3d_w0", "3d_w2", "2d_model", "3d_model"))
    assert rows[-1]["eval_rss_mb"] > 0 and "eval_rss_mb" not in rows[0]
    out = capsys.readouterr().out
    for figure in (
        "preprocessing",
        "store size",
        "training peak RSS",
        "start to first step",
        "loader 2D, 2 workers",
        "loader 3D 96^3, 0 workers",
        "evaluate, one subject",
        "3 vs 2 subjects",
    ):
        assert figure in out, figure
    assert out.count("target") >= 17
    # subjects are generated once and reused
    src = tmp_path / "32x32x16-5" / "src"
    assert len(list(src.glob("s*/segmentations/*.nii.gz"))) == 3 * 5
    mtime = (src / "s0000" / "ct.nii.gz").stat().st_mtime_ns
    generate(tmp_path / "32x32x16-5", 3, (32, 32, 16), 5)
    assert (src / "s0000" / "ct.nii.gz").stat().st_mtime_ns == mtime
