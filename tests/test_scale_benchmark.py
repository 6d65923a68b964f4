"""The scale benchmark runs end to end at a tiny size and prints every figure beside its target."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_scale_benchmark_prints_every_figure(tmp_path: Path, capsys, monkeypatch) -> None:
    from medseg.benchmarks.scale import generate, main, report

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["--subjects", "3", "--shape", "32", "32", "16", "--structures", "5", "--patch", "16", "16", "16"]
    (row,) = main([*args, "--steps", "2", "--train-batches", "1", "--cache", str(tmp_path)])
    src = tmp_path / "32x32x16-5" / "src"
    raw = sum(f.stat().st_size for f in src.rglob("*.nii.gz"))
    assert row["N"] == 3 and row["raw_mb"] == pytest.approx(raw / 1e6)
    assert 0 < row["store_mb"] and row["pre_s_per_subject"] > 0
    assert row["train_rss_mb"] >= row["train_uss_mb"] > 0 and 0 < row["first_step_s"] < 600
    assert all(row[k] > 0 for k in ("2d_w0", "2d_w2", "3d_w0", "3d_w2", "2d_model", "3d_model", "eval_rss_mb"))
    out = capsys.readouterr().out
    figures = ["preprocessing", "store size", "training peak RSS", "start to first step", "loader 2D, 0 workers"]
    figures += ["loader 2D, 2 workers", "loader 3D patches, 0 workers", "loader 3D patches, 2 workers"]
    for figure in [*figures, "evaluate, one subject"]:
        assert f"  {figure}" in out and "target" in out.split(f"  {figure}")[1].splitlines()[0], figure
    report([row, {**row, "N": 6, "train_rss_mb": 1.2 * row["train_rss_mb"]}])  # growth over N
    assert "6 vs 3 subjects: training peak RSS 20.0 %" in capsys.readouterr().out
    # subjects are generated once and reused
    assert len(list(src.glob("s*/segmentations/*.nii.gz"))) == 3 * 5
    mtime = (src / "s0000" / "ct.nii.gz").stat().st_mtime_ns
    generate(tmp_path / "32x32x16-5", 3, (32, 32, 16), 5)
    assert (src / "s0000" / "ct.nii.gz").stat().st_mtime_ns == mtime
