"""The case store never serves the wrong case: every setting that changes a case is in the store's key, a
replaced source file is seen whatever its mtime, a case is committed as one unit, a writer's cleanup touches
only its own case, builders cap their threads and end with their parent, and every layout reads the store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.examples import write_folder, write_msd, write_totalseg
from tests.conftest import ROOT


def _roots(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_dir())


def _written(root: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in (root / "build.log").read_text().splitlines():
        case = line.split("case=")[1].split()[0]
        counts[case] = counts.get(case, 0) + 1
    return counts


def _nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(array, np.eye(4)).to_filename(str(path))


def _nii_folder(root: Path, ids: list[str], shape=(16, 16, 4)) -> Path:
    """data=folder with uncompressed .nii volumes: imgs/<id>.nii, masks/<id>.nii (labels 0/1)."""
    rng = np.random.default_rng(0)
    for case in ids:
        _nifti(root / "imgs" / f"{case}.nii", rng.normal(size=shape).astype(np.float32))
        _nifti(root / "masks" / f"{case}.nii", (rng.random(shape) > 0.7).astype(np.uint8))
    return root


def _open(compose, root: Path, store: Path, *extra: str, cases: list[str] | None = None):
    from medseg.data.datamodule import read_checked_cases
    from medseg.data.store import open_store

    cfg = compose("data=folder", f"data.root={root}", f"data.store.dir={store}", *extra)
    caseset = read_checked_cases(cfg)
    chosen = [c for c in caseset.cases if cases is None or c["id"] in cases]
    return open_store(cfg.data, str(cfg.paths.cache_dir), chosen, caseset.root, workers=0, progress=False)


# ---------------------------------------------------------------- 1. every setting that changes a case is in the key
def test_runs_on_different_structures_get_their_own_stores_and_labels(compose, tmp_path: Path) -> None:
    """Run A on structures [000, 001], run B on [001, 002]: two stores, each with its own labels, and A's
    store untouched by B (today's key left data.structures out: B rebuilt A's cases in place)."""
    from medseg.data.datamodule import build_data

    root = write_totalseg(tmp_path / "ts", num_subjects=3, num_structures=3)
    store = tmp_path / "store"
    runs = {"a": ["structure_000", "structure_001"], "b": ["structure_001", "structure_002"]}
    bundles = {}
    for run, names in runs.items():
        cfg = compose("data=totalseg", f"data.root={root}", f"data.structures=[{','.join(names)}]")
        cfg.data.store.dir = str(store)
        bundles[run] = (cfg, build_data(cfg))
    assert len(_roots(store)) == 2
    for run, names in runs.items():
        cfg, bundle = bundles[run]
        vols = bundle.train_set.volumes
        assert set(_written(vols.store.root).values()) == {1}  # each case written once, by its own run
        for i in range(len(vols)):  # read after both runs built: A still reads A's classes
            label = vols[i]["label"][0].numpy()
            for k, name in enumerate(names, start=1):
                mask = np.asarray(nib.load(root / vols.case_ids[i] / "segmentations" / f"{name}.nii.gz").dataobj) > 0
                np.testing.assert_array_equal(label == k, mask, err_msg=f"run {run}, class {k}")
    # the public name of each store's folder (files describing a whole store go there)
    from medseg.data.store import store_root

    for run, names in runs.items():
        cfg, bundle = bundles[run]
        folder = store_root(cfg.data, cfg.paths.cache_dir, root, ["background", *names])
        assert bundle.train_set.volumes.store.folder == folder


@pytest.mark.parametrize(
    "change",
    [
        ["data.images_dir=imgs2"],
        ["data.masks_dir=masks2", "data.mask_suffix=_m"],
        ["data.mask_values=[0,1]"],
        ["data.store.fg_samples=7"],
    ],
)
def test_settings_that_choose_files_or_values_make_a_new_store(compose, tmp_path: Path, change) -> None:
    root = _nii_folder(tmp_path / "nii", ["c0", "c1"])
    shutil.copytree(root / "imgs", root / "imgs2")
    (root / "masks2").mkdir()
    for mask in (root / "masks").iterdir():
        shutil.copy(mask, root / "masks2" / mask.name.replace(".nii", "_m.nii"))
    first = _open(compose, root, tmp_path / "store").root
    second = _open(compose, root, tmp_path / "store", *change).root
    assert first != second and len(_roots(tmp_path / "store")) == 2


@pytest.mark.parametrize(
    "layout, own",
    [
        ("synthetic", {"synthetic"}),
        ("folder", {"images_dir", "masks_dir", "mask_suffix", "colour_map", "mask_values"}),
        ("totalseg", {"structures"}),
        ("msd", {"mask_values"}),
    ],
)
def test_keys_outside_the_key_act_per_item_only(compose, layout: str, own: set[str]) -> None:
    """Every data key of a layout is in the key unless NOT_IN_KEY says why it cannot change a case; the
    keys that choose a layout's files or values are in it."""
    from medseg.data.store import NOT_IN_KEY, store_settings

    cfg = compose(f"data={layout}")
    settings = store_settings(cfg.data)
    for key in cfg.data:
        assert (key in settings) != (key in NOT_IN_KEY), key
    assert own <= set(settings)


