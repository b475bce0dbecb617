"""From a :class:`~sparseflow.training.job.TrainJob` to the method it names, with the schedule of its paper.

The job holds names (strings, as the command line and the run directory's ``config.json`` do); this module is
where they become values: :func:`parse_pattern` for the sparsity pattern, :func:`build_method` for the method
with its schedule derived from the number of training steps, and :func:`first_batch` for the batch SNIP and
GraSP score on.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from sparseflow.distributions import DISTRIBUTIONS, GLOBAL
from sparseflow.errors import SparseflowError
from sparseflow.methods import GMP, SET, SNIP, GraSP, MagnitudePruning, Method, RandomSparse, RigL, SynFlow
from sparseflow.patterns import NM, Block, Pattern, Unstructured
from sparseflow.targets import Targets

if TYPE_CHECKING:
    from sparseflow.training.data import Dataset
    from sparseflow.training.job import TrainJob


def parse_pattern(text: str) -> Pattern:
    """'unstructured' | 'N:M' (e.g. '2:4') | 'RxC' (e.g. '4x4') -> pattern value."""
    t = text.strip().lower()
    if t == "unstructured":
        return Unstructured()
    if m := re.fullmatch(r"(\d+):(\d+)", t):
        return NM(int(m[1]), int(m[2]))
    if m := re.fullmatch(r"(\d+)x(\d+)", t):
        return Block(int(m[1]), int(m[2]))
    raise SparseflowError(f"unknown pattern {text!r}; use 'unstructured', 'N:M' such as '2:4', or 'RxC' such as '4x4'")


def first_batch(ds: Dataset, job: TrainJob) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random training batch of ``job.batch_size * job.world_size`` examples (one global batch: the
    data SNIP and GraSP score on; every rank draws the same one)."""
    g = torch.Generator().manual_seed(job.seed)
    idx = torch.randperm(len(ds.x_train), generator=g)[: job.batch_size * job.world_size]
    return ds.x_train[idx], ds.y_train[idx]


def build_method(job: TrainJob, total_steps: int, *, batch: tuple[torch.Tensor, torch.Tensor] | None = None,
                 input_shape: tuple[int, ...] | None = None) -> Method | None:
    """The method named by ``job`` with its schedule derived from the number of training steps.

    magnitude: train dense for half the steps, prune once, fine-tune the rest.
    gmp: cubic schedule from 10 % to 60 % of the steps, 20 pruning updates (Zhu & Gupta 2017).
    random: a static random mask drawn before training.
    snip, grasp: pruned at initialisation on ``batch``; synflow: at initialisation, data-free, 100 rounds (on a
    language model on the token ids of ``batch``'s first example instead of an all-ones input).
    set, rigl: prune-and-regrow every 100 steps (fewer on short runs) until 75 % of training, α = 0.3.

    ``job.sparse_init``: "auto" keeps each method's default, "rescale" and "none" set its ``sparse_init`` to
    True and False; "he" sets it to False, and the training run (:func:`~sparseflow.training.run.run_train_job`)
    redraws the weights with :func:`sparseflow.init.sparse_init_` once the first mask is in place.
    """
    if job.method == "dense":
        return None
    distribution = GLOBAL if job.distribution == "global" else DISTRIBUTIONS[job.distribution]
    pattern = parse_pattern(job.pattern)
    targets = Targets(first_layer=job.prune_first, last_layer=job.prune_last)
    common = dict(sparsity=job.sparsity, distribution=distribution, pattern=pattern, targets=targets)
    if job.sparse_init != "auto":
        common["sparse_init"] = job.sparse_init == "rescale"
    if job.method == "magnitude":
        return MagnitudePruning(**common, at_step=total_steps // 2)
    if job.method == "gmp":
        start = int(0.1 * total_steps)
        end = int(0.6 * total_steps)
        every = max(1, (end - start) // 20)
        if end - start < every or end <= start:
            raise SparseflowError(
                f"{total_steps} training steps are too few for a GMP schedule; train for more epochs"
            )
        return GMP(**common, start=start, end=end, every=every)
    if job.method in ("snip", "grasp"):
        if batch is None:
            raise SparseflowError(f"{job.method} scores weights on a data batch: pass batch=(x, y)")
        return (SNIP if job.method == "snip" else GraSP)(**common, data=batch)
    if job.method == "synflow":
        if batch is not None and not batch[0].is_floating_point():  # token ids: kept, as SynFlow cannot make them ones
            return SynFlow(**common, example=batch)
        return SynFlow(**common, input_shape=input_shape)
    if job.method in ("set", "rigl"):
        until = int(0.75 * total_steps)
        every = min(100, max(1, until // 4))
        return (SET if job.method == "set" else RigL)(**common, seed=job.seed, update_every=every, until=until,
                                                      total_steps=total_steps)
    return RandomSparse(**common, seed=job.seed)
