"""Data-parallel training over several processes: one model and one mask per rank, kept identical.

Launch with ``torchrun --nproc-per-node N -m sparseflow train ...`` (or ``sparseflow train --nproc N``).
:func:`init` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and
joins the process group: gloo on the CPU, NCCL on CUDA (one GPU per rank, ``cuda:LOCAL_RANK``).

What keeps the ranks identical (and :func:`check_masks` verifies it):

- weights start equal (same seed; DistributedDataParallel also broadcasts rank 0's at wrapping) and move
  equally, because every rank applies the same all-reduced (averaged) gradient;
- every mask decision is computed from synchronised tensors: magnitudes of those equal weights (GMP,
  magnitude, SET/RigL drop), generators seeded identically on every rank (random masks, SET regrowth),
  the same seeded batch on every rank (SNIP, GraSP), and, for RigL, the all-reduced dense gradient
  (:func:`sparseflow.training.loop.fit` removes the method's gradient hooks, which would see the local gradient
  before DDP averages it, and calls ``method.mask_grads_()`` after backward instead);
- masks are not broadcast from rank 0: a broadcast would hide a rank that decided differently. Instead all
  ranks compare per-layer CRC32 checksums of their masks after every mask update and at the end of every
  epoch; a mismatch stops every rank with a :class:`SparseflowError` naming the first differing layer.

The training data is split by :class:`ShardedBatches`: each epoch one global permutation (the same draws
as the single-process loader) is cut into global batches of ``world_size * B`` examples, and rank r takes
the r-th contiguous part of each. So 2 ranks x batch B see, step by step, exactly the examples that
1 rank x batch 2B sees, and :func:`loss_scale` makes the averaged gradient the mean over the global batch
even when the last one does not divide evenly. Results then agree up to floating-point summation order.

A rank that dies makes the collectives of the others fail (at once when its sockets close, else after the
timeout passed to :func:`init`); :func:`collective_errors` turns that into one clear error.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler

from sparseflow.errors import SparseflowError, first_line

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BACKENDS = ("auto", "gloo", "nccl")
DEFAULT_TIMEOUT_S = 300.0


def launched() -> bool:
    """Whether this process was started by torchrun (or anything that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_backend(backend: str) -> str:
    """'auto' -> 'nccl' when CUDA is available, else 'gloo'; 'nccl' without CUDA is refused."""
    if backend not in BACKENDS:
        raise SparseflowError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise SparseflowError("backend 'nccl' needs CUDA, but no CUDA device is available; use --backend gloo")
    return backend


def check_timeout(timeout_s: float) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (
        math.isfinite(timeout_s) and timeout_s > 0
    ):
        raise SparseflowError(f"--dist-timeout must be a positive number of seconds, got {timeout_s!r}")
    return float(timeout_s)


def init(*, backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join the process group described by torchrun's environment variables (no-op if already joined).

    ``timeout_s`` bounds every collective: a rank that stops answering makes the others fail after at
    most that long instead of waiting forever.
    """
    timeout_s = check_timeout(timeout_s)
    backend = resolve_backend(backend)
    if active():
        return
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise SparseflowError(
            f"distributed training needs the environment variables {', '.join(missing)}; "
            "start it with torchrun --nproc-per-node N -m sparseflow train ... or sparseflow train --nproc N"
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))


def shutdown() -> None:
    """Leave the process group together: a rank that tears its connections down while a peer still uses them
    makes the peer's transport thread abort the process. A peer that is already gone fails the barrier."""
    if active():
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - the peer died or timed out: leave anyway
            pass
        dist.destroy_process_group()


@contextmanager
def session(*, backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """``init`` on entry, leave the process group on exit (also after an error)."""
    init(backend=backend, timeout_s=timeout_s)
    try:
        yield
    finally:
        shutdown()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0 and in a single process: the one process that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def device() -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` under NCCL, else the CPU."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def wrap(model: nn.Module) -> nn.Module:
    """The model wrapped in DistributedDataParallel (gradients averaged over ranks during backward)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device().index] if device().type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return t.tolist()


# --- masks ------------------------------------------------------------------------------------


def mask_checksums(mask: Mapping[str, Tensor]) -> dict[str, int]:
    """CRC32 of every layer's mask bytes (one byte per entry, row-major), by layer name."""
    return {name: zlib.crc32(m.detach().to("cpu", torch.bool).contiguous().numpy().tobytes()) for name, m in mask.items()}


def check_masks(mask: Mapping[str, Tensor], *, when: str) -> None:
    """Compare every layer's mask checksum across ranks; raise on the first layer that differs.

    Every rank must call this at the same point (it is a collective). ``when`` says where, for the message.
    """
    if not active():
        return
    sums = mask_checksums(mask)
    names = list(sums)
    mine = torch.tensor([len(names), *sums.values()], dtype=torch.int64, device=device())
    gathered = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(gathered, mine)
    rows = [g.tolist() for g in gathered]
    if any(r[0] != len(names) for r in rows):
        counts = ", ".join(f"rank {i}: {r[0]}" for i, r in enumerate(rows))
        raise SparseflowError(f"ranks hold different numbers of masked layers {when} ({counts})")
    for j, name in enumerate(names):
        values = [r[1 + j] for r in rows]
        if len(set(values)) > 1:
            odd = [i for i, v in enumerate(values) if v != values[0]]
            kept = int(torch.count_nonzero(mask[name]))
            raise SparseflowError(
                f"the masks of layer {name!r} differ between ranks {when}: rank 0 has CRC32 {values[0]:08x}, "
                + ", ".join(f"rank {i} has {values[i]:08x}" for i in odd)
                + f" (this rank, {rank()}, keeps {kept} of {mask[name].numel()}); a mask decision used data that "
                "is not synchronised across ranks (a local gradient, batch or generator). Training stopped."
            )


# --- data -------------------------------------------------------------------------------------


class ShardedBatches(Sampler[list[int]]):
    """This rank's part of each global batch of ``world * batch_size`` shuffled examples.

    The global batches are those of ``DataLoader(dataset, world * batch_size, shuffle=True,
    generator=g)``: same generator draws, same order. Each is cut into ``world`` contiguous parts whose
    sizes differ by at most one. A last global batch with fewer examples than ranks is dropped (every rank
    needs at least one example per step); that is the only case where the steps differ from one process.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, *, rank: int, world: int,
                 num_samples: int | None = None) -> None:
        # num_samples: examples per epoch when fewer than n are drawn (a text dataset's random windows)
        order = RandomSampler(range(n), generator=generator, num_samples=num_samples)
        self.global_batches = BatchSampler(order, world * batch_size, False)
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        n, size = len(self.global_batches.sampler), self.global_batches.batch_size  # type: ignore[arg-type]
        return n // size + (n % size >= self.world)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches:
            m = len(batch)
            if m < self.world:
                continue  # the short last batch: too few examples to give every rank one
            lo, hi = self.rank * m // self.world, (self.rank + 1) * m // self.world
            yield batch[lo:hi]


def shard(loader: DataLoader) -> DataLoader:
    """A loader that yields this rank's ``loader.batch_size`` examples of each global batch.

    ``loader`` must shuffle with an explicit generator (as :func:`sparseflow.training.data.loaders` builds them);
    its generator drives the global order, so checkpoints store and restore it as before.
    """
    g = getattr(loader, "generator", None)
    if not isinstance(g, torch.Generator) or not isinstance(loader.sampler, RandomSampler) or loader.batch_size is None:
        raise SparseflowError(
            "shard() needs a shuffling DataLoader with a batch_size and an explicit generator "
            "(DataLoader(..., shuffle=True, generator=torch.Generator().manual_seed(seed)))"
        )
    if loader.drop_last:
        raise SparseflowError("shard() needs a loader with drop_last=False")
    sampler = ShardedBatches(len(loader.dataset), loader.batch_size, g, rank=rank(), world=world_size(),
                             num_samples=loader.sampler.num_samples)
    return DataLoader(loader.dataset, batch_sampler=sampler, generator=g, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers)


def loss_scale(loader: DataLoader, step_in_epoch: int) -> float | None:
    """world / (global batch size) of this step for a :func:`shard` loader, else None.

    Each rank's summed loss times this, averaged over ranks by DDP, is the mean over the global batch.
    """
    sampler = getattr(loader, "batch_sampler", None)
    if not isinstance(sampler, ShardedBatches):
        return None
    n, size = len(sampler.global_batches.sampler), sampler.global_batches.batch_size
    m = min(size, n - step_in_epoch * size)
    return sampler.world / m


# --- failures ---------------------------------------------------------------------------------

_BACKEND_WORDS = ("gloo", "NCCL", "nccl", "Connection", "connection", "timed out", "Timeout", "ProcessGroup")


@contextmanager
def collective_errors(where: Callable[[], str]) -> Iterator[None]:
    """Turn a failed collective (another rank died or timed out) into one clear SparseflowError.

    ``where()`` says when it happened (e.g. "at step 12 (epoch 2)"); it is called only on failure.
    """
    if not active():
        yield
        return
    try:
        yield
    except SparseflowError:
        raise
    except (RuntimeError, dist.DistError) as e:
        text = str(e)
        # gloo reports a closed peer as a plain RuntimeError; leave other RuntimeErrors (a shape mismatch) alone.
        if not isinstance(e, dist.DistError) and not any(k in text for k in _BACKEND_WORDS):
            raise
        raise SparseflowError(
            f"rank {rank()} of {world_size()}: a collective operation failed {where()}: another rank stopped, "
            f"crashed or did not answer within the timeout ({first_line(e)[:300]}). Training stopped; the last "
            "checkpoint written stays valid: resume with --resume and the same number of processes"
        ) from e
