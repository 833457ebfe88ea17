"""Data-parallel lm-eval runs: this process's rank among those `accelerate launch` started, and the collectives
lm-eval's evaluator asks a model for (`all_gather`, `gather_object`, `barrier`).

lm-eval shards each task's documents over the ranks (document i goes to rank i mod world size), pads the ranks
to equal request counts, and gathers the metrics on rank 0. Each rank runs its own Pruner on its own share, so
PP's batches (and its history) are per rank: with W ranks a batch holds every W-th document's requests, and
the results of a pruning method depend on W (dense's do not). docs/zeroshot.md says what changes on GPUs.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch


def launched_world_size() -> int:
    """The number of processes `accelerate launch` (or torchrun) started, from WORLD_SIZE; 1 when not launched."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


class Ranks:
    """This process's place in a data-parallel run. Without a launcher (WORLD_SIZE unset or 1): rank 0 of 1, and
    every collective is the single-process identity. With one: an `accelerate.Accelerator` (gloo on CPU, NCCL on
    GPUs), whose `device` is this rank's (cuda:<local rank> on GPUs)."""

    def __init__(self, cpu: bool) -> None:
        self.accelerator: Optional[Any] = None
        if launched_world_size() > 1:
            from accelerate import Accelerator

            self.accelerator = Accelerator(cpu=cpu)
        acc = self.accelerator
        self.rank = 0 if acc is None else int(acc.process_index)
        self.world_size = 1 if acc is None else int(acc.num_processes)

    @property
    def device(self) -> Optional[torch.device]:
        """This rank's device under a launcher, None without one."""
        return None if self.accelerator is None else self.accelerator.device

    def main_first(self) -> Any:
        """A context in which rank 0 works first and the others wait (model conversion, calibration caches)."""
        import contextlib

        return contextlib.nullcontext() if self.accelerator is None else self.accelerator.main_process_first()

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor`, concatenated along dim 0 (lm-eval gathers request counts with it)."""
        return tensor if self.accelerator is None else self.accelerator.gather(tensor)

    def gather_object(self, obj: Any, dst: int = 0) -> Optional[list[Any]]:
        """Every rank's `obj` as a list on rank `dst`, None elsewhere."""
        if self.accelerator is None:
            return [obj]
        import torch.distributed as dist

        out: Optional[list[Any]] = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
