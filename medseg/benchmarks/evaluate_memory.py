"""Peak memory of mode=evaluate on one TotalSegmentator-sized case (224x224x160, 117 structures).

    python -m medseg.benchmarks.evaluate_memory [--work DIR] [--shape 224 224 160] [--structures 117]

Writes one synthetic subject of that size, trains the `totalseg_unet2d` recipe for one step on a
small set with the same structures (the weights are near their initialisation: the figure is about
memory, not accuracy), then runs `run.py mode=evaluate` on the large subject in a child process and
prints that child's peak RSS (ru_maxrss from wait4) and wall time. Data and checkpoint are reused when present.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], work: Path, name: str) -> tuple[int, float, str]:
    """Run run.py in a child; (exit code, the child's own peak RSS in MB, the end of its stderr)."""
    cmd = [sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={work / name}", "logger=none", "print_config=false"]
    env = {**os.environ, "MEDSEG_CACHE": str(work / "cache"), "WANDB_MODE": "offline"}
    log = work / f"{name}.log"
    with log.open("w") as out:
        child = subprocess.Popen(cmd + args, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)  # this child's rusage, not that of earlier children
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss / 1024, log.read_text()[-3000:]  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medseg-evaluate-memory")
    parser.add_argument("--shape", type=int, nargs=3, default=[224, 224, 160])
    parser.add_argument("--structures", type=int, default=117)
    args = parser.parse_args(argv)
    from medseg.data.examples import write_totalseg

    work: Path = args.work
    big, small = work / f"big_{'x'.join(map(str, args.shape))}_{args.structures}", work / f"small_{args.structures}"
    if not (big / "s0000" / "ct.nii.gz").is_file():
        write_totalseg(big, num_subjects=1, shape=tuple(args.shape), num_structures=args.structures)
    if not (small / "s0002" / "ct.nii.gz").is_file():
        write_totalseg(small, num_subjects=3, shape=(32, 32, 8), num_structures=args.structures)
    ckpt = work / f"train_{args.structures}" / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        code, _, tail = _run(
            [
                "experiment=totalseg_unet2d",
                f"data.root={small}",
                "data.batch_size=2",
                "data.val_percent=34",
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=1",
                "trainer.limit_val_batches=1",
                "trainer.log_images_every_n_epochs=0",
                "hardware=cpu",
            ],
            work,
            f"train_{args.structures}",
        )
        if code != 0:
            raise SystemExit(f"training failed:\n{tail}")
    start = time.perf_counter()
    code, peak_mb, tail = _run(
        ["mode=evaluate", f"ckpt={ckpt}", f"evaluate.input={big}", "hardware=cpu"], work, "evaluate"
    )
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"evaluate failed:\n{tail}")
    print(
        f"evaluate, one {'x'.join(map(str, args.shape))} case, {args.structures + 1} classes: "
        f"peak RSS {peak_mb:.0f} MB, {seconds:.0f} s (hd95 on)"
    )


if __name__ == "__main__":
    main()
