"""Several processes, one run: torchrun / DistributedDataParallel glue for :func:`train`.

A run launched by ``torchrun`` (or ``bitvote train --nproc N``, which calls torchrun's own
launcher) sees ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in its environment; :func:`setup` joins
the process group (nccl on CUDA, gloo on the CPU). Why the run stays *one* run, whatever the
number of processes W:

* ``--batch-size`` is the **global** batch. Every rank computes the same permutation and the
  same per-sample crops/flips (:func:`bitvote.data.epoch_plan`, a function of (seed, epoch,
  index)); rank r takes positions r, r+W, ... of each global batch (:func:`shard`) and
  augments them on its own device.
* Gradients are averaged by DDP; :func:`loss_scale` weights each rank's mean loss by its
  share of the batch, so the update equals the single-process mean even when W does not
  divide the batch.
* Epoch, batch index and global step in ``last.pt`` count global batches: a checkpoint
  resumes under any W. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import BitvoteError

__all__ = ["World", "setup", "shard", "loss_scale", "all_sum", "sync_buffers", "wrap", "launch"]


@dataclass
class World:
    """Where this process stands: ``rank`` of ``size`` processes (size 1: no process group)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    _owned: bool = False  # this module initialized the group, so it tears it down

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self._owned and dist.is_initialized():
            dist.destroy_process_group()
            self._owned = False


def env_world() -> tuple:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` outside it."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    except ValueError:
        raise BitvoteError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (as torchrun sets them)") from None


def setup(device: torch.device) -> tuple:
    """Join torchrun's process group if there is one; ``(World, device)`` for this rank.

    On CUDA each rank takes GPU ``LOCAL_RANK`` of its machine (``--device cuda`` names the kind,
    not the index).
    """
    rank, size, local = env_world()
    if size <= 1:
        return World(), device
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise BitvoteError(f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owned = False
    if not dist.is_initialized():
        dist.init_process_group(backend)
        owned = True
    return World(dist.get_rank(), dist.get_world_size(), local, backend, owned), device


def shard(idx: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's positions of a global batch: r, r+W, r+2W, ..."""
    return idx[world.rank :: world.size] if world.active else idx


def loss_scale(n_local: int, n_global: int, world: World) -> float:
    """Factor on this rank's mean loss so that DDP's gradient average is the global mean (1.0 when even)."""
    return 1.0 if not world.active else n_local * world.size / n_global


def all_sum(values: List[float], world: World, device) -> List[float]:
    """Sum a few numbers over the ranks (float64, so counts stay exact)."""
    if not world.active:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def sync_buffers(model: nn.Module, world: World) -> None:
    """Give every rank rank 0's buffers (BN running statistics) before eval and checkpoints."""
    if world.active:
        for b in model.buffers():
            dist.broadcast(b, 0)


def wrap(model: nn.Module, world: World, device, sync_bn: bool = False) -> nn.Module:
    """The module the training step calls: ``model`` itself, or DDP around it (optionally SyncBN)."""
    if not world.active:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise BitvoteError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm has no CPU kernel "
                               "(on the CPU use --bn none, or train without --sync-bn)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def launch(nproc: int, argv: List[str], debug: bool = False) -> int:
    """``bitvote train --nproc N ...``: run ``torchrun --standalone --nproc_per_node N -m bitvote ...``.

    The workers print their own errors; this returns the first failed worker's exit code
    instead of torchrun's multi-line failure report (``--debug`` keeps the report).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nproc < 1:
        raise BitvoteError(f"--nproc must be at least 1, got {nproc}")
    if not debug:
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun sets, without its warning
    args = parse_args(["--standalone", "--nproc_per_node", str(nproc), "-m", "bitvote", *argv])
    try:
        run(args)
    except ChildFailedError as e:
        if debug:
            raise
        _, failure = e.get_first_failure()
        code = failure.exitcode
        return code if isinstance(code, int) and code > 0 else 1
    sys.stdout.flush()
    return 0
