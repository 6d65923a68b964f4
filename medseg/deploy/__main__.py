"""`python -m medseg.deploy <export folder> <input> <output folder> [--format nifti|dicom_seg|both]`.

Needs only numpy, onnxruntime, nibabel and (for DICOM) pydicom and highdicom: `pip install medseg[deploy]`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medseg.errors import MedsegError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medseg.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("export", help="a folder written by mode=export")
    parser.add_argument("input", help="a NIfTI file, a folder of them, a DICOM series folder, or a zip")
    parser.add_argument("output", help="folder for the masks")
    parser.add_argument("--format", default="nifti", choices=["nifti", "dicom_seg", "both"])
    parser.add_argument("--threshold", type=float, default=None, help="two-class cut (default: the manifest's)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from medseg.deploy.runner import open_export, predict_cases
    from medseg.dicom.cases import collect_cases

    try:
        export = open_export(args.export, args.threads)
        cases = collect_cases(args.input)
        out = Path(args.output).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        predict_cases(export, cases, out, args.format, args.threshold, tta=args.tta)
    except MedsegError as exc:
        print(f"medseg: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
