"""torchrun / DistributedDataParallel: the few things the training loop needs to know.

``torchrun --nproc_per_node=N -m distill teach ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`setup` joins them into a process group (nccl on
GPU, gloo on CPU). How a run is split:

- the recipe's ``batch_size`` stays the *global* batch: each step's batch (the same on every
  rank, from the same ``data_seed`` order) is cut into ``WORLD_SIZE`` contiguous shards, one
  per rank (sizes differ by at most one); the learning rate and schedule stay the recipe's;
- each rank's loss is scaled by ``local_size * WORLD_SIZE / global_size`` so that DDP's
  gradient average equals the gradient of the mean loss over the global batch, also when the
  shards differ in size: a run on N processes follows the single-process run (up to float
  rounding; dropout draws other masks per rank, and BatchNorm normalises per shard);
- only rank 0 writes: the run folder, checkpoints, metrics, plots, wandb; it also evaluates
  (validation each epoch, test at the end) over whole splits, so every sample counts once;
- what is computed once and cached (decoded images, normalisation constants, teacher logits)
  is computed by rank 0 while the others wait (:func:`main_first`), then read by them;
- epoch loss sums are reduced across ranks before they are logged or checkpointed, and the
  checkpoint holds the unwrapped model, so a checkpoint resumes under DDP or in one process;
  it also holds every rank's random stream, so a resume on as many ranks draws the dropout
  masks the uninterrupted run would have.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from distill.errors import DistillError


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job."""

    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.size


def launched() -> bool:
    """True inside a torchrun job (its environment variables are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device_request: str) -> tuple[World | None, str]:
    """Join the torchrun job, if any; returns the world (None outside torchrun) and the
    device to use (``cuda:<LOCAL_RANK>`` on GPU)."""
    if not launched():
        return None, device_request
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                  int(os.environ.get("LOCAL_RANK", 0)))
    use_cuda = device_request in ("auto", "cuda") and torch.cuda.is_available()
    use_cuda = use_cuda or device_request.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(world.local_rank)
        device_request = f"cuda:{world.local_rank}"
    elif device_request == "auto":
        device_request = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return world, device_request


def teardown(world: World | None) -> None:
    """Wait for every rank, then leave the process group."""
    if world is not None and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


CACHE_WAIT = timedelta(hours=6)  # rank 0 may decode a large image folder on a cold cache


@contextmanager
def main_first(world: World | None) -> Iterator[None]:
    """Run the block on rank 0 first, and on the other ranks once rank 0 has left it, so the
    caches rank 0 fills there (decoded images, normalisation constants, teacher logits) are
    read by the others rather than computed again by each. Outside torchrun: just the block.

    The waits are barriers on a gloo group of its own with a long timeout (:data:`CACHE_WAIT`):
    decoding a large folder can outlast the training group's collective timeout. All ranks
    leave together (a closing barrier), so rank 0 does not wait in a training collective
    while the others still work in the block (they compute too when a cache could not be
    written). Rank 0 releases the others also when the block raises; they then meet the error
    themselves.
    """
    if world is None:
        yield
        return
    group = dist.new_group(backend="gloo", timeout=CACHE_WAIT)
    if not world.is_main:
        dist.barrier(group=group)
    try:
        yield
    finally:
        if world.is_main:
            dist.barrier(group=group)
        dist.barrier(group=group)  # everyone is out of the block
        dist.destroy_process_group(group)


def check_batch(batch_size: int, world: World | None) -> None:
    if world is not None and batch_size < 2 * world.size:
        raise DistillError(f"batch_size {batch_size} is the global batch; with "
                           f"{world.size} processes each rank would get fewer than 2 images: "
                           f"use batch_size >= {2 * world.size}")


def wrap(model: nn.Module, world: World | None, device: torch.device) -> nn.Module | None:
    """The DDP-wrapped model to run forward/backward through (None outside torchrun)."""
    if world is None:
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def reduce_sums(sums: dict[str, Tensor], seen: int, world: World) -> tuple[dict[str, Tensor],
                                                                             int]:
    """Global loss sums and image count on rank 0 (zeros elsewhere, so a later reduction
    counts them once)."""
    device = next(iter(sums.values())).device
    packed = torch.stack([*(v.double() for v in sums.values()),
                          torch.tensor(float(seen), dtype=torch.float64, device=device)])
    dist.all_reduce(packed)
    if not world.is_main:
        packed.zero_()
    values = {k: v.float() for k, v in zip(sums, packed[:-1].unbind())}
    return values, int(round(packed[-1].item()))


def seed_rank(world: World | None, seed: int, step: int) -> None:
    """Give every rank but 0 its own random stream (dropout masks), derived from the seed, the
    rank and the step it starts at; rank 0 keeps the single-process stream."""
    if world is not None and world.rank > 0:
        torch.manual_seed((seed * 1_000_003 + world.rank * 7919 + step) % (1 << 62))


def gather_rank_rng(world: World | None) -> list[dict[str, Tensor | None]] | None:
    """Every rank's torch generator states (CPU, and this rank's GPU), gathered on rank 0 for
    its checkpoint (None on the other ranks and outside torchrun). Every rank must call it at
    the same checkpoint point: it is a collective."""
    if world is None:
        return None
    state = {"torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    gathered: list | None = [None] * world.size if world.is_main else None
    dist.gather_object(state, gathered, dst=0)
    return gathered


def start_rank_rng(world: World | None, saved: list[dict[str, Tensor | None]] | None,
                   seed: int, step: int) -> None:
    """The random stream of a rank > 0 as training starts: where it stood at the checkpoint
    (``saved``: :func:`gather_rank_rng`'s list) when that checkpoint was written by as many
    ranks, so a resumed run draws the dropout masks the uninterrupted run would have; else
    (a new run, or another number of ranks) :func:`seed_rank`'s. Rank 0's stream is the
    checkpoint's ``rng``, as in one process."""
    if world is None or world.is_main:
        return
    if saved is None or len(saved) != world.size:
        seed_rank(world, seed, step)
        return
    torch.set_rng_state(saved[world.rank]["torch"])
    if saved[world.rank]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved[world.rank]["cuda"])
