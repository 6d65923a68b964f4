"""Which chunked array format for the case store: blosc2 `.b2nd` against zarr v3, by measurement.

    python -m medseg.benchmarks.store_format            # 224x224x160 CT-like volume, as in TotalSegmentator
    python -m medseg.benchmarks.store_format --shape 64 64 32 --repeats 3

One CT-shaped volume (body ellipse, organs, bone, noise; int16 HU) is windowed to [0, 1] as data=totalseg
does, plus a uint8 label map with blobs of many sizes. Each candidate (format, image dtype, chunking) is
written to a temporary folder, then read back the way training reads: one 2D slice along the last axis,
a 5-slice 2.5D slab, a random 96^3 patch. Times are the median over `--repeats` random positions, after
the files were just written (page cache warm, as during an epoch). Sizes are the files on disk.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def ct_like(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume in HU and a uint8 label map of 117 structures (ellipsoids of varied size)."""
    from medseg.benchmarks.scale import synthetic_subject

    return synthetic_subject(shape, 117, seed)


def window(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu.astype(np.float32) + 1000.0) / 2000.0, 0.0, 1.0)[None]


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def candidates(shape: tuple[int, ...]) -> list[tuple[str, str, tuple, tuple | None]]:
    """(format, image dtype, chunks, blocks) for a (1, H, W, D) image."""
    _, h, w, d = shape
    return [
        ("blosc2", "float32", (1, h, w, 8), (1, h, w, 1)),
        ("blosc2", "float16", (1, h, w, 8), (1, h, w, 1)),
        ("blosc2", "float16", (1, 64, 64, 64), (1, 32, 32, 8)),
        ("blosc2", "float16", (1, h, w, 16), (1, 32, 32, 16)),
        ("zarr", "float16", (1, h, w, 8), None),
        ("zarr", "float16", (1, 64, 64, 64), None),
    ]


def write_blosc2(path: Path, array: np.ndarray, chunks: tuple, blocks: tuple | None) -> Any:
    import blosc2

    cparams = {"codec": blosc2.Codec.ZSTD, "clevel": 3, "filters": [blosc2.Filter.SHUFFLE]}
    blosc2.asarray(array, urlpath=str(path), mode="w", chunks=chunks, blocks=blocks, cparams=cparams)
    return lambda: blosc2.open(str(path), mode="r", mmap_mode="r")


def write_zarr(path: Path, array: np.ndarray, chunks: tuple, blocks: tuple | None) -> Any:
    import zarr
    from zarr.codecs import BloscCodec

    z = zarr.create_array(
        store=str(path),
        shape=array.shape,
        dtype=array.dtype,
        chunks=chunks,
        compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
        overwrite=True,
    )
    z[...] = array
    return lambda: zarr.open_array(str(path), mode="r")


def measure(shape: tuple[int, int, int], repeats: int) -> list[dict[str, Any]]:
    hu, label = ct_like(shape)
    image32 = window(hu)
    rng = np.random.default_rng(0)
    d = shape[2]
    patch = [min(96, s) for s in shape]
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="medseg-format-"))
    try:
        for fmt, dtype, chunks, blocks in candidates(image32.shape):
            image = image32.astype(dtype)
            writer = write_blosc2 if fmt == "blosc2" else write_zarr
            suffix = ".b2nd" if fmt == "blosc2" else ".zarr"
            ipath, lpath = tmp / f"image{suffix}", tmp / f"label{suffix}"
            t = time.perf_counter()
            open_image = writer(ipath, image, chunks, blocks)
            writer(lpath, label[None], chunks, blocks)
            write_s = time.perf_counter() - t
            size = folder_size(ipath) + folder_size(lpath)
            arr = open_image()

            def one_slice(arr: Any = arr) -> Any:
                return np.asarray(arr[:, :, :, int(rng.integers(d))])

            def slab(arr: Any = arr) -> Any:
                z = int(rng.integers(2, d - 2))
                return np.asarray(arr[:, :, :, z - 2 : z + 3])

            def cube(arr: Any = arr) -> Any:
                o = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch)]
                return np.asarray(arr[:, o[0] : o[0] + patch[0], o[1] : o[1] + patch[1], o[2] : o[2] + patch[2]])

            got = np.asarray(arr[...]).astype(np.float32)
            rows.append(
                {
                    "format": fmt,
                    "dtype": dtype,
                    "chunks": "x".join(map(str, chunks[1:])),
                    "blocks": "x".join(map(str, blocks[1:])) if blocks else "-",
                    "MB": size / 1e6,
                    "write_s": write_s,
                    "slice_ms": 1e3 * median_time(one_slice, repeats),
                    "slab5_ms": 1e3 * median_time(slab, repeats),
                    "patch96_ms": 1e3 * median_time(cube, repeats),
                    "max_abs_err": float(np.abs(got - image32).max()),
                }
            )
            shutil.rmtree(ipath, ignore_errors=True) if ipath.is_dir() else ipath.unlink()
            shutil.rmtree(lpath, ignore_errors=True) if lpath.is_dir() else lpath.unlink()
        raw = tmp / "raw"
        raw.mkdir()
        import nibabel as nib

        nib.save(nib.Nifti1Image(hu, np.eye(4)), str(raw / "ct.nii.gz"))
        for k in range(1, 118):
            nib.save(nib.Nifti1Image((label == k).astype(np.uint8), np.eye(4)), str(raw / f"s{k}.nii.gz"))
        rows.append({"format": "raw .nii.gz (ct + 117 masks)", "MB": folder_size(raw) / 1e6})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[224, 224, 160])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    rows = measure(tuple(args.shape), args.repeats)
    cols = ["format", "dtype", "chunks", "blocks", "MB", "write_s", "slice_ms", "slab5_ms", "patch96_ms", "max_abs_err"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
