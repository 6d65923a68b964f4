"""TensorBoard tracker: scalars, image panels, histograms and the config as text under <run folder>/tensorboard.

View with `tensorboard --logdir outputs` (or multirun/...): every run folder is one run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medseg.tracking.base import Tracker, scalars


class TensorBoardTracker(Tracker):
    def __init__(self, run_dir: str, subdir: str = "tensorboard", resume_id: str | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / subdir
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_config(self, config: dict[str, Any], facts: dict[str, Any]) -> None:
        from medseg.config.redact import redact

        text = json.dumps(redact(config), indent=2, default=str)
        self.writer.add_text("config", "```\n" + text + "\n```", 0)
        self.writer.add_text("facts", "```\n" + json.dumps(facts, indent=2, default=str) + "\n```", 0)

    def log_step(self, metrics: dict[str, float], step: int) -> None:
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(key, value, step)

    def log_epoch(self, record: dict[str, Any], step: int) -> None:
        # Epoch-level scalars against the epoch number, as in history.json.
        epoch = int(record.get("epoch", step))
        for key, value in scalars(record).items():
            if key not in ("epoch", "step"):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def log_images(self, name: str, images: list[Any], step: int, captions: list[str] | None = None) -> None:
        import numpy as np

        same = len({img.shape for img in images}) == 1
        if same and images:
            self.writer.add_images(name, np.stack(images), step, dataformats="NHWC")
        else:
            for i, img in enumerate(images):
                self.writer.add_image(f"{name}/{i}", img, step, dataformats="HWC")

    def log_histograms(self, histograms: dict[str, tuple[Any, Any]], step: int) -> None:
        import numpy as np

        for key, (counts, edges) in histograms.items():
            counts, edges = np.asarray(counts, dtype=np.float64), np.asarray(edges, dtype=np.float64)
            if counts.sum() == 0:
                continue
            centres = (edges[:-1] + edges[1:]) / 2
            self.writer.add_histogram_raw(
                key,
                min=float(edges[0]),
                max=float(edges[-1]),
                num=int(counts.sum()),
                sum=float((counts * centres).sum()),
                sum_squares=float((counts * centres**2).sum()),
                bucket_limits=edges[1:].tolist(),
                bucket_counts=counts.tolist(),
                global_step=step,
            )

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.writer.add_text("summary", "```\n" + json.dumps(summary, indent=2, default=str) + "\n```", 0)
        self.writer.flush()

    def finish(self, exit_code: int = 0) -> None:
        self.writer.close()