# ---------------------------------------------------------------- 2. a replaced file with the same size and mtime
def test_a_file_replaced_keeping_size_and_mtime_is_rebuilt(compose, tmp_path: Path) -> None:
    """`cp -p`, `rsync -a`, `tar x` keep the mtime; an uncompressed .nii keeps its size: ctime/inode tell."""
    root = _nii_folder(tmp_path / "nii", ["c0", "c1"])
    mask = root / "masks" / "c0.nii"
    store = _open(compose, root, tmp_path / "store")
    old = np.asarray(store.label("c0")[...])
    before = os.stat(mask)

    new = 1 - np.asarray(nib.load(mask).dataobj)  # same shape and dtype: same file size
    _nifti(tmp_path / "new.nii", new.astype(np.uint8))
    shutil.copyfile(tmp_path / "new.nii", mask)  # cp onto the file (same inode), then the mtime put back
    os.utime(mask, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(mask)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    again = _open(compose, root, tmp_path / "store")
    label = np.asarray(again.label("c0")[...])
    np.testing.assert_array_equal(label[0], new)
    assert not np.array_equal(label, old)
    assert _written(again.root) == {"c0": 2, "c1": 1}


# ---------------------------------------------------------------- 3. a dead writer's cleanup is the case's own
def test_cleanup_of_one_case_leaves_a_similar_named_case_alone(compose, tmp_path: Path) -> None:
    """Case pt1's writer removes pt1's leftovers, never those of pt1.2 (which a live writer is filling)."""
    from medseg.data.store.commit import start_case, tmp_folder
    from medseg.data.store.locking import case_lock

    root = _nii_folder(tmp_path / "nii", ["pt1", "pt1.2"])
    store_base = tmp_path / "store"
    first = _open(compose, root, store_base, cases=["pt1.2"]).root  # the store exists; pt1 is not built
    dead = tmp_folder(first, "pt1")
    dead.mkdir(parents=True)
    (dead / "image.b2nd").write_bytes(b"partial")  # a writer of pt1 killed halfway
    with case_lock(first, "pt1.2") as locked:  # a live writer of pt1.2, halfway through its files
        assert locked
        live = start_case(first, "pt1.2")
        (live / "image.b2nd").write_bytes(b"being written")
        store = _open(compose, root, store_base, cases=["pt1"])
        assert (live / "image.b2nd").read_bytes() == b"being written"
    assert not dead.exists()
    assert store.meta("pt1")["image_shape"] == [1, 16, 16, 4]


# ---------------------------------------------------------------- 4. a case is committed as one unit
def test_a_reader_never_pairs_a_new_image_with_an_old_label(compose, tmp_path: Path) -> None:
    from medseg.errors import DataError

    root = _nii_folder(tmp_path / "nii", ["c0", "c1"])
    reader = _open(compose, root, tmp_path / "store")
    old_image = np.asarray(reader.image("c0")[...])  # the reader holds the image of the first build
    old_label = np.array(nib.load(root / "masks" / "c0.nii").dataobj)  # a copy: nibabel maps the file

    _nifti(root / "masks" / "c0.nii", (1 - old_label).astype(np.uint8))  # a changed label: c0 is rebuilt
    rebuilt = _open(compose, root, tmp_path / "store")
    assert _written(rebuilt.root)["c0"] == 2
    np.testing.assert_array_equal(np.asarray(rebuilt.label("c0")[0]), 1 - old_label)

    # the first reader goes on with its own build's image, and is never handed the new build's label
    np.testing.assert_array_equal(np.asarray(reader.image("c0")[...]), old_image)
    with pytest.raises(DataError, match=r"case c0 was rebuilt by another process while this one read it"):
        reader.label("c0")
    # on disk: one record naming one complete generation per case, nothing else
    for case in ("c0", "c1"):
        folder = rebuilt.root / "cases" / case
        record = json.loads((folder / "record.json").read_text())
        assert sorted(p.name for p in folder.iterdir()) == sorted(["record.json", record["generation"]])
        assert sorted(p.name for p in (folder / record["generation"]).iterdir()) == [
            "fg.npz",
            "image.b2nd",
            "label.b2nd",
        ]


# ---------------------------------------------------------------- 5. one atomic-write implementation
def test_a_file_system_refusing_folder_fsync_still_builds(compose, tmp_path: Path, monkeypatch) -> None:
    """Some file systems refuse fsync on a folder (EINVAL); the rename is still atomic, so the build goes on.
    Faked: no such file system is mounted here; os.fsync refuses folders the way those do."""
    import errno
    import stat

    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = _open(compose, _nii_folder(tmp_path / "nii", ["c0", "c1"]), tmp_path / "store")
    assert store.last_summary.built == 2


# ---------------------------------------------------------------- 6. builder processes
def _probe() -> tuple[int, int, str]:
    import blosc2
    import torch

    return torch.get_num_threads(), blosc2.nthreads, os.environ.get("OMP_NUM_THREADS", "")


def test_builders_share_the_cpus() -> None:
    from medseg.data.store.builders import builder_pool, threads_per_builder
    from medseg.hardware import usable_cpus

    assert threads_per_builder(2, cpus=16) == 8 and threads_per_builder(4, cpus=2) == 1
    expected = max(1, usable_cpus() // 2)
    pool = builder_pool(2)
    try:
        seen = {pool.submit(_probe).result(timeout=120) for _ in range(4)}
    finally:
        pool.shutdown()
    assert seen == {(expected, expected, str(expected))}


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill9_of_preprocess_ends_its_builders(cache_dir: Path, tmp_path: Path) -> None:
    many = ["data.synthetic.num_cases=48", "data.synthetic.shape=[64,64,32]"]
    env = {**os.environ, "MEDSEG_CACHE": str(cache_dir)}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, str(ROOT / "run.py"), "mode=preprocess", f"hydra.run.dir={tmp_path}/run"]
    cmd += [f"data.store.dir={tmp_path}/store", "data.store.workers=2", "trainer.progress_bar=false", "logger=none"]
    proc = subprocess.Popen([*cmd, *many], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    builders: list[int] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        builders = [
            p for p in _children(proc.pid) if b"spawn_main" in (Path("/proc") / str(p) / "cmdline").read_bytes()
        ]
        logs = list((tmp_path / "store").glob("*/build.log"))
        if len(builders) == 2 and logs and logs[0].read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None and len(builders) == 2, "the build ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in builders):
        time.sleep(0.1)
    alive = [p for p in builders if _alive(p)]
    for p in alive:  # do not leave them behind when the test fails
        os.kill(p, signal.SIGKILL)
    assert alive == []


# ---------------------------------------------------------------- 7. every layout reads the store
def test_folder_of_nifti_volumes_reads_the_store_not_ram(compose, tmp_path: Path) -> None:
    from medseg.data.datamodule import build_data

    msd = write_msd(tmp_path / "msd", num_classes=3)
    root = tmp_path / "nii"
    shutil.copytree(msd / "imagesTr", root / "imgs")
    shutil.copytree(msd / "labelsTr", root / "masks")
    bundle = build_data(compose("data=folder", f"data.root={root}", f"data.store.dir={tmp_path}/store"))
    vols = bundle.train_set.volumes
    assert vols.held_cases == 0  # read per item from the memory-mapped store, as data=msd does
    store = vols.store
    item = bundle.val_set.volumes[0]
    np.testing.assert_array_equal(item["label"].numpy(), np.asarray(store.label(item["id"])[...]))

    pngs = write_folder(tmp_path / "pngs", num_cases=4)
    over = ["data=folder", f"data.root={pngs}", "data.mask_suffix=_mask", f"data.store.dir={tmp_path}/store"]
    small = build_data(compose(*over)).train_set.volumes
    assert small.held_cases == len(small)  # native 2D images: one item is the whole image, held once


def test_a_replaced_uwmgi_slice_reaches_the_store(compose, tmp_path: Path) -> None:
    """UW-Madison slices are converted to volumes once; the conversion is named by the identity of every
    file it reads, so a slice replaced with its mtime put back is converted and stored again (before, only
    train.csv named it, and the store kept serving the old slice)."""
    from PIL import Image

    from medseg.data.datamodule import read_checked_cases
    from medseg.data.store import open_store
    from medseg.data.uwmgi import write_example

    root = write_example(tmp_path / "uwmgi", cases=2, days=1, slices=3, size=(24, 32))

    def stored_image(case_id: str) -> np.ndarray:
        cfg = compose("data=uwmgi", f"data.root={root}", f"data.store.dir={tmp_path}/store")
        caseset = read_checked_cases(cfg)
        store = open_store(cfg.data, str(cfg.paths.cache_dir), caseset.cases, caseset.root, workers=0, progress=False)
        return np.asarray(store.image(case_id)[...])

    before = stored_image("case1_day0")
    png = next((root / "train" / "case1" / "case1_day0" / "scans").glob("slice_0002_*.png"))
    st = os.stat(png)
    Image.fromarray(np.full((24, 32), 60000, dtype=np.uint16)).save(png)  # a bright slice in its place
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = stored_image("case1_day0")
    assert before.shape == after.shape == (1, 24, 32, 3)
    assert np.ptp(before[0, :, :, 1]) > 0 and np.ptp(after[0, :, :, 1]) == 0  # the new, uniform slice is stored


def test_identity_benchmark_runs_at_a_tiny_size(tmp_path: Path, capsys) -> None:
    from medseg.benchmarks.store_identity import main

    args = ["--subjects", "3", "--files", "4", "--repeats", "1", "--digest-mb", "1", "--cache", str(tmp_path)]
    result = main(args)
    assert result["files"] == 12 and result["identity_s"] > 0 and result["reference_s"] > 0
    assert len(list((tmp_path / "store_identity" / "3x4").rglob("*.nii.gz"))) == 12
    out = capsys.readouterr().out
    assert "identity (size, mtime, ctime, inode)" in out and "content digest" in out


def test_a_case_whose_files_were_removed_by_hand_is_rebuilt(compose, tmp_path: Path, caplog) -> None:
    import logging

    root = _nii_folder(tmp_path / "nii", ["c0", "c1"])
    store = _open(compose, root, tmp_path / "store")
    expected = np.asarray(store.label("c0")[...])
    record = json.loads((store.root / "cases" / "c0" / "record.json").read_text())
    shutil.rmtree(store.root / "cases" / "c0" / record["generation"])
    with caplog.at_level(logging.INFO, logger="medseg.data.store"):
        again = _open(compose, root, tmp_path / "store")
    assert "rebuilding c0 (its stored files are missing)" in caplog.text
    np.testing.assert_array_equal(np.asarray(again.label("c0")[...]), expected)
