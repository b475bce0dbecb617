"""Settings of ``sparseflow experiment regularisation``: the full run and, through each field's ``quick``, the
quick one, and its time estimate (the ``--yes`` budget)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sparseflow.errors import SparseflowError
from sparseflow.training.options import check, option

SIZES = (500, 1000, 2000, 4000, 8000, 16000)
SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
COMPARE_SIZE = 4000  # the notebook's training-set size: criterion (b) is read there (or at the nearest size)
# Seconds per multiply-add of one example through the MLP, forward + backward + Adam (measured on 2 shared
# cores, one torch thread: ~5.5 ms per step of batch 100 at hidden 500), and per generated MNIST-1D sample.
S_PER_MAC, S_PER_SAMPLE = 2.0e-10, 3.5e-4


@dataclass(frozen=True)
class RegConfig:
    """The grid ``sizes`` x ``sparsities`` x ``seeds`` (seeds 0 .. seeds - 1) and the training of every cell."""

    seeds: int = option(5, "Seeds per cell, >= 2 (a t-interval needs two).", min=2, quick=2)
    sizes: tuple[int, ...] = option(SIZES, "Training-set sizes, e.g. 500,1000,2000,4000,8000,16000.", min=10,
                                    increasing=True, quick=(500, 4000))
    sparsities: tuple[float, ...] = option(SPARSITIES, "Sparsities including 0 (dense), e.g. 0,0.5,0.8,0.9.", min=0,
                                           max=1, max_open=True, increasing=True, quick=(0.0, 0.8, 0.95))
    steps: int = option(1500, "Adam steps per run, the same for every cell.", min=1, quick=300)
    hidden: int = option(500, "Hidden width of the residual MLP.", min=1)
    lr: float = option(0.02, "Adam learning rate (0.02 is the notebook's).", min=0, max=10, min_open=True,
                       max_open=True)
    batch_size: int = option(100, "Batch size.", min=1)
    test_size: int = option(4000, "Test signals.", min=1, quick=1000)
    sparse_init: bool = option(False, "Rescale kept weights to their fan-in (off in the notebook).")
    quick: bool = option(False, "Recorded: whether this is the quick scale.", cli=False, quick=True)

    def __post_init__(self) -> None:
        check(self)
        if 0.0 not in self.sparsities or len(self.sparsities) < 2:
            raise SparseflowError(f"sparsities must hold 0 (the dense reference) and at least one sparse level, "
                                  f"e.g. 0,0.8,0.9; got {self.sparsities!r}")

    def runs(self) -> int:
        return len(self.sizes) * len(self.sparsities) * self.seeds

    def estimate_s(self) -> float:
        """Seconds on 2 shared cores: training (steps x batch x multiply-adds) plus generating the data."""
        macs = 40 * self.hidden + self.hidden**2 + self.hidden * 10
        train = self.runs() * self.steps * min(self.batch_size, max(self.sizes)) * macs * S_PER_MAC
        return train + (max(self.sizes) + self.test_size) * S_PER_SAMPLE

    def compare_size(self) -> int:
        """4000 if it is in the grid, else the size nearest to it on a log scale (the smaller on a tie)."""
        return min(self.sizes, key=lambda n: (abs(math.log(n / COMPARE_SIZE)), n))
