"""Data-parallel training over several processes with torch distributed (gloo, so it runs on CPUs).

`launch(entrypoint, args, processes)` starts `processes` copies of `entrypoint` through torch's elastic launcher
(the engine behind `torchrun`), rendezvousing on 127.0.0.1. Inside each, `Ranks.join()` joins the process group.
The training loop (polydistill.model.training) then takes every global batch on every rank, trains each rank on its
own disjoint rows of it (`Ranks.shard`) under DistributedDataParallel, scores validation rows split across the ranks
(`Ranks.gather_rows`), and lets only the main rank write the best model and checkpoints. With one process `Ranks()`
makes every one of those a no-op, so the single-process loop performs exactly the same operations as before.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

RENDEZVOUS_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def join(cls) -> Ranks:
        """Join the gloo process group the launcher described in the environment (RANK, WORLD_SIZE, MASTER_*)."""
        dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, batch: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, float]:
        """This rank's rows of a global batch (every world_size-th row from its rank: disjoint, together all of it)
        and the factor for its loss.

        DistributedDataParallel averages gradients over ranks, so a rank's mean loss is scaled by its share of the
        batch's rows (or loss weight) times world_size: the update is then the one the whole batch would give in one
        process, for any loss that is a (weighted) mean over rows. A rank left without rows trains on one row at
        factor 0, so it still joins the gradient exchange.
        """
        if not self.distributed:
            return batch, 1.0
        rows = batch[self.rank::self.world_size]
        if len(rows) == 0:
            return batch[:1], 0.0
        mass = (lambda chosen: float(len(chosen))) if weights is None else (lambda chosen: float(weights[chosen].sum()))
        return rows, mass(rows) * self.world_size / mass(batch)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train: wrapped in DistributedDataParallel (which averages gradients) when distributed."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    def gather_rows(self, count: int, score: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """score(rows) for rows 0..count-1, each rank scoring every world_size-th row; every rank gets all of it."""
        if not self.distributed:
            return score(np.arange(count))
        rows = np.arange(self.rank, count, self.world_size)
        parts = self.gather_object((rows, score(rows)))
        first = parts[0][1]
        merged = np.zeros((count, *first.shape[1:]), dtype=first.dtype)
        for part_rows, values in parts:
            merged[part_rows] = values
        return merged

    def gather_object(self, value: Any) -> list[Any]:
        """value from every rank, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        """Wait until every rank reaches this point."""
        if self.distributed:
            dist.barrier()

    def leave(self) -> None:
        if self.distributed:
            dist.destroy_process_group()


def launch(entrypoint: Callable[..., Any], args: tuple[Any, ...], processes: int, threads: int) -> Any:
    """Run entrypoint(*args) in `processes` processes (torch's elastic launcher, as torchrun does), each with
    `threads` torch threads; returns rank 0's result. A failed or killed rank fails the whole run (no restarts):
    the caller's checkpoints let a rerun resume."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=f"polydistill-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint=f"{RENDEZVOUS_HOST}:{free_port()}", max_restarts=0,
                          start_method="spawn", monitor_interval=0.5, local_addr=RENDEZVOUS_HOST)
    return elastic_launch(config, _ranked)(entrypoint, args, threads)[0]


def _ranked(entrypoint: Callable[..., Any], args: tuple[Any, ...], threads: int) -> Any:
    """One launched process: set threads and logging, join the group, run entrypoint(*args, ranks), leave."""
    torch.set_num_threads(threads)
    ranks = Ranks.join()
    logging.basicConfig(level=logging.INFO if ranks.is_main else logging.WARNING,
                        format=f"%(asctime)s rank {ranks.rank} %(name)s: %(message)s")
    try:
        return entrypoint(*args, ranks)
    finally:
        ranks.leave()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((RENDEZVOUS_HOST, 0))
        return int(probe.getsockname()[1])
