"""Training one cell of the regularisation grid: MNIST-1D data, the notebook's residual MLP, full batches.

The reference is the lottery-ticket notebook of MNIST-1D (Greydanus & Kobak 2024, "Scaling down deep learning
with MNIST-1D"). Setting, the notebook's: a residual MLP ``h = relu(W1 x); h = h + relu(W2 h); logits = W3 h``
(hidden 500, PyTorch's default init), Adam at lr 0.02, batch 100, 1,500 steps for every cell of the grid,
whatever the training-set size (the same budget). Masks are :class:`~sparseflow.RandomSparse` with the uniform
distribution (each Linear weight at sparsity s) and no rescaling of the kept weights (``sparse_init=False``),
as the notebook; biases stay dense. Per seed, the training subset (nested: the first N of one seeded
permutation of the pool), the init, the mask and the batch order are shared by every sparsity (paired runs).

Data: :func:`mnist1d_pool` generates a training pool and, with another seed, a fixed test set through the
``mnist1d`` package, so the test set neither shrinks with N nor depends on the grid.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseflow.distributions import uniform
from sparseflow.errors import SparseflowError
from sparseflow.experiments.regularisation.config import RegConfig
from sparseflow.methods import RandomSparse
from sparseflow.training.data import Dataset
from sparseflow.training.loop import optimizer_step

POOL_SEED, TEST_SEED = 42, 4242  # 42 is get_dataset_args()'s seed; the test set is drawn independently


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
        losses.append(optimizer_step(F.cross_entropy(model(x[idx]), y[idx]), opt, method))
    tail = losses[-max(1, len(losses) // 10):]
    with torch.no_grad():
        test_acc = float((model(data.x_test).argmax(1) == data.y_test).float().mean())
        train_acc = float((model(x).argmax(1) == y).float().mean())
    return Cell(size, sparsity, seed, test_acc, train_acc, sum(tail) / len(tail), time.perf_counter() - t0)
