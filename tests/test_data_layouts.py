"""Each dataset layout read from tiny data written in its real file formats, and trained end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.data.examples import COLOUR_MAP, write_folder, write_msd, write_totalseg

SMALL_MODEL = ["model.channels=[8,16]"]


def _batch(compose, *overrides):
    from medseg.data.datamodule import build_data

    cfg = compose(*overrides)
    bundle = build_data(cfg)
    return cfg, bundle, next(iter(bundle.train_loader))


def test_msd_4d_multichannel_and_class_names(compose, tmp_path: Path) -> None:
    root = write_msd(tmp_path / "Task01", channels=2, num_classes=3)
    _, bundle, batch = _batch(compose, "data=msd", f"data.root={root}")
    assert bundle.info.in_channels == 2
    assert bundle.info.class_names == ["background", "organ1", "organ2"]
    assert bundle.info.num_classes == 3
    assert batch["image"].shape[1:] == (2, 32, 32)
    # split is by case: 6 cases, 34 % -> 2 validation volumes of 8 slices each
    assert len(bundle.info.val_cases) == 2 and bundle.info.n_val_items == 16


def test_nnunet_channel_files(compose, tmp_path: Path) -> None:
    root = write_msd(tmp_path / "Dataset001", channels=2, num_classes=3, style="nnunet")
    assert (root / "imagesTr" / "case_000_0001.nii.gz").is_file()
    _, bundle, batch = _batch(compose, "data=msd", f"data.root={root}", "data.intensity.preset=none")
    assert bundle.info.in_channels == 2
    assert bundle.info.class_names == ["background", "organ1", "organ2"]
    # the second channel was written as twice the first: the channels are distinct files, in order
    image = bundle.train_set.volumes[0]["image"]
    torch.testing.assert_close(image[1], 2 * image[0])


def test_folder_binary_255_masks_map_to_0_1(compose, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "carvana", mask_suffix="_mask", mode="binary255")
    cfg, bundle, batch = _batch(compose, "data=folder", f"data.root={root}", "data.mask_suffix=_mask")
    assert bundle.info.num_classes == 2
    assert bundle.info.mask_values == [0, 255]
    assert cfg.data.mask_values == [0, 255]  # stored in the run config for evaluate / predict
    assert set(batch["label"].unique().tolist()) == {0, 1}
    assert batch["image"].shape[1] == 3  # RGB PNG -> 3 channels
    # evaluate's label chain (original resolution) maps the stored values the same way
    from medseg.data.transforms import label_transforms

    truth = label_transforms(cfg.data)({"label": str(root / "masks" / "img_000_mask.png")})["label"]
    assert set(truth.unique().tolist()) == {0, 1}


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (None, None, ["class_0", "class_1"]),
        ("dataset.json", '{"labels": {"background": 0, "car": 1}}', ["background", "car"]),
        ("dataset.json", '{"labels": {"0": "background", "1": "car"}}', ["background", "car"]),
        (
            "labelmap.txt",
            "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:255,255,255::\n",
            ["background", "car"],
        ),
        ("classes.txt", "background\ncar\n", ["background", "car"]),
    ],
)
def test_folder_binary_classes_take_the_names_the_data_give(compose, tmp_path: Path, name, text, expected) -> None:
    root = write_folder(tmp_path / "named", num_cases=3, mask_suffix="_mask", mode="binary255")
    if name:
        (root / name).write_text(text)
    _, bundle, _ = _batch(compose, "data=folder", f"data.root={root}", "data.mask_suffix=_mask")
    assert bundle.info.class_names == expected
    # a name list of another length than the masks' classes is named with the file it came from
    if name:
        (root / name).write_text(text.replace("car", "car\nbus") if name == "classes.txt" else text)
    if name == "classes.txt":
        from medseg.errors import DataError

        with pytest.raises(DataError, match=r"data\.num_classes=2 disagrees with the class names in .*classes\.txt"):
            _batch(compose, "data=folder", f"data.root={root}", "data.mask_suffix=_mask", "data.num_classes=2")


def test_folder_native_2d_orientation_matches_the_png(compose, tmp_path: Path) -> None:
    """Arrays are in MONAI's (width, height) order: transposing gives back the PNG's pixels."""
    from PIL import Image

    root = write_folder(tmp_path / "f", size=(32, 48), mask_suffix="_mask")
    _, bundle, _ = _batch(compose, "data=folder", f"data.root={root}", "data.mask_suffix=_mask")
    vol = bundle.train_set.volumes[0]
    case = next(c for c in (root / "masks").iterdir() if c.name.startswith(vol["id"]))
    png = np.asarray(Image.open(case)) // 255  # (H, W)
    assert tuple(vol["label"].shape[1:]) == (48, 32)
    np.testing.assert_array_equal(vol["label"][0].numpy().T, png)


def test_folder_colour_masks_through_colour_table(compose, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "col", mode="colour", mask_suffix="")
    colours = json.dumps(COLOUR_MAP).replace(" ", "")
    _, bundle, batch = _batch(compose, "data=folder", f"data.root={root}", f"data.colour_map={colours}")
    assert bundle.info.num_classes == 3
    assert set(batch["label"].unique().tolist()) <= {0, 1, 2}
    assert 2 in torch.cat([bundle.train_set.volumes[i]["label"].flatten() for i in range(4)]).tolist()


def test_folder_unknown_colour_is_named(compose, tmp_path: Path) -> None:
    from medseg.errors import DataError

    root = write_folder(tmp_path / "col", mode="colour", mask_suffix="")
    with pytest.raises(DataError, match=r"255,0,0 is not in data.colour_map"):
        _batch(compose, "data=folder", f"data.root={root}", "data.colour_map=[[0,0,0],[0,255,0]]")


def test_folder_nifti_volumes(compose, tmp_path: Path) -> None:
    import shutil

    msd = write_msd(tmp_path / "msd", num_classes=3)
    root = tmp_path / "nii"
    shutil.copytree(msd / "imagesTr", root / "imgs")
    shutil.copytree(msd / "labelsTr", root / "masks")
    _, bundle, batch = _batch(compose, "data=folder", f"data.root={root}")
    assert bundle.info.mask_values is None
    assert bundle.info.num_classes == 3
    assert batch["image"].shape[-2:] == (32, 32)


def test_totalseg_merges_structures_in_sorted_order(compose, tmp_path: Path) -> None:
    import nibabel as nib

    from medseg.data.transforms import label_transforms

    root = write_totalseg(tmp_path / "ts", num_subjects=4, num_structures=3)
    cfg, bundle, _ = _batch(compose, "data=totalseg", f"data.root={root}", "data.val_percent=25")
    assert bundle.info.class_names == ["background", "structure_000", "structure_001", "structure_002"]
    vol = bundle.train_set.volumes[0]
    subject = root / vol["id"] / "segmentations"
    for k, name in enumerate(["structure_000", "structure_001", "structure_002"], start=1):
        mask = np.asarray(nib.load(subject / f"{name}.nii.gz").dataobj) > 0
        assert bool((vol["label"][0].numpy()[mask] == k).all())
    case = next(c for c in bundle.train_set.volumes.data if c["id"] == vol["id"])
    truth = label_transforms(cfg.data)({"label": case["label"]})["label"]
    torch.testing.assert_close(truth.long(), vol["label"].long())
    # split by subject: whole subjects in validation
    assert len(bundle.info.val_cases) == 1 and bundle.info.n_val_items == 8


def test_totalseg_structure_list_from_config(compose, tmp_path: Path) -> None:
    root = write_totalseg(tmp_path / "ts", num_subjects=4, num_structures=3)
    _, bundle, _ = _batch(
        compose, "data=totalseg", f"data.root={root}", "data.structures=[structure_002,structure_000]"
    )
    assert bundle.info.class_names == ["background", "structure_002", "structure_000"]
    assert int(bundle.train_set.volumes[0]["label"].max()) <= 2


@pytest.mark.parametrize(
    ("chosen", "writer", "looks_like"),
    [("msd", "folder", "folder"), ("folder", "totalseg", "totalseg"), ("totalseg", "msd", "msd")],
)
def test_wrong_layout_names_the_layout_it_looks_like(compose, tmp_path: Path, chosen, writer, looks_like) -> None:
    from medseg.data.layouts import read_cases
    from medseg.errors import DataError

    writers = {"folder": write_folder, "totalseg": write_totalseg, "msd": write_msd}
    root = writers[writer](tmp_path / "d", 2)
    cfg = compose(f"data={chosen}", f"data.root={root}")
    with pytest.raises(DataError, match=rf"does not match data={chosen}.*looks like the {looks_like} layout"):
        read_cases(cfg.data, str(tmp_path))


# ---------------------------------------------------------------- end to end, one small train per layout
def _train(compose, *overrides) -> Path:
    from medseg.tasks.train import run_train

    cfg = compose(*SMALL_MODEL, *overrides)
    best = run_train(cfg)
    assert best is not None and 0.0 <= best <= 1.0
    return Path(cfg.paths.output_dir)


@pytest.mark.slow
def test_train_msd_end_to_end(compose, tmp_path: Path) -> None:
    root = write_msd(tmp_path / "Task", channels=2, num_classes=3)
    out = _train(compose, "data=msd", f"data.root={root}")
    assert json.loads((out / "label_map.json").read_text()) == {"0": "background", "1": "organ1", "2": "organ2"}
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["dataset"]["in_channels"] == 2


@pytest.mark.slow
def test_train_folder_end_to_end_and_predict_writes_0_255(compose, tmp_path: Path) -> None:
    from PIL import Image

    from medseg.tasks.predict import run_predict

    root = write_folder(tmp_path / "pairs", mask_suffix="_mask")
    (root / "labelmap.txt").write_text("background:0,0,0::\ncar:255,255,255::\n")  # a CVAT mask export's names
    out = _train(compose, "data=folder", f"data.root={root}", "data.mask_suffix=_mask")
    ckpt_path = out / "checkpoints" / "last.pt"
    assert torch.load(ckpt_path, weights_only=True)["mask_values"] == [0, 255]
    pred_dir = tmp_path / "pred"
    run_predict(compose(f"ckpt={ckpt_path}", f"predict.input={root / 'imgs'}", f"predict.output_dir={pred_dir}"))
    written = np.asarray(Image.open(pred_dir / "img_000.png"))
    assert written.shape == (32, 32)
    assert set(np.unique(written).tolist()) <= {0, 255}
    _evaluate_scores_every_val_case(
        compose,
        ckpt_path,
        tmp_path / "eval",
        2,
        ["car"],
        "data=folder",
        f"data.root={root}",
        "data.mask_suffix=_mask",
    )  # as the end of training prints it: a folder layout's file naming is a key of data=folder


def _evaluate_scores_every_val_case(compose, ckpt: Path, out: Path, n_val: int, classes: list[str], *data: str) -> None:
    """mode=evaluate maps the stored labels the same way training did (0/255, merged structures); the dataset
    folder (and a folder layout's file naming) come from this run's `data` overrides, never from the checkpoint."""
    from medseg.tasks.evaluate import run_evaluate

    run_evaluate(compose("mode=evaluate", f"ckpt={ckpt}", *data, "evaluate.hd95=false", output_dir=out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == n_val and list(summary["per_class"]) == classes


@pytest.mark.slow
def test_train_totalseg_end_to_end_writes_label_map(compose, tmp_path: Path) -> None:
    root = write_totalseg(tmp_path / "ts", num_subjects=4, num_structures=5)
    out = _train(compose, "data=totalseg", f"data.root={root}", "data.val_percent=25")
    label_map = json.loads((out / "label_map.json").read_text())
    assert label_map == {"0": "background", **{str(k + 1): f"structure_{k:03d}" for k in range(5)}}
    names = [f"structure_{k:03d}" for k in range(5)]
    _evaluate_scores_every_val_case(
        compose, out / "checkpoints" / "last.pt", tmp_path / "eval", 1, names, f"data.root={root}"
    )


@pytest.mark.slow
def test_train_3d_patches_with_sliding_window_validation(compose, monkeypatch) -> None:
    import monai.inferers

    windows: list[tuple[int, ...]] = []
    real = monai.inferers.sliding_window_inference

    def counting(inputs, roi_size, *args, **kwargs):
        windows.append((tuple(inputs.shape[2:]), tuple(roi_size)))
        return real(inputs, roi_size, *args, **kwargs)

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", counting)
    out = _train(
        compose,
        "data.dims=3",
        "data.patch_size=[16,16,8]",
        "data.pad_divisible=8",
        "data.samples_per_volume=2",
        "data.batch_size=2",
        "trainer.log_images_every_n_epochs=0",  # image panels would add their own windowed passes
        "report.enabled=false",  # and so would the report's overlays
    )
    # validation ran whole 32x32x8 volumes through 16x16x8 windows, two calls per validation volume: the loss
    # pass over the loader, then val/dice scored as mode=evaluate scores it (one slab holds these 8 slices)
    assert windows == [((32, 32, 8), (16, 16, 8))] * 4
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["dataset"]["dims"] == 3


def test_folder_palette_masks(compose, tmp_path: Path) -> None:
    """Palette PNGs: indices are classes as they are, or their colours go through data.colour_map."""
    from PIL import Image

    root = write_folder(tmp_path / "pal", mode="index", mask_suffix="")
    palette = [0, 0, 0, 0, 255, 0, 255, 0, 0] + [0] * (256 - 3) * 3  # index 1 = green, 2 = red
    for mask in (root / "masks").iterdir():
        im = Image.open(mask).convert("L")
        im = im.convert("P") if im.mode != "P" else im
        im.putpalette(palette)
        im.save(mask)
    _, plain, _ = _batch(compose, "data=folder", f"data.root={root}")
    _, mapped, _ = _batch(compose, "data=folder", f"data.root={root}", "data.colour_map=[[0,0,0],[255,0,0],[0,255,0]]")
    a, b = plain.train_set.volumes[0]["label"], mapped.train_set.volumes[0]["label"]
    assert set(a.unique().tolist()) == {0, 1, 2}
    # green (index 1) is class 2 in the colour table and red (index 2) is class 1
    assert bool(((a == 1) == (b == 2)).all()) and bool(((a == 2) == (b == 1)).all())
