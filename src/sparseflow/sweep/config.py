"""A sweep's configuration: the grid (method x sparsity x seed x dataset) and the training settings every cell shares.

:class:`Sweep` declares the shared settings as :class:`~sparseflow.training.job.TrainJob` declares them
(:func:`~sparseflow.training.options.like`), so ``sparseflow sweep`` is generated from it and
:class:`SweepOptions`. :meth:`Sweep.cells` expands it into one TrainJob per cell, datasets outermost, then
methods, sparsities and seeds (the order of every table). 'dense' has sparsity 0 whatever the grid says, so it
is one cell per seed and dataset. :meth:`Sweep.digest` names the default sweep folder (a stable hash of the grid
and the shared fields).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sparseflow.distributions import check_sparsity
from sparseflow.errors import SparseflowError
from sparseflow.training.data import DATASETS
from sparseflow.training.job import FILE_DATASETS, METHODS, TrainJob
from sparseflow.training.options import BudgetOptions, check, known, like, option

GRID = ("methods", "sparsities", "seeds", "datasets")
_EXAMPLE = {"methods": "gmp,rigl", "sparsities": "0.8,0.9", "seeds": "0,1,2", "datasets": "digits"}
# TrainJob's fields every cell shares (the grid sets method, sparsity, seed and dataset; the sweep, distribution)
SHARED = ("model", "hidden", "pattern", "norm", "subset", "test_subset", "epochs", "batch_size", "lr", "optimizer",
          "weight_decay", "baseline", "prune_first", "prune_last")


def _quick_subset(c: SimpleNamespace) -> int | None:
    return 2000 if set(c.datasets) & set(FILE_DATASETS) else None


def _quick_test_subset(c: SimpleNamespace) -> int | None:
    return 1000 if set(c.datasets) & set(FILE_DATASETS) and c.subset is None else None


@dataclass(frozen=True)
class Sweep:
    """The grid and the job fields all cells share (declared as TrainJob declares them; :attr:`base` is the
    TrainJob they make). ``distribution=None``: each method's default. ``--quick``: 2 seeds, 5 epochs, and
    2000 training examples of a file dataset: within 60 s on 2 cores (digits: about 10 s)."""

    methods: tuple[str, ...] = option(("gmp", "rigl"), f"Comma-separated: {' | '.join(METHODS)}.", nonempty=False)
    sparsities: tuple[float, ...] = option((0.8, 0.9), "Comma-separated sparsities in [0, 1).", nonempty=False)
    seeds: tuple[int, ...] = option((0, 1, 2), "Comma-separated seeds.", min=0, nonempty=False, quick=(0, 1))
    datasets: tuple[str, ...] = option(("digits",), f"Comma-separated: {' | '.join(DATASETS)}.", nonempty=False)
    distribution: str | None = like(TrainJob, "distribution")
    model: str = like(TrainJob, "model")
    hidden: tuple[int, ...] | None = like(TrainJob, "hidden")
    pattern: str = like(TrainJob, "pattern")
    norm: str = like(TrainJob, "norm")
    subset: int | None = like(TrainJob, "subset", help="Use this many training examples (quick: 2000 when a "
                              "dataset is mnist or fashion-mnist).", quick=_quick_subset)
    test_subset: int | None = like(TrainJob, "test_subset", help="Evaluate on the first N test examples (quick, "
                                   "without --subset: 1000 when a dataset is mnist or fashion-mnist).",
                                   quick=_quick_test_subset)
    epochs: int = like(TrainJob, "epochs", help="Training epochs per cell.", quick=5)
    batch_size: int = like(TrainJob, "batch_size", help="Minibatch size (per process when data-parallel).")
    lr: float = like(TrainJob, "lr")
    optimizer: str = like(TrainJob, "optimizer")
    weight_decay: float = like(TrainJob, "weight_decay")
    baseline: bool = like(TrainJob, "baseline", False,
                          help="Also train each cell's dense baseline (or add method 'dense').")
    prune_first: bool = like(TrainJob, "prune_first")
    prune_last: bool = like(TrainJob, "prune_last")

    def __post_init__(self) -> None:
        check(self)
        for name in GRID:
            values = getattr(self, name)
            if not values:
                raise SparseflowError(f"{name} is empty (got {values!r}): a sweep needs at least one value in "
                                      f"each of {', '.join(GRID)}; pass one, such as --{name} {_EXAMPLE[name]}")
            dupes = sorted({str(v) for v in values if values.count(v) > 1})
            if dupes:
                raise SparseflowError(f"{name} lists {', '.join(dupes)} more than once")
        for m in self.methods:
            known(m, METHODS, "method")
        for s in self.sparsities:
            check_sparsity(s)
        for d in self.datasets:
            known(d, DATASETS, "dataset")
        self.cells()  # every combination must be a valid TrainJob

    @property
    def base(self) -> TrainJob:
        """The TrainJob of the shared fields (its method, sparsity, seed and dataset are each cell's; it is built as
        'dense', so that shared settings that fit only some sparsities, such as an N:M pattern, are checked per cell)."""
        return TrainJob(method="dense", **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                           if f.name in SHARED})

    def cells(self) -> list[TrainJob]:
        """One TrainJob per cell: datasets, then methods, sparsities, seeds (duplicate 'dense' cells dropped)."""
        jobs: dict[str, TrainJob] = {}
        base = self.base
        for d, m, s, seed in itertools.product(self.datasets, self.methods, self.sparsities, self.seeds):
            job = dataclasses.replace(base, dataset=d, method=m, sparsity=s, seed=seed,
                                      distribution=self.distribution)
            jobs.setdefault(job.digest(), job)
        return list(jobs.values())

    def to_dict(self) -> dict[str, Any]:
        shared = {k: v for k, v in self.base.to_dict().items()
                  if k not in ("method", "sparsity", "seed", "dataset", "distribution")}
        return {"methods": list(self.methods), "sparsities": list(self.sparsities), "seeds": list(self.seeds),
                "datasets": list(self.datasets), "distribution": self.distribution, "shared": shared}

    def digest(self) -> str:
        """Stable 10-hex-digit hash of the grid and shared fields: the default output folder's suffix."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class SweepOptions(BudgetOptions):
    """How ``sparseflow sweep`` runs a grid: where, on which executor, whether past the budget, what it shows."""

    out: Path | None = option(None, "Sweep folder (default runs/sweep-<grid hash>); rerunning skips finished cells.")
    data_dir: Path | None = option(None, "IDX files of mnist / fashion-mnist: DIR/<dataset>/ if it exists, else DIR.")
    workers: int | None = option(None, "Local processes (default min(cores, cells)); each gets cores // workers "
                                 "torch threads.", min=1)
    ray: str | None = option(None, "Run the cells on the Ray cluster at ADDRESS (HOST:PORT); needs sparseflow[ray].",
                             metavar="ADDRESS")
    cpus_per_cell: int = option(1, "CPUs each Ray task reserves (and torch threads it uses).", min=1)
    progress: bool = option(True, "Show a progress bar over cells (on stderr).", flag="--progress/--no-progress")

    def __post_init__(self) -> None:
        check(self)
