"""Several processes (torch.distributed): who is who, the sampler, collectives.

Part of the training layer. A `DistContext` names this process's place in a job
(rank, world size, local rank) and wraps the few collectives the trainer needs;
the single-process context (world size 1) makes every collective a no-op, so the
trainer has one code path.

The sampler (`rank_batches`)
----------------------------
Every rank draws the same permutation of the training rows (same seeded CPU
generator), cuts it into global batches of ``world_size * batch_size`` rows, and
takes the slice ``[rank * batch_size, (rank + 1) * batch_size)`` of each. The
union of the ranks' batches at a step is then exactly the batch one process with
``world_size * batch_size`` rows per batch would train on, in the same order.
The last global batch may be short: rank ``r`` gets what is left of its slice,
possibly nothing. Each rank weights its mean loss by its share of the global
batch (``n_rank * world_size / n_global``), so that DistributedDataParallel's
average of the ranks' gradients is the gradient of the mean over the global
batch, as in one process. A rank with no rows runs the model on one row of zeros
with weight 0 (every rank must take part in the gradient all-reduce).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

logger = logging.getLogger(__name__)

#: Environment variables torchrun sets for every worker.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly single-process) job.

    Parameters
    ----------
    rank : int, 0 .. world_size - 1; rank 0 writes files
    world_size : int >= 1, number of processes
    local_rank : int, index of this process on its machine (its GPU)
    device : torch.device, where collective buffers live (the training device;
        nccl needs CUDA tensors, gloo CPU ones)
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"rank {self.rank} out of range for world size {self.world_size}"
            )

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Several processes: collectives actually communicate."""
        return self.world_size > 1

    # ---------------------------------------------------------------- collectives
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: Tensor) -> Tensor:
        """Sum of ``values`` over the ranks (in place; returns it)."""
        if self.enabled:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def broadcast(self, values: Tensor) -> Tensor:
        """Rank 0's ``values`` on every rank (in place; returns it)."""
        if self.enabled:
            dist.broadcast(values, src=0)
        return values

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's ``text`` on every rank (others pass anything, e.g. None).

        Sent as UTF-8 bytes in a tensor: no pickle.
        """
        if not self.enabled:
            return text or ""
        data = (text or "").encode() if self.is_main else b""
        size = self.broadcast(torch.tensor([len(data)], device=self.device))
        buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=self.device)
        if self.is_main and data:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        return bytes(self.broadcast(buffer).cpu().tolist()).decode()

    def on_main(self, fn: Callable[[], str]) -> str:
        """Run ``fn`` on rank 0 only and give its result to every rank.

        An exception raised by ``fn`` on rank 0 is raised there and, as a
        ``ValueError`` with the same message, on every other rank (so no rank
        waits forever for the others).
        """
        if not self.enabled:
            return fn()
        message = None
        if self.is_main:
            try:
                message = "ok:" + fn()
            except Exception as err:  # re-raised below, after telling the others
                message = "error:" + str(err)
                self.broadcast_text(message)
                raise
        message = self.broadcast_text(message)
        if message.startswith("error:"):
            raise ValueError(message[len("error:") :])
        return message[len("ok:") :]


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun set it; 1 outside a torchrun worker."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(
            f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}"
        ) from None


def backend_for(device: torch.device) -> str:
    """nccl for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_from_env(device: torch.device) -> DistContext:
    """The context of a torchrun worker, joining its process group if needed.

    Outside torchrun (no ``WORLD_SIZE`` > 1) the single-process context. Inside,
    ``init_process_group`` with the backend for ``device`` (``env://``
    rendezvous: ``MASTER_ADDR``/``MASTER_PORT`` from torchrun), unless the
    caller already initialized a group.

    Parameters
    ----------
    device : the training device of this process (``cuda:LOCAL_RANK`` on GPUs)
    """
    world_size = env_world_size()
    if world_size <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext(device=device)
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend_for(device))
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


def rank_batches(
    order: np.ndarray, batch_size: int, rank: int, world_size: int, *, start: int = 0
) -> Iterator[tuple[np.ndarray, int]]:
    """This rank's rows of each global batch, from step ``start`` on.

    Parameters
    ----------
    order : int array of shape (n_rows,), the epoch's order of row indices (the
        same on every rank)
    batch_size : rows per rank per step
    rank, world_size : this process and the number of processes
    start : global steps already done this epoch

    Yields
    ------
    rows : int array of shape (<= batch_size,), may be empty on the last step
    n_global : int, rows of the global batch (all ranks together)
    """
    size = batch_size * world_size
    for begin in range(start * size, len(order), size):
        global_rows = order[begin : begin + size]
        mine = global_rows[rank * batch_size : (rank + 1) * batch_size]
        yield mine, len(global_rows)


def shard_rows(rows: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous part of ``rows`` (sizes differ by at most 1)."""
    return np.array_split(np.asarray(rows), world_size)[rank]
