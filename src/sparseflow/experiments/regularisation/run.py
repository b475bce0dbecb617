"""Sparsity as a regulariser when data is scarce: test accuracy vs sparsity x training-set size on MNIST-1D.

Idea: a random static mask removes parameters, so it should help most when data is scarce, and the best
sparsity should fall as data grows. The reference is the lottery-ticket notebook of MNIST-1D (Greydanus &
Kobak 2024, "Scaling down deep learning with MNIST-1D"), where random masks at 70-88 % sparsity beat the
dense MLP by about 2-6 pp with 4,000 training examples.

Setting, the notebook's: a residual MLP ``h = relu(W1 x); h = h + relu(W2 h); logits = W3 h`` (hidden 500,
PyTorch's default init), Adam at lr 0.02, batch 100, 1,500 steps for every cell of the grid, whatever the
training-set size (the same budget). Masks are :class:`~sparseflow.RandomSparse` with the uniform
distribution (each Linear weight at sparsity s) and no rescaling of the kept weights (``sparse_init=False``),
as the notebook; biases stay dense. Per seed, the training subset (nested: the first N of one seeded
permutation of the pool), the init, the mask and the batch order are shared by every sparsity (paired runs).

Data: :func:`mnist1d_pool` generates a training pool and, with another seed, a fixed test set through the
``mnist1d`` package, so the test set neither shrinks with N nor depends on the grid.
Statistics (mean over seeds, 95 % t-intervals), the pass criteria, figures and report:
:mod:`sparseflow.experiments.regularisation.report`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseflow.training.data import Dataset
from sparseflow.distributions import check_sparsity, uniform
from sparseflow.errors import SparseflowError
from sparseflow.methods import RandomSparse

POOL_SEED, TEST_SEED = 42, 4242  # 42 is get_dataset_args()'s seed; the test set is drawn independently
SIZES = (500, 1000, 2000, 4000, 8000, 16000)
SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
COMPARE_SIZE = 4000  # the notebook's training-set size: criterion (b) is read there (or at the nearest size)
# Seconds per multiply-add of one example through the MLP, forward + backward + Adam (measured on 2 shared
# cores, one torch thread: ~5.5 ms per step of batch 100 at hidden 500), and per generated MNIST-1D sample.
S_PER_MAC, S_PER_SAMPLE = 2.0e-10, 3.5e-4


@dataclass(frozen=True)
class RegConfig:
    """Everything one run does; :meth:`default` gives the full and the quick scale."""

    quick: bool
    sizes: tuple[int, ...]
    sparsities: tuple[float, ...]  # includes 0.0, the dense reference
    seeds: tuple[int, ...]
    steps: int = 1500
    batch_size: int = 100
    lr: float = 0.02
    hidden: int = 500
    test_size: int = 4000
    sparse_init: bool = False

    @classmethod
    def default(cls, *, quick: bool, seeds: int | None = None) -> RegConfig:
        if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2):
            raise SparseflowError(f"seeds must be an integer >= 2 (a t-interval needs two), got {seeds!r}")
        n = seeds if seeds is not None else (2 if quick else 5)
        if quick:
            return cls(quick=True, sizes=(500, 4000), sparsities=(0.0, 0.8, 0.95), seeds=tuple(range(n)),
                       steps=300, test_size=1000)
        return cls(quick=False, sizes=SIZES, sparsities=SPARSITIES, seeds=tuple(range(n)))

    def check(self) -> None:
        for name in ("steps", "batch_size", "hidden", "test_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SparseflowError(f"{name} must be an integer >= 1, got {v!r}")
        if not self.sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 10 for n in self.sizes):
            raise SparseflowError(f"sizes must be training-set sizes >= 10, e.g. 500,4000; got {self.sizes!r}")
        if len(set(self.sizes)) != len(self.sizes) or list(self.sizes) != sorted(self.sizes):
            raise SparseflowError(f"sizes must be distinct and increasing, got {self.sizes!r}")
        for s in self.sparsities:
            check_sparsity(s)
        if 0.0 not in self.sparsities or len(self.sparsities) < 2:
            raise SparseflowError(f"sparsities must hold 0 (the dense reference) and at least one sparse level, "
                                  f"e.g. 0,0.8,0.9; got {self.sparsities!r}")
        if len(set(self.sparsities)) != len(self.sparsities) or list(self.sparsities) != sorted(self.sparsities):
            raise SparseflowError(f"sparsities must be distinct and increasing, got {self.sparsities!r}")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise SparseflowError(f"need at least 2 distinct seeds for a t-interval, got {self.seeds!r}")
        if not (isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and 0 < self.lr < 10):
            raise SparseflowError(f"lr must be a positive learning rate such as 0.02, got {self.lr!r}")

    def runs(self) -> int:
        return len(self.sizes) * len(self.sparsities) * len(self.seeds)

    def estimate_s(self) -> float:
        """Seconds on 2 shared cores: training (steps x batch x multiply-adds) plus generating the data."""
        macs = 40 * self.hidden + self.hidden**2 + self.hidden * 10
        train = self.runs() * self.steps * min(self.batch_size, max(self.sizes)) * macs * S_PER_MAC
        return train + (max(self.sizes) + self.test_size) * S_PER_SAMPLE

    def compare_size(self) -> int:
        """4000 if it is in the grid, else the size nearest to it on a log scale (the smaller on a tie)."""
        return min(self.sizes, key=lambda n: (abs(math.log(n / COMPARE_SIZE)), n))


def _generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    # make_dataset draws num_samples // 10 per class, shuffles, centres and scales the set to mean 0, std 1
    # (one scalar each, over this draw); train_split 1 keeps all of it in "x".
    args.num_samples, args.train_split, args.seed = 10 * math.ceil(n / 10), 1.0, seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:  # make_dataset reseeds the global generators: give the caller's back
        raw = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return raw["x"][:n], raw["y"][:n]


def mnist1d_pool(n_train: int, n_test: int, *, train_seed: int = POOL_SEED, test_seed: int = TEST_SEED) -> Dataset:
    """MNIST-1D with ``n_train`` training and ``n_test`` test signals, shaped ``(N, 1, 40)``.

    Unlike ``load_dataset("mnist1d")`` (the published 4,000 / 1,000 split) any size can be had: each split
    is its own ``make_dataset`` draw (the package's default arguments, seeds ``train_seed`` / ``test_seed``),
    so the test set does not depend on ``n_train``. Each split is standardised by make_dataset over itself;
    with thousands of signals the two scalars agree with the population's to well under 1 %.
    """
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SparseflowError(f"{name} must be a positive number of signals, got {v!r}")
    if train_seed == test_seed:
        raise SparseflowError(f"train_seed and test_seed must differ (both {train_seed}): the test set would "
                              "repeat the training signals")
    (x, y), (xt, yt) = _generate(n_train, train_seed), _generate(n_test, test_seed)

    def signals(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.float32)[:, None, :])

    def labels(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    return Dataset("mnist1d", signals(x), labels(y), signals(xt), labels(yt), 10)


class ResidualMLP(nn.Module):
    """The MNIST-1D notebook's MLP: ``h = relu(W1 x); h = h + relu(W2 h); logits = W3 h``.

    ``layers`` holds the three Linear layers (the prunable targets). Initialised like ``nn.Linear``
    (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases) from ``generator``, not the global RNG.
    """

    def __init__(self, inputs: int, hidden: int, classes: int, generator: torch.Generator) -> None:
        super().__init__()
        widths = ((inputs, hidden), (hidden, hidden), (hidden, classes))
        self.layers = nn.ModuleList(nn.utils.skip_init(nn.Linear, a, b) for a, b in widths)
        with torch.no_grad():
            for lin in self.layers:
                bound = 1 / math.sqrt(lin.in_features)  # = kaiming_uniform_(a=sqrt(5))'s bound
                lin.weight.uniform_(-bound, bound, generator=generator)
                lin.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.layers[0](x.flatten(1)))  # (N, 1, 40) -> (N, hidden)
        h = h + F.relu(self.layers[1](h))
        return self.layers[2](h)


def batch_indices(n: int, batch: int, steps: int, generator: torch.Generator) -> Iterator[Tensor]:
    """``steps`` batches of ``min(batch, n)`` indices from back-to-back random permutations of ``range(n)``:
    every batch is full and every example is seen once per pass (a batch may straddle two passes)."""
    b, buf = min(batch, n), torch.empty(0, dtype=torch.int64)
    for _ in range(steps):
        while len(buf) < b:
            buf = torch.cat([buf, torch.randperm(n, generator=generator)])
        yield buf[:b]
        buf = buf[b:]


@dataclass(frozen=True)
class Cell:
    """One trained network of the grid."""

    size: int
    sparsity: float
    seed: int
    test_acc: float
    train_acc: float  # on its own training subset, after the last step
    final_loss: float  # mean training loss over the last 10 % of steps
    wall_s: float


def train_cell(data: Dataset, cfg: RegConfig, size: int, sparsity: float, seed: int) -> Cell:
    """Train one network on the first ``size`` examples of the seed's permutation of the pool."""
    t0 = time.perf_counter()
    keep = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))[:size]
    x, y = data.x_train[keep], data.y_train[keep]
    # Separate streams per purpose: init, mask scores and batch order must not be draws of one generator.
    model = ResidualMLP(x[0].numel(), cfg.hidden, data.num_classes, torch.Generator().manual_seed(10_000 + seed))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    method = None
    if sparsity > 0:
        method = RandomSparse(sparsity, distribution=uniform, seed=20_000 + seed, sparse_init=cfg.sparse_init)
        method.prepare(model, opt)
    losses = []
    for idx in batch_indices(size, cfg.batch_size, cfg.steps, torch.Generator().manual_seed(30_000 + seed)):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if method is not None:
            method.step()
        losses.append(float(loss.detach()))
    tail = losses[-max(1, len(losses) // 10):]
    with torch.no_grad():
        test_acc = float((model(data.x_test).argmax(1) == data.y_test).float().mean())
        train_acc = float((model(x).argmax(1) == y).float().mean())
    return Cell(size, sparsity, seed, test_acc, train_acc, sum(tail) / len(tail), time.perf_counter() - t0)


@dataclass(frozen=True)
class RegResult:
    config: RegConfig
    cells: tuple[Cell, ...] = field(repr=False)
    data_s: float = 0.0
    wall_s: float = 0.0

    def acc(self, split: str = "test") -> np.ndarray:
        """Accuracies shaped (sizes, sparsities, seeds), in the config's order."""
        cfg, key = self.config, f"{split}_acc"
        index = {(c.size, c.sparsity, c.seed): getattr(c, key) for c in self.cells}
        return np.array([[[index[(n, s, seed)] for seed in cfg.seeds] for s in cfg.sparsities] for n in cfg.sizes])

    def criteria(self) -> dict[str, dict]:
        from sparseflow.experiments.regularisation.report import criteria

        return criteria(self)

    def to_json(self) -> dict:
        from sparseflow.experiments.regularisation.report import summary

        return {"command": "experiment regularisation", "quick": self.config.quick, "wall_s": self.wall_s,
                "data_s": self.data_s, "config": self.config.__dict__, "dataset": _DATASET,
                **summary(self), "criteria": self.criteria(), "cells": [c.__dict__ for c in self.cells]}


_DATASET = (f"MNIST-1D generated by mnist1d.make_dataset (default arguments): training pool seed {POOL_SEED}, "
            f"test set seed {TEST_SEED}")


def run_regularisation(cfg: RegConfig, progress: Callable[[str], None] = lambda _: None) -> RegResult:
    """Train every (size, sparsity, seed) of ``cfg``; ``progress(what)`` after each. One torch thread (restored)."""
    cfg.check()
    t0 = time.perf_counter()
    data = mnist1d_pool(max(cfg.sizes), cfg.test_size)
    data_s = time.perf_counter() - t0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only contend on a shared machine
    cells = []
    try:
        for n in cfg.sizes:
            for s in cfg.sparsities:
                for seed in cfg.seeds:
                    cells.append(train_cell(data, cfg, n, s, seed))
                    progress(f"N={n} s={s:g} seed {seed}")
    finally:
        torch.set_num_threads(threads)
    return RegResult(cfg, tuple(cells), data_s, time.perf_counter() - t0)
