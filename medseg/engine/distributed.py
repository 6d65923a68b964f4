"""Data-parallel training (trainer.strategy=ddp) under torchrun: one process per device.

    torchrun --standalone --nproc_per_node=2 run.py trainer.strategy=ddp

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; each rank runs the whole program. Backend gloo on CPU,
nccl on CUDA (device cuda:LOCAL_RANK). The Trainer uses this context to sum loss sums and confusion
counts across ranks, and to agree on skipping a non-finite step; only rank 0 writes files and logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from medseg.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks, in place."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def min_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return tensor

    def sum_loss(self, loss_sum: torch.Tensor, samples: int) -> tuple[torch.Tensor, int]:
        """A per-rank loss sum and sample count -> the totals over all ranks."""
        both = torch.stack([loss_sum.to(self.device, torch.float64), torch.tensor(float(samples), device=self.device)])
        self.sum_(both)
        return both[0], int(round(float(both[1])))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's value of a picklable object, on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    @contextlib.contextmanager
    def rank0_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the others (e.g. writing a shared data cache)."""
        if not self.is_main:
            dist.barrier()
        yield
        if self.is_main:
            dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(strategy: str, requested_device: str) -> DistContext | None:
    """A process group for trainer.strategy=ddp (or auto under torchrun); None for one process."""
    strategy = str(strategy)
    if strategy not in ("auto", "ddp"):
        raise ConfigError(f"trainer.strategy={strategy!r}: choose auto or ddp")
    if strategy == "auto" and not launched_by_torchrun():
        return None
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError(
            "trainer.strategy=ddp needs torchrun: torchrun --standalone --nproc_per_node=N run.py trainer.strategy=ddp"
        )
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and str(requested_device) != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    if rank != 0:
        quiet_logging()
    ctx = DistContext(rank, world_size, local_rank, device, backend)
    log.info("ddp: %d processes, backend %s, device of rank 0: %s", world_size, backend, device)
    return ctx


def shared_run_dir(ctx: DistContext | None, own: Path) -> Path:
    """Rank 0's run folder on every rank (each rank's Hydra may have stamped its own time)."""
    return own if ctx is None else Path(ctx.broadcast(str(own)))


def quiet_logging() -> None:
    """Ranks other than 0 log warnings and errors only (console and run.log)."""
    for handler in logging.getLogger().handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
