"""What the case store's source identity check costs at TotalSegmentator scale (1228 subjects x 118 files).

    python -m medseg.benchmarks.store_identity                 # 1228 x 118 = 144,904 files
    python -m medseg.benchmarks.store_identity --quick         # 64 subjects

Creates the files once under <cache>/store_identity/<subjects>x<files>/ (small files in the TotalSegmentator
layout: sXXXX/ct.nii.gz + sXXXX/segmentations/<k>.nii.gz; reused by later runs), then times, median over
--repeats passes, what opening a store does before any case is read:

- identity:   medseg.data.store.identity.source_identity on every case (one stat per file: path, size,
              mtime, ctime, inode), then changed_source against the stored rows;
- reference:  the previous identity, (path, size, mtime) from the same stat, in the same command;
- digest:     what a content digest would cost instead: blake2b throughput measured here on --digest-mb of
              data in memory, applied to --subject-mb per subject (the raw size of a TotalSegmentator-shaped
              subject in docs/store.md). The file reads themselves would come on top.

The passes run with the metadata of the files in the kernel's cache (a second open of a store); a first
open after a reboot also reads the inodes from disk.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def make_files(base: Path, subjects: int, files: int) -> list[dict[str, Any]]:
    """The cases (totalseg-shaped: an image and files - 1 structure masks), created once."""
    done = base / "complete"
    cases = []
    for s in range(subjects):
        subject = base / f"s{s:04d}"
        masks = [str(subject / "segmentations" / f"structure_{k:03d}.nii.gz") for k in range(files - 1)]
        cases.append({"id": subject.name, "image": str(subject / "ct.nii.gz"), "label": masks})
    if done.is_file() and done.read_text() == f"{subjects} {files}":
        return cases
    payload = b"\x1f\x8b" + bytes(30)  # a few bytes: the stat cost does not depend on the size
    for case in cases:
        Path(case["label"][0]).parent.mkdir(parents=True, exist_ok=True)
        for path in [case["image"], *case["label"]]:
            with open(path, "wb") as f:
                f.write(payload)
    done.write_text(f"{subjects} {files}")
    return cases


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def old_identity(case: dict[str, Any]) -> list[list[Any]]:
    from medseg.data.checks import case_paths

    rows = []
    for path in case_paths(case):
        st = os.stat(path)
        rows.append([path, st.st_size, st.st_mtime_ns])
    return rows


def digest_mb_per_s(mb: int) -> float:
    data = os.urandom(mb * 1024 * 1024)
    start = time.perf_counter()
    hashlib.blake2b(data).digest()
    return mb / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, float]:
    from medseg.data.store.identity import changed_source, source_identity

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1228)
    parser.add_argument("--files", type=int, default=118, help="files per subject (image + structure masks)")
    parser.add_argument("--quick", action="store_true", help="64 subjects")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", default=os.path.join(os.environ.get("MEDSEG_CACHE", "~/.cache/medseg")))
    parser.add_argument("--digest-mb", type=int, default=256)
    parser.add_argument("--subject-mb", type=float, default=13.5)
    args = parser.parse_args(argv)
    subjects = 64 if args.quick else args.subjects
    base = Path(args.cache).expanduser() / "store_identity" / f"{subjects}x{args.files}"
    start = time.perf_counter()
    cases = make_files(base, subjects, args.files)
    made = time.perf_counter() - start
    n_files = subjects * args.files
    stored = [source_identity(c) for c in cases]

    def identity_pass() -> None:
        for case, rows in zip(cases, stored):
            assert changed_source(rows, source_identity(case)) is None

    identity = median_seconds(identity_pass, args.repeats)
    reference = median_seconds(lambda: [old_identity(c) for c in cases], args.repeats)
    rate = digest_mb_per_s(args.digest_mb)
    digest = subjects * args.subject_mb / rate
    print(f"store identity check: {subjects} subjects x {args.files} files = {n_files} files")
    print(f"  files under {base} (made in {made:.1f} s)")
    per_file = identity / n_files * 1e6
    print(f"  identity (size, mtime, ctime, inode) + compare: {identity:.3f} s  ({per_file:.2f} us/file)")
    print(f"  reference (size, mtime):                        {reference:.3f} s  (ratio {identity / reference:.2f}x)")
    print(
        f"  a blake2b content digest instead: {subjects * args.subject_mb / 1000:.1f} GB at {rate:.0f} MB/s = "
        f"{digest:.0f} s of hashing alone ({digest / identity:.0f}x the stat pass), plus reading the files"
    )
    print(f"  median of {args.repeats} passes, file metadata cached; shared machines make these figures noisy")
    return {"files": n_files, "identity_s": identity, "reference_s": reference, "digest_s": digest}


if __name__ == "__main__":
    main()
