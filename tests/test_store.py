"""The case store: built once and reused, atomic under kill -9, one writer per case, keyed by settings and
files; slices, slabs and patches read from it equal what the in-memory path cut from whole volumes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT


def _store_root(base: Path) -> Path:
    (root,) = [p for p in base.iterdir() if p.is_dir()]
    return root


def _written(root: Path) -> Counter:
    """How many times each case was written (build.log: one line per write)."""
    log = root / "build.log"
    lines = log.read_text().splitlines() if log.is_file() else []
    return Counter(line.split("case=")[1].split()[0] for line in lines)


def _snapshot(root: Path) -> dict:
    """Every committed case: arrays, foreground samples and metadata (less who wrote it, when, which build)."""
    import blosc2

    out = {}
    for record in sorted((root / "cases").glob("*/record.json")):
        meta = json.loads(record.read_text())
        case, generation = meta["id"], record.parent / meta.pop("generation")
        meta.pop("writer"), meta.pop("build_seconds")
        arrays = {p: blosc2.open(str(generation / f"{p}.b2nd"))[...] for p in ("image", "label")}
        with np.load(generation / "fg.npz") as z:
            fg = {k: z[k] for k in z.files}
        out[case] = (meta, arrays, fg)
    return out


def _assert_same_store(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for case in a:
        assert a[case][0] == b[case][0], case
        for part in ("image", "label"):
            np.testing.assert_array_equal(a[case][1][part], b[case][1][part])
            assert a[case][1][part].dtype == b[case][1][part].dtype
        assert a[case][2].keys() == b[case][2].keys()
        for k in a[case][2]:
            np.testing.assert_array_equal(a[case][2][k], b[case][2][k])


def _preprocess_cmd(tmp_path: Path, store: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "run.py"),
        "mode=preprocess",
        f"hydra.run.dir={tmp_path}/run-{time.monotonic_ns()}",
        f"data.store.dir={store}",
        "trainer.progress_bar=false",
        "logger=none",
        *overrides,
    ]


def _env(cache_dir: Path) -> dict:
    env = {**os.environ, "MEDSEG_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _clean_build(compose, store: Path, *overrides: str) -> Path:
    from medseg.data.datamodule import read_checked_cases
    from medseg.data.store import open_store

    cfg = compose(f"data.store.dir={store}", *overrides, tiny=False)
    caseset = read_checked_cases(cfg)
    open_store(cfg.data, str(cfg.paths.cache_dir), caseset.cases, caseset.root, workers=0, progress=False)
    return _store_root(store)


MANY = ["data.synthetic.num_cases=24", "data.synthetic.shape=[48,48,24]"]


def test_kill9_during_preprocess_then_rerun_equals_a_clean_build(compose, cache_dir: Path, tmp_path: Path) -> None:
    from medseg.data.layouts import read_cases

    read_cases(compose(*MANY, tiny=False).data, str(cache_dir))  # the demo data exists before the race starts
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _preprocess_cmd(tmp_path, killed, *MANY, "data.store.workers=0"),
        cwd=tmp_path,
        env=_env(cache_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list(killed.glob("*/build.log"))
        if logs and len(logs[0].read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    root = _store_root(killed)
    before = _written(root)
    assert 3 <= len(before) < 24  # killed halfway

    rerun = subprocess.run(
        _preprocess_cmd(tmp_path, killed, *MANY), cwd=tmp_path, env=_env(cache_dir), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = _written(root)
    assert set(after) == {f"synth_{i:03d}" for i in range(24)}
    assert max(after.values()) == 1  # only the missing cases were built again
    assert not any((root / "tmp").iterdir())  # the killed writer's partial files are gone
    assert all(len(list(d.iterdir())) == 2 for d in (root / "cases").iterdir())  # record + one generation
    _assert_same_store(_snapshot(root), _snapshot(_clean_build(compose, tmp_path / "clean", *MANY)))


def test_concurrent_runs_write_each_case_once(compose, cache_dir: Path, tmp_path: Path) -> None:
    from medseg.data.layouts import read_cases

    read_cases(compose(*MANY, tiny=False).data, str(cache_dir))
    store = tmp_path / "shared"
    procs = [
        subprocess.Popen(
            _preprocess_cmd(tmp_path, store, *MANY, "data.store.workers=2"),
            cwd=tmp_path,
            env=_env(cache_dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in "ab"
    ]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()[-3000:]
    written = _written(_store_root(store))
    assert len(written) == 24 and set(written.values()) == {1}


@pytest.mark.slow
def test_two_ddp_ranks_build_the_store_once(cache_dir: Path, tmp_path: Path) -> None:
    from tests.conftest import TINY

    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "run.py")]
    proc = subprocess.run(
        [*cmd, f"hydra.run.dir={tmp_path}/ddp", *TINY, f"data.store.dir={store}", "trainer.strategy=ddp"],
        cwd=tmp_path,
        env=_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = _written(_store_root(store))
    assert len(written) == 6 and set(written.values()) == {1}


def test_changed_settings_or_files_never_reuse_a_store(compose, tmp_path: Path, caplog) -> None:
    from medseg.data.datamodule import build_data

    store = tmp_path / "store"
    build_data(compose(f"data.store.dir={store}"))
    first = _store_root(store)
    with caplog.at_level(logging.INFO, logger="medseg.data.store"):
        build_data(compose(f"data.store.dir={store}", "data.scale=0.5"))
    assert len([p for p in store.iterdir() if p.is_dir()]) == 2
    assert "settings differ from the existing store in: data.scale" in caplog.text

    # a source file rewritten (new mtime): its case is rebuilt, the others are reused
    meta = json.loads(next((first / "cases").glob("*/record.json")).read_text())
    path = meta["source"][0][0]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medseg.data.store"):
        build_data(compose(f"data.store.dir={store}"))
    assert f"rebuilding {meta['id']} ({path} changed since it was stored)" in caplog.text
    written = _written(first)
    assert written[meta["id"]] == 2 and sum(written.values()) == 7


# ---------------------------------------------------------------- items equal the in-memory path
def _old_volume(cfg, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The case as the previous in-memory cache held it: the deterministic chain on the files."""
    from medseg.data.layouts import read_cases
    from medseg.data.transforms import volume_transforms

    case = next(c for c in read_cases(cfg.data, str(cfg.paths.cache_dir)).cases if c["id"] == case_id)
    out = volume_transforms(cfg.data)(dict(case))
    return np.asarray(out["image"], dtype=np.float32), np.asarray(out["label"]).round().astype(np.int64)


