"""Settings of ``sparseflow experiment normalisation``: the full run and, through each field's ``quick``, the
quick one; :class:`NormOptions` holds what does not change the result (the data folder, threads, ``--yes``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sparseflow.errors import SparseflowError
from sparseflow.training.models import NORMS
from sparseflow.training.options import BudgetOptions, check, option

BATCH_SIZES = (2, 4, 8, 32, 128)
VARIANTS = ("dense", "sparse")
# Seconds per training step of ResNet-8 (width 16) on one core of this 2-core machine shared with other jobs,
# measured with one torch thread: a fixed part (Python and kernel-launch overhead, dominant at batch 2) plus a
# part per example at 14 x 14 pixels; evaluation per example at batch 500. A static mask costs about half again
# per step (it is re-applied, and the optimizer state zeroed, after every step).
STEP_S, EXAMPLE_S, EVAL_S = 6.0e-3, 3.0e-4, 1.8e-4
SPARSE_OVERHEAD = 1.5


@dataclass(frozen=True)
class NormConfig:
    """The grid: norm x batch size x variant, per seed (see :mod:`.run` for the setting)."""

    seeds: int = option(3, "Seeds per cell.", min=1, quick=2)
    epochs: int = option(4, "Epochs, the same for every cell.", min=1, quick=1)
    train_size: int = option(2048, "Training images, a seeded subset.", min=1, quick=128)
    test_size: int | None = option(None, "Test images, a fixed subset (default: all 10000).", min=1, quick=256)
    batch_sizes: tuple[int, ...] = option(BATCH_SIZES, "Batch sizes, at least two, increasing, e.g. 2,4,8,32,128.",
                                          min=1, increasing=True)
    norms: tuple[str, ...] = option(NORMS, "Norms out of batch,group,layer,none.", choices=NORMS, distinct=True)
    variants: tuple[str, ...] = option(VARIANTS, "dense,sparse or one of them.", choices=VARIANTS, distinct=True)
    sparsity: float = option(0.9, "Sparsity of the sparse variant.", min=0, max=1, max_open=True)
    lr_ref: float = option(6e-3, "Adam learning rate at batch 128; scaled by sqrt(batch/128).", min=0, min_open=True,
                           max=1, max_open=True, flag="--lr")
    pool: int = option(2, "Average-pool images pool x pool (2: 14 x 14; 1 = full 28 x 28); divides 28.",
                       choices=(1, 2, 4, 7, 14))
    width: int = option(16, "ResNet-8 width: channels of the first stage.", min=1)
    batch_ref: int = option(128, "The batch size lr_ref is given at.", min=1, cli=False)
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)
        if len(self.batch_sizes) < 2:
            raise SparseflowError("batch sizes must be at least two distinct increasing sizes, "
                                  f"got {self.batch_sizes!r}")
        if max(self.batch_sizes) > self.train_size:
            raise SparseflowError(f"the largest batch size {max(self.batch_sizes)} exceeds train_size "
                                  f"{self.train_size}; pass a larger --train-size or smaller batch sizes")

    @property
    def seed_values(self) -> tuple[int, ...]:
        """The seeds themselves: 0 .. seeds - 1."""
        return tuple(range(self.seeds))

    def cells(self) -> int:
        return self.seeds * len(self.variants) * len(self.norms) * len(self.batch_sizes)

    def estimate_s(self) -> float:
        """Seconds on one shared core: steps x (fixed + per-example cost) plus evaluation, summed over cells.
        BatchNorm cells also evaluate with test batches of the training size: a forward pass costs about a third
        of a training step."""
        scale = (28 // self.pool) ** 2 / 14**2 * (self.width / 16) ** 2
        test = 10_000 if self.test_size is None else self.test_size
        per_row = sum(self.epochs * math.ceil(self.train_size / b) * (STEP_S + b * EXAMPLE_S * scale)
                      for b in self.batch_sizes)
        variants = sum(SPARSE_OVERHEAD if v == "sparse" else 1.0 for v in self.variants)
        runs = self.seeds * len(self.variants)
        evals = runs * len(self.norms) * len(self.batch_sizes) * test * EVAL_S * scale
        if "batch" in self.norms:
            evals += runs * sum(math.ceil(test / b) * STEP_S / 3 + test * EVAL_S * scale for b in self.batch_sizes)
        return self.seeds * len(self.norms) * variants * per_row + evals


@dataclass(frozen=True)
class NormOptions(BudgetOptions):
    """Where the data is and how many threads train: settings that do not change the result."""

    data_dir: Path | None = option(None, "Folder holding Fashion-MNIST's four IDX files.")
    threads: int = option(1, "torch.set_num_threads while training (small convs: 1 is fastest).", min=1)

    def __post_init__(self) -> None:
        check(self)