@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("float16", 2.5e-4)])
def test_slices_and_slabs_equal_the_old_path(compose, tmp_path: Path, dtype: str, tol: float) -> None:
    from medseg.data.datamodule import build_data

    cfg = compose(f"data.store.dir={tmp_path}", f"data.store.image_dtype={dtype}", "data.context_slices=2")
    bundle = build_data(cfg)
    ds = bundle.val_set
    case = ds.case_ids[0]
    image, label = _old_volume(cfg, case)
    depth = image.shape[-1]
    assert bundle.info.in_channels == 5
    for s in range(depth):
        rows = [ix for ix in range(len(ds)) if ds.index[ix] == (0, s)]
        assert len(rows) == 1 and ds.case_index(rows[0]) == 0
        np.testing.assert_array_equal(ds.label_at(0, s), label[..., s])
        # 2k+1 neighbours as channels, edges replicated: computed here independently
        expected = np.stack([image[..., min(max(s + o, 0), depth - 1)] for o in range(-2, 3)], axis=1)
        np.testing.assert_allclose(ds.image_at(0, s), expected.reshape(-1, *image.shape[1:3]), rtol=0, atol=tol)
    # per-slice foreground flags equal a scan of the label
    flags = ds.volumes.meta(0)["foreground_slices"][2]
    assert flags == [int(label[..., s].any()) for s in range(depth)]
    batch = next(iter(bundle.train_loader))
    assert batch["image"].shape[1] == 5 and batch["label"].shape[1] == 1


def test_native_2d_images_get_replicated_context(compose, tmp_path: Path) -> None:
    from medseg.data.datamodule import build_data
    from medseg.data.examples import write_folder

    root = write_folder(tmp_path / "pngs", num_cases=4)
    over = [
        "data=folder",
        f"data.root={root}",
        "data.mask_suffix=_mask",
        "data.context_slices=1",
        "data.val_percent=25",
    ]
    bundle = build_data(compose(*over, f"data.store.dir={tmp_path}/store"))
    item = bundle.val_set[0]
    assert bundle.info.in_channels == 3 * bundle.val_set.volumes.meta(0)["image_shape"][0]
    torch.testing.assert_close(item["image"][0], item["image"][1])


def test_patches_equal_the_old_path(compose, tmp_path: Path) -> None:
    from monai.transforms import SpatialCrop, SpatialPad
    from monai.transforms.utils import correct_crop_centers

    from medseg.data.datamodule import build_data

    patch = [16, 16, 16]  # deeper than the 8-slice volumes: padded, as SpatialPadd did
    cfg = compose(f"data.store.dir={tmp_path}", "data.dims=3", f"data.patch_size={patch}", "data.pad_divisible=8")
    ds = build_data(cfg).train_set
    image, label = _old_volume(cfg, ds.case_ids[0])
    padded_i = np.asarray(SpatialPad(spatial_size=patch)(torch.from_numpy(image)))
    padded_l = np.asarray(SpatialPad(spatial_size=patch)(torch.from_numpy(label)))
    pad_before = [(q - s) // 2 for q, s in zip(padded_i.shape[1:], image.shape[1:])]
    locations = ds.volumes.store.foreground_locations(ds.case_ids[0])
    centres = [[0, 0, 0], [31, 31, 7], [16, 5, 3]] + [loc.tolist() for c in locations for loc in locations[c][:2]]
    for centre in centres:
        valid = correct_crop_centers([c + b for c, b in zip(centre, pad_before)], patch, padded_i.shape[1:])
        crop = SpatialCrop(roi_center=[int(c) for c in valid], roi_size=patch)
        got_i, got_l = ds.patch_at(0, centre)
        np.testing.assert_array_equal(got_i, np.asarray(crop(torch.from_numpy(padded_i))))
        np.testing.assert_array_equal(got_l, np.asarray(crop(torch.from_numpy(padded_l))))
    # stored foreground samples lie on their class; at most fg_samples per class
    for c, locs in locations.items():
        assert 0 < len(locs) <= 1000 and all(label[0][tuple(loc)] == c for loc in locs)
    assert len(ds[0]) == 2 and ds[0][0]["image"].shape == (1, *patch)  # samples_per_volume patches


# ---------------------------------------------------------------- background slices redrawn per epoch
def test_background_slices_are_redrawn_each_epoch_and_reproducibly(compose, tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from medseg.data.datamodule import build_data

    over = [f"data.store.dir={tmp_path}", "data.foreground_slice_ratio=0.9", "data.augment.enabled=false"]
    over += ["data.synthetic.shape=[32,32,24]"]  # more background slices than a 0.9 share keeps
    ds = build_data(compose(*over)).train_set
    assert 0 < ds.n_neg < len(ds.neg)

    def seen(epoch: int) -> list:
        ds.set_epoch(epoch)
        return list(ds.epoch_index())

    e0, e1 = seen(0), seen(1)
    assert e0 != e1 and len(e0) == len(e1) == len(ds)
    assert set(ds.pos) <= set(e0) and set(ds.pos) <= set(e1)  # every foreground slice, every epoch
    again = build_data(compose(*over)).train_set
    again.set_epoch(1)
    assert again.epoch_index() == e1  # same seed and epoch: same draw (exact resume)

    # persistent loader workers see the epoch too
    loader = DataLoader(ds, batch_size=len(ds), num_workers=2, persistent_workers=True)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        batch = next(iter(loader))
        expected = torch.stack([ds[i]["image"] for i in range(len(ds))])
        torch.testing.assert_close(batch["image"], expected)


def test_preprocess_mode_builds_then_reuses(run_cli, tmp_path: Path) -> None:
    store = f"data.store.dir={tmp_path}/store"
    first = run_cli("mode=preprocess", store, "trainer.progress_bar=false", check=True)
    assert "12 cases (12 built, 0 reused)" in first.stdout + first.stderr
    second = run_cli("mode=preprocess", store, "trainer.progress_bar=false", check=True)
    assert "12 cases (0 built, 12 reused)" in second.stdout + second.stderr
